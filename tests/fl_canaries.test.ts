/**
 * Canary clients for the empirical audit: their releases, their effect on a run, and the audit
 * task end to end.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  canaryDirection,
  canaryRelease,
  factorCanariesRefusal,
  factorChange,
  factorSpaceSize,
  productCanariesRefusal,
  productCanary,
  productCanaryPhase,
  productCanaryRelease,
  productCosines,
} from "../lib/fl/canaries.ts";
import { productSpaceNorm } from "../lib/privacy/clip.ts";
import { createRng } from "../lib/rng.ts";
import { defaultConfig, runFederated } from "../lib/fl/simulation.ts";
import { METHODS } from "../lib/fl/methods/mod.ts";
import {
  auditVerdict,
  combineEstimates,
  estimateEpsilon,
  gaussianPairEpsilon,
} from "../lib/privacy/audit.ts";
import { toySetup } from "./helpers/fl_fixture.ts";
import { tinyRunFlags, writeToyNpz } from "./helpers/reliability_inputs.ts";

const dims = { adapters: 2, dOut: 4, rank: 2, dIn: 4 };
const norm = (xs: ArrayLike<number>[]) =>
  Math.sqrt(xs.reduce((a, x) => a + Array.from(x).reduce((b, v) => b + v * v, 0), 0));

Deno.test("canary release: the released factors move by exactly C along the direction's part", () => {
  const global = {
    A: [new Float32Array(8).fill(0.1), new Float32Array(8).fill(0.2)],
    B: [new Float32Array(8), new Float32Array(8)],
  };
  const d = canaryDirection(10, "inserted", 3, dims);
  assert.equal(d.length, factorSpaceSize(dims));
  assert.ok(Math.abs(norm([d]) - 1) < 1e-12, "unit direction");
  const out = canaryRelease(global, d, ["B"], 0.5, dims);
  assert.deepEqual(out.A, global.A, "A is not released in this phase");
  const change = factorChange(global, out, dims);
  assert.ok(Math.abs(norm([change]) - 0.5) < 1e-6, `norm ${norm([change])}`);
  // The change is the B part of the direction, rescaled.
  const bPart = d.slice(16);
  const bNorm = norm([bPart]);
  for (let j = 0; j < 16; j++) assert.ok(Math.abs(change[16 + j] - 0.5 * bPart[j] / bNorm) < 1e-6);
  assert.notDeepEqual(canaryDirection(10, "held", 3, dims), d, "held directions are others");
});

/** B·A of adapter l as a dense dOut×dIn matrix (row-major, float64). */
function product(
  f: { A: Float32Array[]; B: Float32Array[] },
  l: number,
  d: { rank: number; dIn: number; dOut: number },
): Float64Array {
  const w = new Float64Array(d.dOut * d.dIn);
  for (let i = 0; i < d.dOut; i++) {
    for (let j = 0; j < d.dIn; j++) {
      for (let k = 0; k < d.rank; k++) {
        w[i * d.dIn + j] += f.B[l][i * d.rank + k] * f.A[l][k * d.dIn + j];
      }
    }
  }
  return w;
}

function randomFactors(seed: number, d: typeof dims) {
  const rng = createRng(seed);
  const t = (n: number) => Float32Array.from({ length: n }, () => rng.normal());
  return {
    A: Array.from({ length: d.adapters }, () => t(d.rank * d.dIn)),
    B: Array.from({ length: d.adapters }, () => t(d.dOut * d.rank)),
  };
}

Deno.test("product-space canary: the product moves by C along the projected direction, in both phases", () => {
  const d = { adapters: 2, dOut: 5, rank: 2, dIn: 4 };
  const global = randomFactors(3, d);
  const canary = productCanary(10, "inserted", 1, d);
  for (const which of ["B", "A"] as const) {
    const out = productCanaryRelease(global, canary, productCanaryPhase(global, which, d), 0.5, d);
    // Only the released factor moves, and its product-space norm (what strict clipping bounds,
    // against the shared peer) is C.
    const other = which === "B" ? "A" : "B";
    assert.deepEqual(out[other], global[other]);
    const deltas = out[which].map((t, l) => t.map((x, j) => x - global[which][l][j]));
    const norm = productSpaceNorm({
      phase: which,
      deltas,
      peers: global[other],
      d: d.dIn,
      dOut: d.dOut,
      r: d.rank,
    });
    assert.ok(Math.abs(norm - 0.5) < 1e-5, `${which}: product-space norm ${norm}`);
    // ΔW_l is rank one: u_l·(P_A v_l)ᵀ for B, (P_B u_l)·v_lᵀ for A — its rows (B) or columns (A)
    // are multiples of one vector, proportional to u_l (B) or v_l (A).
    for (let l = 0; l < d.adapters; l++) {
      const before = product(global, l, d), after = product(out, l, d);
      const dw = after.map((x, j) => x - before[j]);
      if (which === "B") {
        // Column j of ΔW is u·(P_A v)_j: ratio ΔW[i][j]/u[i] constant in i.
        for (let j = 0; j < d.dIn; j++) {
          const ratio = dw[j] / canary.u[l][0];
          for (let i = 1; i < d.dOut; i++) {
            assert.ok(Math.abs(dw[i * d.dIn + j] - ratio * canary.u[l][i]) < 1e-5);
          }
        }
      } else {
        for (let i = 0; i < d.dOut; i++) {
          const ratio = dw[i * d.dIn] / canary.v[l][0];
          for (let j = 1; j < d.dIn; j++) {
            assert.ok(Math.abs(dw[i * d.dIn + j] - ratio * canary.v[l][j]) < 1e-5);
          }
        }
      }
    }
  }
});

Deno.test("product-space cosines equal the cosine of the dense ΔW with the dense U", () => {
  const d = { adapters: 3, dOut: 6, rank: 2, dIn: 5 };
  const start = randomFactors(1, d), end = randomFactors(2, d);
  const canaries = [0, 1, 2].map((i) => productCanary(7, "held", i, d));
  const got = productCosines(start, end, canaries, d);
  const dw = Array.from({ length: d.adapters }, (_, l) => {
    const a = product(end, l, d), b = product(start, l, d);
    return a.map((x, j) => x - b[j]);
  });
  const normDw = Math.sqrt(dw.reduce((s, m) => s + m.reduce((t, x) => t + x * x, 0), 0));
  canaries.forEach((c, n) => {
    let dot = 0, normU = 0;
    for (let l = 0; l < d.adapters; l++) {
      for (let i = 0; i < d.dOut; i++) {
        for (let j = 0; j < d.dIn; j++) {
          const u = c.u[l][i] * c.v[l][j] / Math.sqrt(d.adapters);
          dot += dw[l][i * d.dIn + j] * u;
          normU += u * u;
        }
      }
    }
    assert.ok(Math.abs(normU - 1) < 1e-12, "U is a unit direction");
    assert.ok(Math.abs(got[n] - dot / normDw) < 1e-9, `${got[n]} vs ${dot / normDw}`);
  });
});

Deno.test("product-space canaries: only for phases of one regulated factor under strict calibration", () => {
  const deerPhases = [{ release: ["B" as const], regulate: true }, {
    release: ["A" as const],
    regulate: true,
  }];
  assert.equal(productCanariesRefusal(deerPhases, "strict"), null);
  assert.match(productCanariesRefusal(deerPhases, "paper")!, /strict calibration/);
  assert.match(
    productCanariesRefusal([{ release: ["A", "B"], regulate: false }], "strict")!,
    /one factor with regulated noise/,
  );
});

Deno.test("factor-space canaries: refused for FLoRA, whose global factors never move; every other method moves them", async () => {
  const refused = METHODS.filter((e) => factorCanariesRefusal(e.create({})) !== null)
    .map((e) => e.name);
  assert.deepEqual(refused, ["FLoRA"]);
  // Refused before any training (the run would end with every cosine 0: nothing to estimate).
  await assert.rejects(
    runFederated(setup.backbone, setup.data, { ...base, method: { method: "FLoRA" } }, {
      canaries: { count: 10 },
    }),
    /a canary audit of FLoRA: its global LoRA factors never move.*audit another method/,
  );
});

const setup = await toySetup();
const base = {
  ...defaultConfig(),
  method: { method: "FFA-LoRA" as const },
  numClients: 4,
  rounds: 2,
  localEpochs: 1,
  batchSize: 8,
};

Deno.test("canaries: without noise the inserted directions stand out; with strict noise they hide", async () => {
  const clean = await runFederated(setup.backbone, setup.data, base, { canaries: { count: 30 } });
  assert.equal(clean.audit!.inserted.length, 30);
  assert.equal(clean.audit!.held.length, 30);
  assert.deepEqual(clean.records[0].phases[0].canaries, Array.from({ length: 30 }, (_, i) => i));
  const minIn = Math.min(...clean.audit!.inserted), maxHeld = Math.max(...clean.audit!.held);
  assert.ok(
    minIn > maxHeld,
    `no noise: every inserted cosine (${minIn}) above every held one (${maxHeld})`,
  );
  const noisy = await runFederated(setup.backbone, setup.data, {
    ...base,
    dp: { calibration: "strict", clip: 0.5, epsilon: 0.5 },
  }, { canaries: { count: 60 } });
  const est = estimateEpsilon({ ...noisy.audit!, delta: 1e-5, resamples: 300 });
  assert.ok(
    est.interval[0] <= noisy.epsilonSpent!,
    `strict ε ${noisy.epsilonSpent}: estimate ${est.epsilon} [${est.interval}] must not exceed it`,
  );
  // The real clients' records are those of a run without canaries in shape (participants).
  assert.deepEqual(noisy.records[0].phases[0].participants, [0, 1, 2, 3]);
});

Deno.test("canaries: an isotropic strict run is audited tightly — the interval holds the mechanism's ε", async () => {
  // LoRA under strict calibration adds isotropic noise σC·w (w = 1/K) to the weighted sum of whole
  // releases, and a canary moves it by C·w along its direction in every round. With the learning
  // rate at 1e-9 (0 is refused) the real clients release next to nothing, so what hides a canary is the noise and the other
  // canaries, whose directions overlap it by ~1/√D in the D-dimensional factor space and add up
  // over the T rounds: the canary faces a Gaussian mechanism with μ = √T / √(σ² + T(n − 1)/D).
  // The audit must recover that μ — too little noise shows as an interval above it, too much (or a
  // lost canary signal) as one below — and the accounted ε (μ = √T/σ) must not be below it.
  const n = 400, T = 2;
  const D = factorSpaceSize(setup.backbone.dims);
  const runs = [];
  for (const seed of [1, 2]) {
    const run = await runFederated(setup.backbone, setup.data, {
      ...base,
      method: { method: "LoRA" },
      rounds: T,
      seed,
      sgd: { ...base.sgd, lr: 1e-9 },
      dp: { calibration: "strict", clip: 0.5, epsilon: 4 },
    }, { canaries: { count: n } });
    const sigma = run.calibration!.noiseMultiplier;
    const mu = Math.sqrt(T) / Math.sqrt(sigma ** 2 + T * (n - 1) / D);
    const truth = gaussianPairEpsilon({ mean: 0, std: 1 }, { mean: mu, std: 1 }, 1e-5);
    const est = estimateEpsilon({ ...run.audit!, delta: 1e-5, resamples: 200, seed });
    assert.ok(
      est.interval[0] <= truth && truth <= est.interval[1],
      `seed ${seed}: the mechanism's ε ${truth} outside the audit's [${est.interval}]`,
    );
    assert.ok(truth <= run.epsilonSpent!, `${truth} vs accounted ${run.epsilonSpent}`);
    assert.equal(auditVerdict(est.interval, run.epsilonSpent), "consistent");
    runs.push({ est, truth });
  }
  const all = combineEstimates(runs.map((r) => r.est), 1e-5);
  assert.equal(all.runs, 2);
  assert.ok(
    all.interval[0] <= runs[0].truth && runs[0].truth <= all.interval[1],
    `combined [${all.interval}] vs the mechanism's ${runs[0].truth}`,
  );
  assert.ok(all.interval[1] - all.interval[0] < runs[0].est.interval[1] - runs[0].est.interval[0]);
});

Deno.test("canaries: DEeR's strict run audited in product space, where its guarantee is, gets closer to its ε", async () => {
  // DEeR clips and noises in product space (regulated noise is isotropic noise of ΔW projected by
  // the shared peer), so factor-space canaries see the noise inflated by the peer's pseudo-inverse
  // and audit far below the accounted ε; product-space canaries face the accounted mechanism up to
  // the projections' varying lengths and the other canaries' overlap.
  for (const seed of [1, 2]) {
    const audit = async (space: "factor" | "product") => {
      const run = await runFederated(setup.backbone, setup.data, {
        ...base,
        method: { method: "DEeR" },
        seed,
        dp: { calibration: "strict", clip: 0.5, epsilon: 4 },
      }, { canaries: { count: 400, space } });
      return {
        est: estimateEpsilon({ ...run.audit!, delta: 1e-5, resamples: 200, seed }),
        accounted: run.epsilonSpent!,
      };
    };
    const product = await audit("product"), factor = await audit("factor");
    assert.equal(auditVerdict(product.est.interval, product.accounted), "consistent");
    assert.ok(
      product.est.epsilon > factor.est.epsilon + 0.5 &&
        product.est.epsilon > 0.6 * product.accounted,
      `seed ${seed}: product ${product.est.epsilon}, factor ${factor.est.epsilon}, accounted ` +
        `${product.accounted}`,
    );
  }
  await assert.rejects(
    () =>
      runFederated(setup.backbone, setup.data, { ...base, method: { method: "LoRA" } }, {
        canaries: { count: 10, space: "product" },
      }),
    /product-space canaries for LoRA: they need the strict calibration/,
  );
});

Deno.test("deno task audit: prints the estimate beside the accounted ε and writes audit.json", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-audit-" });
  const data = await writeToyNpz(join(dir, "toy.npz"));
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../tasks/audit.ts", import.meta.url).pathname,
      ...tinyRunFlags(data, dir, {
        T: "2",
        is_DP: "1",
        calibration: "strict",
        epsilon: "4",
        exp_name: "a",
      }, ["--canaries", "20"]),
    ],
    env: { NO_COLOR: "1" },
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  assert.match(
    stdout,
    /seed 10: empirical ε \d+\.\d{3} \[95 % interval [\d.]+, [\d.]+\] at δ 0\.00001; accounted ε 3\.99\d \(nominal 4\)/,
  );
  const saved = JSON.parse(await Deno.readTextFile(join(dir, "audit", "a", "audit.json")));
  assert.equal(saved.canaries, 20);
  assert.equal(saved.canarySpace, "product", "auto: DEeR, the default method, under strict");
  assert.equal(saved.seeds[0].cosines.inserted.length, 20);
  const bad = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../tasks/audit.ts", import.meta.url).pathname, "--canaries", "1"],
  }).output();
  assert.equal(bad.code, 2);
  assert.match(new TextDecoder().decode(bad.stderr), /--canaries 1: expected an integer ≥ 2/);
  const badSpace = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../tasks/audit.ts", import.meta.url).pathname,
      "--canary-space",
      "weights",
    ],
  }).output();
  assert.equal(badSpace.code, 2);
  assert.match(
    new TextDecoder().decode(badSpace.stderr),
    /--canary-space weights: expected factor, product or auto/,
  );
});

Deno.test("canary release under per-tensor clipping: every released tensor moves by C", () => {
  const global = {
    A: [new Float32Array(8), new Float32Array(8)],
    B: [new Float32Array(8), new Float32Array(8)],
  };
  const d = canaryDirection(10, "inserted", 0, dims);
  const out = canaryRelease(global, d, ["A", "B"], 0.5, dims, "per-tensor");
  for (const t of [...out.A, ...out.B]) assert.ok(Math.abs(norm([t]) - 0.5) < 1e-6);
});
