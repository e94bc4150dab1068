/**
 * Client sampling under strict calibration: the cohorts are exactly the independent Poisson draws
 * the accountant assumes, an empty cohort is allowed and still accounted, and the aggregate's
 * denominator is fixed (docs/privacy.md, "Client sampling").
 */
import assert from "node:assert/strict";
import { type FederatedConfig, runFederated, sampleParticipants } from "../lib/fl/simulation.ts";
import { aggregatePhase } from "./helpers/aggregate.ts";
import type { Calibration } from "../lib/privacy/calibration.ts";
import { resolveMethod } from "../lib/fl/methods/mod.ts";
import type { LoraFactors } from "../lib/fl/factors.ts";
import { rdpEpsilon } from "../lib/privacy/rdp.ts";
import { pldEpsilon } from "../lib/privacy/pld.ts";
import { createRng } from "../lib/rng.ts";
import { toyConfig, toySetup } from "./helpers/fl_fixture.ts";

/** |observed − expected| within z standard errors of a binomial proportion (z = 4: p ≈ 6e-5). */
function withinBinomial(successes: number, trials: number, p: number, what: string): void {
  const observed = successes / trials;
  const halfWidth = 4 * Math.sqrt(p * (1 - p) / trials);
  assert.ok(
    Math.abs(observed - p) <= halfWidth,
    `${what}: observed ${observed.toFixed(4)} over ${trials} trials, expected ${p} ± ${
      halfWidth.toFixed(4)
    }`,
  );
}

Deno.test("sampling: each client is included with probability q, independently, cohorts may be empty", () => {
  const cfg = { numClients: 4, participation: 0.1, seed: 10 };
  const rounds = 3000;
  let included = 0, empty = 0, both = 0;
  const perClient = [0, 0, 0, 0];
  for (let round = 0; round < rounds; round++) {
    const b = sampleParticipants(cfg, round, 0);
    const a = sampleParticipants(cfg, round, 1);
    for (const cohort of [a, b]) {
      included += cohort.length;
      if (cohort.length === 0) empty++;
      for (const k of cohort) perClient[k]++;
    }
    both += b.filter((k) => a.includes(k)).length;
  }
  const releases = 2 * rounds;
  withinBinomial(included, releases * 4, 0.1, "inclusion frequency");
  perClient.forEach((n, k) => withinBinomial(n, releases, 0.1, `client ${k}`));
  withinBinomial(empty, releases, 0.9 ** 4, "empty cohorts");
  // The two releases of a round draw independently: P(in both) = q².
  withinBinomial(both, rounds * 4, 0.01, "included in both phases of a round");
  // Full participation is every client, every time.
  assert.deepEqual(sampleParticipants({ ...cfg, participation: 1 }, 5, 1), [0, 1, 2, 3]);
});

const setup = await toySetup();

function config(over: Partial<FederatedConfig> = {}): FederatedConfig {
  return toyConfig({ rounds: 6, ...over });
}

Deno.test("sampling: a strict run with q < 1 records its Poisson cohorts and spends exactly the accountant's ε", async () => {
  const q = 0.25;
  const cfg = config({
    participation: q,
    dp: { calibration: "strict", clip: 0.5, epsilon: 4 },
  });
  const res = await runFederated(setup.backbone, setup.data, cfg);
  const phases = res.records.flatMap((r) => r.phases);
  assert.equal(phases.length, 12, "DEeR: two releases per round");
  // Each phase's cohort is the sampler's draw, unchanged (nobody forced in).
  res.records.forEach((r, t) =>
    r.phases.forEach((p, i) => assert.deepEqual(p.participants, sampleParticipants(cfg, t, i)))
  );
  const emptyPhases = phases.filter((p) => p.participants.length === 0);
  assert.ok(emptyPhases.length > 0, "seed 10 draws at least one empty cohort at q = 0.25, K = 4");
  for (const p of emptyPhases) {
    assert.ok(Number.isNaN(p.trainLoss), "no client trained");
    assert.ok(p.noiseEnergy > 0, "the release still carries the round's noise");
  }
  const included = phases.reduce((a, p) => a + p.participants.length, 0);
  withinBinomial(included, phases.length * 4, q, "realised inclusion frequency");
  // The ledger: every release (empty ones included) at rate q, and ε equal to the accountant's
  // (PLD, the strict default) for (σ, q, steps = releases).
  assert.equal(res.ledger!.releases.length, 12);
  assert.equal(res.ledger!.accountant, "pld");
  for (const r of res.ledger!.releases) assert.equal(r.sampleRate, q);
  const sigma = res.calibration!.noiseMultiplier;
  const expected = pldEpsilon({ noiseMultiplier: sigma, sampleRate: q, steps: 12, delta: 1e-5 });
  // The RDP accountant would have reported more for the same σ.
  assert.ok(
    rdpEpsilon({ noiseMultiplier: sigma, sampleRate: q, steps: 12, delta: 1e-5 }).epsilon >
      expected.epsilon,
  );
  assert.equal(res.epsilonSpent, expected.epsilon);
  assert.equal(res.records.at(-1)!.epsilon.spent, expected.epsilon);
  assert.ok(expected.epsilon <= 4 && expected.epsilon > 4 - 0.01, `ε ${expected.epsilon}`);
});

/** A one-adapter factor set of the given constant values (d = 4, r = 2). */
function factors(a: number, b: number): LoraFactors {
  return { A: [new Float32Array(8).fill(a)], B: [new Float32Array(8).fill(b)] };
}
const dims = { adapters: 1, dOut: 4, rank: 2, dIn: 4 };

Deno.test("aggregation: weights summing to less than 1 keep the rest on the global factors (fixed denominator)", () => {
  const phase = resolveMethod({ method: "FFA-LoRA" }).phases[0];
  const out = aggregatePhase({
    global: factors(1, 2),
    clients: [{ client: 0, factors: factors(1, 6), weight: 0.25 }],
    phase,
    dims,
    loraScale: 1,
    calibration: null,
    numClients: 4,
    rng: () => createRng(1),
  });
  // θ_g + w·Δ = 2 + 0.25·4, not the realised-cohort mean 6.
  for (const v of out.global.B[0]) assert.equal(v, 3);
});

Deno.test("aggregation: an empty strict cohort moves the global factors by the noise alone, at the fixed scale", () => {
  const phase = resolveMethod({ method: "FFA-LoRA" }).phases[0];
  const cal: Calibration = {
    calibration: "strict",
    clip: 0.5,
    noiseMultiplier: 2,
    nominalEpsilon: 1,
    nominalDelta: 1e-5,
    accountingDelta: 1e-5,
    accountant: "rdp",
    sampleRate: 0.25,
    plannedReleases: 1,
  };
  const d = { adapters: 1, dOut: 64, rank: 8, dIn: 64 };
  const global: LoraFactors = {
    A: [new Float32Array(8 * 64).fill(0.1)],
    B: [new Float32Array(64 * 8)],
  };
  const out = aggregatePhase({
    global,
    clients: [],
    phase,
    dims: d,
    loraScale: 1,
    calibration: cal,
    numClients: 4,
    rng: () => createRng(3),
    maxWeight: (1 / 4) / 0.25, // max p_k / q
  });
  const B = out.global.B[0];
  const std = Math.sqrt(B.reduce((a, v) => a + v * v, 0) / B.length);
  // σ·C·max p/q = 2 · 0.5 · 1 = 1; 512 draws: ±4·1/√(2·512) ≈ 0.13.
  assert.ok(Math.abs(std - 1) < 0.13, `noise std ${std}`);
  assert.deepEqual(out.global.A[0], global.A[0], "A is not released in FFA-LoRA");
  assert.equal(out.release?.sampleRate, 0.25);
  assert.equal(out.meanUpdateNorm, 0);
});

Deno.test("sampling: a run with empty cohorts resumes to identical records and ledger", async () => {
  const cfg = config({
    participation: 0.25,
    rounds: 4,
    dp: { calibration: "strict", clip: 0.5, epsilon: 4 },
  });
  const full = await runFederated(setup.backbone, setup.data, cfg);
  const out = await Deno.makeTempDir({ prefix: "deer-sampling-resume-" });
  await runFederated(setup.backbone, setup.data, cfg, { outDir: out, stopAfterRounds: 2 });
  const resumed = await runFederated(setup.backbone, setup.data, cfg, {
    outDir: out,
    resume: true,
  });
  // A saved NaN loss (an empty cohort) comes back as null from JSON: compare as JSON.
  const stable = (rs: typeof full.records) => JSON.stringify(rs.map((r) => ({ ...r, seconds: 0 })));
  assert.equal(stable(resumed.records), stable(full.records));
  assert.ok(full.records.some((r) => r.phases.some((p) => p.participants.length === 0)));
  assert.equal(resumed.epsilonSpent, full.epsilonSpent);
  await Deno.remove(out, { recursive: true });
});
