/**
 * Local DP over a real nats-server (TLS, per-site nkeys): a coordinator running `runFederated`
 * with `natsClients` (no clip bound to check: the sites' noise hides it) and four sites running
 * `runSite`, each adding its own noise and sending nothing but its release, give the records,
 * per-site ledger and checkpoints of `train --calibration local` in one process.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { defaultConfig, type FederatedConfig, runFederated } from "../lib/fl/simulation.ts";
import { resolveMethod } from "../lib/fl/methods/mod.ts";
import { siteRuntime } from "../lib/federation/site.ts";
import { natsClients, runSite } from "../lib/federation/remote.ts";
import { connectFederation, openCoordinator, openSite } from "../lib/federation/transport.ts";
import { ledgerFromJson } from "../lib/privacy/ledger.ts";
import { compareRuns } from "../tools/compare_runs.ts";
import { toySetup } from "./helpers/fl_fixture.ts";
import { natsTest, withNatsServer } from "./helpers/nats.ts";

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
    await runFederated(setup.backbone, setup.data, cfg, { outDir: join(dir, "train") });
    await withNatsServer(SITES, async (server) => {
      const nc = await connectFederation(server.url, server.credentials("coordinator"));
      const siteConns = await Promise.all(
        SITES.map((s) => connectFederation(server.url, server.credentials(s))),
      );
      try {
        const coordinator = await openCoordinator(nc, {
          run: "local-1",
          sites: SITES,
          leaseMs: 20_000,
        });
        const stop = new AbortController();
        const sites = SITES.map(async (name, k) =>
          runSite(
            await openSite(siteConns[k], name),
            setup.backbone,
            siteRuntime(setup.data, cfg, k),
            { heartbeatMs: 2000, idleMs: 60_000, signal: stop.signal },
          )
        );
        const refusals: string[] = [];
        await runFederated(setup.backbone, setup.data, cfg, {
          outDir: join(dir, "serve"),
          remote: natsClients(coordinator, {
            sites: SITES,
            dims: setup.backbone.dims,
            deadlineMs: 60_000,
            phases: resolveMethod(cfg.method).phases,
            clip: null,
            onRefusal: (r) => refusals.push(r.reason),
          }),
        });
        stop.abort();
        assert.deepEqual(
          await Promise.all(sites),
          [4, 4, 4, 4],
          "two rounds × two phases per site",
        );
        assert.deepEqual(refusals, []);
      } finally {
        await nc.close();
        for (const c of siteConns) await c.close();
      }
    });
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
