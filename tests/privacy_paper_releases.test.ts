// The paper mechanism's record when a method's combination publishes functions of the single
// client releases (FedEx-LoRA's residual): every client's noised release is accounted on its own,
// one Gaussian of multiplier (σC/√K) / max_k S_k per release, and nothing changes for the methods
// whose combination is a function of the weighted sum (docs/privacy.md, "Combinations that publish
// more than the sum").
// Expected values are computed here from the mechanism's definition, not from the library.
import assert from "node:assert/strict";
import { aggregatePhase } from "./helpers/aggregate.ts";
import { toyConfig, toySetup } from "./helpers/fl_fixture.ts";
import type { LoraDims, LoraFactors } from "../lib/fl/factors.ts";
import { fedAvg } from "../lib/fl/methods/defaults.ts";
import { fedExLora } from "../lib/fl/methods/fedex_lora.ts";
import { flora } from "../lib/fl/methods/flora.ts";
import { type Method, METHODS, type Phase } from "../lib/fl/methods/mod.ts";
import { runFederated } from "../lib/fl/simulation.ts";
import type { Calibration } from "../lib/privacy/calibration.ts";
import { createMechanism, type ReleaseInput } from "../lib/privacy/mechanism.ts";
import { pldEpsilon } from "../lib/privacy/pld.ts";
import { rdpEpsilon } from "../lib/privacy/rdp.ts";
import { streamRng } from "../lib/fl/streams.ts";
import { createRng } from "../lib/rng.ts";

const dims: LoraDims = { adapters: 3, rank: 4, dIn: 20, dOut: 24 };

function paper(sigma: number, clip: number): Calibration {
  return {
    calibration: "paper",
    clip,
    noiseMultiplier: sigma,
    nominalEpsilon: 6,
    nominalDelta: 0.25,
    accountingDelta: 1e-5,
    accountant: "rdp",
    sampleRate: 1,
    plannedReleases: 1,
  };
}

function draw(seed: number, n: number, scale: number): Float32Array {
  const rng = createRng(seed);
  return Float32Array.from({ length: n }, () => rng.normal() * scale);
}

function randomFactors(seed: number, scale: number): LoraFactors {
  return {
    A: Array.from(
      { length: dims.adapters },
      (_, i) => draw(seed * 31 + i, dims.rank * dims.dIn, scale),
    ),
    B: Array.from(
      { length: dims.adapters },
      (_, i) => draw(seed * 37 + i, dims.dOut * dims.rank, scale),
    ),
  };
}

/** Clients that moved both factors from `global` by updates of very different sizes. */
function clients(global: LoraFactors, weights: number[], scales: number[]) {
  return weights.map((weight, k) => {
    const moved = randomFactors(100 + k, scales[k]);
    return {
      client: k,
      weight,
      factors: {
        A: global.A.map((a, i) => a.map((v, j) => v + moved.A[i][j])),
        B: global.B.map((b, i) => b.map((v, j) => v + moved.B[i][j])),
      },
    };
  });
}

/** σ_max of a rows×cols matrix: √(largest eigenvalue of its small Gram matrix), by Jacobi. */
function sigmaMax(m: Float32Array, rows: number, cols: number): number {
  const n = Math.min(rows, cols);
  const g = Array.from({ length: n }, () => new Float64Array(n));
  for (let a = 0; a < n; a++) {
    for (let b = 0; b < n; b++) {
      let s = 0;
      if (rows <= cols) { for (let j = 0; j < cols; j++) s += m[a * cols + j] * m[b * cols + j]; }
      else for (let i = 0; i < rows; i++) s += m[i * cols + a] * m[i * cols + b];
      g[a][b] = s;
    }
  }
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += g[p][q] ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        if (g[p][q] === 0) continue;
        const theta = (g[q][q] - g[p][p]) / (2 * g[p][q]);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let k = 0; k < n; k++) {
          const gkp = g[k][p], gkq = g[k][q];
          g[k][p] = c * gkp - s * gkq;
          g[k][q] = s * gkp + c * gkq;
        }
        for (let k = 0; k < n; k++) {
          const gpk = g[p][k], gqk = g[q][k];
          g[p][k] = c * gpk - s * gqk;
          g[q][k] = s * gpk + c * gqk;
        }
      }
    }
  }
  return Math.sqrt(Math.max(...g.map((row, i) => row[i])));
}

function assertRel(actual: number, expected: number, tol: number, what: string): void {
  const rel = Math.abs(actual - expected) / Math.abs(expected);
  assert.ok(rel <= tol, `${what}: ${actual} vs ${expected} (relative ${rel.toExponential(2)})`);
}

const methodWith = (phase: Phase, base: Method = { ...fedAvg } as Method): Method => ({
  ...base,
  name: "test",
  label: "test",
  aggregates: "",
  phases: [phase],
});

Deno.test("paper: FedEx-LoRA's record accounts each client's noised release, σC/√K over C·√m", () => {
  const K = 5, sigma = 1.7, C = 0.3;
  const weights = [0.4, 0.3, 0.1, 0.1, 0.1];
  const global = randomFactors(1, 0.2);
  const out = aggregatePhase({
    global,
    clients: clients(global, weights, [0.5, 0.01, 0.2, 0.3, 0.05]),
    phase: fedExLora.phases[0],
    method: fedExLora,
    dims,
    loraScale: 2,
    calibration: paper(sigma, C),
    numClients: K,
    rng: (l) => streamRng(2, "fedex", l),
  });
  const r = out.release!;
  const s = sigma * C / Math.sqrt(K); // each client's noise std per entry
  const m = 2 * dims.adapters; // A and B of every adapter, each clipped to C on its own
  const S = C * Math.sqrt(m);
  assertRel(r.noiseStd, s, 1e-12, "noiseStd");
  assertRel(r.sensitivity, S, 1e-12, "sensitivity");
  assertRel(r.noiseMultiplier, s / S, 1e-12, "noiseMultiplier");
  assertRel(r.noiseMultiplier, sigma / Math.sqrt(K * m), 1e-12, "σ/√(K·m)");
  assert.equal(r.calibration, "paper");
  assert.equal(r.exact, true);
  assert.match(r.note!, /single releases/);
  // The weighted sum's Gaussian (the record before) claimed √K·… more noise per sensitivity
  // with uniform weights; with these weights s·√Σw²/(w_max·S).
  const sumMultiplier = s * Math.sqrt(weights.reduce((a, w) => a + w * w, 0)) / (0.4 * S);
  assert.ok(r.noiseMultiplier < sumMultiplier, `${r.noiseMultiplier} < ${sumMultiplier}`);
  // It publishes the residual (the reason for the record).
  assert.ok(out.residual && out.residual.length === dims.adapters);
});

Deno.test("paper: an each-release phase with regulated noise takes the largest client's S_k", () => {
  // Both factors released, each regulated by the client's own other factor (DEeR module1 off):
  // S_k = C·√(Σ_i σ_max(A_k,i)² + Σ_i σ_max(B_k,i)²) differs by client.
  const phase: Phase = {
    name: "AB",
    train: ["A", "B"],
    release: ["A", "B"],
    regulate: true,
    publishes: "each-release",
  };
  const K = 4, sigma = 2.3, C = 0.2;
  const global = randomFactors(3, 0.4);
  const cs = clients(global, [0.25, 0.25, 0.25, 0.25], [0.05, 0.6, 0.2, 0.1]);
  const out = aggregatePhase({
    global,
    clients: cs,
    phase,
    method: methodWith(phase, fedExLora),
    dims,
    loraScale: 1,
    calibration: paper(sigma, C),
    numClients: K,
    rng: (l) => streamRng(5, "fedex-regulated", l),
  });
  const S = cs.map(({ factors: f }) => {
    let sq = 0;
    for (let i = 0; i < dims.adapters; i++) {
      sq += sigmaMax(f.A[i], dims.rank, dims.dIn) ** 2; // peer of the released B
      sq += sigmaMax(f.B[i], dims.dOut, dims.rank) ** 2; // peer of the released A
    }
    return C * Math.sqrt(sq);
  });
  const worst = Math.max(...S);
  assert.ok(worst > 1.5 * Math.min(...S), "the clients' bounds differ");
  const s = sigma * C / Math.sqrt(K);
  const r = out.release!;
  assertRel(r.sensitivity, worst, 1e-8, "sensitivity = max_k S_k");
  assertRel(r.noiseStd, s, 1e-12, "noiseStd");
  assertRel(r.noiseMultiplier, s / worst, 1e-8, "noiseMultiplier");
  assert.equal(r.exact, false, "private peers: a bound");
});

Deno.test("paper: the methods whose combination is the weighted sum keep the weighted sum's record", () => {
  const K = 4, sigma = 1.3, C = 0.25;
  const weights = [0.4, 0.3, 0.2, 0.1];
  const global = randomFactors(7, 0.3);
  const cs = clients(global, weights, [0.3, 0.02, 0.1, 0.5]);
  const s = sigma * C / Math.sqrt(K);
  const sumStd = s * Math.sqrt(weights.reduce((a, w) => a + w * w, 0));
  let checked = 0;
  for (const entry of METHODS) {
    const method = entry.create({});
    assert.equal(method.checkDp("paper"), null, method.name);
    for (const phase of method.phases) {
      if (method.name === "FedEx-LoRA" || method.name === "FLoRA") {
        assert.equal(phase.publishes, "each-release");
        continue;
      }
      assert.notEqual(phase.publishes, "each-release", `${method.name} ${phase.name}`);
      const out = aggregatePhase({
        global,
        clients: cs,
        phase,
        method,
        dims,
        loraScale: 1,
        calibration: paper(sigma, C),
        numClients: K,
        rng: (l) => streamRng(9, `${method.name}/${phase.name}`, l),
      });
      // One client moves the weighted sum by w_k·S_k; the sum's noise is s·√Σw².
      const S = cs.map(({ factors: f }) => {
        if (!phase.regulate) return C * Math.sqrt(phase.release.length * dims.adapters);
        let sq = 0;
        for (const which of phase.release) {
          for (let i = 0; i < dims.adapters; i++) {
            sq += which === "B"
              ? sigmaMax(f.A[i], dims.rank, dims.dIn) ** 2
              : sigmaMax(f.B[i], dims.dOut, dims.rank) ** 2;
          }
        }
        return C * Math.sqrt(sq);
      });
      const worst = Math.max(...weights.map((w, k) => w * S[k]));
      const r = out.release!;
      const what = `${method.name} ${phase.name}`;
      assertRel(r.noiseMultiplier, sumStd / worst, 1e-8, `${what} noiseMultiplier`);
      assertRel(r.noiseStd, sumStd / 0.4, 1e-12, `${what} noiseStd`);
      assertRel(r.sensitivity, worst / 0.4, 1e-8, `${what} sensitivity`);
      assert.match(r.note!, /weighted by the aggregation weights/, what);
      checked++;
    }
  }
  assert.equal(checked, 7, "LoRA, FFA-LoRA, DP-DyLoRA, DEeR (B, A), FedSA-LoRA, FedSVD");
});

/** `s·Σ_k p_k·B_k·A_k` of one adapter, dense (dOut×dIn), in float64. */
function weightedProducts(fs: LoraFactors[], p: number[], i: number, s: number): Float64Array {
  const out = new Float64Array(dims.dOut * dims.dIn);
  fs.forEach((f, k) => {
    for (let row = 0; row < dims.dOut; row++) {
      for (let c = 0; c < dims.rank; c++) {
        const v = s * p[k] * f.B[i][row * dims.rank + c];
        for (let col = 0; col < dims.dIn; col++) {
          out[row * dims.dIn + col] += v * f.A[i][c * dims.dIn + col];
        }
      }
    }
  });
  return out;
}

for (const method of [fedExLora, flora]) {
  Deno.test(`paper: ${method.label}'s noise energy counts the noise in its merge, ‖s·Σ_k p_k·(B̃_k·Ã_k − B_k·A_k)‖²`, () => {
    const K = 3, sigma = 1.1, C = 0.4, s = 1.5;
    const weights = [0.5, 0.3, 0.2];
    const global = randomFactors(21, 0.3);
    // FLoRA's clients start from a fresh LoRA (B = 0); FedEx-LoRA's from the global factors.
    const start = method === flora
      ? { A: global.A, B: global.B.map((b) => new Float32Array(b.length)) }
      : global;
    const cs = clients(start, weights, [0.02, 0.4, 0.1]);
    const out = aggregatePhase({
      global: start,
      clients: cs,
      phase: method.phases[0],
      method,
      dims,
      loraScale: s,
      calibration: paper(sigma, C),
      numClients: K,
      rng: (l) => streamRng(13, `energy/${method.name}`, l),
    });
    // The clean releases: every tensor's update clipped to C on its own, from the start.
    const clipped = cs.map(({ factors: f }) => {
      const clip = (t: Float32Array, g: Float32Array) => {
        const d = Array.from(t, (v, j) => v - g[j]);
        const n = Math.sqrt(d.reduce((a, x) => a + x * x, 0));
        const scale = n > C ? C / n : 1;
        return Float32Array.from(d, (x, j) => g[j] + x * scale);
      };
      return {
        A: f.A.map((a, i) => clip(a, start.A[i])),
        B: f.B.map((b, i) => clip(b, start.B[i])),
      };
    });
    assert.ok(cs.some(({ factors: f }, k) => f.B[0].some((v, j) => v !== clipped[k].B[0][j])));
    const noisy = out.received.map((r) => r.factors);
    let expected = 0;
    for (let i = 0; i < dims.adapters; i++) {
      const a = weightedProducts(noisy, weights, i, s),
        b = weightedProducts(clipped, weights, i, s);
      for (let j = 0; j < a.length; j++) expected += (a[j] - b[j]) ** 2;
    }
    assert.ok(expected > 0);
    assertRel(out.noiseEnergy, expected, 1e-5, "noise energy");
  });
}

const setup = await toySetup();

const config = toyConfig;

for (const accountant of ["rdp", "pld"] as const) {
  Deno.test(`paper run: FedEx-LoRA spends the ${accountant} ε of σC/√K over C·√m per release`, async () => {
    const C = 0.5, K = 4;
    const res = await runFederated(
      setup.backbone,
      setup.data,
      config({
        method: { method: "FedEx-LoRA" },
        dp: { calibration: "paper", clip: C, epsilon: 6, accountant },
      }),
    );
    const sigma = res.calibration!.noiseMultiplier;
    const m = 2 * setup.backbone.dims.adapters;
    const multiplier = (sigma * C / Math.sqrt(K)) / (C * Math.sqrt(m));
    const ledger = res.ledger!;
    assert.equal(ledger.releases.length, 2);
    for (const r of ledger.releases) assertRel(r.noiseMultiplier, multiplier, 1e-12, "multiplier");
    res.records.forEach((rec, t) => {
      const steps = t + 1;
      const expected = accountant === "rdp"
        ? rdpEpsilon({ noiseMultiplier: multiplier, sampleRate: 1, steps, delta: 1e-5 }).epsilon
        : pldEpsilon({ noiseMultiplier: multiplier, sampleRate: 1, steps, delta: 1e-5 }).epsilon;
      assertRel(rec.epsilon.spent!, expected, 1e-12, `ε after round ${steps}`);
      assert.equal(rec.phases[0].effectiveNoiseMultiplier, ledger.releases[t].noiseMultiplier);
    });
    // The same run of LoRA (same σ, the same released tensors) keeps the sum's record: with
    // uniform weights s·√K/S = σ/√m, √K times FedEx-LoRA's multiplier.
    const lora = await runFederated(
      setup.backbone,
      setup.data,
      config({
        method: { method: "LoRA" },
        dp: { calibration: "paper", clip: C, epsilon: 6, accountant },
      }),
    );
    assert.equal(lora.calibration!.noiseMultiplier, sigma);
    for (const r of lora.ledger!.releases) {
      assertRel(r.noiseMultiplier, sigma / Math.sqrt(m), 1e-12, "LoRA multiplier");
      assertRel(r.noiseMultiplier, multiplier * Math.sqrt(K), 1e-12, "√K times FedEx-LoRA's");
    }
    assert.ok(res.epsilonSpent! > lora.epsilonSpent!);
  });
}

Deno.test("paper: a dense merge whose phase does not say what it is a function of is refused", () => {
  const global = randomFactors(11, 0.2);
  const undeclared: Phase = { name: "AB", train: ["A", "B"], release: ["A", "B"], regulate: false };
  const input = {
    global,
    clients: clients(global, [0.5, 0.5], [0.1, 0.1]),
    dims,
    loraScale: 1,
    calibration: paper(1, 0.5),
    numClients: 2,
    rng: (l: string | number) => streamRng(1, "undeclared", l),
  };
  assert.throws(
    () =>
      aggregatePhase({ ...input, phase: undeclared, method: methodWith(undeclared, fedExLora) }),
    /merges dense updates into the frozen weights, but the phase does not say.*publishes/,
  );
  // Declared a function of the sum: accounted as the sum (the method's own responsibility).
  const declared: Phase = { ...undeclared, publishes: "weighted-sum" };
  const out = aggregatePhase({
    ...input,
    phase: declared,
    method: methodWith(declared, fedExLora),
  });
  assert.match(out.release!.note!, /weighted by the aggregation weights/);
  // Strict adds its noise to the global factors only: any dense merge would leave un-noised.
  assert.throws(
    () =>
      aggregatePhase({
        ...input,
        calibration: { ...paper(1, 0.5), calibration: "strict" },
        phase: declared,
        method: methodWith(declared, fedExLora),
      }),
    /strict mechanism.*merges dense updates.*published without noise; refusing/,
  );
});

Deno.test("strict: an each-release phase is refused by the mechanism, as by checkDp", () => {
  const global = randomFactors(12, 0.2);
  const strict: Calibration = { ...paper(1, 0.5), calibration: "strict" };
  const mechanism = createMechanism(strict);
  const phase = fedExLora.phases[0];
  const input: ReleaseInput = {
    round: 1,
    phase,
    global,
    dims,
    updates: clients(global, [0.5, 0.5], [0.1, 0.1]).map((c) => ({ ...c, start: global })),
    maxWeight: 0.5,
    numClients: 2,
    noiseRng: (l) => streamRng(1, "strict", l),
    combine: (received) => fedExLora.combine(received, { global, phase, dims, loraScale: 1 }),
  };
  assert.throws(() => mechanism.release(input), /strict mechanism.*each-release.*refusing/);
  assert.match(fedExLora.checkDp("strict")!, /no client-level guarantee; use --calibration local/);
  assert.match(fedExLora.checkDp("strict")!, /accounts every client's noised release on its own/);
  assert.doesNotMatch(fedExLora.checkDp("strict")!, /paper \(no client-level guarantee/);
  assert.equal(fedExLora.checkDp("paper"), null);
  assert.equal(fedExLora.checkDp("local"), null);
  // FLoRA's stacking is declared too: accounted release by release under paper, refused under
  // strict.
  assert.equal(flora.phases[0].publishes, "each-release");
  assert.equal(flora.checkDp("paper"), null);
  assert.equal(flora.checkDp("local"), null);
  assert.match(
    flora.checkDp("strict")!,
    /stacked factors would carry none; use --calibration local/,
  );
});

Deno.test("paper run: FLoRA with ranks 2 and 4 spends the ε of σC/√K over C·√m per release, the records its mechanism plans", async () => {
  const C = 0.5, K = 4;
  const res = await runFederated(
    setup.backbone,
    setup.data,
    config({
      method: { method: "FLoRA" },
      clientRanks: [2, 4],
      dp: { calibration: "paper", clip: C, epsilon: 6 },
    }),
  );
  const sigma = res.calibration!.noiseMultiplier;
  // A and B of every adapter, each clipped to C on its own, whatever the client's rank.
  const m = 2 * setup.backbone.dims.adapters;
  const multiplier = (sigma * C / Math.sqrt(K)) / (C * Math.sqrt(m));
  const ledger = res.ledger!;
  assert.equal(ledger.releases.length, 2);
  res.records.forEach((rec, t) => {
    const r = ledger.releases[t];
    assertRel(r.noiseMultiplier, multiplier, 1e-12, "multiplier");
    assertRel(r.noiseStd, sigma * C / Math.sqrt(K), 1e-12, "noise std σC/√K");
    const expected = rdpEpsilon({
      noiseMultiplier: multiplier,
      sampleRate: 1,
      steps: t + 1,
      delta: 1e-5,
    });
    assertRel(rec.epsilon.spent!, expected.epsilon, 1e-12, `ε after round ${t + 1}`);
    assert.equal(rec.epsilon.exact, undefined);
  });
  // The record does not depend on the cohort: the mechanism plans it, field for field.
  const plan = { phases: flora.phases, adapters: setup.backbone.dims.adapters, numClients: K };
  const planned = createMechanism(res.calibration!, plan);
  for (const r of ledger.releases) {
    const p = planned.plannedRecord(r.round, r.phase)!;
    for (
      const f of [
        "noiseMultiplier",
        "noiseStd",
        "sensitivity",
        "sampleRate",
        "count",
        "clip",
      ] as const
    ) {
      assert.equal(p[f], r[f], f);
    }
    assert.equal(p.calibration, "paper");
  }
  // Only there: without the plan, for a weighted-sum phase, or for a regulated one, none.
  assert.equal(createMechanism(res.calibration!).plannedRecord(1, "AB"), null);
  const lora = METHODS.find((e) => e.name === "LoRA")!.create({});
  assert.equal(
    createMechanism(res.calibration!, { ...plan, phases: lora.phases }).plannedRecord(1, "AB"),
    null,
  );
  const regulated = [{ ...flora.phases[0], regulate: true }];
  assert.equal(
    createMechanism(res.calibration!, { ...plan, phases: regulated }).plannedRecord(1, "AB"),
    null,
  );
  // Strict refuses FLoRA before any work.
  await assert.rejects(
    runFederated(
      setup.backbone,
      setup.data,
      config({ method: { method: "FLoRA" }, dp: { calibration: "strict", clip: C, epsilon: 6 } }),
    ),
    /FLoRA with strict calibration/,
  );
});

Deno.test("paper run: a FedEx-LoRA run saved with the weighted sum's record (before 2026-12-07) is refused on resume, not continued from an under-counted ε", async () => {
  const { closeRound, createLedger, recordRelease, restoreLedger } = await import(
    "../lib/privacy/ledger.ts"
  );
  const { join } = await import("node:path");
  const dir = await Deno.makeTempDir({ prefix: "deer-fedex-resume-" });
  const cfg = config({
    method: { method: "FedEx-LoRA" },
    dp: { calibration: "paper", clip: 0.5, epsilon: 6 },
  });
  const first = await runFederated(setup.backbone, setup.data, cfg, {
    outDir: dir,
    stopAfterRounds: 1,
  });
  // Rewrite the saved round as the old accounting wrote it: the weighted sum of K = 4 uniform
  // releases, noise std s·√(Σw²) / max w = s·√K and a multiplier √K times the per-client one.
  const statePath = join(dir, "state.json"), recordsPath = join(dir, "records.jsonl");
  const state = JSON.parse(await Deno.readTextFile(statePath));
  const saved = restoreLedger(state.ledger);
  const r = saved.releases[0];
  const K = 4;
  let old = createLedger({ delta: saved.delta, accountant: saved.accountant });
  old = recordRelease(old, {
    ...r,
    noiseStd: r.noiseStd * Math.sqrt(K),
    noiseMultiplier: r.noiseMultiplier * Math.sqrt(K),
  });
  old = closeRound(old, 1, { nominalEpsilon: saved.rounds[0].nominalEpsilon });
  assert.ok(old.rounds[0].epsilon < first.epsilonSpent!, "the old record under-counts");
  await Deno.writeTextFile(statePath, JSON.stringify({ ...state, ledger: old }));
  const record = JSON.parse((await Deno.readTextFile(recordsPath)).trim());
  record.epsilon.spent = old.rounds[0].epsilon;
  await Deno.writeTextFile(recordsPath, JSON.stringify(record) + "\n");
  await assert.rejects(
    runFederated(setup.backbone, setup.data, cfg, { outDir: dir, resume: true }),
    (err: Error) =>
      err.name === "DamagedStateError" &&
      /state\.json: "ledger" release 0 \(round 1, phase AB\) records noiseMultiplier [0-9.e-]+; the run's mechanism makes [0-9.e-]+, so an ε accounted from the saved ledger is not what the run spends.*start the run again without resume/
        .test(err.message),
  );
  // The run as this version saved it resumes.
  await runFederated(setup.backbone, setup.data, cfg, { outDir: dir, stopAfterRounds: 1 });
  const resumed = await runFederated(setup.backbone, setup.data, cfg, {
    outDir: dir,
    resume: true,
  });
  assert.equal(resumed.ledger!.releases.length, 2);
  await Deno.remove(dir, { recursive: true });
});
