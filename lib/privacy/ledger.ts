/**
 * The privacy ledger: what each aggregation released, as data, and the client-level ε that
 * record adds up to (SPEC.md §4.3; STYLE.md "describe what the mechanism released as data, let
 * the accountant turn that record into ε"). Also the two calibrations of SPEC.md §4.1 and §4.2.
 *
 * ## The record
 * A {@link Release} says: in round `round`, phase `phase`, the server published the sum over
 * clients of their clipped updates plus Gaussian noise of std `noiseStd` (σ·C on the sum, i.e.
 * σC/√K per client), where one client's contribution has L2 sensitivity `sensitivity` (measured
 * in the noise's own metric for regulated noise, below); `noiseMultiplier = noiseStd/sensitivity`
 * is what the RDP accountant consumes, with the client-level sampling rate `sampleRate` (1 under
 * full participation) and `count` identical releases. ε is only ever computed from these
 * records ({@link spentBudget}); the ledger refuses a round whose ε would fall below the
 * previous one.
 *
 * ## Actual client-level ε of the paper mechanism (SPEC.md §4.2) — derivation
 * Setting: trusted server, K clients all taking part (q = 1), adjacency = add or remove one
 * client's whole data. One aggregation publishes θ_g + (1/K)·S with
 * `S = Σ_k (clip(Δ_k) + n_k)`; θ_g and 1/K are public, so it suffices to analyse S.
 * * Noise: n_k ~ N(0, (σC/√K)² I) independently, so Σ_k n_k ~ N(0, σ²C² I). The analysis takes
 *   the noise on the sum to be exactly N(0, σ²C² I) — the DP-FedAvg convention of noise
 *   calibrated to the nominal, public K (with one client removed, K − 1 shares carry a
 *   (K−1)/K fraction of that variance; a server adding the noise centrally is exact).
 * * Per-tensor clipping: one client's contribution to S is (Δ_1, …, Δ_m) with every
 *   ‖Δ_t‖_F ≤ C, so its L2 norm is ≤ C·√m, attained when every tensor sits at the clip norm.
 *   Gaussian mechanism with std σC and sensitivity C√m: noise multiplier **σ/√m**, RDP
 *   α·m/(2σ²) per release. (Same in the averaged parameter: noise σC/K, sensitivity C√m/K.)
 *   m = 72 for LoRA / DP-DyLoRA on 12 blocks × {q,k,v} (2 factors × 36 adapters), 36 for
 *   FFA-LoRA or one DEeR phase — {@link tensorsPerRelease}.
 * * Regulator (phase B, peer A_t public and shared): the noise on the sum for tensor t is
 *   `Σ_k W_k A_t⁺ = W A_t⁺`, W ~ N(0, σ²C²) d×d; its rows are independent
 *   N(0, σ²C² (A_tA_tᵀ)⁻¹). For Gaussians with a common covariance Σ the Rényi divergence of
 *   order α is (α/2)·δᵀΣ⁻¹δ, and here δᵀΣ⁻¹δ = Σ_rows b_i A_tA_tᵀ b_iᵀ/(σ²C²) =
 *   ‖ΔB_t·A_t‖_F²/(σ²C²) ≤ σ_max(A_t)²‖ΔB_t‖²/(σ²C²) ≤ σ_max(A_t)²/σ² (tight along A_t's top
 *   singular vector). Summed over the m tensors of the release: sensitivity (in units of the
 *   noise std σC) C·√(Σ_t σ_max(A_t)²), noise multiplier **σ/√(Σ_t σ_max(A_t)²)** — σ/σ_max per
 *   tensor as SPEC.md §4.2 says. Phase A is the same with columns and σ_max(B_t).
 *   This needs the peer to be public and common to all clients: true for DEeR with module1 on
 *   (the frozen global factor). With module1 off the reference regulates with each client's own
 *   trained peer, which is private data; no guarantee follows and none should be reported.
 * * Each DEeR round makes 2 releases (phase B, then phase A); LoRA-like methods make 1.
 *   RDP adds up over releases (heterogeneous σ allowed), then is converted to ε at δ.
 * * Strict mode (SPEC.md §4.2): whole-release clipping to C with isotropic noise, or
 *   product-space clipping Σ_t‖ΔB_t A_t‖² ≤ C² with regulated noise, both give sensitivity C
 *   and noise multiplier σ.
 *
 * @example
 * ```ts
 * import { closeRound, createLedger, gaussianRelease, recordRelease } from "./ledger.ts";
 * let ledger = createLedger({ delta: 1e-5 });
 * ledger = recordRelease(ledger, gaussianRelease({
 *   round: 1, phase: "AB", noiseMultiplier: 1.2, clip: 2, clipping: "per-tensor", tensors: 72,
 * }));
 * ledger = closeRound(ledger, 1);
 * ledger.rounds[0].epsilon; // client-level ε after round 1
 * ```
 * @module
 */
import {
  DEFAULT_ORDERS,
  epsilonForReleases,
  type GaussianReleases,
  noiseMultiplierForBudget,
} from "./rdp.ts";

/** Which factors an aggregation released: both ("AB"), A only, or B only. */
export type ReleasePhase = "AB" | "A" | "B";

/** One (block of identical) Gaussian release(s) of a federated aggregation. */
export interface Release {
  /** Round the release belongs to (an integer ≥ 0; the engine's numbering). */
  round: number;
  /** Factors released. */
  phase: ReleasePhase;
  /** Effective noise multiplier: `noiseStd / sensitivity` (∞ when the sensitivity is 0). */
  noiseMultiplier: number;
  /** Client-level sampling rate q (1 under full participation). */
  sampleRate: number;
  /** Number of identical releases this record stands for (1 per aggregation). */
  count: number;
  /** L2 sensitivity of one client's contribution to the released sum, in the noise's metric. */
  sensitivity: number;
  /**
   * Std of the Gaussian noise on the released sum (σ·C; σC/√K per client). Optional: when
   * given, `noiseMultiplier` must equal `noiseStd / sensitivity`.
   */
  noiseStd?: number;
  /** Clip norm C used by the clients. */
  clip: number;
  /** Free text: how the sensitivity was derived, for the reader of the JSON. */
  note?: string;
}

/** The spent ε recorded when a round closed. */
export interface RoundSpend {
  round: number;
  /** Client-level ε spent by all releases up to and including this round, at the ledger's δ. */
  epsilon: number;
  /** The RDP order attaining it. */
  order: number;
  /** How many release records were included (for replay on restore). */
  releases: number;
  /** What the calibration targeted, if the caller says (SPEC.md §4.3). */
  nominalEpsilon?: number;
}

/** The accountant's state: a plain, JSON-serialisable object. */
export interface PrivacyLedger {
  version: 1;
  /** δ at which ε is reported (default 1e-5). */
  delta: number;
  /** RDP orders. */
  orders: number[];
  releases: Release[];
  rounds: RoundSpend[];
}

/** Alias of {@link PrivacyLedger}, the name the engine's checkpoints use. */
export type LedgerState = PrivacyLedger;

const PHASES: readonly ReleasePhase[] = ["AB", "A", "B"];

/**
 * A new, empty ledger reporting ε at `delta` (default 1e-5, SPEC.md §4.2).
 *
 * @example
 * ```ts
 * const ledger = createLedger();
 * ledger.delta; // 1e-5
 * ```
 */
export function createLedger(
  options: { delta?: number; orders?: readonly number[] } = {},
): PrivacyLedger {
  const { delta = 1e-5, orders = DEFAULT_ORDERS } = options;
  if (!(delta > 0 && delta < 1)) throw new Error(`createLedger: delta ${delta} must be in (0, 1)`);
  if (orders.length === 0 || orders.some((a) => !(a > 1))) {
    throw new Error(`createLedger: orders must be a non-empty list of numbers > 1`);
  }
  return { version: 1, delta, orders: [...orders], releases: [], rounds: [] };
}

function validateRelease(r: Release, where: string): void {
  const fail = (field: string, msg: string): never => {
    throw new Error(`${where}: release.${field} ${msg}`);
  };
  if (!(Number.isInteger(r.round) && r.round >= 0)) {
    fail("round", `${r.round} must be an integer ≥ 0`);
  }
  if (!PHASES.includes(r.phase)) fail("phase", `"${r.phase}" must be one of ${PHASES.join(", ")}`);
  if (!(r.noiseMultiplier >= 0)) fail("noiseMultiplier", `${r.noiseMultiplier} must be ≥ 0`);
  if (!(r.sampleRate >= 0 && r.sampleRate <= 1)) {
    fail("sampleRate", `${r.sampleRate} must be in [0, 1]`);
  }
  if (!(r.count >= 0 && Number.isFinite(r.count))) {
    fail("count", `${r.count} must be finite and ≥ 0`);
  }
  if (!(r.sensitivity >= 0 && Number.isFinite(r.sensitivity))) {
    fail("sensitivity", `${r.sensitivity} must be finite and ≥ 0`);
  }
  if (r.noiseStd !== undefined && !(r.noiseStd >= 0 && Number.isFinite(r.noiseStd))) {
    fail("noiseStd", `${r.noiseStd} must be finite and ≥ 0`);
  }
  if (!(r.clip > 0 && Number.isFinite(r.clip))) fail("clip", `${r.clip} must be finite and > 0`);
  if (r.note !== undefined && typeof r.note !== "string") fail("note", "must be a string");
  if (r.noiseStd === undefined) return;
  const implied = r.sensitivity === 0 ? Infinity : r.noiseStd / r.sensitivity;
  const agrees = implied === r.noiseMultiplier ||
    Math.abs(implied - r.noiseMultiplier) <= 1e-9 * Math.max(implied, r.noiseMultiplier);
  if (!agrees) {
    fail(
      "noiseMultiplier",
      `${r.noiseMultiplier} disagrees with noiseStd/sensitivity = ${implied}; build releases ` +
        `with gaussianRelease()`,
    );
  }
}

/**
 * The record of one aggregation's Gaussian release, derived from what the mechanism did
 * (see the module documentation for the derivation):
 *
 * | clipping | noise | sensitivity | noise multiplier |
 * |---|---|---|---|
 * | `"per-tensor"` (paper) | isotropic | C·√m | σ/√m |
 * | `"per-tensor"` (paper) | regulated, peers σ_max s_t | C·√(Σ s_t²) | σ/√(Σ s_t²) |
 * | `"release"` (strict) | isotropic | C | σ |
 * | `"release"` | regulated | C·max_t s_t | σ/max_t s_t |
 * | `"product"` (strict) | regulated | C | σ |
 *
 * `noiseMultiplier` is the configured σ (noise std σC on the sum, σC/√K per client); `tensors`
 * is m, the number of tensors released (ignored when `peerSigmaMax` is given: one value per
 * tensor). `sampleRate` defaults to 1 (full participation), `count` to 1.
 *
 * @example
 * ```ts
 * gaussianRelease({
 *   round: 3, phase: "B", noiseMultiplier: 1, clip: 2, clipping: "per-tensor",
 *   peerSigmaMax: new Array(36).fill(1.5),
 * }).noiseMultiplier; // 1/√(36·1.5²) = 1/9
 * ```
 */
export function gaussianRelease(args: {
  round: number;
  phase: ReleasePhase;
  noiseMultiplier: number;
  clip: number;
  clipping: "per-tensor" | "release" | "product";
  tensors?: number;
  peerSigmaMax?: readonly number[];
  sampleRate?: number;
  count?: number;
  note?: string;
}): Required<Release> {
  const { round, phase, noiseMultiplier: sigma, clip, clipping } = args;
  const where = "gaussianRelease";
  if (!(sigma >= 0 && Number.isFinite(sigma))) {
    throw new Error(`${where}: noiseMultiplier ${sigma} must be finite and ≥ 0`);
  }
  if (!(clip > 0 && Number.isFinite(clip))) throw new Error(`${where}: clip ${clip} must be > 0`);
  const peers = args.peerSigmaMax;
  if (peers !== undefined) {
    if (peers.length === 0) throw new Error(`${where}: peerSigmaMax is empty; give one per tensor`);
    peers.forEach((s, i) => {
      if (!(s >= 0 && Number.isFinite(s))) {
        throw new Error(`${where}: peerSigmaMax[${i}] ${s} must be finite and ≥ 0`);
      }
    });
  }
  let factor: number, how: string;
  if (clipping === "per-tensor") {
    if (peers !== undefined) {
      factor = Math.sqrt(peers.reduce((s, x) => s + x * x, 0));
      how = `per-tensor clip, regulated noise: C·√(Σ σ_max(peer)²) over ${peers.length} tensors`;
    } else {
      const m = args.tensors;
      if (!(Number.isInteger(m) && (m as number) > 0)) {
        throw new Error(
          `${where}: tensors ${m} must be a positive integer for per-tensor clipping ` +
            `(72 for LoRA on 12 blocks × q,k,v; 36 for one DEeR phase or FFA-LoRA)`,
        );
      }
      factor = Math.sqrt(m as number);
      how = `per-tensor clip of ${m} tensors, isotropic noise: C·√${m}`;
    }
  } else if (clipping === "release") {
    if (peers !== undefined) {
      factor = Math.max(...peers);
      how = `whole-release clip, regulated noise: C·max σ_max(peer)`;
    } else {
      factor = 1;
      how = "whole-release clip, isotropic noise: C";
    }
  } else if (clipping === "product") {
    if (peers === undefined) {
      throw new Error(
        `${where}: clipping "product" bounds ‖ΔB·A‖ and is only valid with regulated noise; ` +
          `pass peerSigmaMax (its values do not change the sensitivity C)`,
      );
    }
    factor = 1;
    how = "product-space clip, regulated noise: C";
  } else {
    throw new Error(
      `${where}: clipping "${clipping}" must be "per-tensor", "release" or "product"`,
    );
  }
  const sensitivity = clip * factor;
  const noiseStd = sigma * clip;
  const release: Required<Release> = {
    round,
    phase,
    noiseMultiplier: sensitivity === 0 ? Infinity : noiseStd / sensitivity,
    sampleRate: args.sampleRate ?? 1,
    count: args.count ?? 1,
    sensitivity,
    noiseStd,
    clip,
    note: args.note ?? how,
  };
  validateRelease(release, where);
  return release;
}

/**
 * The number of tensors one client's release clips separately under per-tensor clipping:
 * `2·adapters` when both factors are released ("AB"), `adapters` for one factor.
 *
 * @example
 * ```ts
 * tensorsPerRelease({ adapters: 36, phase: "AB" }); // 72
 * tensorsPerRelease({ adapters: 36, phase: "B" });  // 36
 * ```
 */
export function tensorsPerRelease(args: { adapters: number; phase: ReleasePhase }): number {
  if (!(Number.isInteger(args.adapters) && args.adapters > 0)) {
    throw new Error(`tensorsPerRelease: adapters ${args.adapters} must be a positive integer`);
  }
  if (!PHASES.includes(args.phase)) {
    throw new Error(`tensorsPerRelease: phase "${args.phase}" must be one of ${PHASES.join(", ")}`);
  }
  return args.phase === "AB" ? 2 * args.adapters : args.adapters;
}

function lastRound(ledger: PrivacyLedger): RoundSpend | undefined {
  return ledger.rounds[ledger.rounds.length - 1];
}

/**
 * A new ledger with `release` appended. Rejects an invalid record and a release for a round
 * that is already closed.
 *
 * @example
 * ```ts
 * const l = recordRelease(createLedger(), gaussianRelease({
 *   round: 1, phase: "B", noiseMultiplier: 1, clip: 1, clipping: "release",
 * }));
 * l.releases.length; // 1
 * ```
 */
export function recordRelease(ledger: PrivacyLedger, release: Release): PrivacyLedger {
  validateRelease(release, "recordRelease");
  const closed = lastRound(ledger);
  if (closed !== undefined && release.round <= closed.round) {
    throw new Error(
      `recordRelease: release.round ${release.round} is already closed (last closed round ` +
        `${closed.round}); releases must be recorded before closeRound`,
    );
  }
  return { ...ledger, releases: [...ledger.releases, { ...release }] };
}

/**
 * Client-level ε and the RDP order attaining it, spent by the first `upTo` releases (all by
 * default) at the ledger's δ (or `delta`), composing their RDP per order (SPEC.md §4.4).
 *
 * @example
 * ```ts
 * spentBudget(createLedger()); // { epsilon: 0, order: NaN }: nothing released yet
 * ```
 */
export function spentBudget(
  ledger: PrivacyLedger,
  options: { delta?: number; upTo?: number } = {},
): { epsilon: number; order: number } {
  const releases = ledger.releases.slice(0, options.upTo ?? ledger.releases.length);
  if (releases.length === 0) return { epsilon: 0, order: NaN };
  const blocks: GaussianReleases[] = releases.map((r) => ({
    noiseMultiplier: r.noiseMultiplier,
    sampleRate: r.sampleRate,
    count: r.count,
  }));
  return epsilonForReleases(blocks, options.delta ?? ledger.delta, ledger.orders);
}

/**
 * Client-level ε spent by the ledger's releases at its δ (or `delta`) — {@link spentBudget}
 * without the order.
 *
 * @example
 * ```ts
 * spentEpsilon(createLedger()); // 0: nothing released yet
 * ```
 */
export function spentEpsilon(
  ledger: PrivacyLedger,
  options: { delta?: number; upTo?: number } = {},
): number {
  return spentBudget(ledger, options).epsilon;
}

/**
 * Closes round `round`: computes the ε spent by every release so far and appends it to
 * `rounds`. Throws if the round was already closed, if a release belongs to a later round, or
 * if ε would decrease (which composition makes impossible — it would mean a corrupted ledger).
 *
 * @example
 * ```ts
 * let l = createLedger();
 * l = recordRelease(l, gaussianRelease({
 *   round: 1, phase: "AB", noiseMultiplier: 1, clip: 1, clipping: "per-tensor", tensors: 72,
 * }));
 * l = closeRound(l, 1, { nominalEpsilon: 1 });
 * ```
 */
export function closeRound(
  ledger: PrivacyLedger,
  round: number,
  options: { nominalEpsilon?: number } = {},
): PrivacyLedger {
  if (!(Number.isInteger(round) && round >= 0)) {
    throw new Error(`closeRound: round ${round} must be an integer ≥ 0`);
  }
  const previous = lastRound(ledger);
  if (previous !== undefined && round <= previous.round) {
    throw new Error(
      `closeRound: round ${round} is not after the last closed round ${previous.round}`,
    );
  }
  const later = ledger.releases.find((r) => r.round > round);
  if (later !== undefined) {
    throw new Error(
      `closeRound: a release of round ${later.round} was recorded before round ${round} closed`,
    );
  }
  const { epsilon, order } = spentBudget(ledger);
  if (previous !== undefined && !(epsilon >= previous.epsilon)) {
    throw new Error(
      `closeRound: spent ε would decrease from ${previous.epsilon} (round ${previous.round}) to ` +
        `${epsilon}; the ledger is inconsistent`,
    );
  }
  const spend: RoundSpend = { round, epsilon, order, releases: ledger.releases.length };
  if (options.nominalEpsilon !== undefined) spend.nominalEpsilon = options.nominalEpsilon;
  return { ...ledger, rounds: [...ledger.rounds, spend] };
}

/**
 * Non-finite numbers in a parsed ledger: {@link ledgerToJson} writes them as strings, a plain
 * `JSON.stringify` as null. In this record only three fields can be non-finite — a
 * noiseMultiplier or an ε of ∞ (no noise) and an order of NaN (nothing released) — so both forms
 * are read back unambiguously.
 */
function reviveNonFinite(raw: unknown): void {
  if (raw === null || typeof raw !== "object") return;
  const obj = raw as { releases?: unknown; rounds?: unknown };
  const fix = (rec: Record<string, unknown>, key: string, nullMeans: number) => {
    const v = rec[key];
    if (v === null) rec[key] = nullMeans;
    else if (v === "Infinity" || v === "-Infinity" || v === "NaN") rec[key] = Number(v);
  };
  if (Array.isArray(obj.releases)) {
    for (const r of obj.releases) {
      if (r && typeof r === "object") fix(r, "noiseMultiplier", Infinity);
    }
  }
  if (Array.isArray(obj.rounds)) {
    for (const r of obj.rounds) {
      if (!r || typeof r !== "object") continue;
      fix(r, "epsilon", Infinity);
      fix(r, "order", NaN);
      if (r.nominalEpsilon === null) delete r.nominalEpsilon;
    }
  }
}

/**
 * The ledger as JSON text (non-finite numbers such as an ε of ∞ are written as strings, which
 * plain JSON cannot hold). Write it with `writeFileAtomic` from lib/io for resume.
 *
 * @example
 * ```ts
 * const text = ledgerToJson(createLedger());
 * ledgerFromJson(text).delta; // 1e-5
 * ```
 */
export function ledgerToJson(ledger: PrivacyLedger): string {
  return JSON.stringify(
    ledger,
    (_key, value) => typeof value === "number" && !Number.isFinite(value) ? String(value) : value,
    2,
  );
}

/**
 * Restores a ledger from {@link ledgerToJson} text (or the parsed object), validating every
 * record and replaying every closed round: each stored ε must equal the ε recomputed from the
 * releases it covered (so a resumed run continues from exactly the spent budget).
 *
 * @example
 * ```ts
 * const restored = ledgerFromJson(ledgerToJson(createLedger({ delta: 1e-6 })));
 * restored.delta; // 1e-6
 * ```
 */
export function ledgerFromJson(json: string | unknown, source = "ledger"): PrivacyLedger {
  const raw = typeof json === "string" ? JSON.parse(json) : structuredClone(json);
  reviveNonFinite(raw);
  const fail = (msg: string): never => {
    throw new Error(`ledgerFromJson (${source}): ${msg}`);
  };
  if (raw === null || typeof raw !== "object") fail("expected a JSON object");
  const obj = raw as Record<string, unknown>;
  if (obj.version !== 1) fail(`version ${obj.version} is not supported; expected 1`);
  if (typeof obj.delta !== "number") fail(`delta ${obj.delta} must be a number`);
  if (!Array.isArray(obj.orders) || !Array.isArray(obj.releases) || !Array.isArray(obj.rounds)) {
    fail("orders, releases and rounds must be arrays");
  }
  let ledger = createLedger({ delta: obj.delta as number, orders: obj.orders as number[] });
  const releases = obj.releases as Release[];
  const rounds = obj.rounds as RoundSpend[];
  let next = 0;
  for (const spend of rounds) {
    if (
      !(Number.isInteger(spend.releases) && spend.releases >= next &&
        spend.releases <= releases.length)
    ) {
      fail(`round ${spend.round} covers ${spend.releases} releases, out of order or out of range`);
    }
    for (; next < spend.releases; next++) {
      ledger = recordRelease(ledger, releases[next]);
    }
    ledger = closeRound(
      ledger,
      spend.round,
      spend.nominalEpsilon === undefined ? {} : {
        nominalEpsilon: spend.nominalEpsilon,
      },
    );
    const replayed = lastRound(ledger) as RoundSpend;
    const same = replayed.epsilon === spend.epsilon ||
      Math.abs(replayed.epsilon - spend.epsilon) <= 1e-9 * Math.abs(spend.epsilon);
    if (!same) {
      fail(
        `round ${spend.round}: stored ε ${spend.epsilon} ≠ ${replayed.epsilon} recomputed from ` +
          `its releases; the file was edited or written with other orders`,
      );
    }
  }
  for (; next < releases.length; next++) ledger = recordRelease(ledger, releases[next]);
  return ledger;
}

/**
 * Restores a ledger saved as a plain object (e.g. inside a run's `state.json`, written with
 * `JSON.stringify`, which turns ∞ into null) — {@link ledgerFromJson} on an object.
 *
 * @example
 * ```ts
 * const saved = JSON.parse(JSON.stringify(createLedger()));
 * restoreLedger(saved).releases.length; // 0
 * ```
 */
export function restoreLedger(state: unknown, source = "saved ledger"): PrivacyLedger {
  return ledgerFromJson(state, source);
}

// ---------------------------------------------------------------------------------------------
// Calibration (SPEC.md §4.1, §4.2).

/** What the paper calibration computed (SPEC.md §4.1). */
export interface PaperCalibration {
  /** σ: the per-client noise std is σ·C/√K per entry. */
  noiseMultiplier: number;
  /** δ = 1/K, as the reference. */
  delta: number;
  /** b/N. */
  sampleRate: number;
  /** T·E·N/b, not rounded (see {@link paperCalibration}). */
  steps: number;
}

/**
 * The reference's noise calibration ("paper", SPEC.md §4.1): opacus `get_noise_multiplier` with
 * `accountant="rdp"`, tolerance 0.01, δ = 1/K, `sample_rate = b/N`, `steps = T·E·N/b`. Mirrors
 * the reference's `compute_noise_multiplier` (DEeR `utils.py`): N = Σ_k n_k over the clients'
 * index lists, `sample_rate = b / N`, and `steps = Σ_k T·E·(n_k/b)` summed client by client in
 * floating point and passed to opacus **unrounded** — opacus only applies `int()` when given
 * epochs instead of steps, so the per-step RDP is multiplied by a non-integer step count. Pass
 * `clientSizes` to reproduce that sum exactly; with `totalTrainImages` alone the steps are
 * `T·E·(N/b)` (equal up to rounding in the last bits).
 *
 * This σ is NOT a client-level guarantee for the mechanism that runs (SPEC.md §4.2); record
 * releases with {@link gaussianRelease} to get the actual ε.
 *
 * @example
 * ```ts
 * const cal = paperCalibration({
 *   epsilon: 1, numClients: 12, totalTrainImages: 2400, batchPerClient: 10, rounds: 50, localEpochs: 5,
 * });
 * cal.delta; // 1/12
 * ```
 */
export function paperCalibration(args: {
  epsilon: number;
  numClients: number;
  batchPerClient: number;
  rounds: number;
  localEpochs: number;
  totalTrainImages?: number;
  clientSizes?: readonly number[];
  tolerance?: number;
}): PaperCalibration {
  const where = "paperCalibration";
  const { epsilon, numClients: k, batchPerClient: b, rounds: t, localEpochs: e } = args;
  const posInt = (field: string, v: number) => {
    if (!(Number.isInteger(v) && v > 0)) {
      throw new Error(`${where}: ${field} ${v} must be a positive integer`);
    }
  };
  posInt("numClients", k);
  posInt("batchPerClient", b);
  posInt("rounds", t);
  posInt("localEpochs", e);
  let n: number, steps: number;
  if (args.clientSizes !== undefined) {
    args.clientSizes.forEach((s, i) => {
      if (!(Number.isInteger(s) && s >= 0)) {
        throw new Error(`${where}: clientSizes[${i}] ${s} must be an integer ≥ 0`);
      }
    });
    n = args.clientSizes.reduce((a, s) => a + s, 0);
    if (args.totalTrainImages !== undefined && args.totalTrainImages !== n) {
      throw new Error(`${where}: totalTrainImages ${args.totalTrainImages} ≠ Σ clientSizes = ${n}`);
    }
    // Python: sum([T * E * (n_k / b) for n_k in sizes]), left to right from 0.
    steps = args.clientSizes.reduce((acc, s) => acc + t * e * (s / b), 0);
  } else if (args.totalTrainImages !== undefined) {
    n = args.totalTrainImages;
    posInt("totalTrainImages", n);
    steps = t * e * (n / b);
  } else {
    throw new Error(`${where}: give totalTrainImages (N) or clientSizes`);
  }
  if (!(n > 0)) throw new Error(`${where}: the clients hold no training images`);
  const sampleRate = b / n;
  if (sampleRate > 1) throw new Error(`${where}: batchPerClient ${b} exceeds N = ${n}`);
  const delta = 1 / k;
  const noiseMultiplier = noiseMultiplierForBudget({
    targetEpsilon: epsilon,
    targetDelta: delta,
    sampleRate,
    steps,
    tolerance: args.tolerance ?? 0.01,
  });
  return { noiseMultiplier, delta, sampleRate, steps };
}

/**
 * σ of the paper calibration ({@link paperCalibration}).
 *
 * @example
 * ```ts
 * paperNoiseMultiplier({
 *   epsilon: 1, numClients: 12, totalTrainImages: 2400, batchPerClient: 10, rounds: 50, localEpochs: 5,
 * });
 * ```
 */
export function paperNoiseMultiplier(args: Parameters<typeof paperCalibration>[0]): number {
  return paperCalibration(args).noiseMultiplier;
}

/**
 * Per-entry noise std each client adds: `σ·C/√K` (SPEC.md §4.1), so the sum over K clients
 * carries std σ·C.
 *
 * @example
 * ```ts
 * perClientNoiseStd({ noiseMultiplier: 1, clip: 2, numClients: 4 }); // 1
 * ```
 */
export function perClientNoiseStd(
  args: { noiseMultiplier: number; clip: number; numClients: number },
): number {
  const { noiseMultiplier, clip, numClients } = args;
  if (!(noiseMultiplier >= 0)) {
    throw new Error(`perClientNoiseStd: noiseMultiplier ${noiseMultiplier} must be ≥ 0`);
  }
  if (!(clip > 0)) throw new Error(`perClientNoiseStd: clip ${clip} must be > 0`);
  if (!(Number.isInteger(numClients) && numClients > 0)) {
    throw new Error(`perClientNoiseStd: numClients ${numClients} must be a positive integer`);
  }
  return (noiseMultiplier * clip) / Math.sqrt(numClients);
}

/**
 * The client-level ε the paper mechanism actually spends with isotropic noise (no regulator),
 * known before the run: `releases` releases of `tensors` per-tensor-clipped tensors each, noise
 * multiplier σ/√m per release (module documentation), at `delta` (default 1e-5). LoRA:
 * T releases of 72; FFA-LoRA: T of 36; DEeR without regulator: 2T of 36. With the regulator the
 * value depends on the peers' σ_max and comes from the run's ledger.
 *
 * @example
 * ```ts
 * paperMechanismEpsilon({ noiseMultiplier: 1, tensors: 72, releases: 50 }).epsilon; // huge
 * ```
 */
export function paperMechanismEpsilon(args: {
  noiseMultiplier: number;
  tensors: number;
  releases: number;
  delta?: number;
  sampleRate?: number;
}): { epsilon: number; order: number } {
  const r = gaussianRelease({
    round: 0,
    phase: "AB",
    noiseMultiplier: args.noiseMultiplier,
    clip: 1,
    clipping: "per-tensor",
    tensors: args.tensors,
    sampleRate: args.sampleRate,
  });
  if (!(args.releases >= 0 && Number.isFinite(args.releases))) {
    throw new Error(`paperMechanismEpsilon: releases ${args.releases} must be finite and ≥ 0`);
  }
  return epsilonForReleases(
    [{ noiseMultiplier: r.noiseMultiplier, sampleRate: r.sampleRate, count: args.releases }],
    args.delta ?? 1e-5,
  );
}

/** What the strict calibration computed (SPEC.md §4.2). */
export interface StrictCalibration {
  /** σ: noise std σ·C on the sum, σC/√K per client. */
  noiseMultiplier: number;
  /** Total composed releases (T·releasesPerRound). */
  releases: number;
  delta: number;
  sampleRate: number;
}

/**
 * Strict calibration (SPEC.md §4.2): the σ for which `rounds·releasesPerRound` client-level
 * Gaussian releases of sensitivity C with noise σC (whole-release or product-space clipping),
 * sampled at `sampleRate` (1 = full participation), spend at most `targetEpsilon` at `delta`
 * (default 1e-5) — the bisection of SPEC.md §4.4 over that mechanism. `releasesPerRound` is 1
 * for LoRA-like methods and 2 for DEeR (phase B and phase A).
 *
 * @example
 * ```ts
 * strictCalibration({ targetEpsilon: 8, rounds: 50, releasesPerRound: 2 }).noiseMultiplier;
 * ```
 */
export function strictCalibration(args: {
  targetEpsilon: number;
  rounds: number;
  releasesPerRound: 1 | 2;
  sampleRate?: number;
  delta?: number;
  tolerance?: number;
}): StrictCalibration {
  const { targetEpsilon, rounds, releasesPerRound, sampleRate = 1, delta = 1e-5 } = args;
  if (!(Number.isInteger(rounds) && rounds > 0)) {
    throw new Error(`strictCalibration: rounds ${rounds} must be a positive integer`);
  }
  if (releasesPerRound !== 1 && releasesPerRound !== 2) {
    throw new Error(
      `strictCalibration: releasesPerRound ${releasesPerRound} must be 1 (LoRA-like) or 2 (DEeR)`,
    );
  }
  const releases = rounds * releasesPerRound;
  const noiseMultiplier = noiseMultiplierForBudget({
    targetEpsilon,
    targetDelta: delta,
    sampleRate,
    steps: releases,
    tolerance: args.tolerance ?? 0.01,
  });
  return { noiseMultiplier, releases, delta, sampleRate };
}
