/**
 * Privacy under faults and at run time:
 * * clients excluded for faults do not change how many releases a round makes, and the ε the
 *   ledger reports is the accountant's value for the releases that really happened (recomputed
 *   here independently with `epsilonForReleases`);
 * * strict calibration clips every release to C before noise (checked on the mechanism's output);
 * * in an end-to-end strict run whose updates are zero, the change of the global factors is pure
 *   noise, of the std σ·C/K the calibration promises.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type FederatedConfig, runFederated } from "../lib/fl/simulation.ts";
import { aggregatePhase } from "./helpers/aggregate.ts";
import type { Calibration } from "../lib/privacy/calibration.ts";
import { resolveMethod } from "../lib/fl/methods/mod.ts";
import type { LoraFactors } from "../lib/fl/factors.ts";
import type { LocalResult } from "../lib/fl/local.ts";
import { epsilonForReleases, noiseMultiplierForBudget } from "../lib/privacy/rdp.ts";
import { pldEpsilon } from "../lib/privacy/pld.ts";
import { ledgerFromJson, ledgerToJson, type PrivacyLedger } from "../lib/privacy/ledger.ts";
import { readSafetensors } from "../lib/model/safetensors.ts";
import { createRng } from "../lib/rng.ts";
import { loadMedMnist } from "../lib/data/medmnist.ts";
import { loadVisionEncoder } from "../lib/model/vit_checkpoints.ts";
import { orthonormalPrototypes } from "../lib/model/head.ts";
import { makeBackbone } from "../lib/fl/backbone.ts";
import { runTrain, TINY_MODEL, writeToyNpz } from "./helpers/reliability_inputs.ts";
import { toyConfig } from "./helpers/fl_fixture.ts";

/** The tiny model on a 24-image toy set (a quarter of fl_fixture's: these runs only count). */
async function smallSetup() {
  const dir = await Deno.makeTempDir({ prefix: "deer-reliability-privacy-" });
  const data = await loadMedMnist(await writeToyNpz(join(dir, "toy.npz")), {
    classNames: ["r", "g", "b"],
  });
  await Deno.remove(dir, { recursive: true });
  const encoder = await loadVisionEncoder(TINY_MODEL);
  const protos = orthonormalPrototypes(3, encoder.config.embedDim, 7);
  const backbone = makeBackbone(encoder, protos, { rank: 2, alpha: 2 });
  protos.dispose();
  return { data, backbone };
}
const setup = await smallSetup();
const { dims } = setup.backbone;

function config(over: Partial<FederatedConfig> = {}): FederatedConfig {
  return toyConfig({ batchSize: 6, split: { iid: true, dirichletAlpha: 0.1 }, ...over });
}

/** ε of the ledger's first `upTo` releases, computed here from the records alone. */
function independentEpsilon(ledger: PrivacyLedger, upTo: number): number {
  const releases = ledger.releases.slice(0, upTo);
  if (ledger.accountant === "pld") {
    // Strict releases are identical: one Gaussian mechanism composed `upTo` times.
    const [first] = releases;
    assert.ok(releases.every((r) => r.noiseMultiplier === first.noiseMultiplier));
    return pldEpsilon({
      noiseMultiplier: first.noiseMultiplier,
      sampleRate: first.sampleRate,
      steps: releases.reduce((s, r) => s + r.count, 0),
      delta: ledger.delta,
    }).epsilon;
  }
  const blocks = releases.map((r) => ({
    noiseMultiplier: r.noiseMultiplier,
    sampleRate: r.sampleRate,
    count: r.count,
  }));
  return epsilonForReleases(blocks, ledger.delta, ledger.orders).epsilon;
}

/** Every round closed with the accountant's ε for exactly the releases made so far. */
function checkLedgerAgainstRecords(
  res: Awaited<ReturnType<typeof runFederated>>,
  releasesPerRound: number,
): void {
  const ledger = res.ledger!;
  assert.equal(ledger.releases.length, res.records.length * releasesPerRound);
  for (const [i, spend] of ledger.rounds.entries()) {
    const round = i + 1;
    assert.equal(spend.round, round);
    assert.equal(
      ledger.releases.filter((r) => r.round === round).length,
      releasesPerRound,
      `round ${round}: release count unchanged by the faults`,
    );
    assert.equal(spend.releases, round * releasesPerRound);
    const eps = independentEpsilon(ledger, spend.releases);
    assert.ok(Math.abs(spend.epsilon - eps) <= 1e-12 * eps, `round ${round}: ${spend.epsilon}`);
    assert.equal(res.records[i].epsilon.spent, spend.epsilon, "the record says the ledger's ε");
    if (i > 0) assert.ok(spend.epsilon >= ledger.rounds[i - 1].epsilon, "ε never decreases");
  }
  assert.equal(res.epsilonSpent, ledger.rounds.at(-1)!.epsilon);
  // The saved form replays to the same ledger (each stored ε recomputed on restore).
  assert.deepEqual(ledgerFromJson(ledgerToJson(ledger)), ledger);
}

/** Faults: client 1 crashes in round 1, client 2 sends NaN in round 2, client 3 a wrong shape. */
function faulty(where: { round: number; phase: string; client: number }, u: LocalResult) {
  if (where.round === 1 && where.client === 1) throw new Error("client crashed");
  if (where.round === 2 && where.client === 2) {
    return { ...u, factors: { ...u.factors, B: u.factors.B.map((b) => b.map(() => NaN)) } };
  }
  if (where.round === 2 && where.phase !== "B" && where.client === 3) {
    return { ...u, factors: { ...u.factors, A: u.factors.A.slice(1) } };
  }
  return u;
}

Deno.test("reliability: strict DP with excluded clients — the ledger stays exact", async () => {
  const cfg = config({ dp: { calibration: "strict", clip: 0.5, epsilon: 3 } });
  const res = await runFederated(setup.backbone, setup.data, cfg, { alterUpdate: faulty });
  const excluded = res.records.map((r) => r.phases.map((p) => p.excluded.map((e) => e.client)));
  assert.deepEqual(excluded, [[[1], [1]], [[2], [2, 3]]], "who was left out, per phase");
  checkLedgerAgainstRecords(res, 2);
  // Strict: noise on the sum scales with max p_k, so every release keeps the calibrated σ and the
  // budget is what was planned, faults or not.
  const sigma = res.calibration!.noiseMultiplier;
  for (const r of res.ledger!.releases) {
    assert.deepEqual([r.noiseMultiplier, r.sampleRate, r.count], [sigma, 1, 1]);
  }
  const planned = pldEpsilon({ noiseMultiplier: sigma, sampleRate: 1, steps: 4, delta: 1e-5 });
  assert.ok(Math.abs(res.epsilonSpent! - planned.epsilon) < 1e-12);
  assert.ok(res.epsilonSpent! <= 3 && res.epsilonSpent! > 2.99);
});

Deno.test("reliability: paper DP with an excluded client — ε from the releases that ran", async () => {
  // FFA-LoRA: one release of m = 6 B tensors per round. Per-client noise σC/√K; with v of the K
  // clients averaged (weights 1/v) the noise std on the average is σC/√(Kv) and one client moves
  // it by C√m/v: effective multiplier σ·√(v/K)/√m — below σ/√m when a client is missing.
  const K = 4, m = dims.adapters;
  const cfg = config({
    method: { method: "FFA-LoRA" },
    dp: { calibration: "paper", clip: 0.5, epsilon: 3 },
  });
  const res = await runFederated(setup.backbone, setup.data, cfg, {
    alterUpdate: (where, u) => {
      if (where.round === 1 && where.client === 0) throw new Error("client crashed");
      return u;
    },
  });
  assert.deepEqual(res.records.map((r) => r.phases[0].excluded.length), [1, 0]);
  checkLedgerAgainstRecords(res, 1);
  const sigma = res.calibration!.noiseMultiplier;
  const [first, second] = res.ledger!.releases;
  const close = (a: number, b: number) => Math.abs(a - b) <= 1e-9 * b;
  assert.ok(close(first.noiseMultiplier, sigma * Math.sqrt(3 / K) / Math.sqrt(m)), "3 of 4");
  assert.ok(close(second.noiseMultiplier, sigma / Math.sqrt(m)), "all 4");
  // The fault made the round leakier, and the ledger says so.
  const allPresent = epsilonForReleases(
    [{ noiseMultiplier: sigma / Math.sqrt(m), sampleRate: 1, count: 2 }],
    res.ledger!.delta,
  ).epsilon;
  assert.ok(res.epsilonSpent! > allPresent, `${res.epsilonSpent} > ${allPresent}`);
});

Deno.test("reliability: strict clipping bounds every release by C before noise", () => {
  // σ = 0 lets the clipped releases be read off the new global factors exactly.
  const C = 0.5;
  const cal: Calibration = {
    calibration: "strict",
    clip: C,
    noiseMultiplier: 0,
    nominalEpsilon: 1,
    nominalDelta: 1e-5,
    accountingDelta: 1e-5,
    accountant: "rdp",
    sampleRate: 1,
    plannedReleases: 1,
  };
  const rng = createRng(3);
  const rand = (n: number, s: number) => Float32Array.from({ length: n }, () => s * rng.normal());
  const { adapters: n, rank: r, dIn, dOut } = dims;
  const global: LoraFactors = {
    A: Array.from({ length: n }, () => rand(r * dIn, 0.3)),
    B: Array.from({ length: n }, () => rand(dOut * r, 0.3)),
  };
  // A client's factors: the released ones moved by `scale`, the frozen ones the global ones.
  const far = (released: readonly string[], scale: number): LoraFactors => ({
    A: global.A.map((a) => released.includes("A") ? a.map((v) => v + scale * rng.normal()) : a),
    B: global.B.map((b) => released.includes("B") ? b.map((v) => v + scale * rng.normal()) : b),
  });
  for (const methodName of ["LoRA", "DEeR"]) {
    const method = resolveMethod({ method: methodName });
    const phase = method.phases[0]; // LoRA: A and B, plain; DEeR: B, regulated by the global A
    for (const scale of [10, 1e-4]) {
      const out = aggregatePhase({
        global,
        clients: [{ client: 0, factors: far(phase.release, scale), weight: 1 }],
        phase,
        dims,
        loraScale: 1,
        calibration: cal,
        numClients: 1,
        rng: () => createRng(0),
      });
      assert.ok(out.maxReleaseNorm <= C * (1 + 1e-5), `${methodName}: ${out.maxReleaseNorm}`);
      // The release as published: ‖ΔA‖²+‖ΔB‖² (plain) or Σ‖ΔB·A_g‖² (regulated, product space).
      let sq = 0;
      for (const which of phase.release) {
        for (let i = 0; i < n; i++) {
          const now = which === "A" ? out.global.A[i] : out.global.B[i];
          const was = which === "A" ? global.A[i] : global.B[i];
          const d = now.map((v, j) => v - was[j]);
          if (!phase.regulate) sq += d.reduce((s, v) => s + v * v, 0);
          else {
            for (let row = 0; row < dOut; row++) {
              for (let col = 0; col < dIn; col++) {
                let v = 0;
                for (let k = 0; k < r; k++) v += d[row * r + k] * global.A[i][k * dIn + col];
                sq += v * v;
              }
            }
          }
        }
      }
      const norm = Math.sqrt(sq);
      if (scale > 1) {
        assert.equal(out.clippedFraction, 1);
        assert.ok(Math.abs(norm - C) <= 1e-4 * C, `${methodName}: clipped to C, got ${norm}`);
      } else {
        assert.equal(out.clippedFraction, 0);
        assert.ok(norm < C, `${methodName}: small release kept (${norm})`);
      }
    }
  }
});

Deno.test("reliability: end-to-end strict run — zero updates, noise of std σ·C/K", async () => {
  // lr 1e-20: the clients' updates are ~1e-20, so the global factors move by the noise alone.
  const dir = await Deno.makeTempDir({ prefix: "deer-reliability-noise-" });
  const K = 4, C = 0.5, T = 2, eps = 3;
  const run = await runTrain([
    ...["--dataset", await writeToyNpz(join(dir, "toy.npz")), "--model", TINY_MODEL],
    ...["--prototypes", "orthonormal", "--method", "LoRA", "--lr", "1e-20", "--T", String(T)],
    ...["--E", "1", "--node_num", String(K), "--lora_r", "8", "--seeds", "10", "--iid", "1"],
    ...["--is_DP", "1", "--calibration", "strict", "--C", String(C), "--epsilon", String(eps)],
    ...["--accountant", "rdp", "--out", join(dir, "out")],
  ], { backend: "wasm" });
  assert.equal(run.code, 0, run.stderr);
  const folder = join(dir, "out/default/LoRA_dp-strict-eps3");
  const sigma = JSON.parse(await Deno.readTextFile(join(folder, "summary.json"))).noiseMultiplier;
  const expectedSigma = noiseMultiplierForBudget({
    targetEpsilon: eps,
    targetDelta: 1e-5,
    sampleRate: 1,
    steps: T,
  });
  assert.equal(sigma, expectedSigma, "σ is the accountant's for T releases at ε, δ = 1e-5");
  const ck = async (round: number) =>
    (await readSafetensors(join(folder, `seed-10/checkpoints/round-000${round}.safetensors`)))
      .tensors;
  const [one, two] = [await ck(1), await ck(2)];
  const noise: number[] = [];
  for (const name of Object.keys(one)) {
    // B starts at zero, so round 1's B is its noise; from round 1 to 2 both factors move by noise.
    if (name.endsWith(".B")) noise.push(...one[name].data);
    noise.push(...two[name].data.map((v, j) => v - one[name].data[j]));
  }
  const n = noise.length;
  const mean = noise.reduce((s, v) => s + v, 0) / n;
  const std = Math.sqrt(noise.reduce((s, v) => s + (v - mean) ** 2, 0) / (n - 1));
  const target = sigma * C / K;
  // n ≈ 4600 draws: the std's relative standard error is 1/√(2n) ≈ 1 %; allow 4 %.
  assert.ok(n > 4000, `${n} noise draws`);
  assert.ok(Math.abs(std / target - 1) < 0.04, `std ${std} vs σC/K = ${target}`);
  assert.ok(Math.abs(mean) < 4 * target / Math.sqrt(n), `mean ${mean}`);
  const within = noise.filter((v) => Math.abs(v - mean) < target).length / n;
  assert.ok(Math.abs(within - 0.6827) < 0.03, `Gaussian: ${within} within one std`);
  await Deno.remove(dir, { recursive: true });
});
