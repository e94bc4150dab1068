/**
 * Local DP over a real nats-server (TLS, per-site nkeys): a coordinator running `runFederated`
 * with `natsClients` (no clip bound to check: the sites' noise hides it) and four sites running
 * `runSite`, each adding its own noise and sending nothing but its release, give the records,
 * per-site ledger and checkpoints of `train --calibration local` in one process.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { defaultConfig, type FederatedConfig } from "../lib/fl/simulation.ts";
import { ledgerFromJson } from "../lib/privacy/ledger.ts";
import { compareRuns } from "../tools/compare_runs.ts";
import { toySetup } from "./helpers/fl_fixture.ts";
import { natsTest, trainAndServeOverNats } from "./helpers/nats.ts";

const setup = await toySetup();
const SITES = ["site-a", "site-b", "site-c", "site-d"];

const cfg: FederatedConfig = {
  ...defaultConfig(),
  method: { ...defaultConfig().method, method: "DEeR" },
  dp: { calibration: "local", clip: 0.5, epsilon: 6 },
  numClients: SITES.length,
  rounds: 2,
  localEpochs: 1,
  batchSize: 8,
  sgd: { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 },
};

natsTest(
  "federation over nats: four sites under local DP give train --calibration local's run",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "deer-fed-local-" });
    // No clip bound to check at the coordinator: the sites' own noise hides it.
    await trainAndServeOverNats(setup, cfg, SITES, { dir, run: "local-1", clip: null });
    assert.deepEqual(compareRuns(join(dir, "train"), join(dir, "serve")), []);
    const ledger = ledgerFromJson(
      await Deno.readTextFile(join(dir, "serve", "state.json")).then((t) =>
        JSON.stringify(JSON.parse(t).ledger)
      ),
    );
    assert.equal(ledger.localSites, 4);
    assert.ok(ledger.rounds[1].sites!.every((e) => e > 0 && e <= 6));
    await Deno.remove(dir, { recursive: true });
  },
);
