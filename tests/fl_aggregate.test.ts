import assert from "node:assert/strict";
import { tf } from "../lib/backend.ts";
import { aggregatePhase } from "./helpers/aggregate.ts";
import type { Calibration } from "../lib/privacy/calibration.ts";
import { aggregationDeviation, deviationNorm } from "../lib/fl/deviation.ts";
import type { LoraDims, LoraFactors } from "../lib/fl/factors.ts";
import { resolveMethod } from "../lib/fl/methods/mod.ts";
import { streamRng } from "../lib/fl/streams.ts";
import { createRng } from "../lib/rng.ts";
import { peerForB, productSqNorm } from "../lib/privacy/regulator.ts";

const dims: LoraDims = { adapters: 3, rank: 4, dIn: 24, dOut: 24 };

function randomFactors(seed: number, scale = 1): LoraFactors {
  const rng = createRng(seed);
  const draw = (n: number) => Float32Array.from({ length: n }, () => rng.normal() * scale);
  return {
    A: Array.from({ length: dims.adapters }, () => draw(dims.rank * dims.dIn)),
    B: Array.from({ length: dims.adapters }, () => draw(dims.dOut * dims.rank)),
  };
}

function calibration(kind: "paper" | "strict", sigma: number, clip: number): Calibration {
  return {
    calibration: kind,
    clip,
    noiseMultiplier: sigma,
    nominalEpsilon: 1,
    nominalDelta: 1e-5,
    accountingDelta: 1e-5,
    accountant: "rdp",
    sampleRate: 1,
    plannedReleases: 10,
  };
}

/** Clients that trained only B from `global` (DEeR phase B) or both factors (LoRA). */
function clientsFrom(global: LoraFactors, trained: "B" | "AB", K: number) {
  return Array.from({ length: K }, (_, k) => {
    const moved = randomFactors(100 + k, 0.1);
    return {
      client: k,
      weight: 1 / K,
      factors: {
        A: trained === "AB" ? global.A.map((a, i) => a.map((v, j) => v + moved.A[i][j])) : global.A,
        B: global.B.map((b, i) => b.map((v, j) => v + moved.B[i][j])),
      },
    };
  });
}

Deno.test("deviation: tfjs public API equals the explicit Σp·B·A − B̄·Ā", async () => {
  const f1 = randomFactors(1), f2 = randomFactors(2), f3 = randomFactors(3);
  const w = [0.5, 0.3, 0.2];
  const shape = (which: "A" | "B") => which === "A" ? [4, 24] : [24, 4];
  const t = (f: LoraFactors, which: "A" | "B") =>
    tf.tensor2d(f[which][0], shape(which) as [number, number]);
  const Bs = [f1, f2, f3].map((f) => t(f, "B"));
  const As = [f1, f2, f3].map((f) => t(f, "A"));
  const got = await aggregationDeviation(Bs, As, w);
  const explicit = tf.tidy(() => {
    const mix = Bs.map((b, k) => tf.matMul(b, As[k]).mul(w[k])).reduce((a, b) => a.add(b));
    const bBar = Bs.map((b, k) => b.mul(w[k])).reduce((a, b) => a.add(b));
    const aBar = As.map((a, k) => a.mul(w[k])).reduce((a, b) => a.add(b));
    return tf.norm(mix.sub(tf.matMul(bBar, aBar))).dataSync()[0];
  });
  assert.ok(got > 1, `LoRA-style factors deviate (${got})`);
  assert.ok(Math.abs(got - explicit) / explicit < 1e-5, `${got} vs ${explicit}`);
  // A shared A eliminates the deviation exactly.
  assert.ok((await aggregationDeviation(Bs, [As[0], As[0], As[0]], w)) < 1e-12 * explicit);
  tf.dispose([Bs, As]);
});

for (const kind of [null, "paper", "strict"] as const) {
  Deno.test(`aggregate: DEeR's deviation is 0 and LoRA's is not (${kind ?? "no DP"})`, () => {
    const global = randomFactors(9, 0.2);
    const cal = kind === null ? null : calibration(kind, 1.5, 0.5);
    const common = {
      global,
      dims,
      loraScale: 1,
      calibration: cal,
      numClients: 6,
      rng: (l: string | number) => streamRng(1, "test", l),
    };
    const deer = resolveMethod({ method: "DEeR" });
    const outB = aggregatePhase({
      ...common,
      clients: clientsFrom(global, "B", 6),
      phase: deer.phases[0],
    });
    const lora = resolveMethod({ method: "LoRA" });
    const outAB = aggregatePhase({
      ...common,
      clients: clientsFrom(global, "AB", 6),
      phase: lora.phases[0],
    });
    assert.ok(outB.deviation < 1e-12, `DEeR deviation ${outB.deviation}`);
    assert.ok(outAB.deviation > 1e-3, `LoRA deviation ${outAB.deviation}`);
    // Phase B aggregates B only: A is untouched.
    assert.deepEqual(outB.global.A, global.A);
    if (cal) assert.ok(outB.release !== null && outB.noiseEnergy > 0);
  });
}

Deno.test("aggregate: strict releases satisfy their clip bound, also in product space", () => {
  const global = randomFactors(4, 0.5);
  const clients = clientsFrom(global, "B", 5).map((c) => ({
    ...c,
    factors: { A: c.factors.A, B: c.factors.B.map((b) => b.map((v) => v * 40)) },
  }));
  const C = 0.3;
  for (const m2 of [false, true]) {
    const phase = resolveMethod({ method: "DEeR", regulateNoise: m2 }).phases[0];
    const out = aggregatePhase({
      global,
      clients,
      phase,
      dims,
      loraScale: 1,
      calibration: calibration("strict", 1, C),
      numClients: 5,
      rng: (l) => streamRng(2, "clip", l),
    });
    assert.equal(out.clippedFraction, 1);
    assert.ok(out.maxReleaseNorm <= C * (1 + 1e-5), `${out.maxReleaseNorm} > ${C}`);
    assert.ok(out.maxReleaseNorm > C * 0.999, "the bound is tight after clipping");
    assert.equal(out.release?.noiseMultiplier, 1, "strict: effective multiplier is σ");
  }
  // Product-space norm really is ‖ΔB·A‖_F.
  const peer = peerForB(global.A[0], dims.rank, dims.dIn);
  const delta = clients[0].factors.B[0].map((v, j) => v - global.B[0][j]);
  const explicit = tf.tidy(() =>
    tf.norm(tf.matMul(tf.tensor2d(delta, [24, 4]), tf.tensor2d(global.A[0], [4, 24]))).dataSync()[0]
  );
  assert.ok(Math.abs(Math.sqrt(productSqNorm(delta, peer)) - explicit) / explicit < 1e-5);
});

Deno.test("aggregate: strict isotropic noise on the average has std σ·C·max p (within 2%)", () => {
  const big: LoraDims = { adapters: 6, rank: 8, dIn: 128, dOut: 128 };
  const rng = createRng(5);
  const draw = (n: number) => Float32Array.from({ length: n }, () => rng.normal());
  const global: LoraFactors = {
    A: Array.from({ length: 6 }, () => draw(8 * 128)),
    B: Array.from({ length: 6 }, () => draw(128 * 8)),
  };
  const K = 10, sigma = 2, C = 0.7;
  const out = aggregatePhase({
    global,
    clients: Array.from({ length: K }, (_, k) => ({ client: k, weight: 1 / K, factors: global })),
    phase: resolveMethod({ method: "LoRA" }).phases[0],
    dims: big,
    loraScale: 1,
    calibration: calibration("strict", sigma, C),
    numClients: K,
    rng: (l) => streamRng(3, "std", l),
  });
  let sq = 0, n = 0;
  for (const which of ["A", "B"] as const) {
    out.global[which].forEach((t, i) => {
      for (let j = 0; j < t.length; j++) {
        const d = t[j] - global[which][i][j];
        sq += d * d;
        n++;
      }
    });
  }
  const expected = sigma * C / K;
  const got = Math.sqrt(sq / n);
  assert.ok(Math.abs(got / expected - 1) < 0.02, `std ${got} vs ${expected} over ${n} entries`);
});

Deno.test("aggregate: paper calibration records the mechanism's real client-level multiplier", () => {
  const global = randomFactors(6, 0.3);
  const K = 4, sigma = 1.2, C = 0.1;
  const common = {
    global,
    dims,
    loraScale: 1,
    calibration: calibration("paper", sigma, C),
    numClients: K,
    rng: (l: string | number) => streamRng(4, "paper", l),
  };
  // LoRA releases 2·adapters tensors, each clipped on its own: sensitivity C·√m → σ/√m.
  const lora = aggregatePhase({
    ...common,
    clients: clientsFrom(global, "AB", K),
    phase: resolveMethod({ method: "LoRA" }).phases[0],
  });
  const m = 2 * dims.adapters;
  assert.ok(Math.abs(lora.release!.noiseMultiplier - sigma / Math.sqrt(m)) < 1e-12);
  assert.ok(Math.abs(lora.release!.sensitivity - C * Math.sqrt(m)) < 1e-12);
  // Regulated phase B: sensitivity C·√(Σ σ_max(A_i)²).
  const regulated = aggregatePhase({
    ...common,
    clients: clientsFrom(global, "B", K),
    phase: resolveMethod({ method: "DEeR" }).phases[0],
  });
  const sig = global.A.map((a) => peerForB(a, dims.rank, dims.dIn).sigmaMax);
  const expected = sigma / Math.sqrt(sig.reduce((s, x) => s + x * x, 0));
  assert.ok(Math.abs(regulated.release!.noiseMultiplier / expected - 1) < 1e-9);
  assert.ok(regulated.peerSigmaMax > 0);
});

Deno.test("aggregate: module1 off + module2 on refuses a client whose own B is singular, saying why", () => {
  // Round 1 of DEeR(m1=0, m2=1): B starts at zero; client 1 (no data) releases B = 0, so its A is
  // regulated with a singular own peer.
  const global = randomFactors(7, 0.3);
  global.B = global.B.map((b) => new Float32Array(b.length));
  const clients = clientsFrom(global, "AB", 3);
  clients[1].factors.B = clients[1].factors.B.map((b) => b.map(() => 0));
  const phase =
    resolveMethod({ method: "DEeR", eliminateDeviation: false, regulateNoise: true }).phases[0];
  assert.throws(
    () =>
      aggregatePhase({
        global,
        clients,
        phase,
        dims,
        loraScale: 1,
        calibration: calibration("paper", 1, 0.1),
        numClients: 3,
        rng: (l: string | number) => streamRng(4, "paper", l),
      }),
    (err: Error) =>
      /client 1's released A of adapter 0/.test(err.message) &&
      /own B, is rank-deficient/.test(err.message) && /Use module1 = 1/.test(err.message),
  );
});

Deno.test("deviationNorm rejects inconsistent inputs with a clear message", () => {
  assert.throws(
    () => deviationNorm([new Float32Array(96)], [], [1], { dOut: 24, rank: 4, dIn: 24 }),
    /1 B factors, 0 A factors and 1 weights/,
  );
});
