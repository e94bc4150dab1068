/**
 * The coordinator's hook of the engine (RunOptions.remote) with the sites' own computation
 * (lib/federation/site.ts): releases made by separate site runtimes, each holding only its own
 * client state, give the records, ledger and global factors of the one-process simulation (under
 * central and local DP); a site that does not answer is excluded as a crashed client is in the
 * simulation, and under local DP it spends nothing for that release.
 */
import assert from "node:assert/strict";
import {
  defaultConfig,
  type FederatedConfig,
  type RemoteClients,
  type RoundRecord,
  runFederated,
} from "../lib/fl/simulation.ts";
import {
  importNoiseKey,
  siteRelease,
  siteReport,
  type SiteRuntime,
  siteRuntime,
} from "../lib/federation/site.ts";
import { initLora } from "../lib/model/lora.ts";
import { streamRng } from "../lib/fl/streams.ts";
import { toySetup } from "./helpers/fl_fixture.ts";
import { compareRuns } from "../tools/compare_runs.ts";
import { join } from "node:path";

const setup = await toySetup();

function config(over: Partial<FederatedConfig> = {}): FederatedConfig {
  return {
    ...defaultConfig(),
    numClients: 4,
    rounds: 2,
    localEpochs: 1,
    batchSize: 8,
    sgd: { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 },
    ...over,
  };
}

const stable = (r: RoundRecord) => ({ ...r, seconds: 0, liveTensors: 0 });

/** Sites as separate runtimes; `silent` names (client, 0-based round) pairs that never answer. */
function sites(cfg: FederatedConfig, silent: (k: number, round: number) => boolean): RemoteClients {
  const runtimes = new Map<number, SiteRuntime>();
  const site = (k: number) => {
    if (!runtimes.has(k)) runtimes.set(k, siteRuntime(setup.data, cfg, k));
    return runtimes.get(k)!;
  };
  return {
    async collect({ round, phaseIndex, participants, global, merged }) {
      const releases = new Map();
      const excluded = [];
      for (const k of participants) {
        if (silent(k, round)) {
          excluded.push({ client: k, reason: "client crashed" });
          continue;
        }
        releases.set(
          k,
          await siteRelease(setup.backbone, site(k), {
            round,
            phaseIndex,
            global,
            merged,
          }),
        );
      }
      return { releases, excluded };
    },
  };
}

for (
  const [name, over] of [
    ["DEeR strict", {
      method: { ...defaultConfig().method, method: "DEeR" },
      dp: { calibration: "strict" as const, clip: 0.5, epsilon: 6 },
    }],
    ["LoRA without DP", { method: { ...defaultConfig().method, method: "LoRA" } }],
    // Local DP: the sites add the noise; the coordinator combines and records per site.
    ["DEeR local", {
      method: { ...defaultConfig().method, method: "DEeR" },
      dp: { calibration: "local" as const, clip: 0.5, epsilon: 6 },
    }],
    ["LoRA local", {
      method: { ...defaultConfig().method, method: "LoRA" },
      dp: { calibration: "local" as const, clip: 0.5, epsilon: 6 },
    }],
  ] as const
) {
  Deno.test(`federation round: ${name} — site releases give the simulation's run`, async () => {
    const cfg = config(over as Partial<FederatedConfig>);
    const dir = await Deno.makeTempDir({ prefix: "deer-fed-round-" });
    const local = await runFederated(setup.backbone, setup.data, cfg, { outDir: join(dir, "a") });
    const remote = await runFederated(setup.backbone, setup.data, cfg, {
      remote: sites(cfg, () => false),
      outDir: join(dir, "b"),
    });
    assert.deepEqual(remote.records.map(stable), local.records.map(stable));
    assert.deepEqual(remote.ledger, local.ledger);
    assert.deepEqual(
      compareRuns(join(dir, "a"), join(dir, "b")),
      [],
      "records, ledger, checkpoints",
    );
    await Deno.remove(dir, { recursive: true });
  });
}

for (const calibration of ["strict", "local"] as const) {
  Deno.test(`federation round: a silent site is excluded as a crashed client; ledger exact (${calibration})`, async () => {
    const cfg = config({
      method: { ...defaultConfig().method, method: "DEeR" },
      dp: { calibration, clip: 0.5, epsilon: 6 },
    });
    const silent = (k: number, round: number) => k === 1 && round === 1;
    const dir = await Deno.makeTempDir({ prefix: "deer-fed-round-" });
    const local = await runFederated(setup.backbone, setup.data, cfg, {
      outDir: join(dir, "a"),
      alterUpdate: ({ client, round }, update) => {
        if (silent(client, round - 1)) throw new Error("client crashed");
        return update;
      },
    });
    const remote = await runFederated(setup.backbone, setup.data, cfg, {
      remote: sites(cfg, silent),
      outDir: join(dir, "b"),
    });
    assert.deepEqual(remote.records[1].phases.map((p) => p.excluded), [
      [{ client: 1, reason: "client crashed" }],
      [{ client: 1, reason: "client crashed" }],
    ]);
    assert.deepEqual(remote.records.map(stable), local.records.map(stable));
    assert.deepEqual(remote.ledger, local.ledger);
    assert.deepEqual(
      compareRuns(join(dir, "a"), join(dir, "b")),
      [],
      "records, ledger, checkpoints",
    );
    if (calibration === "local") {
      // Site 1 released in round 1 only: two releases against the others' four.
      const last = remote.ledger!.rounds[1];
      assert.equal(last.sites![1], remote.ledger!.rounds[0].sites![1]);
      assert.ok(last.sites![1] < last.sites![0] && last.sites![0] === last.epsilon);
    }
    await Deno.remove(dir, { recursive: true });
  });
}

Deno.test("federation round: under local DP a site with a noise key draws noise the run's seed cannot give; the same on every attempt; only the release leaves", async () => {
  const cfg = config({
    method: { ...defaultConfig().method, method: "DEeR" },
    dp: { calibration: "local", clip: 0.5, epsilon: 6 },
  });
  const global = initLora(setup.backbone.vision.config, setup.backbone.rank, streamRng(10, "init"));
  const release = async (key: CryptoKey | null) => {
    const rt = siteRuntime(setup.data, cfg, 2);
    if (key) rt.noiseKey = key;
    const out = await siteRelease(setup.backbone, rt, { round: 0, phaseIndex: 0, global });
    return { ...out, report: siteReport(rt, out.release, out.loss) };
  };
  const key = await importNoiseKey(new Uint8Array(32).fill(7));
  const plain = await release(null);
  const keyed = await release(key);
  const again = await release(await importNoiseKey(new Uint8Array(32).fill(7)));
  const other = await release(await importNoiseKey(new Uint8Array(32).fill(8)));
  const b = (r: typeof plain) => r.release.factors.B[0];
  assert.deepEqual(b(again), b(keyed), "a re-delivered task releases the same numbers");
  assert.ok(b(keyed).some((v, i) => v !== b(plain)[i]), "not the run-seeded noise");
  assert.ok(b(keyed).some((v, i) => v !== b(other)[i]), "another key, other noise");
  assert.equal(keyed.release.clean, undefined, "pre-noise factors never leave the site");
  assert.deepEqual(keyed.report, {}, "under local trust nothing but the release is sent");
  assert.ok(Number.isFinite(keyed.loss), "the site keeps its loss");
  // One release per (run, round, phase): the same task again is fine, other inputs are refused,
  // and so is a round beyond the run's.
  const rt = siteRuntime(setup.data, cfg, 2);
  rt.noiseKey = key;
  const logged: string[] = [];
  rt.onReleased = (released) => Promise.resolve(void logged.push(...released.keys()));
  const first = await siteRelease(setup.backbone, rt, {
    round: 0,
    phaseIndex: 0,
    global,
    run: "r1",
  });
  const retry = await siteRelease(setup.backbone, rt, {
    round: 0,
    phaseIndex: 0,
    global,
    run: "r1",
  });
  assert.deepEqual(retry.release.factors, first.release.factors);
  assert.deepEqual(logged, ["r1/1/0"], "logged once");
  const moved = { ...global, B: global.B.map((t) => t.map((v) => v + 1e-3)) };
  await assert.rejects(
    siteRelease(setup.backbone, rt, { round: 0, phaseIndex: 0, global: moved, run: "r1" }),
    /refusing a second release for round 1 phase 0 of r1 with other global factors/,
  );
  await assert.rejects(
    siteRelease(setup.backbone, rt, { round: cfg.rounds, phaseIndex: 0, global, run: "r1" }),
    /a task for round 3 of a run of 2 rounds/,
  );
  // Another run is another release (and other inputs draw other noise).
  const other2 = await siteRelease(setup.backbone, rt, {
    round: 0,
    phaseIndex: 0,
    global: moved,
    run: "r2",
  });
  assert.ok(other2.release.factors.B[0].some((v, i) => v !== first.release.factors.B[0][i]));
  const strict = siteRuntime(setup.data, { ...cfg, dp: { ...cfg.dp!, calibration: "strict" } }, 2);
  const central = await siteRelease(setup.backbone, strict, { round: 0, phaseIndex: 0, global });
  assert.deepEqual(
    Object.keys(siteReport(strict, central.release, central.loss)),
    ["loss", "updateNorm", "clipped", "releaseNorm", "peerSigmaMax"],
  );
});
