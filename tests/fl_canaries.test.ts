/**
 * Canary clients for the empirical audit: their releases, their effect on a run, and the audit
 * task end to end.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  canaryDirection,
  canaryRelease,
  factorChange,
  factorSpaceSize,
} from "../lib/fl/canaries.ts";
import { defaultConfig, runFederated } from "../lib/fl/simulation.ts";
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
  assert.equal(saved.seeds[0].cosines.inserted.length, 20);
  const bad = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../tasks/audit.ts", import.meta.url).pathname, "--canaries", "1"],
  }).output();
  assert.equal(bad.code, 2);
  assert.match(new TextDecoder().decode(bad.stderr), /--canaries 1: expected an integer ≥ 2/);
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
