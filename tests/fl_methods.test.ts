// Methods as strategies: the registry, and what each method's hooks do to a release or a run.
import assert from "node:assert/strict";
import { tf } from "../lib/backend.ts";
import type { LoraDims, LoraFactors } from "../lib/fl/factors.ts";
import {
  methodChoices,
  METHODS,
  methodTable,
  releasesPerRound,
  resolveMethod,
} from "../lib/fl/methods/mod.ts";
import { fedExLora } from "../lib/fl/methods/fedex_lora.ts";
import { fedSaLora } from "../lib/fl/methods/fedsa_lora.ts";
import { svdRefactor } from "../lib/fl/methods/fedsvd.ts";
import { flora, stackedUpdate } from "../lib/fl/methods/flora.ts";
import { trainLocal } from "../lib/fl/local.ts";
import { defaultConfig, runFederated } from "../lib/fl/simulation.ts";
import { readSafetensors } from "../lib/model/safetensors.ts";
import { createRng } from "../lib/rng.ts";
import { aggregatePhase } from "./helpers/aggregate.ts";
import { toySetup } from "./helpers/fl_fixture.ts";
import { maxAbsDiff } from "./helpers/numeric.ts";

const dims: LoraDims = { adapters: 2, rank: 3, dIn: 10, dOut: 10 };

function random(seed: number, scale = 1, rank = dims.rank): LoraFactors {
  const rng = createRng(seed);
  const draw = (n: number) => Float32Array.from({ length: n }, () => rng.normal() * scale);
  return {
    A: Array.from({ length: dims.adapters }, () => draw(rank * dims.dIn)),
    B: Array.from({ length: dims.adapters }, () => draw(dims.dOut * rank)),
  };
}

/** s·B·A of one adapter as a dense row-major array (tfjs, float32). */
function product(f: LoraFactors, i: number, s = 1): Float32Array {
  const r = f.A[i].length / dims.dIn;
  return tf.tidy(() =>
    tf.mul(
      tf.matMul(tf.tensor2d(f.B[i], [dims.dOut, r]), tf.tensor2d(f.A[i], [r, dims.dIn])),
      s,
    ).dataSync() as Float32Array
  );
}

Deno.test("methods: the registry resolves names and aliases, and every entry is a full strategy", () => {
  const lora = resolveMethod({ method: "FedLoRA" });
  assert.equal(lora.name, "LoRA");
  assert.deepEqual(lora.phases.map((p) => [p.train, p.release, p.regulate]), [
    [["A", "B"], ["A", "B"], false],
  ]);
  assert.deepEqual(
    resolveMethod({ method: "ffa-lora" }).phases.map((p) => [p.train, p.release]),
    [[["B"], ["B"]]],
  );
  assert.equal(resolveMethod({ method: "DP-DyLoRA" }).local.dynamicRank, true);
  const deer = resolveMethod({ method: "DEeR" });
  assert.equal(deer.label, "DEeR(m1=1,m2=1)");
  assert.deepEqual(deer.phases.map((p) => [p.name, p.train, p.regulate]), [
    ["B", ["B"], true],
    ["A", ["A"], true],
  ]);
  assert.equal(releasesPerRound(deer), 2);
  // The (0,0) corner of DEeR's ablation grid is LoRA.
  const d00 = resolveMethod({ method: "DEeR", eliminateDeviation: false, regulateNoise: false });
  assert.deepEqual(d00.phases, lora.phases);
  // ... under --momentum reference too: the reference keeps each client's optimiser when the
  // eliminator is off, and rebuilds it per phase when it is on.
  assert.equal(d00.referenceMomentum, lora.referenceMomentum);
  assert.equal(lora.referenceMomentum, "keep");
  assert.equal(deer.referenceMomentum, "reset");
  // FedSVD changes B's basis every round: no momentum carried over it.
  assert.equal(resolveMethod({ method: "FedSVD" }).referenceMomentum, "reset");
  assert.throws(() => resolveMethod({ method: "FedProx" }), /unknown method "FedProx"; use one of/);
  // Every registered method has every hook, and the help text and table name it.
  for (const entry of METHODS) {
    const m = entry.create({});
    for (
      const hook of [
        "startFactors",
        "combine",
        "deviation",
        "keepOnClient",
        "afterRound",
        "evaluationFactors",
        "checkDp",
      ] as const
    ) assert.equal(typeof m[hook], "function", `${entry.name}.${hook}`);
    assert.ok(methodChoices().includes(entry.name));
    assert.ok(methodTable().includes(`| \`${entry.name}\` |`));
  }
  assert.match(flora.checkDp("strict")!, /stacked factors would carry none/);
  assert.equal(resolveMethod({ method: "FedSVD" }).checkDp("strict"), null);
});

Deno.test("methods: the README's method table is the registry's", async () => {
  // Compared cell by cell: `deno fmt` pads the README's columns.
  const cells = (line: string) => line.split("|").slice(1, -1).map((c) => c.trim());
  const rows = (text: string) =>
    text.split("\n").filter((l) => l.startsWith("| `")).map((l) => cells(l).join(" | "));
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const want = rows(methodTable());
  const got = rows(readme).filter((r) => want.some((w) => w.split(" | ")[0] === r.split(" | ")[0]));
  assert.deepEqual(
    got,
    want,
    "README.md's method table differs from the registry: paste the output of `deno task methods`",
  );
});

Deno.test("FedEx-LoRA: the folded residual makes the global update exactly Σ p_k·B_k·A_k", () => {
  const global = random(1, 0.3);
  const K = 4, s = 2;
  const clients = Array.from({ length: K }, (_, k) => ({
    client: k,
    weight: [0.1, 0.2, 0.3, 0.4][k],
    factors: random(10 + k, 0.5),
  }));
  const out = aggregatePhase({
    global,
    clients,
    phase: fedExLora.phases[0],
    dims,
    loraScale: s,
    calibration: null,
    numClients: K,
    rng: () => createRng(1),
    method: fedExLora,
  });
  assert.ok(out.deviation > 1e-3, "FedAvg of both factors has a deviation");
  for (let i = 0; i < dims.adapters; i++) {
    const exact = new Float64Array(dims.dOut * dims.dIn);
    for (const c of clients) {
      const p = product(c.factors, i, s);
      for (let j = 0; j < p.length; j++) exact[j] += c.weight * p[j];
    }
    const averaged = product(out.global, i, s);
    const folded = averaged.map((v, j) => v + out.residual![i][j]);
    assert.ok(maxAbsDiff(folded, exact) < 1e-5, `adapter ${i}: ${maxAbsDiff(folded, exact)}`);
  }
});

Deno.test("FedSA-LoRA: B is never released — the global B does not move, clients keep their own", async () => {
  const global = random(2, 0.3);
  const clients = [0, 1].map((k) => ({ client: k, weight: 0.5, factors: random(20 + k) }));
  const out = aggregatePhase({
    global,
    clients,
    phase: fedSaLora.phases[0],
    dims,
    loraScale: 1,
    calibration: null,
    numClients: 2,
    rng: () => createRng(1),
    method: fedSaLora,
  });
  out.global.B.forEach((b, i) => assert.deepEqual(b, global.B[i]));
  assert.notDeepEqual(out.global.A[0], global.A[0]);
  // In a run, the global B stays at its zero initialisation while the clients' B train.
  const { data, backbone } = await toySetup(2);
  const result = await runFederated(backbone, data, {
    ...defaultConfig(),
    method: { method: "FedSA-LoRA" },
    numClients: 3,
    rounds: 2,
    localEpochs: 1,
    batchSize: 16,
  });
  assert.equal(result.records.length, 2);
  assert.ok(result.records.every((r) => r.phases[0].phase === "AB"));
});

Deno.test("local SGD without momentum and weight decay trains (plain SGD: θ ← θ − lr·g)", async () => {
  const { data, backbone } = await toySetup(4);
  const d = backbone.dims;
  const draw = createRng(5);
  const start: LoraFactors = {
    A: Array.from(
      { length: d.adapters },
      () => Float32Array.from({ length: 4 * d.dIn }, () => draw.normal() * 0.05),
    ),
    B: Array.from({ length: d.adapters }, () => new Float32Array(d.dOut * 4)),
  };
  const run = (momentum: number) =>
    trainLocal(backbone, {
      split: data.train,
      indices: Array.from({ length: 32 }, (_, i) => i),
      start,
      train: ["A", "B"],
      epochs: 1,
      batchSize: 16,
      sgd: { lr: 0.05, momentum, weightDecay: 0 },
      logitScale: Math.log(1 / 0.07),
      dynamicRank: false,
      rng: createRng(1),
    });
  // With μ = 0 the momentum buffer was the gradient itself, disposed with the gradients.
  const plain = await run(0);
  assert.equal(plain.steps, 2);
  assert.ok(Number.isFinite(plain.loss));
  assert.ok(maxAbsDiff(plain.factors.B[0], start.B[0]) > 0, "B moved");
  // Its first step equals the momentum run's (the buffers start at zero); the second differs.
  const withMomentum = await run(0.9);
  assert.notDeepEqual(plain.factors.B[0], withMomentum.factors.B[0]);
});

Deno.test("DP-DyLoRA: local training changes only the drawn rank prefix", async () => {
  const { data, backbone } = await toySetup(4);
  const d = backbone.dims;
  const draw = createRng(3);
  const global: LoraFactors = {
    A: Array.from(
      { length: d.adapters },
      () => Float32Array.from({ length: 4 * d.dIn }, () => draw.normal() * 0.05),
    ),
    B: Array.from({ length: d.adapters }, () => new Float32Array(d.dOut * 4)),
  };
  for (const seed of [1, 2, 3]) {
    const rng = createRng(seed);
    const rho = createRng(seed).int(4); // the first draw of the epoch's stream is the prefix
    const out = await trainLocal(backbone, {
      split: data.train,
      indices: Array.from({ length: 32 }, (_, i) => i),
      start: global,
      train: ["A", "B"],
      epochs: 1,
      batchSize: 16,
      sgd: { lr: 0.05, momentum: 0.9, weightDecay: 0 },
      logitScale: Math.log(1 / 0.07),
      dynamicRank: true,
      rng,
    });
    for (let i = 0; i < d.adapters; i++) {
      for (let c = 0; c < 4; c++) {
        const rowA = (f: LoraFactors) => f.A[i].subarray(c * d.dIn, (c + 1) * d.dIn);
        const colB = (f: LoraFactors) =>
          Array.from({ length: d.dOut }, (_, row) => f.B[i][row * 4 + c]);
        const moved = maxAbsDiff(rowA(out.factors), rowA(global)) +
          maxAbsDiff(colB(out.factors), colB(global));
        if (c > rho) assert.equal(moved, 0, `seed ${seed}: component ${c} > ρ = ${rho} moved`);
        else if (i === 0) assert.ok(moved > 0, `seed ${seed}: component ${c} ≤ ρ did not train`);
      }
    }
  }
});

Deno.test("FLoRA: stacking is Σ p_k·s·B_k·A_k exactly, for clients of different ranks", () => {
  const global = random(4, 0.3);
  const ranks = [1, 3, 5];
  const clients = ranks.map((r, k) => ({
    client: k,
    weight: [0.5, 0.25, 0.25][k],
    factors: random(30 + k, 0.4, r),
  }));
  const s = 0.5;
  const merged = stackedUpdate(
    clients.map((c) => ({ ...c })),
    { global, phase: flora.phases[0], dims, loraScale: s },
  );
  for (let i = 0; i < dims.adapters; i++) {
    const exact = new Float64Array(dims.dOut * dims.dIn);
    for (const c of clients) {
      const p = product(c.factors, i, s);
      for (let j = 0; j < p.length; j++) exact[j] += c.weight * p[j];
    }
    assert.ok(maxAbsDiff(merged[i], exact) < 1e-6);
  }
  const out = aggregatePhase({
    global,
    clients,
    phase: flora.phases[0],
    dims,
    loraScale: s,
    calibration: null,
    numClients: 3,
    rng: () => createRng(1),
    method: flora,
  });
  assert.ok(out.global.B.every((b) => b.every((v) => v === 0)), "the merged LoRA restarts");
  assert.equal(out.deviation, 0);
});

Deno.test("FLoRA: a run with per-client ranks 2,4,8 trains, merges, checkpoints and resumes", async () => {
  const { data, backbone } = await toySetup(4);
  const config = {
    ...defaultConfig(),
    method: { method: "FLoRA" },
    numClients: 3,
    rounds: 2,
    localEpochs: 1,
    batchSize: 16,
    clientRanks: [2, 4, 8],
  };
  const dir = await Deno.makeTempDir({ prefix: "deer-flora-" });
  const full = await runFederated(backbone, data, config, { outDir: `${dir}/full` });
  assert.equal(full.records.length, 2);
  for (const r of full.records) assert.ok(r.val.accuracy >= 0 && r.val.accuracy <= 1);
  const ck = await readSafetensors(`${dir}/full/checkpoints/round-0002.safetensors`);
  assert.deepEqual(ck.tensors["merged.0"].shape, [backbone.dims.dOut, backbone.dims.dIn]);
  assert.ok((ck.tensors["merged.0"].data as Float32Array).some((v) => v !== 0));
  // Killed after round 1 and resumed: the same records.
  await runFederated(backbone, data, config, { outDir: `${dir}/cut`, stopAfterRounds: 1 });
  const resumed = await runFederated(backbone, data, config, {
    outDir: `${dir}/cut`,
    resume: true,
  });
  const strip = (rs: typeof full.records) => rs.map((r) => ({ ...r, seconds: 0, liveTensors: 0 }));
  assert.deepEqual(strip(resumed.records), strip(full.records));
  // Other methods refuse per-client ranks.
  await assert.rejects(
    () => runFederated(backbone, data, { ...config, method: { method: "LoRA" } }),
    /lora_r 2,4,8: LoRA trains one rank on every client/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("FedSVD: the SVD keeps B·A and gives A orthonormal rows, singular values decreasing", () => {
  const f = random(5, 0.7);
  const g = svdRefactor(f, dims);
  for (let i = 0; i < dims.adapters; i++) {
    assert.ok(maxAbsDiff(product(g, i), product(f, i)) < 1e-5);
    const r = dims.rank;
    for (let x = 0; x < r; x++) {
      for (let y = 0; y < r; y++) {
        let dot = 0;
        for (let j = 0; j < dims.dIn; j++) {
          dot += g.A[i][x * dims.dIn + j] * g.A[i][y * dims.dIn + j];
        }
        assert.ok(Math.abs(dot - (x === y ? 1 : 0)) < 1e-5, `AAᵀ[${x},${y}] = ${dot}`);
      }
    }
    const colNorms = Array.from({ length: r }, (_, c) => {
      let s = 0;
      for (let row = 0; row < dims.dOut; row++) s += g.B[i][row * r + c] ** 2;
      return Math.sqrt(s);
    });
    for (let c = 1; c < r; c++) assert.ok(colNorms[c] <= colNorms[c - 1] + 1e-6);
  }
});

Deno.test("FedSVD: a strict-DP run keeps A orthonormal and spends the calibrated ε", async () => {
  const { data, backbone } = await toySetup(2);
  const result = await runFederated(backbone, data, {
    ...defaultConfig(),
    method: { method: "FedSVD" },
    numClients: 3,
    rounds: 2,
    localEpochs: 1,
    batchSize: 16,
    dp: { calibration: "strict", clip: 0.5, epsilon: 6 },
  });
  assert.equal(result.records.length, 2);
  assert.ok(result.epsilonSpent! <= 6 && result.epsilonSpent! > 5.9);
});
