/**
 * Local DP (the untrusted-coordinator model, docs/privacy.md#local-dp-an-untrusted-coordinator):
 *
 * * the local mechanism's client release is the strict clip (whole release, or product space in a
 *   regulated phase) plus the client's own Gaussian noise of std σ_loc·C — checked statistically
 *   in the noise's own metric — drawn from its named stream, and the server adds nothing;
 * * the ledger accounts every site over the releases it made: ε_k is the closed-form Gaussian
 *   composition μ = √n_k/σ at rate 1, and the run's ε is the largest site's; σ_loc meets the
 *   target for a site that takes part in every planned release;
 * * a local run with client sampling gives each site the ε of the releases it made, and resumes
 *   from its saved ledger to the uninterrupted run's records, ledger and checkpoints;
 * * `deno task train --calibration local` on the embedded data (K = 4, T = 2, DEeR and LoRA) gives
 *   finite metrics and a per-site ledger within the target; `--max_epsilon` stops it.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type LoraDims, type LoraFactors, sqNorm } from "../lib/fl/factors.ts";
import { releaseNoise } from "../lib/fl/round.ts";
import { calibrate, type Calibration, localRelease } from "../lib/privacy/calibration.ts";
import {
  type ClientReleaseInput,
  createMechanism,
  type ReleaseSpec,
  weightedAverage,
} from "../lib/privacy/mechanism.ts";
import {
  closeRound,
  createLedger,
  ledgerFromJson,
  ledgerToJson,
  recordRelease,
  spentBudget,
} from "../lib/privacy/ledger.ts";
import { normalCdf } from "../lib/privacy/pld.ts";
import { epsilonForReleases } from "../lib/privacy/rdp.ts";
import { createRng } from "../lib/rng.ts";
import {
  defaultConfig,
  type FederatedConfig,
  type RoundRecord,
  runFederated,
} from "../lib/fl/simulation.ts";
import { compareRuns } from "../tools/compare_runs.ts";
import { toySetup } from "./helpers/fl_fixture.ts";

const dims: LoraDims = { adapters: 2, rank: 8, dIn: 64, dOut: 64 };
const C = 0.5;
const DELTA = 1e-5;

function random(seed: number, scale: number): LoraFactors {
  const rng = createRng(seed);
  const draw = (n: number) => Float32Array.from({ length: n }, () => rng.normal() * scale);
  return {
    A: Array.from({ length: dims.adapters }, () => draw(dims.rank * dims.dIn)),
    B: Array.from({ length: dims.adapters }, () => draw(dims.dOut * dims.rank)),
  };
}

function plus(a: LoraFactors, b: LoraFactors, which: ("A" | "B")[]): LoraFactors {
  const add = (x: Float32Array, y: Float32Array) => x.map((v, i) => v + y[i]);
  return {
    A: which.includes("A") ? a.A.map((t, i) => add(t, b.A[i])) : a.A,
    B: which.includes("B") ? a.B.map((t, i) => add(t, b.B[i])) : a.B,
  };
}

function minus(a: Float32Array, b: Float32Array): Float64Array {
  return Float64Array.from(a, (v, i) => v - b[i]);
}

/** ‖X·A‖_F² for X dOut×r and A r×dIn (row-major), in float64. */
function productSq(x: ArrayLike<number>, a: Float32Array): number {
  const { rank: r, dIn, dOut } = dims;
  let total = 0;
  for (let row = 0; row < dOut; row++) {
    for (let col = 0; col < dIn; col++) {
      let v = 0;
      for (let c = 0; c < r; c++) v += x[row * r + c] * a[c * dIn + col];
      total += v * v;
    }
  }
  return total;
}

function localCalibration(sigma: number, sites: number): Calibration {
  return {
    calibration: "local",
    clip: C,
    noiseMultiplier: sigma,
    nominalEpsilon: 6,
    nominalDelta: DELTA,
    accountingDelta: DELTA,
    accountant: "pld",
    sampleRate: 1,
    plannedReleases: 10,
    localSites: sites,
  };
}

const LORA: ReleaseSpec = { name: "AB", release: ["A", "B"], regulate: false };
const DEER_B: ReleaseSpec = { name: "B", release: ["B"], regulate: true };

Deno.test("local mechanism: whole-release clip, then the client's own isotropic noise of std σ_loc·C", () => {
  const sigma = 1.7;
  const mechanism = createMechanism(localCalibration(sigma, 4));
  const strict = createMechanism({ ...localCalibration(sigma, 4), calibration: "strict" });
  const global = random(1, 0.05);
  const input = (client: number, scale: number): ClientReleaseInput => ({
    round: 3,
    phase: LORA,
    dims,
    numClients: 4,
    noiseRng: releaseNoise(10, 3, 0),
    update: {
      client,
      start: global,
      factors: plus(global, random(100 + client, scale), ["A", "B"]),
      weight: 0.25,
    },
  });
  // Client 0's update is far above C (clipped), client 1's far below (kept as it is).
  for (const [client, scale] of [[0, 0.2], [1, 1e-4]] as const) {
    const out = mechanism.clientRelease(input(client, scale));
    const clean = out.clean!;
    // The pre-noise part is the strict release, bit for bit, and its norm is at most C.
    assert.deepEqual(clean, strict.clientRelease(input(client, scale)).factors);
    const pre = [
      ...clean.A.map((t, i) => minus(t, global.A[i])),
      ...clean.B.map((t, i) => minus(t, global.B[i])),
    ];
    const norm = Math.sqrt(pre.reduce((s, d) => s + sqNorm(d), 0));
    assert.ok(norm <= C * (1 + 1e-5), `pre-noise norm ${norm} ≤ C`);
    assert.equal(out.clipped, client === 0);
    if (client === 0) assert.ok(Math.abs(norm - C) < 1e-5 * C, "clipped onto C");
    // The noise: every released entry, N(0, (σC)²). 2·2·512 = 2048 entries: the sample std has
    // a relative standard error of 1/√4096 ≈ 1.6 %; 6 % is almost 4 standard errors, while the
    // central strict std (σC/K after averaging) or the paper's σC/√K would be 50–75 % off.
    const noise = [
      ...out.factors.A.map((t, i) => minus(t, clean.A[i])),
      ...out.factors.B.map((t, i) => minus(t, clean.B[i])),
    ].flatMap((d) => Array.from(d));
    const n = noise.length;
    const mean = noise.reduce((s, v) => s + v, 0) / n;
    const std = Math.sqrt(noise.reduce((s, v) => s + v * v, 0) / n);
    assert.ok(Math.abs(std / (sigma * C) - 1) < 0.06, `noise std ${std} vs σC = ${sigma * C}`);
    assert.ok(Math.abs(mean) < 4 * sigma * C / Math.sqrt(n), `noise mean ${mean}`);
    // A re-delivered task releases the same numbers; another client draws other noise.
    assert.deepEqual(mechanism.clientRelease(input(client, scale)).factors, out.factors);
  }
  const a = mechanism.clientRelease(input(0, 1e-4)).factors.B[0];
  const b = mechanism.clientRelease(input(1, 1e-4)).factors.B[0];
  assert.ok(a.some((v, i) => v !== b[i]), "per-client noise streams differ");
});

Deno.test("local mechanism: regulated phase — product-space clip and noise σ_loc·C in product space", () => {
  const sigma = 0.9;
  const mechanism = createMechanism(localCalibration(sigma, 4));
  const global = random(2, 0.3);
  const out = mechanism.clientRelease({
    round: 1,
    phase: DEER_B,
    dims,
    numClients: 4,
    noiseRng: releaseNoise(10, 1, 0),
    update: { client: 2, start: global, factors: plus(global, random(7, 0.5), ["B"]), weight: 1 },
  });
  const clean = out.clean!;
  assert.deepEqual(out.factors.A, global.A, "phase B releases B only; A is the shared peer");
  // Pre-noise: ‖ΔB·A‖_F ≤ C over the release (it was far above: clipped onto C).
  const pre = clean.B.reduce((s, t, i) => s + productSq(minus(t, global.B[i]), global.A[i]), 0);
  assert.ok(Math.abs(Math.sqrt(pre) - C) <= 1e-5 * C, `product-space norm ${Math.sqrt(pre)}`);
  // Regulated noise W·A⁺ seen through A is W projected on A's row space: ‖N·A‖_F² / (σC)² is
  // χ² with adapters·r·dOut = 1024 degrees of freedom (relative std of the std estimate ≈ 2.2 %).
  const energy = out.factors.B.reduce(
    (s, t, i) => s + productSq(minus(t, clean.B[i]), global.A[i]),
    0,
  );
  const dof = dims.adapters * dims.rank * dims.dOut;
  const std = Math.sqrt(energy / dof);
  assert.ok(
    Math.abs(std / (sigma * C) - 1) < 0.08,
    `product-space noise std ${std} vs ${sigma * C}`,
  );
  assert.ok(out.peerSigmaMax > 0);
});

Deno.test("local mechanism: the server combines the noised releases and adds nothing; the record lists the sites", () => {
  const sigma = 2;
  const mechanism = createMechanism(localCalibration(sigma, 5));
  const global = random(3, 0.05);
  const updates = [0, 2, 3].map((client) => ({
    client,
    start: global,
    factors: plus(global, random(200 + client, 0.1), ["A", "B"]),
    weight: 1 / 3,
  }));
  const input = {
    round: 2,
    phase: LORA,
    global,
    dims,
    updates,
    maxWeight: 1 / 3,
    numClients: 5,
    noiseRng: releaseNoise(10, 2, 0),
  };
  const releases = updates.map((update) => mechanism.clientRelease({ ...input, update }));
  const out = mechanism.aggregate(input, releases);
  // Exactly the weighted average of what the clients sent: no central noise.
  assert.deepEqual(
    out.global,
    weightedAverage(global, ["A", "B"], releases.map((r) => ({ ...r, weight: 1 / 3 }))),
  );
  assert.deepEqual(
    mechanism.release(input).global,
    out.global,
    "release = aggregate ∘ clientRelease",
  );
  assert.equal(out.clean, null, "the server never holds an un-noised combination");
  assert.ok(Number.isNaN(out.meanUpdateNorm) && Number.isNaN(out.maxReleaseNorm));
  assert.deepEqual(
    out.record,
    localRelease({ noiseMultiplier: sigma, clip: C }, 2, "AB", [0, 2, 3]),
  );
  assert.equal(out.record!.noiseMultiplier, sigma);
  assert.equal(out.record!.noiseStd, sigma * C);
  assert.equal(out.record!.sampleRate, 1);
  assert.equal(mechanism.trust, "local");
  // The budget guard's planned record: every site takes part.
  assert.deepEqual(mechanism.plannedRecord(3, "AB")!.sites, [0, 1, 2, 3, 4]);
});

/** The closed-form ε of n Gaussian releases at σ, q = 1 (bisection on δ(ε), written out here). */
function closedFormEpsilon(n: number, sigma: number, delta: number): number {
  const mu = Math.sqrt(n) / sigma;
  const deltaOf = (e: number) =>
    normalCdf(-e / mu + mu / 2) - Math.exp(e) * normalCdf(-e / mu - mu / 2);
  let lo = 0, hi = 100;
  for (let i = 0; i < 200; i++) {
    const mid = (lo + hi) / 2;
    if (deltaOf(mid) > delta) lo = mid;
    else hi = mid;
  }
  return hi;
}

Deno.test("local ledger: each site's ε is the closed-form Gaussian composition of its own releases", () => {
  const sigma = 1.3;
  // Three rounds of two releases; site 0 takes part in all 6, site 1 in 4, site 2 in 1, site 3
  // in none.
  const plan: number[][] = [[0, 1, 2], [0, 1], [0, 1], [0, 1], [0], [0]];
  for (const accountant of ["pld", "rdp"] as const) {
    let ledger = createLedger({ delta: DELTA, accountant, localSites: 4 });
    plan.forEach((sites, i) => {
      ledger = recordRelease(
        ledger,
        localRelease(
          { noiseMultiplier: sigma, clip: C },
          Math.floor(i / 2) + 1,
          i % 2 ? "A" : "B",
          sites,
        ),
      );
      if (i % 2 === 1) ledger = closeRound(ledger, Math.floor(i / 2) + 1, { nominalEpsilon: 6 });
    });
    const counts = [6, 4, 1, 0];
    const want = counts.map((n) =>
      n === 0
        ? 0
        : accountant === "pld"
        ? closedFormEpsilon(n, sigma, DELTA)
        : epsilonForReleases([{ noiseMultiplier: sigma, sampleRate: 1, count: n }], DELTA).epsilon
    );
    const got = ledger.rounds[2].sites!;
    got.forEach((e, k) => {
      assert.ok(
        Math.abs(e - want[k]) <= 1e-9 * Math.max(1, want[k]),
        `${accountant}: site ${k} ε ${e} vs ${want[k]} (${counts[k]} releases)`,
      );
    });
    assert.ok(got[0] > got[1] && got[1] > got[2] && got[2] > 0 && got[3] === 0);
    assert.equal(ledger.rounds[2].epsilon, got[0], "the run's ε is the largest site's");
    assert.equal(spentBudget(ledger).epsilon, got[0]);
    // Round by round: site 2 stopped after round 1, its ε stays.
    assert.deepEqual(ledger.rounds.map((r) => r.sites![2]), [got[2], got[2], got[2]]);
    // The ledger round-trips through JSON, replaying every site.
    assert.deepEqual(ledgerFromJson(ledgerToJson(ledger)), ledger);
  }
  // A local ledger refuses a record without sites, and a central one a record with them.
  assert.throws(
    () =>
      recordRelease(createLedger({ localSites: 2 }), {
        ...localRelease({ noiseMultiplier: 1, clip: 1 }, 1, "B", [0]),
        sites: undefined,
      }),
    /release without sites in a local-DP ledger/,
  );
  assert.throws(
    () => recordRelease(createLedger(), localRelease({ noiseMultiplier: 1, clip: 1 }, 1, "B", [0])),
    /local-DP release \(with sites\) in a ledger of central noise/,
  );
  assert.throws(
    () =>
      recordRelease(
        createLedger({ localSites: 2 }),
        localRelease({ noiseMultiplier: 1, clip: 1 }, 1, "B", [2]),
      ),
    /names site 2; the ledger has 2 sites/,
  );
});

Deno.test("local calibration: σ_loc meets the target for a site in every planned release, whatever the participation", () => {
  const setting = {
    phases: ["B", "A"] as const,
    numClients: 12,
    participation: 1,
    rounds: 5,
    localEpochs: 1,
    batchSize: 10,
    clientSizes: new Array(12).fill(100),
  };
  const local = calibrate({ calibration: "local", clip: C, epsilon: 6 }, setting);
  assert.equal(local.calibration, "local");
  assert.equal(local.localSites, 12);
  assert.equal(local.accountant, "pld");
  const eps = closedFormEpsilon(10, local.noiseMultiplier, DELTA);
  assert.ok(eps <= 6 && eps >= 6 - 0.01, `ε(σ_loc) over 10 releases = ${eps}`);
  // No amplification by sampling: σ_loc does not depend on the participation.
  const sampled = calibrate({ calibration: "local", clip: C, epsilon: 6 }, {
    ...setting,
    participation: 0.5,
  });
  assert.equal(sampled.noiseMultiplier, local.noiseMultiplier);
  assert.equal(sampled.sampleRate, 1);
  // At full participation it is the central strict σ (the same search over the same releases);
  // under sampling the strict σ is smaller (amplification), the local one is not.
  const strict = calibrate({ calibration: "strict", clip: C, epsilon: 6 }, setting);
  assert.equal(strict.noiseMultiplier, local.noiseMultiplier);
  const strictSampled = calibrate({ calibration: "strict", clip: C, epsilon: 6 }, {
    ...setting,
    participation: 0.5,
  });
  assert.ok(strictSampled.noiseMultiplier < local.noiseMultiplier);
});

const TRAIN = join(import.meta.dirname!, "..", "tasks", "train.ts");

async function train(args: string[]): Promise<{ code: number; text: string }> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TRAIN, ...args],
    env: { NO_COLOR: "1" },
  }).output();
  return {
    code: o.code,
    text: new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr),
  };
}

for (const method of ["DEeR", "LoRA"]) {
  Deno.test(`train --calibration local (${method}, K = 4, T = 2): finite metrics, per-site ledger within the target`, async () => {
    const out = await Deno.makeTempDir({ prefix: "deer-local-" });
    try {
      const run = await train([
        ...["--is_DP", "1", "--calibration", "local", "--method", method],
        ...["--T", "2", "--node_num", "4", "--epsilon", "6", "--out", out],
      ]);
      assert.equal(run.code, 0, run.text);
      assert.match(run.text, /privacy \(local\): nominal ε 6, the largest site's ε actually spent/);
      const folder = run.text.match(/^results: (.+)$/m)![1];
      const seed = join(folder, "seed-10");
      const ledger = ledgerFromJson(await Deno.readTextFile(join(seed, "ledger.json")));
      const records = (await Deno.readTextFile(join(seed, "records.jsonl"))).trim().split("\n")
        .map((l) => JSON.parse(l));
      const phases = method === "DEeR" ? 2 : 1;
      assert.equal(ledger.localSites, 4);
      assert.equal(ledger.releases.length, 2 * phases);
      assert.ok(ledger.releases.every((r) => r.calibration === "local" && r.sampleRate === 1));
      const last = ledger.rounds[1];
      assert.equal(last.sites!.length, 4);
      assert.ok(last.sites!.every((e) => e > 0 && e <= 6), `per-site ε ${last.sites}`);
      assert.equal(last.epsilon, Math.max(...last.sites!));
      // Every site took part in all 2·phases releases: the closed form at σ_loc.
      const sigma = ledger.releases[0].noiseMultiplier;
      assert.ok(Math.abs(last.epsilon - closedFormEpsilon(2 * phases, sigma, DELTA)) < 1e-9);
      for (const r of records) {
        assert.equal(r.epsilon.trust, "local");
        assert.deepEqual(r.epsilon.sites, ledger.rounds[r.round - 1].sites);
        for (const k of ["accuracy", "recall", "precision", "f1", "auc"]) {
          assert.ok(Number.isFinite(r.val[k]), `val ${k} ${r.val[k]}`);
        }
        // The server holds no client's loss or norms under local trust.
        assert.equal(r.trainLoss, null);
        assert.ok(r.phases.every((p: { meanUpdateNorm: unknown }) => p.meanUpdateNorm === null));
      }
      assert.ok(records.some((r) => r.test !== null && Number.isFinite(r.test.accuracy)));
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  });
}

Deno.test("train --calibration local --max_epsilon: stops before the round that would take a site above it", async () => {
  const out = await Deno.makeTempDir({ prefix: "deer-local-" });
  try {
    const run = await train([
      ...["--is_DP", "1", "--calibration", "local", "--T", "2", "--node_num", "4"],
      ...["--epsilon", "6", "--max_epsilon", "5", "--out", out],
    ]);
    assert.equal(run.code, 0, run.text);
    const folder = run.text.match(/^results: (.+)$/m)![1];
    const stop = JSON.parse(await Deno.readTextFile(join(folder, "seed-10", "stop.json")));
    assert.equal(stop.round, 2);
    assert.ok(stop.spentEpsilon <= 5 && stop.epsilonAfterRound > 5, JSON.stringify(stop));
    const ledger = ledgerFromJson(await Deno.readTextFile(join(folder, "seed-10", "ledger.json")));
    assert.equal(ledger.rounds.length, 1);
    assert.ok(ledger.rounds[0].sites!.every((e) => e <= 5));
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("train: local DP combinations that cannot be accounted are refused with the fix", async () => {
  const refused = await train([
    ...["--is_DP", "1", "--calibration", "local", "--module1", "0", "--T", "1", "--node_num", "4"],
  ]);
  assert.equal(refused.code, 2, refused.text);
  assert.match(refused.text, /local calibration: regulated noise shaped by a client's own/);
  const unknown = await train(["--is_DP", "1", "--calibration", "loose"]);
  assert.equal(unknown.code, 2, unknown.text);
  assert.match(unknown.text, /--calibration loose: expected paper, strict or local/);
});

Deno.test("local DP with participation 0.5: per-site ε from each site's own releases; a resumed run equals the uninterrupted one", async () => {
  const setup = await toySetup();
  const cfg: FederatedConfig = {
    ...defaultConfig(),
    method: { ...defaultConfig().method, method: "DEeR" },
    dp: { calibration: "local", clip: 0.5, epsilon: 6 },
    numClients: 4,
    participation: 0.5,
    rounds: 3,
    localEpochs: 1,
    batchSize: 8,
    sgd: { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 },
  };
  const dir = await Deno.makeTempDir({ prefix: "deer-local-resume-" });
  try {
    const full = await runFederated(setup.backbone, setup.data, cfg, { outDir: join(dir, "a") });
    const ledger = full.ledger!;
    const sigma = full.calibration!.noiseMultiplier;
    // Count each site's releases from the records' cohorts: the ledger must agree.
    const counts = [0, 1, 2, 3].map((k) =>
      full.records.flatMap((r) => r.phases).filter((p) => p.participants.includes(k)).length
    );
    assert.ok(new Set(counts).size > 1, `sampling gave the sites different counts ${counts}`);
    const last = ledger.rounds[ledger.rounds.length - 1];
    counts.forEach((n, k) => {
      const want = n === 0 ? 0 : closedFormEpsilon(n, sigma, DELTA);
      assert.ok(Math.abs(last.sites![k] - want) < 1e-9, `site ${k}: ${n} releases`);
    });
    assert.equal(full.epsilonSpent, Math.max(...last.sites!));
    assert.ok(full.epsilonSpent! <= 6);
    // Stopped after one round and resumed: the same run.
    await runFederated(setup.backbone, setup.data, cfg, {
      outDir: join(dir, "b"),
      stopAfterRounds: 1,
    });
    const resumed = await runFederated(setup.backbone, setup.data, cfg, {
      outDir: join(dir, "b"),
      resume: true,
    });
    // Records of the rounds before a resume come back from records.jsonl, where the statistics
    // the server does not hold (NaN) are null: compare as written.
    const stable = (r: RoundRecord) =>
      JSON.parse(JSON.stringify({ ...r, seconds: 0, liveTensors: 0 }));
    assert.deepEqual(resumed.records.map(stable), full.records.map(stable));
    assert.deepEqual(resumed.ledger, full.ledger);
    assert.deepEqual(compareRuns(join(dir, "a"), join(dir, "b")), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
