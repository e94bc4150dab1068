/**
 * The privacy mechanisms as values: `none`, `paper`, `strict` and `local` (docs/privacy.md). A
 * mechanism turns the updates of one release (a phase of a round) into what the server publishes:
 *
 * 1. **clip** each client's update of the released factors, through `clip.ts` — per tensor
 *    (paper), over the whole release (strict, local), or in product space for regulated releases
 *    (strict, local: `‖ΔB·A‖_F ≤ C` in phase B, `‖B·ΔA‖_F ≤ C` in phase A);
 * 2. **combine** the clipped updates with the method's own combination (a weighted sum, plus
 *    what a phase declares it publishes beyond it: {@link ReleaseSpec.publishes});
 * 3. **noise**: per client before combining (paper: std σC/√K each, as the reference; local: std
 *    σ_loc·C each, the client's own local-DP noise) or once on the combination (strict: std
 *    σ·C·w_max), isotropic or shaped by DEeR's regulator — drawn by the one regulated-noise
 *    implementation, the peer of `regulator.ts`;
 * 4. **record** the {@link Release} the ledger stores, built by `releaseRecord` (ledger.ts): for
 *    paper, the weighted sum's Gaussian mechanism, or every client's own release when the
 *    combination publishes functions of the single releases.
 *
 * The engine calls {@link createMechanism} once per run and `release` once per phase; it has no
 * branch on the calibration.
 *
 * @example
 * ```ts
 * import { createRng } from "../rng.ts";
 * const mechanism = createMechanism(null);
 * const global = { A: [new Float32Array(4)], B: [new Float32Array(4)] };
 * const out = mechanism.release({
 *   round: 1, phase: { name: "B", release: ["B"], regulate: false },
 *   global, dims: { adapters: 1, rank: 2, dIn: 2, dOut: 2 },
 *   updates: [{ client: 0, start: global, factors: { A: global.A, B: [new Float32Array([1, 2, 3, 4])] }, weight: 1 }],
 *   maxWeight: 1, numClients: 1, noiseRng: () => createRng(1),
 * });
 * out.global.B[0]; // [1, 2, 3, 4]: no clipping, no noise
 * ```
 * @module
 */
import type { Rng } from "../rng.ts";
import {
  cloneFactors,
  type Factor,
  factorList,
  type LoraDims,
  type LoraFactors,
  sqNorm,
} from "../fl/factors.ts";
import type { Calibration } from "./calibration.ts";
import { localRelease, perClientNoiseStd, strictRelease } from "./calibration.ts";
import { clipPerTensor, clipProductSpace, clipRelease, productSpaceNorm } from "./clip.ts";
import { clippedSensitivity, type Release, type ReleasePhase, releaseRecord } from "./ledger.ts";
import { isotropicNoise, type PeerFactor, peerForA, peerForB } from "./regulator.ts";

/** What a phase releases, as the mechanism needs it. */
export interface ReleaseSpec {
  /** Label of the release in records and the ledger: the factors released. */
  readonly name: ReleasePhase;
  /** Factors the clients send to the server. */
  readonly release: readonly Factor[];
  /** Whether the noise is shaped by the regulator (noise on B is `W·A⁺`, on A `B⁺·W`). */
  readonly regulate: boolean;
  /**
   * What the combination of this release publishes, as a function of the clients' received
   * releases (what the paper mechanism's record accounts; see {@link Combine}):
   *
   * - `"weighted-sum"` (the default when absent): only functions of the weighted sum
   *   `Σ_k w_k·(released factors of k)` and public values — FedAvg and every method whose new
   *   global factors (and anything it derives from them) are post-processing of that sum;
   * - `"each-release"`: also functions of the individual releases, which the sum does not
   *   determine — FedEx-LoRA's residual `Σ_k p_k·B_k·A_k − B̄·Ā`, folded into the frozen weights.
   *   The paper mechanism then accounts every client's noised release on its own (noise std
   *   σC/√K, sensitivity S_k: one Gaussian of multiplier `σC/√K / max_k S_k`); the strict
   *   mechanism, whose noise is on the sum only, refuses it (the individual releases it combines
   *   carry no noise); under local DP every release is noised by its client and it changes
   *   nothing.
   *
   * The paper mechanism refuses a combination that returns `mergeIntoFrozen` for a phase that
   * does not declare this property: a dense merge may or may not be a function of the sum, and
   * the record must not guess. The strict mechanism refuses any dense merge: its noise goes on
   * the combined global factors only, and a merge computed from the clipped releases would carry
   * none.
   */
  readonly publishes?: "weighted-sum" | "each-release";
}

/** One client's contribution to a release. */
export interface ClientUpdate {
  client: number;
  /** The factors the client started from (its update is `factors − start` on released factors). */
  start: LoraFactors;
  /** The factors after local training. */
  factors: LoraFactors;
  /**
   * Aggregation weight. Weights may sum to less than 1 (strict calibration's fixed denominator
   * under client sampling or faults): the missing mass stays on the global factors.
   */
  weight: number;
}

/** What the server holds of one client after the mechanism's per-client steps. */
export interface ReceivedUpdate {
  client: number;
  /** `start + clip(Δ)` on released factors (plus the client's noise under paper calibration). */
  factors: LoraFactors;
  weight: number;
}

/**
 * A method's combination of the received updates: a weighted sum for central DP, plus, where the
 * phase says so ({@link ReleaseSpec.publishes}), dense merges computed from the single releases.
 */
export type Combine = (received: readonly ReceivedUpdate[]) => {
  global: LoraFactors;
  /** Dense per-adapter updates (dOut×dIn) the method merges into the frozen weights. */
  mergeIntoFrozen?: Float32Array[];
};

/** Inputs of one release. */
export interface ReleaseInput {
  /** Round (1-based) and phase of the release. */
  round: number;
  phase: ReleaseSpec;
  global: LoraFactors;
  dims: LoraDims;
  updates: readonly ClientUpdate[];
  /**
   * The largest weight any client could have in this release, fixed before the clients' data is
   * seen; it scales the strict calibration's noise (σ·C·maxWeight).
   */
  maxWeight: number;
  /** K, the number of clients (per-client noise std σC/√K in paper calibration). */
  numClients: number;
  /** The seeded noise stream of a client id, or of "central". */
  noiseRng: (label: string | number) => Rng;
  /** The method's combination; default: {@link weightedAverage} over the released factors. */
  combine?: Combine;
}

/** What a release publishes and how it was made. */
export interface ReleaseOutput {
  /** The new global factors, as published (noised). */
  global: LoraFactors;
  /**
   * The same combination without the noise (instrumentation only; never published), or null
   * where the server never holds it: under local DP, and under the paper calibration when a
   * client's release came from a remote site, which keeps its un-noised factors.
   */
  clean: LoraFactors | null;
  /** The method's dense merge into the frozen weights, from the received updates. */
  mergeIntoFrozen?: Float32Array[];
  /**
   * The same merge from the un-noised releases (instrumentation only; never published), where
   * `clean` is known and the noise reaches the merge (paper calibration); absent otherwise.
   */
  cleanMerge?: Float32Array[];
  /** What the server holds per client (see {@link ReceivedUpdate}). */
  received: ReceivedUpdate[];
  /** Largest σ_max of a peer factor that shaped regulated noise (0 when not regulated). */
  peerSigmaMax: number;
  /** Fraction of client releases the clip bound scaled down; their mean pre-clip norm. */
  clippedFraction: number;
  meanUpdateNorm: number;
  /** Strict calibration: the largest client release norm after clipping (checked ≤ C). */
  maxReleaseNorm: number;
  /** The ledger's record of this release; null without DP. */
  record: Release | null;
}

/** What a client (a site) needs to compute its own release. */
export interface ClientReleaseInput {
  round: number;
  phase: ReleaseSpec;
  dims: LoraDims;
  update: ClientUpdate;
  /** K, the number of clients (per-client noise std σC/√K in paper calibration). */
  numClients: number;
  /** The seeded noise stream of a client id (only the client's own is drawn). */
  noiseRng: (label: string | number) => Rng;
}

/**
 * What leaves a client: its released factors (`start + clip(Δ)`, plus its own noise where the
 * mechanism noises per client) and the statistics the server's record needs.
 */
export interface ClientRelease extends ReceivedUpdate {
  /** Before the client's own noise (instrumentation in one process; absent from a site). */
  clean?: LoraFactors;
  /** Norm of the update before clipping, and whether the clip bound scaled it down. */
  updateNorm: number;
  clipped: boolean;
  /** Strict calibration: norm of the release after clipping (checked ≤ C); 0 otherwise. */
  releaseNorm: number;
  /** Largest σ_max of a peer factor that shaped the client's noise (0 when not regulated). */
  peerSigmaMax: number;
  /** Paper calibration, regulated phase: σ_max of each released tensor's peer (its record). */
  peerSigmaMaxes?: number[];
}

/** A privacy mechanism of a run. */
export interface Mechanism {
  readonly name: "none" | "paper" | "strict" | "local";
  /**
   * Whom the clients trust. `central`: the server sees each client's release and its
   * statistics (loss, norms) and adds the noise. `local`: the server is not trusted; it holds of a
   * client nothing but the noised release, so the clients' un-noised statistics (training loss,
   * norms before and after clipping) are neither sent nor recorded.
   */
  readonly trust: "central" | "local";
  /** The calibrated σ and its targets; null for `none`. */
  readonly calibration: Calibration | null;
  /** The client step: clips (and, per client, noises) one client's update. */
  clientRelease(input: ClientReleaseInput): ClientRelease;
  /** The server step: combines the client releases, adds central noise and records. */
  aggregate(input: ReleaseInput, releases: readonly ClientRelease[]): ReleaseOutput;
  /** Both steps in one process: `aggregate(input, updates.map(clientRelease))`. */
  release(input: ReleaseInput): ReleaseOutput;
  /**
   * The record of a release made in `round`, `phase`, when it is known before the clients train;
   * null otherwise. Strict and local records depend on the calibration alone; a paper record is
   * known in advance for an un-regulated phase that publishes each release (its noise σC/√K
   * and its sensitivity C·√m do not depend on the cohort), when the mechanism was given the run's
   * {@link MechanismPlan}. The budget guard uses it, and a resumed run's saved ledger must agree
   * with it.
   */
  plannedRecord(round: number, phase: ReleasePhase): Release | null;
}

/**
 * What a mechanism may know about a run before it starts, to plan its records
 * ({@link Mechanism.plannedRecord}).
 */
export interface MechanismPlan {
  /** The method's phases: what each releases, whether regulated, what it publishes. */
  readonly phases: readonly ReleaseSpec[];
  /** LoRA adapters (tensors per released factor). */
  readonly adapters: number;
  /** K, the number of clients (the paper mechanism's per-client noise std σC/√K). */
  readonly numClients: number;
}

/**
 * The mechanism of a calibration: `none` without one, `paper`, `strict` or `local` by
 * `calibration.calibration`. With the run's `plan`, the paper mechanism also plans the records it
 * can know in advance ({@link Mechanism.plannedRecord}); without it, it plans none.
 */
export function createMechanism(calibration: Calibration | null, plan?: MechanismPlan): Mechanism {
  const steps = calibration === null
    ? noneMechanism
    : calibration.calibration === "paper"
    ? paperMechanism(calibration, plan)
    : calibration.calibration === "local"
    ? localMechanism(calibration)
    : strictMechanism(calibration);
  return {
    ...steps,
    release: (input) =>
      steps.aggregate(
        input,
        input.updates.map((update) => steps.clientRelease({ ...input, update })),
      ),
  };
}

type MechanismSteps = Omit<Mechanism, "release">;

/**
 * The default combination: `θ_g + Σ_k w_k·(θ_k − θ_g)` on the released factors, i.e. FedAvg
 * `Σ_k w_k·θ_k` when the weights sum to 1, with any missing weight mass left on the global
 * factors; accumulated in float64.
 */
export function weightedAverage(
  global: LoraFactors,
  released: readonly Factor[],
  received: readonly ReceivedUpdate[],
): LoraFactors {
  const weightSum = received.reduce((a, c) => a + c.weight, 0);
  const globalMass = Math.abs(1 - weightSum) > 1e-12 ? 1 - weightSum : 0;
  const out = cloneFactors(global);
  for (const which of released) {
    const list = factorList(global, which);
    for (let i = 0; i < list.length; i++) {
      const g = list[i];
      const acc = new Float64Array(g.length);
      if (globalMass !== 0) { for (let j = 0; j < acc.length; j++) acc[j] = globalMass * g[j]; }
      for (const { factors, weight: p } of received) {
        const t = factorList(factors, which)[i];
        for (let j = 0; j < acc.length; j++) acc[j] += p * t[j];
      }
      factorList(out, which)[i] = Float32Array.from(acc);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Shared steps.

/** Peers of released factors, factorised once per distinct tensor. */
function peerCache(dims: LoraDims) {
  const peers = new Map<Float32Array, PeerFactor>();
  return (f: LoraFactors, which: Factor, i: number): PeerFactor => {
    // The peer of a released B is the client's A (and vice versa).
    const t = which === "B" ? f.A[i] : f.B[i];
    let p = peers.get(t);
    if (!p) {
      const rank = t.length / (which === "B" ? dims.dIn : dims.dOut);
      p = which === "B"
        ? peerForB(t, rank, dims.dIn, dims.dOut)
        : peerForA(t, dims.dOut, rank, dims.dIn);
      peers.set(t, p);
    }
    return p;
  };
}

type Deltas = Map<Factor, Float32Array[]>;

/** The update `factors − start` of each released factor. */
function deltasOf(u: ClientUpdate, released: readonly Factor[]): Deltas {
  const out: Deltas = new Map();
  for (const which of released) {
    const start = factorList(u.start, which);
    out.set(which, factorList(u.factors, which).map((t, i) => sub(t, start[i])));
  }
  return out;
}

/** `start + Δ` on the released factors; the other factors as trained. */
function applied(u: ClientUpdate, deltas: Deltas): LoraFactors {
  const f = cloneFactors(u.factors);
  for (const [which, list] of deltas) {
    const start = factorList(u.start, which);
    list.forEach((d, i) => (factorList(f, which)[i] = add(start[i], d)));
  }
  return f;
}

function flat(deltas: Deltas): Float32Array[] {
  return [...deltas.values()].flat();
}

function defaultCombine(input: ReleaseInput): Combine {
  return input.combine ??
    ((received) => ({ global: weightedAverage(input.global, input.phase.release, received) }));
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
  phase: ReleaseSpec,
): Float32Array {
  try {
    return peer.regulatedNoise(rng, std);
  } catch (err) {
    const other = released === "A" ? "B" : "A";
    const shared = phase.release.length === 1;
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

/**
 * For {@link addNoise}: regulated noise through the peers of `factors` (the global factors every
 * client shares), drawn by the peer's own regulator.
 */
function regulatedBy(
  peerOf: ReturnType<typeof peerCache>,
  factors: LoraFactors,
): (which: Factor, i: number) => {
  peer: PeerFactor;
  draw: (rng: Rng, std: number) => Float32Array;
} {
  return (which, i) => {
    const peer = peerOf(factors, which, i);
    return { peer, draw: (rng, s) => peer.regulatedNoise(rng, s) };
  };
}

/**
 * Adds Gaussian noise of std `std` per entry to the released factors of `target`, in place:
 * isotropic, or — for a regulated phase — drawn through the peer `regulated` gives for each
 * released tensor. Returns the largest σ_max of a peer used (0 when not regulated).
 */
function addNoise(
  target: LoraFactors,
  phase: ReleaseSpec,
  rng: Rng,
  std: number,
  regulated: (
    which: Factor,
    adapter: number,
  ) => { peer: PeerFactor; draw: (rng: Rng, std: number) => Float32Array },
): number {
  let peerSigmaMax = 0;
  for (const which of phase.release) {
    factorList(target, which).forEach((t, i) => {
      if (phase.regulate) {
        const { peer, draw } = regulated(which, i);
        peerSigmaMax = Math.max(peerSigmaMax, peer.sigmaMax);
        addInPlace(t, draw(rng, std));
      } else addInPlace(t, isotropicNoise(rng, t.length, std));
    });
  }
  return peerSigmaMax;
}

function mean(xs: number[]): number {
  return xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length;
}

// ---------------------------------------------------------------------------------------------
// The four mechanisms.

/** No privacy: the updates are combined as they are. */
const noneMechanism: MechanismSteps = {
  name: "none",
  trust: "central",
  calibration: null,
  clientRelease({ phase, update: u }) {
    const deltas = deltasOf(u, phase.release);
    const updateNorm = Math.sqrt(flat(deltas).reduce((s, d) => s + sqNorm(d), 0));
    return {
      client: u.client,
      factors: applied(u, deltas),
      weight: u.weight,
      updateNorm,
      clipped: false,
      releaseNorm: 0,
      peerSigmaMax: 0,
    };
  },
  aggregate(input, releases) {
    return {
      ...combineAsReceived(input, releases),
      peerSigmaMax: 0,
      clippedFraction: 0,
      meanUpdateNorm: mean(releases.map((r) => r.updateNorm)),
      maxReleaseNorm: 0,
      record: null,
    };
  },
  plannedRecord: () => null,
};

/** What the server holds of each client release. */
function receivedOf(releases: readonly ClientRelease[]): ReceivedUpdate[] {
  return releases.map((r) => ({ client: r.client, factors: r.factors, weight: r.weight }));
}

/**
 * The server's combination of the releases as they arrived, with no noise of its own (no DP, or
 * local DP where the noise came with them): the published factors are the clean ones without DP;
 * local DP replaces `clean` with null (the server never holds the un-noised combination).
 */
function combineAsReceived(
  input: ReleaseInput,
  releases: readonly ClientRelease[],
): {
  global: LoraFactors;
  clean: LoraFactors;
  mergeIntoFrozen: Float32Array[] | undefined;
  received: ReceivedUpdate[];
} {
  const received = receivedOf(releases);
  const combined = defaultCombine(input)(received);
  return {
    global: combined.global,
    clean: combined.global,
    mergeIntoFrozen: combined.mergeIntoFrozen,
    received,
  };
}

function clippedFractionOf(releases: readonly ClientRelease[]): number {
  return releases.length ? releases.filter((r) => r.clipped).length / releases.length : 0;
}

/**
 * The reference's mechanism: every released tensor clipped on its own to C, per-client noise of
 * std σC/√K per entry (regulated with the client's own peer factor), then the weighted average.
 * Its record states what it really spends at client level: one client moves the weighted sum by
 * at most `w_k·S_k` (S_k = C·√m, or C·√(Σ_t σ_max(peer_t)²) when regulated), and the sum carries
 * noise of std `(σC/√K)·√(Σ_k w_k²)`. When the phase's combination publishes functions of the
 * single releases (`publishes: "each-release"`, FedEx-LoRA), the record accounts each client's
 * noised release instead: std σC/√K against sensitivity `max_k S_k`.
 */
function paperMechanism(cal: Calibration, plan: MechanismPlan | undefined): MechanismSteps {
  const C = cal.clip;
  return {
    name: "paper",
    trust: "central",
    calibration: cal,
    clientRelease(input) {
      const { phase, dims, update: u } = input;
      const peerOf = peerCache(dims);
      const deltas = deltasOf(u, phase.release);
      const { norms: tensorNorms } = clipPerTensor(flat(deltas), C, { inPlace: true });
      const factors = applied(u, deltas);
      const noisy = cloneFactors(factors);
      const std = clientStd(cal, input.numClients);
      // Regulated by the client's own peer factor, as the reference does.
      const peerSigmaMax = addNoise(noisy, phase, input.noiseRng(u.client), std, (which, i) => {
        const peer = peerOf(u.factors, which, i);
        return {
          peer,
          draw: (rng, s) => regulatedOrExplain(peer, rng, s, u.client, which, i, phase),
        };
      });
      return {
        client: u.client,
        factors: noisy,
        clean: factors,
        weight: u.weight,
        updateNorm: Math.sqrt(tensorNorms.reduce((s, n) => s + n * n, 0)),
        clipped: tensorNorms.some((n) => n > C),
        releaseNorm: 0,
        peerSigmaMax,
        peerSigmaMaxes: phase.regulate
          ? phase.release.flatMap((which) =>
            Array.from({ length: dims.adapters }, (_, i) => peerOf(u.factors, which, i).sigmaMax)
          )
          : undefined,
      };
    },
    aggregate(input, releases) {
      const received = receivedOf(releases);
      const combine = defaultCombine(input);
      const published = combine(received);
      if (published.mergeIntoFrozen !== undefined && input.phase.publishes === undefined) {
        throw new Error(
          `paper mechanism, release ${input.phase.name} of round ${input.round}: the combination ` +
            `merges dense updates into the frozen weights, but the phase does not say whether ` +
            `they are a function of the weighted sum or of the single releases; set its ` +
            `publishes to "weighted-sum" or "each-release" (ReleaseSpec.publishes) so that the ` +
            `record accounts what is published`,
        );
      }
      // A remote site sends its noised release only: the un-noised combination is then unknown.
      const unnoised = releases.every((r) => r.clean !== undefined)
        ? combine(releases.map((r) => ({ ...r, factors: r.clean! })))
        : null;
      return {
        global: published.global,
        clean: unnoised && unnoised.global,
        ...(unnoised?.mergeIntoFrozen ? { cleanMerge: unnoised.mergeIntoFrozen } : {}),
        mergeIntoFrozen: published.mergeIntoFrozen,
        received,
        peerSigmaMax: Math.max(0, ...releases.map((r) => r.peerSigmaMax)),
        clippedFraction: clippedFractionOf(releases),
        meanUpdateNorm: mean(releases.map((r) => r.updateNorm)),
        maxReleaseNorm: 0,
        record: paperRecord(cal, input, releases),
      };
    },
    plannedRecord(round, name) {
      const phase = plan?.phases.find((p) => p.name === name);
      if (!plan || !phase || phase.publishes !== "each-release" || phase.regulate) return null;
      const bound = clientBound(C, phase, plan.adapters, undefined);
      return eachReleaseRecord(cal, round, phase, plan.numClients, [bound]);
    },
  };
}

/** The per-entry noise std σC/√K each client adds under the paper calibration. */
function clientStd(cal: Calibration, numClients: number): number {
  return perClientNoiseStd({ noiseMultiplier: cal.noiseMultiplier, clip: cal.clip, numClients });
}

/**
 * A client's sensitivity S_k in a paper release: every released tensor clipped to C on its own,
 * C·√m, or with noise regulated by the client's peers (`peerSigmaMaxes`) C·√(Σ σ_max(peer)²).
 */
function clientBound(
  clip: number,
  phase: ReleaseSpec,
  adapters: number,
  peerSigmaMaxes: readonly number[] | undefined,
): { sensitivity: number; how: string } {
  return clippedSensitivity({
    clip,
    clipping: "per-tensor",
    tensors: phase.release.length * adapters,
    peerSigmaMax: phase.regulate ? peerSigmaMaxes : undefined,
  });
}

/**
 * Whether a paper record's multiplier is exact: not when both factors are released, each
 * regulated by the client's own other factor (DEeR with module1 off), whose σ_max is private —
 * the bound uses it anyway.
 */
function paperExact(phase: ReleaseSpec): boolean {
  return !(phase.regulate && phase.release.length > 1);
}

/**
 * The paper record of a phase that publishes each client's release: every client's noised
 * release is one Gaussian mechanism (std σC/√K) on that client's data, against its sensitivity
 * S_k (`bounds`, one per client); see {@link paperRecord}.
 */
function eachReleaseRecord(
  cal: Calibration,
  round: number,
  phase: ReleaseSpec,
  numClients: number,
  bounds: readonly { sensitivity: number; how: string }[],
): Release {
  let sensitivity = 0;
  let how = "";
  for (const [k, b] of bounds.entries()) {
    if (b.sensitivity > sensitivity || k === 0) how = b.how;
    sensitivity = Math.max(sensitivity, b.sensitivity);
  }
  return releaseRecord({
    round,
    phase: phase.name,
    noiseStd: clientStd(cal, numClients),
    sensitivity,
    clip: cal.clip,
    sampleRate: 1,
    calibration: "paper",
    exact: paperExact(phase),
    note: `paper mechanism: ${how}; per-client noise σC/√K; the combination publishes ` +
      `functions of the single releases (not only of their weighted sum), so every client's ` +
      `noised release is accounted on its own (noise σC/√K against the largest client ` +
      `sensitivity; the weighted sum and the merge are post-processing of the releases)`,
  });
}

/** The paper mechanism's record (see {@link paperMechanism}). */
function paperRecord(
  cal: Calibration,
  input: ReleaseInput,
  releases: readonly ClientRelease[],
): Release {
  const { phase, dims } = input;
  const C = cal.clip;
  const weights = releases.map((u) => u.weight);
  const maxWeight = Math.max(...weights);
  const s = clientStd(cal, input.numClients);
  const bounds = releases.map((r) => clientBound(C, phase, dims.adapters, r.peerSigmaMaxes));
  if (phase.publishes === "each-release") {
    // What is published (the global factors and, e.g., FedEx-LoRA's residual) is a function of
    // the clients' single noised releases, not of their sum alone; so is the sum. Client k's
    // data moves only its own release, by at most S_k, under noise of std s: by parallel
    // composition over the clients (each is one Gaussian mechanism on disjoint data), one
    // Gaussian of multiplier s / max_k S_k per release, and the combination is post-processing.
    return eachReleaseRecord(cal, input.round, phase, input.numClients, bounds);
  }
  const aggregateStd = s * Math.sqrt(weights.reduce((a, w) => a + w * w, 0));
  let worst = 0;
  let how = "";
  for (const [k, bound] of bounds.entries()) {
    if (weights[k] * bound.sensitivity > worst || k === 0) how = bound.how;
    worst = Math.max(worst, weights[k] * bound.sensitivity);
  }
  return releaseRecord({
    round: input.round,
    phase: phase.name,
    noiseStd: aggregateStd / maxWeight,
    sensitivity: worst / maxWeight,
    noiseMultiplier: aggregateStd / worst,
    clip: C,
    sampleRate: 1,
    calibration: "paper",
    exact: paperExact(phase),
    note: `paper mechanism: ${how}; per-client noise σC/√K, weighted by the aggregation weights`,
  });
}

/**
 * The strict client-level mechanism: a client's whole release clipped to C (in product space
 * when regulated), the weighted sum formed, and noise of std σ·C·maxWeight added once to it
 * (regulated by the shared global peer, or isotropic).
 */
function strictMechanism(cal: Calibration): MechanismSteps {
  const C = cal.clip;
  return {
    name: "strict",
    trust: "central",
    calibration: cal,
    clientRelease({ phase, dims, update: u }) {
      const peerOf = peerCache(dims);
      const deltas = deltasOf(u, phase.release);
      let norm: number;
      let after: () => number;
      if (phase.regulate) {
        // One factor per regulated strict phase (validated): its peer is the client's start,
        // the global factor shared by all clients.
        const which = phase.release[0];
        const list = deltas.get(which)!;
        const peers = list.map((_, i) => peerOf(u.start, which, i));
        const spec = {
          phase: which,
          deltas: list,
          peers: peers.map((p) => p.peer),
          peerGrams: peers.map((p) => p.gram),
          d: dims.dIn,
          dOut: dims.dOut,
          r: peers[0]?.rank ?? dims.rank,
        };
        norm = clipProductSpace(spec, C, { inPlace: true }).norm;
        after = () => productSpaceNorm(spec);
      } else {
        const tensors = flat(deltas);
        norm = clipRelease(tensors, C, { inPlace: true }).norm;
        after = () => Math.sqrt(tensors.reduce((s, d) => s + sqNorm(d), 0));
      }
      // Run-time check of the guarantee's premise: the clipped release is within its bound
      // (float32 rounding of the scaled entries allows a relative 1e-5).
      const bounded = after();
      if (!(bounded <= C * (1 + 1e-5))) {
        throw new Error(
          `strict clipping failed: a release has norm ${bounded} > C = ${C}; refusing to ` +
            `release it`,
        );
      }
      return {
        client: u.client,
        factors: applied(u, deltas),
        weight: u.weight,
        updateNorm: norm,
        clipped: norm > C,
        releaseNorm: bounded,
        peerSigmaMax: 0,
      };
    },
    aggregate(input, releases) {
      const { phase, dims, global } = input;
      const peerOf = peerCache(dims);
      if (!(input.maxWeight > 0 && Number.isFinite(input.maxWeight))) {
        throw new Error(
          `strict mechanism: maxWeight ${input.maxWeight} must be a finite number > 0 (it scales ` +
            `the noise); pass the largest weight any client could have`,
        );
      }
      if (phase.publishes === "each-release") {
        throw new Error(
          `strict mechanism, release ${phase.name} of round ${input.round}: the combination ` +
            `publishes functions of the single client releases (publishes: "each-release"), ` +
            `which carry no noise under the strict calibration (its noise is added to the ` +
            `weighted sum only); refusing to release them — use --calibration local or paper`,
        );
      }
      const received = receivedOf(releases);
      const combined = defaultCombine(input)(received);
      if (combined.mergeIntoFrozen !== undefined) {
        throw new Error(
          `strict mechanism, release ${phase.name} of round ${input.round}: the combination ` +
            `merges dense updates into the frozen weights, but the strict mechanism adds its ` +
            `noise to the combined global factors only, so the merge would be published without ` +
            `noise; refusing to release it — use --calibration local or paper`,
        );
      }
      const published = cloneFactors(combined.global);
      const std = cal.noiseMultiplier * C * input.maxWeight;
      // Regulated by the global peer, shared by every client.
      const peerSigmaMax = addNoise(
        published,
        phase,
        input.noiseRng("central"),
        std,
        regulatedBy(peerOf, global),
      );
      return {
        global: published,
        clean: combined.global,
        received,
        peerSigmaMax,
        clippedFraction: clippedFractionOf(releases),
        meanUpdateNorm: mean(releases.map((r) => r.updateNorm)),
        maxReleaseNorm: Math.max(0, ...releases.map((r) => r.releaseNorm)),
        record: strictRelease(cal, input.round, phase.name),
      };
    },
    plannedRecord: (round, phase) => strictRelease(cal, round, phase),
  };
}

/**
 * Local DP, for an untrusted server: each client makes the strict client step (its whole release
 * clipped to C, in product space when regulated, with the run-time bound check), then adds its
 * own Gaussian noise of std σ_loc·C from its named stream — regulated through its peer, the
 * shared global factor it started from, as the strict mechanism regulates its central noise, or
 * isotropic. The server combines the noised releases with the method's combination and adds
 * nothing. The record lists the sites that released (the ledger accounts each site on its own).
 * The server holds nothing but the noised releases: the statistics of the record that come from
 * un-noised values (loss, norms, clipped fraction) are NaN, and the noise energy is 0 (the server
 * never sees the un-noised combination).
 */
function localMechanism(cal: Calibration): MechanismSteps {
  const C = cal.clip;
  const K = cal.localSites;
  if (!(Number.isInteger(K) && (K as number) >= 1)) {
    throw new Error(
      `local mechanism: the calibration does not say how many sites it accounts ` +
        `(localSites ${K}); build it with calibrate()`,
    );
  }
  const clipStep = strictMechanism(cal).clientRelease;
  const sitesOf = (releases: readonly ClientRelease[]) =>
    releases.map((r) => r.client).filter((k) => k < (K as number)).sort((a, b) => a - b);
  return {
    name: "local",
    trust: "local",
    calibration: cal,
    clientRelease(input) {
      const { phase, dims, update: u } = input;
      const clipped = clipStep(input);
      const peerOf = peerCache(dims);
      const noisy = cloneFactors(clipped.factors);
      const peerSigmaMax = addNoise(
        noisy,
        phase,
        input.noiseRng(u.client),
        cal.noiseMultiplier * C,
        // The peer the strict clip used: the client's start, the shared global factor.
        regulatedBy(peerOf, u.start),
      );
      return { ...clipped, factors: noisy, clean: clipped.factors, peerSigmaMax };
    },
    aggregate(input, releases) {
      return {
        ...combineAsReceived(input, releases),
        clean: null,
        peerSigmaMax: input.phase.regulate ? globalPeerSigmaMax(input) : 0,
        clippedFraction: NaN,
        meanUpdateNorm: NaN,
        maxReleaseNorm: NaN,
        record: localRelease(cal, input.round, input.phase.name, sitesOf(releases)),
      };
    },
    plannedRecord: (round, phase) =>
      localRelease(cal, round, phase, Array.from({ length: K as number }, (_, k) => k)),
  };
}

/** The largest σ_max of the global peers that shaped a regulated release's noise. */
function globalPeerSigmaMax(input: ReleaseInput): number {
  const peerOf = peerCache(input.dims);
  let most = 0;
  for (const which of input.phase.release) {
    factorList(input.global, which).forEach((_, i) => {
      most = Math.max(most, peerOf(input.global, which, i).sigmaMax);
    });
  }
  return most;
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
