/**
 * The server step of a phase (SPEC §3, §4): take each client's released factors, clip the
 * update, add DP noise (isotropic, or shaped by DEeR's noise regulator), average with the
 * aggregation weights, and describe the release for the privacy ledger.
 *
 * Two calibrations (SPEC §4):
 * * `paper` — as the reference: every released tensor clipped on its own to C, per-client noise
 *   of std σC/√K per entry (regulated with the client's own peer factor), σ from the
 *   sample-level accountant at δ = 1/K. The ledger records what this mechanism really spends at
 *   client level: sensitivity C·√m (m tensors), or C·√(Σ_i σ_max(peer_i)²) when regulated.
 * * `strict` — a client-level guarantee (trusted server, add/remove one client): a client's whole
 *   release is clipped to C (in product space, `‖ΔB·A‖_F ≤ C` / `‖B·ΔA‖_F ≤ C`, when regulated),
 *   noise of std σ·C·max_k p_k is added once to the weighted sum (= σC/K on the average for
 *   uniform weights, the same distribution as K per-client draws of σC/√K), and σ is calibrated
 *   by bisection on the RDP of every release.
 *
 * @example
 * ```ts
 * const cal = calibrate({ calibration: "strict", clip: 0.5, epsilon: 4 }, setting);
 * const out = aggregatePhase({ global, clients, phase, dims, loraScale: 1, calibration: cal, numClients: 12, rng });
 * ```
 * @module
 */
import type { Rng } from "../rng.ts";
import { paperNoiseMultiplier, strictCalibration } from "../privacy/ledger.ts";
import {
  isotropicNoise,
  type PeerFactor,
  peerForA,
  peerForB,
  productSqNorm,
} from "../privacy/regulator.ts";
import { deviationMatrix } from "./deviation.ts";
import { cloneFactors, factorList, type LoraDims, type LoraFactors, sqNorm } from "./factors.ts";
import type { Factor, Method, Phase } from "./methods.ts";

/** DP settings as the user gives them. */
export interface DpSettings {
  calibration: "paper" | "strict";
  /** Clip bound C. */
  clip: number;
  /** Target ε: sample-level at δ = 1/K for `paper` (the reference's claim), client-level for `strict`. */
  epsilon: number;
  /** δ of the client-level accounting (default 1e-5); `paper` still calibrates at δ = 1/K. */
  delta?: number;
  /**
   * Budget guard (strict calibration): the run stops before a round whose releases would bring
   * the spent client-level ε above this; that round's releases are never made.
   */
  maxEpsilon?: number;
}

/** The calibrated mechanism of a run. */
export interface Calibration {
  calibration: "paper" | "strict";
  clip: number;
  /** σ: noise std is σC/√K per client (paper) or σ·C·max p_k on the weighted sum (strict). */
  noiseMultiplier: number;
  /** The ε the calibration targeted, and the δ it targeted it at. */
  nominalEpsilon: number;
  nominalDelta: number;
  /** δ at which the spent client-level ε is reported. */
  accountingDelta: number;
  /** Client-level sampling rate of each release (participation fraction). */
  sampleRate: number;
  /** Releases the calibration planned for (T × phases). */
  plannedReleases: number;
  /** Paper calibration: why its nominal ε is not a client-level guarantee. */
  warning?: string;
}

/** What {@link calibrate} needs to know about the run. */
export interface CalibrationSetting {
  method: Method;
  numClients: number;
  participation: number;
  rounds: number;
  localEpochs: number;
  batchSize: number;
  /** Training images per client (the reference's steps = Σ_k T·E·n_k/b). */
  clientSizes: number[];
  adapters: number;
}

/** Calibrates σ for a run (SPEC §4.1 paper, §4.2 strict). */
export function calibrate(dp: DpSettings, s: CalibrationSetting): Calibration {
  const accountingDelta = dp.delta ?? 1e-5;
  const plannedReleases = s.rounds * s.method.phases.length;
  if (dp.calibration === "paper") {
    const sigma = paperNoiseMultiplier({
      epsilon: dp.epsilon,
      numClients: s.numClients,
      clientSizes: s.clientSizes,
      batchPerClient: s.batchSize,
      rounds: s.rounds,
      localEpochs: s.localEpochs,
    });
    return {
      calibration: "paper",
      clip: dp.clip,
      noiseMultiplier: sigma,
      nominalEpsilon: dp.epsilon,
      nominalDelta: 1 / s.numClients,
      accountingDelta,
      sampleRate: 1,
      plannedReleases,
      warning: `paper calibration: the nominal ε = ${dp.epsilon} (δ = 1/${s.numClients}) is a ` +
        `sample-level figure for a mechanism that is not sample-level; the client-level ε this ` +
        `run actually spends (δ = ${accountingDelta}) is recorded every round`,
    };
  }
  const { noiseMultiplier } = strictCalibration({
    targetEpsilon: dp.epsilon,
    rounds: s.rounds,
    releasesPerRound: s.method.phases.length as 1 | 2,
    sampleRate: s.participation,
    delta: accountingDelta,
  });
  return {
    calibration: "strict",
    clip: dp.clip,
    noiseMultiplier,
    nominalEpsilon: dp.epsilon,
    nominalDelta: accountingDelta,
    accountingDelta,
    sampleRate: s.participation,
    plannedReleases,
  };
}

/** One client's contribution to a phase. */
export interface ClientUpdate {
  client: number;
  factors: LoraFactors;
  /**
   * Aggregation weight. Weights may sum to less than 1 (strict calibration's fixed denominator
   * under client sampling or faults): the missing mass stays on the global factors, i.e. the new
   * global value is `θ_g + Σ_k w_k·Δ_k`. An empty list leaves the global factors as they are
   * (plus the noise, under strict calibration).
   */
  weight: number;
}

/** Inputs of {@link aggregatePhase}. */
export interface AggregateInput {
  global: LoraFactors;
  clients: ClientUpdate[];
  phase: Phase;
  dims: LoraDims;
  loraScale: number;
  calibration: Calibration | null;
  /** K, the number of clients (per-client noise std σC/√K in paper calibration). */
  numClients: number;
  /** Seeded noise stream per label (a client id, or "central"). */
  rng: (label: string | number) => Rng;
  /** FedEx-LoRA: also return `s·D` per adapter, to fold into the frozen weights. */
  foldResidual?: boolean;
  /**
   * The largest weight any client could have in this release, fixed before the clients' data is
   * seen; it scales the strict calibration's noise (σ·C·maxWeight). Default: the largest weight
   * among `clients`.
   */
  maxWeight?: number;
}

/** The release as the privacy ledger records it (STYLE.md: the mechanism described as data). */
export interface ReleaseDescription {
  /** Effective noise multiplier: noise std on the aggregate / its sensitivity to one client. */
  noiseMultiplier: number;
  sampleRate: number;
  count: number;
  /** Per-client sensitivity bound of the release before weighting. */
  sensitivity: number;
  clip: number;
  calibration: "paper" | "strict";
  /** Whether the effective multiplier is an exact property of the mechanism. */
  exact: boolean;
}

/** Outputs of {@link aggregatePhase}. */
export interface AggregateOutput {
  global: LoraFactors;
  deviation: number;
  noiseEnergy: number;
  peerSigmaMax: number;
  clippedFraction: number;
  meanUpdateNorm: number;
  /** Strict calibration: the largest client release norm after clipping (checked ≤ C). */
  maxReleaseNorm: number;
  release: ReleaseDescription | null;
  /** FedEx-LoRA: `s·(Σ_k p_k B_k A_k − B̄·Ā)` per adapter (dOut×dIn), when asked for. */
  residual?: Float32Array[];
}

/**
 * A client's regulated noise; a rank-deficient own peer (module1 off: A and B released together,
 * each regulated by the client's own other factor) is refused with what to change — its Gram
 * matrix has no inverse, and a general pseudo-inverse would leave directions of the released
 * factor without any noise, which no DP claim could cover.
 */
function regulatedOrExplain(
  peer: PeerFactor,
  rng: Rng,
  std: number,
  client: number,
  released: Factor,
  adapter: number,
  phase: Phase,
): Float32Array {
  try {
    return peer.regulatedNoise(rng, std);
  } catch (err) {
    const other = released === "A" ? "B" : "A";
    const shared = phase.train.length === 1;
    throw new Error(
      `regulated DP noise (module2) for client ${client}'s released ${released} of adapter ` +
        `${adapter}: the peer, that client's own ${other}, is rank-deficient — ${
          (err as Error).message
        }. ` +
        (shared ? "" : `With module1 off, A and B are trained and released together and each is ` +
          `regulated by the client's own other factor; B starts at zero, so a client that holds ` +
          `no or very few training images (Dirichlet splits with small α) keeps a singular B. ` +
          `Use module1 = 1 (DEeR's phases: B first, regulated by the shared global A), ` +
          `module2 = 0, or a split that gives every client data.`),
    );
  }
}

/** Aggregates one phase; returns the new global factors and the phase's instrumentation. */
export function aggregatePhase(input: AggregateInput): AggregateOutput {
  const { global, clients, phase, dims, calibration: cal } = input;
  const n = dims.adapters;
  const C = cal?.clip ?? Infinity;
  const released = phase.release;
  const peers = new Map<Float32Array, PeerFactor>();
  const peerOf = (f: LoraFactors, which: Factor, i: number): PeerFactor => {
    // The peer of a released B is the client's A (and vice versa); a shared (global) peer is
    // factorised once.
    const t = which === "B" ? f.A[i] : f.B[i];
    let p = peers.get(t);
    if (!p) {
      p = which === "B" ? peerForB(t, dims.rank, dims.dIn) : peerForA(t, dims.dOut, dims.rank);
      peers.set(t, p);
    }
    return p;
  };

  // 1. Updates relative to the global factors, clipped.
  let clipped = 0;
  let normSum = 0;
  let maxReleaseNorm = 0;
  const combined: LoraFactors[] = []; // what enters the weighted average, per client
  for (const { factors } of clients) {
    const deltas = new Map<Factor, Float32Array[]>();
    for (const which of released) {
      deltas.set(
        which,
        factorList(factors, which).map((t, i) => sub(t, factorList(global, which)[i])),
      );
    }
    if (cal?.calibration === "strict") {
      const sq = releaseSqNorm(deltas, factors, phase, peerOf);
      const norm = Math.sqrt(sq);
      normSum += norm;
      if (norm > C) {
        clipped++;
        for (const list of deltas.values()) for (const d of list) scaleInPlace(d, C / norm);
      }
      // Run-time check of the guarantee's premise: the clipped release is within its bound
      // (float32 rounding of the scaled entries allows a relative 1e-5).
      const after = Math.sqrt(releaseSqNorm(deltas, factors, phase, peerOf));
      maxReleaseNorm = Math.max(maxReleaseNorm, after);
      if (!(after <= C * (1 + 1e-5))) {
        throw new Error(
          `strict clipping failed: a release has norm ${after} > C = ${C}; refusing to release it`,
        );
      }
    } else if (cal?.calibration === "paper") {
      let anyClipped = false;
      let sq = 0;
      for (const list of deltas.values()) {
        for (const d of list) {
          const norm = Math.sqrt(sqNorm(d));
          sq += norm * norm;
          if (norm > C) {
            anyClipped = true;
            scaleInPlace(d, C / norm);
          }
        }
      }
      normSum += Math.sqrt(sq);
      if (anyClipped) clipped++;
    } else {
      let sq = 0;
      for (const list of deltas.values()) for (const d of list) sq += sqNorm(d);
      normSum += Math.sqrt(sq);
    }
    const f = cloneFactors(factors);
    for (const [which, list] of deltas) {
      list.forEach((d, i) => (factorList(f, which)[i] = add(factorList(global, which)[i], d)));
    }
    combined.push(f);
  }

  // 2. Noise: per client (paper) or once on the weighted sum (strict).
  let peerSigmaMax = 0;
  const noisy = combined.map((f) => cloneFactors(f));
  if (cal?.calibration === "paper") {
    const std = cal.noiseMultiplier * C / Math.sqrt(input.numClients);
    noisy.forEach((f, k) => {
      const rng = input.rng(clients[k].client);
      for (const which of released) {
        factorList(f, which).forEach((t, i) => {
          if (phase.regulate) {
            const peer = peerOf(clients[k].factors, which, i);
            peerSigmaMax = Math.max(peerSigmaMax, peer.sigmaMax);
            addInPlace(t, regulatedOrExplain(peer, rng, std, clients[k].client, which, i, phase));
          } else addInPlace(t, isotropicNoise(rng, t.length, std));
        });
      }
    });
  }
  // Weight mass not carried by the combined clients stays on the global factors (exactly 0 when
  // the weights are a normalised FedAvg, so that case is Σ_k p_k·θ_k as before).
  const weightSum = clients.reduce((a, c) => a + c.weight, 0);
  const globalMass = Math.abs(1 - weightSum) > 1e-12 ? 1 - weightSum : 0;
  const average = (list: LoraFactors[]): LoraFactors => {
    const out = cloneFactors(global);
    for (const which of released) {
      for (let i = 0; i < n; i++) {
        const g = factorList(global, which)[i];
        const acc = new Float64Array(g.length);
        if (globalMass !== 0) { for (let j = 0; j < acc.length; j++) acc[j] = globalMass * g[j]; }
        list.forEach((f, k) => {
          const t = factorList(f, which)[i], p = clients[k].weight;
          for (let j = 0; j < acc.length; j++) acc[j] += p * t[j];
        });
        factorList(out, which)[i] = Float32Array.from(acc);
      }
    }
    return out;
  };
  const clean = average(combined);
  const next = average(noisy);
  const maxWeight = input.maxWeight ?? Math.max(0, ...clients.map((c) => c.weight));
  if (cal?.calibration === "strict") {
    if (!(maxWeight > 0 && Number.isFinite(maxWeight))) {
      throw new Error(
        `aggregatePhase: maxWeight ${maxWeight} must be a finite number > 0 under strict ` +
          `calibration (it scales the noise); pass the largest weight any client could have`,
      );
    }
    const std = cal.noiseMultiplier * C * maxWeight;
    const rng = input.rng("central");
    for (const which of released) {
      factorList(next, which).forEach((t, i) => {
        if (phase.regulate) {
          // One factor per phase (validated): its peer is the global one, shared by all clients.
          const peer = peerOf(global, which, i);
          peerSigmaMax = Math.max(peerSigmaMax, peer.sigmaMax);
          addInPlace(t, peer.regulatedNoise(rng, std));
        } else addInPlace(t, isotropicNoise(rng, t.length, std));
      });
    }
  }

  // 3. Instrumentation: deviation of what was combined, noise that reached ΔW = s·B·A.
  let deviation = 0;
  let noiseEnergy = 0;
  const weights = clients.map((c) => c.weight);
  const wSum = weights.reduce((a, b) => a + b, 0);
  const residual: Float32Array[] = [];
  for (let i = 0; i < n; i++) {
    const source = cal?.calibration === "paper" ? noisy : combined;
    const D = deviationMatrix(
      source.map((f) => f.B[i]),
      source.map((f) => f.A[i]),
      weights.map((w) => w / wSum),
      dims,
    );
    let sq = 0;
    for (let j = 0; j < D.length; j++) sq += D[j] * D[j];
    deviation += Math.sqrt(sq);
    if (input.foldResidual) residual.push(Float32Array.from(D, (v) => v * input.loraScale));
    if (cal) {
      noiseEnergy += input.loraScale ** 2 *
        productDifferenceSqNorm(next.B[i], next.A[i], clean.B[i], clean.A[i], dims);
    }
  }

  return {
    global: next,
    deviation,
    noiseEnergy,
    peerSigmaMax,
    clippedFraction: clients.length ? clipped / clients.length : 0,
    meanUpdateNorm: clients.length ? normSum / clients.length : 0,
    maxReleaseNorm,
    release: cal ? describeRelease(cal, input, peerOf) : null,
    residual: input.foldResidual ? residual : undefined,
  };
}

/** ‖update‖² of a whole release: plain, or in product space when the phase is regulated. */
function releaseSqNorm(
  deltas: Map<Factor, Float32Array[]>,
  factors: LoraFactors,
  phase: Phase,
  peerOf: (f: LoraFactors, which: Factor, i: number) => PeerFactor,
): number {
  let sq = 0;
  for (const [which, list] of deltas) {
    list.forEach((d, i) => {
      sq += phase.regulate ? productSqNorm(d, peerOf(factors, which, i)) : sqNorm(d);
    });
  }
  return sq;
}

/**
 * One release of the strict mechanism, as the ledger records it. It depends on the calibration
 * alone (noise std σ·C·max p on the sum; one client moves it by at most p_k·C), so it is known
 * before any client trains — which lets a budget guard stop before a round is released.
 */
export function strictRelease(cal: Calibration): ReleaseDescription {
  return {
    noiseMultiplier: cal.noiseMultiplier,
    sampleRate: cal.sampleRate,
    count: 1,
    sensitivity: cal.clip,
    clip: cal.clip,
    calibration: "strict",
    exact: true,
  };
}

/** The ledger's view of this release (SPEC §4.2–§4.3). */
function describeRelease(
  cal: Calibration,
  input: AggregateInput,
  peerOf: (f: LoraFactors, which: Factor, i: number) => PeerFactor,
): ReleaseDescription {
  const { clients, phase, dims } = input;
  const C = cal.clip;
  const weights = clients.map((c) => c.weight);
  const maxWeight = Math.max(...weights);
  if (cal.calibration === "strict") return strictRelease(cal);
  // Paper: per-client noise std s = σC/√K, so the weighted sum carries s·√(Σp²); one client
  // moves it by at most p_k·S_k with S_k its release's sensitivity.
  const s = cal.noiseMultiplier * C / Math.sqrt(input.numClients);
  const aggregateStd = s * Math.sqrt(weights.reduce((a, w) => a + w * w, 0));
  let worst = 0;
  let exact = true;
  for (const [k, { factors }] of clients.entries()) {
    let sq = 0;
    for (const which of phase.release) {
      for (let i = 0; i < dims.adapters; i++) {
        // Per-tensor clipping: ‖Δ_i‖ ≤ C; regulated releases are Gaussian in product space,
        // where ‖Δ_i·peer‖ ≤ C·σ_max(peer).
        sq += phase.regulate ? (C * peerOf(factors, which, i).sigmaMax) ** 2 : C * C;
      }
    }
    // With module1 off the peers are the clients' private factors: the bound uses them anyway.
    if (phase.regulate && phase.release.length > 1) exact = false;
    worst = Math.max(worst, weights[k] * Math.sqrt(sq));
  }
  return {
    noiseMultiplier: aggregateStd / worst,
    sampleRate: 1,
    count: 1,
    sensitivity: worst / maxWeight,
    clip: C,
    calibration: "paper",
    exact,
  };
}

/** ‖B₁A₁ − B₂A₂‖_F² in float64 via (B₁−B₂)A₁ + B₂(A₁−A₂) and r×r Gram matrices. */
function productDifferenceSqNorm(
  B1: Float32Array,
  A1: Float32Array,
  B2: Float32Array,
  A2: Float32Array,
  { dOut, rank: r, dIn }: LoraDims,
): number {
  // U = [B₁−B₂ | B₂] (dOut×2r), V = [A₁ ; A₁−A₂] (2r×dIn); ‖UV‖² = tr(UᵀU · VVᵀ).
  const m = 2 * r;
  const U = new Float64Array(dOut * m);
  for (let i = 0; i < dOut; i++) {
    for (let c = 0; c < r; c++) {
      U[i * m + c] = B1[i * r + c] - B2[i * r + c];
      U[i * m + r + c] = B2[i * r + c];
    }
  }
  const V = new Float64Array(m * dIn);
  for (let c = 0; c < r; c++) {
    for (let j = 0; j < dIn; j++) {
      V[c * dIn + j] = A1[c * dIn + j];
      V[(r + c) * dIn + j] = A1[c * dIn + j] - A2[c * dIn + j];
    }
  }
  const gu = new Float64Array(m * m);
  for (let i = 0; i < dOut; i++) {
    for (let a = 0; a < m; a++) {
      const ua = U[i * m + a];
      if (ua === 0) continue;
      for (let b = 0; b < m; b++) gu[a * m + b] += ua * U[i * m + b];
    }
  }
  let total = 0;
  for (let a = 0; a < m; a++) {
    for (let b = 0; b < m; b++) {
      if (gu[a * m + b] === 0) continue;
      let vv = 0;
      for (let j = 0; j < dIn; j++) vv += V[b * dIn + j] * V[a * dIn + j];
      total += gu[a * m + b] * vv;
    }
  }
  return Math.max(0, total);
}

function sub(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] - b[i];
  return out;
}

function add(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] + b[i];
  return out;
}

function addInPlace(a: Float32Array, b: ArrayLike<number>): void {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
}

function scaleInPlace(a: Float32Array, s: number): void {
  for (let i = 0; i < a.length; i++) a[i] *= s;
}
