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
  type RunResult,
} from "../lib/fl/simulation.ts";
import {
  importNoiseKey,
  siteRelease,
  siteReport,
  type SiteRuntime,
  siteRuntime,
} from "../lib/federation/site.ts";
import { initLora } from "../lib/model/lora.ts";
import { type Method, METHODS } from "../lib/fl/methods/mod.ts";
import { streamRng } from "../lib/fl/streams.ts";
import { toyConfig, toySetup } from "./helpers/fl_fixture.ts";
import { compareRuns } from "../tools/compare_runs.ts";
import { strictCalibration } from "../lib/privacy/calibration.ts";
import { siteEpsilon } from "../lib/federation/site_budget.ts";
import { join } from "node:path";

const setup = await toySetup();

const config = toyConfig;

const stable = (r: RoundRecord) => ({ ...r, seconds: 0, liveTensors: 0 });

/**
 * Sites as separate runtimes; `silent` names (client, 0-based round) pairs that never answer;
 * `prepare` sets up each runtime when it is made (a noise key, a budget), `run` names the run.
 */
function sites(
  cfg: FederatedConfig,
  silent: (k: number, round: number, phaseIndex: number) => boolean,
  opts: { prepare?: (rt: SiteRuntime, k: number) => void; run?: string } = {},
): RemoteClients {
  const runtimes = new Map<number, SiteRuntime>();
  const site = (k: number) => {
    if (!runtimes.has(k)) {
      const rt = siteRuntime(setup.data, cfg, k);
      opts.prepare?.(rt, k);
      runtimes.set(k, rt);
    }
    return runtimes.get(k)!;
  };
  return {
    async collect({ round, phaseIndex, participants, global, merged }) {
      const releases = new Map();
      const excluded = [];
      for (const k of participants) {
        if (silent(k, round, phaseIndex)) {
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
            run: opts.run,
          }),
        );
      }
      return { releases, excluded };
    },
  };
}

// Every method the federation runs (FedSA-LoRA keeps factors on its clients and is refused there),
// under every calibration it supports, plus FLoRA with clients of different ranks.
const keepsFactors = (m: Method) =>
  m.keepOnClient(initLora(setup.backbone.vision.config, 1, streamRng(0, "probe"))) !== undefined;
const matrix: [string, Partial<FederatedConfig>][] = METHODS.flatMap((entry) => {
  const method = entry.create({});
  if (keepsFactors(method)) return [];
  return ([null, "paper", "strict", "local"] as const)
    .filter((c) => c === null || method.checkDp(c) === null)
    .map((c): [string, Partial<FederatedConfig>] => [
      `${entry.name} ${c ?? "without DP"}`,
      {
        method: { method: entry.name },
        ...(c ? { dp: { calibration: c, clip: 0.5, epsilon: 6 } } : {}),
      },
    ]);
});
matrix.push(["FLoRA paper, ranks 2 and 4", {
  method: { method: "FLoRA" },
  clientRanks: [2, 4],
  dp: { calibration: "paper", clip: 0.5, epsilon: 6 },
}]);

for (const [name, over] of matrix) {
  Deno.test(`federation round: ${name} — site releases give the simulation's run`, async () => {
    const cfg = config(over);
    const dir = await Deno.makeTempDir({ prefix: "deer-fed-round-" });
    const local = await runFederated(setup.backbone, setup.data, cfg, { outDir: join(dir, "a") });
    const remote = await runFederated(setup.backbone, setup.data, cfg, {
      remote: sites(cfg, () => false),
      outDir: join(dir, "b"),
    });
    assert.deepEqual(remote.ledger, local.ledger);
    if (cfg.dp?.calibration !== "paper") {
      assert.deepEqual(remote.records.map(stable), local.records.map(stable));
      assert.deepEqual(
        compareRuns(join(dir, "a"), join(dir, "b")),
        [],
        "records, ledger, checkpoints",
      );
    } else {
      // Under paper each site noises its own release and keeps its un-noised factors: the
      // coordinator's records cannot measure the noise that reached the update (null); the
      // simulation, holding both, does. Everything else is the same.
      const phases = (r: RunResult) => r.records.flatMap((x) => x.phases);
      assert.ok(phases(remote).every((p) => Number.isNaN(p.noiseEnergy)));
      assert.ok(remote.records.every((x) => Number.isNaN(x.noiseEnergy)));
      assert.ok(phases(local).every((p) => p.noiseEnergy > 0));
      const known = (r: RoundRecord) => ({
        ...stable(r),
        noiseEnergy: 0,
        phases: r.phases.map((p) => ({ ...p, noiseEnergy: 0 })),
      });
      assert.deepEqual(remote.records.map(known), local.records.map(known));
      assert.deepEqual(compareRuns(join(dir, "a"), join(dir, "b")), ["records.jsonl: differs"]);
      assert.deepEqual(
        compareRuns(join(dir, "a"), join(dir, "b"), { ignore: ["noiseEnergy"] }),
        [],
        "records but for the noise energy, ledger, state, checkpoints",
      );
    }
    await Deno.remove(dir, { recursive: true });
  });
}

Deno.test("federation round: a method that keeps factors on its clients is refused across processes", async () => {
  const kept = METHODS.filter((e) => keepsFactors(e.create({}))).map((e) => e.name);
  assert.deepEqual(kept, ["FedSA-LoRA"]);
  const cfg = config({ method: { method: "FedSA-LoRA" } });
  await assert.rejects(
    runFederated(setup.backbone, setup.data, cfg, { remote: sites(cfg, () => false) }),
    /FedSA-LoRA keeps factors on its clients and evaluates with them/,
  );
});

Deno.test("federation round: a client with no images takes no step; its loss is left out of the round's, in the simulation as through sites", async () => {
  // Seed 2 with α = 0.1 splits the toy set's 96 images as [0, 34, 30, 32].
  const cfg = config({
    method: { ...defaultConfig().method, method: "LoRA" },
    seed: 2,
    rounds: 1,
    split: { iid: false, dirichletAlpha: 0.1 },
  });
  const seen = new Map<number, { loss: number; steps: number; report: Record<string, unknown> }>();
  const inner = sites(cfg, () => false);
  const runtimes = new Map<number, SiteRuntime>();
  const remote: RemoteClients = {
    async collect(task) {
      const got = await inner.collect(task);
      for (const [k, r] of got.releases) {
        const rt = runtimes.get(k) ?? siteRuntime(setup.data, cfg, k);
        runtimes.set(k, rt);
        const { loss, steps } = r as { loss: number; steps: number };
        seen.set(k, { loss, steps, report: siteReport(rt, r.release, loss, steps) });
      }
      return got;
    },
  };
  const local = await runFederated(setup.backbone, setup.data, cfg);
  const fed = await runFederated(setup.backbone, setup.data, cfg, { remote });
  assert.deepEqual([...seen.keys()], [0, 1, 2, 3]);
  assert.equal(seen.get(0)!.steps, 0);
  assert.equal(seen.get(0)!.report.steps, 0, "the site's report says it took no step");
  for (const k of [1, 2, 3]) assert.ok(seen.get(k)!.steps > 0 && seen.get(k)!.loss > 0);
  const expected = [1, 2, 3].reduce((s, k) => s + seen.get(k)!.loss, 0) / 3;
  assert.equal(fed.records[0].phases[0].trainLoss, expected);
  assert.equal(fed.records[0].trainLoss, expected);
  assert.deepEqual(fed.records.map(stable), local.records.map(stable));
});

Deno.test("federation round: a coordinator with secret noise adds noise from its own key, accounted as the seeded run's", async () => {
  const dp = { calibration: "strict" as const, clip: 0.5, epsilon: 6 };
  const cfg = (noise: "seeded" | "secret") =>
    config({ method: { ...defaultConfig().method, method: "DEeR" }, dp: { ...dp, noise } });
  const dir = await Deno.makeTempDir({ prefix: "deer-fed-secret-" });
  const seeded = await runFederated(setup.backbone, setup.data, cfg("seeded"), {
    remote: sites(cfg("seeded"), () => false),
    outDir: join(dir, "seeded"),
  });
  const secret = await runFederated(setup.backbone, setup.data, cfg("secret"), {
    remote: sites(cfg("secret"), () => false),
    outDir: join(dir, "secret"),
  });
  assert.match(await Deno.readTextFile(join(dir, "secret", "noise.key")), /^[0-9a-f]{64}\n$/);
  // The same releases accounted (the noise's scale does not depend on its source) ...
  assert.deepEqual(secret.ledger, seeded.ledger);
  // ... but other noise: the phases' noise energies and the saved checkpoints differ.
  const energies = (r: { records: RoundRecord[] }) =>
    r.records.flatMap((x) => x.phases.map((p) => p.noiseEnergy));
  assert.notDeepEqual(energies(secret), energies(seeded));
  assert.notDeepEqual(compareRuns(join(dir, "seeded"), join(dir, "secret")), []);
  await Deno.remove(dir, { recursive: true });
});

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
  rt.onReleased = (log) => Promise.resolve(void logged.push(...Object.keys(log.releases)));
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
  // The same inputs under other settings (a coordinator changing the learning rate) or as another
  // client would train to another update: refused, since the same noise (or a fresh, unaccounted
  // one) would publish the difference.
  const fasterLr = siteRuntime(setup.data, { ...cfg, sgd: { ...cfg.sgd, lr: 0.5 } }, 2);
  fasterLr.noiseKey = key;
  fasterLr.log = rt.log;
  await assert.rejects(
    siteRelease(setup.backbone, fasterLr, { round: 0, phaseIndex: 0, global, run: "r1" }),
    /refusing a second release for round 1 phase 0 of r1 with the same global factors but other settings or another client/,
  );
  const otherClient = siteRuntime(setup.data, cfg, 3);
  otherClient.noiseKey = key;
  otherClient.log = rt.log;
  await assert.rejects(
    siteRelease(setup.backbone, otherClient, { round: 0, phaseIndex: 0, global, run: "r1" }),
    /with the same global factors but other settings or another client/,
  );
  // Momentum carried between trainings would make a retry train to another update under the
  // same noise: a keyed site refuses such a run before it trains.
  const lora = {
    ...cfg,
    method: { ...cfg.method, method: "LoRA" },
    momentum: "reference" as const,
  };
  const carried = siteRuntime(setup.data, lora, 2);
  carried.noiseKey = key;
  await assert.rejects(
    siteRelease(setup.backbone, carried, { round: 0, phaseIndex: 0, global, run: "r3" }),
    /LoRA with --momentum reference carries optimiser state between trainings, so a re-delivered task would train to another update under the same noise/,
  );
  assert.equal(carried.log?.refused.length, 1, "the refusal is logged");
  const strict = siteRuntime(setup.data, { ...cfg, dp: { ...cfg.dp!, calibration: "strict" } }, 2);
  const central = await siteRelease(setup.backbone, strict, { round: 0, phaseIndex: 0, global });
  assert.deepEqual(
    Object.keys(siteReport(strict, central.release, central.loss)),
    ["loss", "updateNorm", "clipped", "releaseNorm", "peerSigmaMax"],
  );
});

Deno.test("federation round: keyed local sites keep their own budget — each site's own ε equals the ledger's; a run that would pass a site's cap is refused before anything is released", async () => {
  const cfg = config({
    method: { ...defaultConfig().method, method: "DEeR" },
    dp: { calibration: "local", clip: 0.5, epsilon: 6 },
  });
  const key = await importNoiseKey(new Uint8Array(32).fill(5));
  const runtimes: SiteRuntime[] = [];
  const printed: string[] = [];
  // Site 1 misses round 2: it makes 2 releases, the others 4.
  const silent = (k: number, round: number) => k === 1 && round === 1;
  const dir = await Deno.makeTempDir({ prefix: "deer-fed-budget-" });
  const run = await runFederated(setup.backbone, setup.data, cfg, {
    outDir: dir,
    remote: sites(cfg, silent, {
      run: "r1",
      prepare: (rt, k) => {
        rt.noiseKey = key;
        rt.budget = { maxEpsilon: 8, delta: 1e-5 };
        rt.onReleased = (log, id) =>
          Promise.resolve(void printed.push(`${k} ${id} ${log.releases[id].epsilon}`));
        runtimes[k] = rt;
      },
    }),
  });
  await Deno.remove(dir, { recursive: true });
  const perSite = run.ledger!.rounds.at(-1)!.sites!;
  const own = runtimes.map((rt) => Object.values(rt.log!.releases).at(-1)!.epsilon);
  assert.deepEqual(own, perSite, "each site's own ε is the coordinator ledger's per-site ε");
  assert.deepEqual(runtimes.map((rt) => Object.keys(rt.log!.releases).length), [4, 2, 4, 4]);
  assert.ok(perSite[0] > 5.9 && perSite[0] <= 6 && perSite[1] < perSite[0], `${perSite}`);
  // The running ε after round 1 is the ledger's round-1 value.
  assert.equal(runtimes[0].log!.releases["r1/1/1"].epsilon, run.ledger!.rounds[0].sites![0]);
  assert.equal(printed.length, 14, "one line per release");
  const global = initLora(setup.backbone.vision.config, setup.backbone.rank, streamRng(10, "init"));
  const task = { round: 0, phaseIndex: 0, global, run: "r2" };
  // A second run (ε 6 again) on site 0: with what its key already spent it would reach past 8.
  const site0 = runtimes[0];
  const before = JSON.stringify(site0.log!.releases);
  let released = 0;
  site0.onReleased = () => Promise.resolve(void released++);
  await assert.rejects(
    siteRelease(setup.backbone, site0, task),
    /refusing r2\/1\/0: .* with the 4 release\(s\) this key already made \(ε = 5\.99\d+\) .* above its cap --max_epsilon 8 .*nothing was released/,
  );
  // A fresh site whose cap is below the run's ε: its σ_loc is below what the cap implies.
  const fresh = siteRuntime(setup.data, cfg, 2);
  fresh.noiseKey = await importNoiseKey(new Uint8Array(32).fill(6));
  fresh.budget = { maxEpsilon: 3, delta: 1e-5 };
  fresh.onReleased = () => Promise.resolve(void released++);
  const sigma = fresh.mechanism.calibration!.noiseMultiplier;
  const implied = strictCalibration({
    targetEpsilon: 3,
    rounds: 2,
    phases: ["B", "A"],
    sampleRate: 1,
    accountant: "pld",
    clip: 0.5,
  }).noiseMultiplier;
  assert.ok(implied > sigma, `the cap implies σ ${implied} > the run's ${sigma}`);
  await assert.rejects(
    siteRelease(setup.backbone, fresh, { ...task, run: "r3" }),
    new RegExp(
      `refusing r3/1/0: the run asks for noise multiplier σ_loc = ${sigma.toPrecision(5)} over 4 ` +
        `planned release\\(s\\).*above its cap --max_epsilon 3 \\(a fresh key's cap implies σ_loc ≥ ` +
        `${implied.toPrecision(5)} for this run\\)`,
    ),
  );
  assert.equal(released, 0, "nothing released");
  assert.equal(JSON.stringify(site0.log!.releases), before);
  assert.deepEqual(Object.keys(fresh.log!.releases), []);
  assert.deepEqual(
    [...site0.log!.refused, ...fresh.log!.refused].map((r) => r.id),
    ["r2/1/0", "r3/1/0"],
    "the refusals are in the sites' logs",
  );
  // The same fresh site with a cap that fits the run releases, at the ledger's first-release ε.
  fresh.budget = { maxEpsilon: 6, delta: 1e-5 };
  await siteRelease(setup.backbone, fresh, { ...task, run: "r3" });
  assert.equal(
    fresh.log!.releases["r3/1/0"].epsilon,
    siteEpsilon([{ phase: "B", noiseMultiplier: sigma, clip: 0.5 }], 1e-5),
  );
});

/**
 * `inner` behind a coordinator killed when it asks for (0-based) `round`, `phaseIndex`: after the
 * phase before it was released.
 */
function killedAt(inner: RemoteClients, round: number, phaseIndex: number): RemoteClients {
  return {
    collect(task) {
      if (task.round === round && task.phaseIndex === phaseIndex) {
        throw new Error("coordinator killed");
      }
      return inner.collect(task);
    },
  };
}

Deno.test("federation round: a coordinator restarted after a release has left continues the round from the next phase — same key, no second release, the uninterrupted run's records", async () => {
  const cfg = config({
    method: { ...defaultConfig().method, method: "DEeR" },
    dp: { calibration: "strict", clip: 0.5, epsilon: 6, noise: "secret" },
  });
  const dir = await Deno.makeTempDir({ prefix: "deer-fed-open-" });
  const [whole, cut] = [join(dir, "whole"), join(dir, "cut")];
  // The coordinator dies once round 1's phase-B release has gone out in the phase-A tasks.
  await assert.rejects(
    runFederated(setup.backbone, setup.data, cfg, {
      remote: killedAt(sites(cfg, () => false), 0, 1),
      outDir: cut,
    }),
    /coordinator killed/,
  );
  const open = JSON.parse(await Deno.readTextFile(join(cut, "round-open.json")));
  assert.deepEqual([open.round, open.phasesDone, open.ledger.releases.length], [1, 1, 1]);
  const key = await Deno.readTextFile(join(cut, "noise.key"));
  // Resumed: were phase B released again, site 3's result (now missing) would leave a release
  // that differs from the first by site 3's update alone, under the same noise.
  const lateSite3 = (k: number, round: number, phaseIndex: number) =>
    k === 3 && round === 0 && phaseIndex === 1;
  const resumed = await runFederated(setup.backbone, setup.data, cfg, {
    remote: sites(cfg, (k, round) => k === 3 && round === 0), // phase A only is asked
    outDir: cut,
    resume: true,
  });
  assert.equal(await Deno.readTextFile(join(cut, "noise.key")), key, "the key is kept");
  // Phase A of round 1 misses site 3; phase B is the one released before the restart.
  assert.deepEqual(resumed.records[0].phases.map((p) => p.excluded.length), [0, 1]);
  assert.equal(resumed.ledger!.releases.length, 4, "two rounds of two releases, none twice");
  await assert.rejects(Deno.stat(join(cut, "round-open.json")), Deno.errors.NotFound);
  // The uninterrupted run with the same key (a resume that finds nothing saved keeps the key it
  // finds) and site 3 missing from round 1's phase A alone: the same records, ledger and
  // checkpoints.
  await Deno.mkdir(whole);
  await Deno.writeTextFile(join(whole, "noise.key"), key);
  const uninterrupted = await runFederated(setup.backbone, setup.data, cfg, {
    remote: sites(cfg, lateSite3),
    outDir: whole,
    resume: true,
  });
  assert.equal(await Deno.readTextFile(join(whole, "noise.key")), key);
  assert.deepEqual(resumed.records.map(stable), uninterrupted.records.map(stable));
  assert.deepEqual(compareRuns(whole, cut), [], "records, ledger, checkpoints");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("federation round: a restarted coordinator refuses a round under way whose ledger was edited, and drops one of a round already saved", async () => {
  const cfg = config({
    method: { ...defaultConfig().method, method: "DEeR" },
    dp: { calibration: "strict", clip: 0.5, epsilon: 6 },
  });
  const dir = await Deno.makeTempDir({ prefix: "deer-fed-open-" });
  const inner = sites(cfg, () => false);
  await assert.rejects(
    runFederated(setup.backbone, setup.data, cfg, { remote: killedAt(inner, 1, 1), outDir: dir }),
    /coordinator killed/,
  );
  const path = join(dir, "round-open.json");
  const saved = await Deno.readTextFile(path);
  const open = JSON.parse(saved);
  assert.deepEqual([open.round, open.phasesDone, open.ledger.releases.length], [2, 1, 3]);
  // Round 2's phase-B release dropped from the ledger: its ε would not count.
  open.ledger.releases.pop();
  await Deno.writeTextFile(path, JSON.stringify(open));
  await assert.rejects(
    runFederated(setup.backbone, setup.data, cfg, { remote: inner, outDir: dir, resume: true }),
    (err: Error) =>
      err.name === "DamagedStateError" && /round-open\.json: "ledger" is not the saved run's/
        .test(err.message),
  );
  // A record of round 1 under way, left beside round 1's saved state, is stale: dropped.
  await Deno.writeTextFile(path, JSON.stringify({ ...JSON.parse(saved), round: 1 }));
  const resumed = await runFederated(setup.backbone, setup.data, cfg, {
    remote: inner,
    outDir: dir,
    resume: true,
  });
  assert.equal(resumed.ledger!.releases.length, 4);
  await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
  await Deno.remove(dir, { recursive: true });
});
