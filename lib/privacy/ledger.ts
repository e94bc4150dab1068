/**
 * The privacy ledger: what each aggregation released, as data, and the client-level ε that
 * record adds up to (docs/privacy.md#the-release-record: describe what the mechanism released as
 * data, let the accountant turn that record into ε). The calibrations are in `calibration.ts`.
 *
 * ## The record
 * A {@link Release} says: in round `round`, phase `phase`, the server published the sum over
 * clients of their clipped updates plus Gaussian noise of std `noiseStd` (σ·C on the sum, i.e.
 * σC/√K per client), where one client's contribution has L2 sensitivity `sensitivity` (measured
 * in the noise's own metric for regulated noise); `noiseMultiplier = noiseStd/sensitivity`
 * is what the RDP accountant consumes, with the client-level sampling rate `sampleRate` (1 under
 * full participation) and `count` identical releases. ε is only ever computed from these
 * records ({@link spentBudget}); the ledger refuses a round whose ε would fall below the
 * previous one.
 *
 * The derivation of each record's sensitivity and noise multiplier (paper and strict mechanisms)
 * is in docs/privacy.md#what-the-paper-mechanism-really-spends.
 *
 * ## Local DP
 * A ledger made with `localSites: K` accounts each site on its own
 * (docs/privacy.md#local-dp-an-untrusted-coordinator): every record lists the `sites` that made
 * it, site k's ε composes the records that list k, and the ledger's ε is the largest site's; each
 * closed round keeps every site's ε in `sites`.
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
import { DEFAULT_ORDERS, epsilonForReleases } from "./rdp.ts";
import { pldEpsilonForReleases } from "./pld.ts";

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
   * Std of the Gaussian noise on the released sum (σ·C; σC/√K per client), in the units of
   * `sensitivity`: `noiseMultiplier` must equal `noiseStd / sensitivity` (checked on every record).
   */
  noiseStd: number;
  /** Clip norm C used by the clients. */
  clip: number;
  /** The calibration of the run that made the release (absent for hand-built records). */
  calibration?: Calibrated;
  /**
   * Local DP (`calibration: "local"`): the sites that each released their own noised update in
   * this release. Each of them spent one Gaussian release of this noise multiplier; no one else
   * did (docs/privacy.md#local-dp-an-untrusted-coordinator). Absent under central noise.
   */
  sites?: number[];
  /**
   * Whether the noise multiplier is an exact property of the mechanism (false: a bound that
   * uses the clients' private peers, paper calibration with module1 off; see docs/privacy.md).
   */
  exact?: boolean;
  /** Free text: how the sensitivity was derived, for the reader of the JSON. */
  note?: string;
}

/** The calibrations a release record can name. */
export type Calibrated = "paper" | "strict" | "local";

/** The spent ε recorded when a round closed. */
export interface RoundSpend {
  round: number;
  /**
   * Client-level ε spent by all releases up to and including this round, at the ledger's δ;
   * under local DP the largest of the sites' ε.
   */
  epsilon: number;
  /** Local DP: each site's ε (site k at index k), composed over the releases it made. */
  sites?: number[];
  /** The RDP order attaining it. */
  order: number;
  /** How many release records were included (for replay on restore). */
  releases: number;
  /** What the calibration targeted, if the caller says (docs/privacy.md#what-every-run-reports). */
  nominalEpsilon?: number;
}

/** The accountant's state: a plain, JSON-serialisable object. */
export interface PrivacyLedger {
  version: 1;
  /** δ at which ε is reported (default 1e-5). */
  delta: number;
  /**
   * The accountant that turns the records into ε: `"pld"` (privacy loss distributions, exact
   * for full participation, `pld.ts`) or, when absent, RDP over `orders` (`rdp.ts`, as opacus).
   */
  accountant?: "pld";
  /**
   * Local DP: the number of sites K. ε is then accounted per site, over the releases whose
   * `sites` list it, and the reported ε is the largest site's; absent under central noise.
   */
  localSites?: number;
  /** RDP orders. */
  orders: number[];
  releases: Release[];
  rounds: RoundSpend[];
}

/** Alias of {@link PrivacyLedger}, the name the engine's checkpoints use. */
export type LedgerState = PrivacyLedger;

const PHASES: readonly ReleasePhase[] = ["AB", "A", "B"];

/**
 * A new, empty ledger reporting ε at `delta` (default 1e-5, docs/privacy.md#strict-calibration).
 *
 * @example
 * ```ts
 * const ledger = createLedger();
 * ledger.delta; // 1e-5
 * ```
 */
export function createLedger(
  options: {
    delta?: number;
    orders?: readonly number[];
    accountant?: Accountant;
    /** Local DP: the number of sites, each accounted on its own. */
    localSites?: number;
  } = {},
): PrivacyLedger {
  const { delta = 1e-5, orders = DEFAULT_ORDERS, accountant = "rdp", localSites } = options;
  if (!(delta > 0 && delta < 1)) throw new Error(`createLedger: delta ${delta} must be in (0, 1)`);
  if (orders.length === 0 || orders.some((a) => !(a > 1))) {
    throw new Error(`createLedger: orders must be a non-empty list of numbers > 1`);
  }
  if (accountant !== "rdp" && accountant !== "pld") {
    throw new Error(`createLedger: accountant "${accountant}" must be "rdp" or "pld"`);
  }
  if (localSites !== undefined && !(Number.isInteger(localSites) && localSites >= 1)) {
    throw new Error(`createLedger: localSites ${localSites} must be an integer ≥ 1 (the sites K)`);
  }
  return {
    version: 1,
    delta,
    ...(accountant === "pld" ? { accountant } : {}),
    ...(localSites !== undefined ? { localSites } : {}),
    orders: [...orders],
    releases: [],
    rounds: [],
  };
}

/** An accountant: Rényi DP (`rdp.ts`, as opacus) or privacy loss distributions (`pld.ts`). */
export type Accountant = "rdp" | "pld";

/**
 * Identical releases merged into blocks with a `count` (first appearance order kept), so an
 * accountant multiplies one per-release cost by the count instead of adding it up one by one.
 *
 * @example
 * ```ts
 * mergeIdentical([
 *   { noiseMultiplier: 1, sampleRate: 1, count: 1 },
 *   { noiseMultiplier: 1, sampleRate: 1, count: 1 },
 * ]); // [{ noiseMultiplier: 1, sampleRate: 1, count: 2 }]
 * ```
 */
export function mergeIdentical(
  releases: readonly Pick<Release, "noiseMultiplier" | "sampleRate" | "count">[],
): { noiseMultiplier: number; sampleRate: number; count: number }[] {
  const blocks = new Map<string, { noiseMultiplier: number; sampleRate: number; count: number }>();
  for (const r of releases) {
    const key = `${r.noiseMultiplier}|${r.sampleRate}`;
    const block = blocks.get(key);
    if (block) block.count += r.count;
    else {
      blocks.set(key, {
        noiseMultiplier: r.noiseMultiplier,
        sampleRate: r.sampleRate,
        count: r.count,
      });
    }
  }
  return [...blocks.values()];
}

/**
 * ε spent at `delta` by `releases` under `accountant` (and the RDP order attaining it; NaN for
 * the PLD accountant, which has none).
 *
 * @example
 * ```ts
 * const r = [{ noiseMultiplier: 2, sampleRate: 1, count: 10 }];
 * accountEpsilon(r, 1e-5, "pld").epsilon < accountEpsilon(r, 1e-5, "rdp").epsilon; // true
 * ```
 */
export function accountEpsilon(
  releases: readonly Pick<Release, "noiseMultiplier" | "sampleRate" | "count">[],
  delta: number,
  accountant: Accountant,
  orders: readonly number[] = DEFAULT_ORDERS,
  /** PLD grid spacing (coarser: faster, and a looser upper bound). */
  discretization?: number,
): { epsilon: number; order: number } {
  if (accountant === "pld") {
    const pld = pldEpsilonForReleases(mergeIdentical(releases), delta, discretization, {
      upperOnly: true,
    });
    return { epsilon: pld.epsilon, order: NaN };
  }
  return epsilonForReleases(
    releases.map((r) => ({
      noiseMultiplier: r.noiseMultiplier,
      sampleRate: r.sampleRate,
      count: r.count,
    })),
    delta,
    orders,
  );
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
  if (r.noiseStd === undefined) {
    fail(
      "noiseStd",
      "is missing: every release records the std of its noise (a ledger written before " +
        "noiseStd was recorded cannot be checked; rerun it)",
    );
  }
  if (!(r.noiseStd >= 0 && Number.isFinite(r.noiseStd))) {
    fail("noiseStd", `${r.noiseStd} must be finite and ≥ 0`);
  }
  if (!(r.clip > 0 && Number.isFinite(r.clip))) fail("clip", `${r.clip} must be finite and > 0`);
  if (
    r.calibration !== undefined && r.calibration !== "paper" && r.calibration !== "strict" &&
    r.calibration !== "local"
  ) {
    fail("calibration", `"${r.calibration}" must be "paper", "strict" or "local"`);
  }
  if (r.sites !== undefined) {
    if (
      !Array.isArray(r.sites) ||
      r.sites.some((k, i) => !(Number.isInteger(k) && k >= 0) || (i > 0 && k <= r.sites![i - 1]))
    ) {
      fail("sites", `${JSON.stringify(r.sites)} must be increasing integers ≥ 0 (site indices)`);
    }
  }
  if (r.exact !== undefined && typeof r.exact !== "boolean") fail("exact", "must be a boolean");
  if (r.note !== undefined && typeof r.note !== "string") fail("note", "must be a string");
  const implied = r.sensitivity === 0 ? Infinity : r.noiseStd / r.sensitivity;
  const agrees = implied === r.noiseMultiplier ||
    Math.abs(implied - r.noiseMultiplier) <= 1e-9 * Math.max(implied, r.noiseMultiplier);
  if (!agrees) {
    fail(
      "noiseMultiplier",
      `${r.noiseMultiplier} disagrees with noiseStd/sensitivity = ${implied}; build releases ` +
        `with releaseRecord()`,
    );
  }
}

/**
 * The one builder of a {@link Release}: checks every field and derives `noiseMultiplier =
 * noiseStd / sensitivity` (∞ for a zero sensitivity). The privacy mechanisms
 * (`mechanism.ts`) and {@link gaussianRelease} build their records with it, so the ledger only
 * ever holds records whose noise multiplier agrees with the noise and sensitivity they state.
 *
 * @example
 * ```ts
 * releaseRecord({ round: 1, phase: "B", noiseStd: 2, sensitivity: 0.5, clip: 0.5 })
 *   .noiseMultiplier; // 4
 * ```
 */
export function releaseRecord(args: {
  round: number;
  phase: ReleasePhase;
  noiseStd: number;
  sensitivity: number;
  clip: number;
  sampleRate?: number;
  count?: number;
  calibration?: Calibrated;
  exact?: boolean;
  note?: string;
  /** Local DP: the sites that made this release (see {@link Release.sites}). */
  sites?: readonly number[];
  /**
   * The noise multiplier, when the caller computed it from unnormalised quantities (it must
   * agree with `noiseStd / sensitivity` to 1e-9 relative); derived when absent.
   */
  noiseMultiplier?: number;
}): Release {
  const release: Release = {
    round: args.round,
    phase: args.phase,
    noiseMultiplier: args.noiseMultiplier ??
      (args.sensitivity === 0 ? Infinity : args.noiseStd / args.sensitivity),
    sampleRate: args.sampleRate ?? 1,
    count: args.count ?? 1,
    sensitivity: args.sensitivity,
    noiseStd: args.noiseStd,
    clip: args.clip,
  };
  if (args.calibration !== undefined) release.calibration = args.calibration;
  if (args.exact !== undefined) release.exact = args.exact;
  if (args.note !== undefined) release.note = args.note;
  if (args.sites !== undefined) release.sites = [...args.sites];
  validateRelease(release, "releaseRecord");
  return release;
}

/**
 * The L2 sensitivity of one client's clipped release, by how it was clipped and noised (see
 * the module documentation for the derivation; m tensors, peers with largest singular values
 * s_t):
 *
 * | clipping | noise | sensitivity |
 * |---|---|---|
 * | `"per-tensor"` (paper) | isotropic | C·√m |
 * | `"per-tensor"` (paper) | regulated | C·√(Σ s_t²) |
 * | `"release"` (strict) | isotropic | C |
 * | `"release"` | regulated | C·max_t s_t |
 * | `"product"` (strict) | regulated | C |
 *
 * `tensors` is m (needed for per-tensor clipping with isotropic noise); `peerSigmaMax` gives one
 * s_t per tensor when the noise is regulated. Returns the sensitivity and a sentence saying how
 * it was derived.
 *
 * @example
 * ```ts
 * clippedSensitivity({ clip: 2, clipping: "per-tensor", tensors: 72 }).sensitivity; // 2·√72
 * ```
 */
export function clippedSensitivity(args: {
  clip: number;
  clipping: "per-tensor" | "release" | "product";
  tensors?: number;
  peerSigmaMax?: readonly number[];
}): { sensitivity: number; how: string } {
  const where = "clippedSensitivity";
  const { clip, clipping } = args;
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
  return { sensitivity: clip * factor, how };
}

/**
 * The record of one aggregation's Gaussian release at a configured σ (noise std σ·C on the sum,
 * σC/√K per client), with the sensitivity of {@link clippedSensitivity} — a convenience over
 * {@link releaseRecord}. `sampleRate` defaults to 1 (full participation), `count` to 1.
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
}): Required<Omit<Release, "calibration" | "exact" | "sites">> {
  const sigma = args.noiseMultiplier;
  if (!(sigma >= 0 && Number.isFinite(sigma))) {
    throw new Error(`gaussianRelease: noiseMultiplier ${sigma} must be finite and ≥ 0`);
  }
  const { sensitivity, how } = clippedSensitivity(args);
  const r = releaseRecord({
    round: args.round,
    phase: args.phase,
    noiseStd: sigma * args.clip,
    sensitivity,
    clip: args.clip,
    sampleRate: args.sampleRate,
    count: args.count,
    note: args.note ?? how,
  });
  return { ...r, note: r.note! };
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
  checkTrust(ledger, release, "recordRelease");
  const closed = lastRound(ledger);
  if (closed !== undefined && release.round <= closed.round) {
    throw new Error(
      `recordRelease: release.round ${release.round} is already closed (last closed round ` +
        `${closed.round}); releases must be recorded before closeRound`,
    );
  }
  return {
    ...ledger,
    releases: [
      ...ledger.releases,
      { ...release, ...(release.sites ? { sites: [...release.sites] } : {}) },
    ],
  };
}

/**
 * A local-DP ledger holds only records that list their sites (all below K); a central one only
 * records without sites.
 */
function checkTrust(ledger: PrivacyLedger, r: Release, where: string): void {
  const K = ledger.localSites;
  if (K === undefined) {
    if (r.sites !== undefined) {
      throw new Error(
        `${where}: a local-DP release (with sites) in a ledger of central noise; create the ` +
          `ledger with localSites`,
      );
    }
    return;
  }
  if (r.sites === undefined) {
    throw new Error(
      `${where}: a release without sites in a local-DP ledger (${K} sites): every local ` +
        `release lists the sites that made it`,
    );
  }
  const outside = r.sites.find((k) => k >= K);
  if (outside !== undefined) {
    throw new Error(`${where}: release.sites names site ${outside}; the ledger has ${K} sites`);
  }
}

/**
 * Client-level ε and the RDP order attaining it, spent by the first `upTo` releases (all by
 * default) at the ledger's δ (or `delta`), composing their RDP per order
 * (docs/privacy.md#rdp-as-opacus).
 *
 * @example
 * ```ts
 * spentBudget(createLedger()); // { epsilon: 0, order: NaN }: nothing released yet
 * ```
 */
export function spentBudget(
  ledger: PrivacyLedger,
  options: { delta?: number; upTo?: number } = {},
): { epsilon: number; order: number; sites?: number[] } {
  const releases = ledger.releases.slice(0, options.upTo ?? ledger.releases.length);
  const delta = options.delta ?? ledger.delta;
  const accountant = ledger.accountant ?? "rdp";
  if (ledger.localSites !== undefined) return perSiteBudget(ledger, releases, delta, accountant);
  if (releases.length === 0) return { epsilon: 0, order: NaN };
  return accountEpsilon(releases, delta, accountant, ledger.orders);
}

/**
 * Local DP: site k's ε composes the releases that list k; the run's ε is the largest site's
 * (the order is that site's). Sites with the same releases share one computation.
 */
function perSiteBudget(
  ledger: PrivacyLedger,
  releases: readonly Release[],
  delta: number,
  accountant: Accountant,
): { epsilon: number; order: number; sites: number[] } {
  const K = ledger.localSites!;
  const made: Release[][] = Array.from({ length: K }, () => []);
  for (const r of releases) for (const k of r.sites ?? []) made[k].push(r);
  const memo = new Map<string, { epsilon: number; order: number }>();
  const spent = made.map((own) => {
    if (own.length === 0) return { epsilon: 0, order: NaN };
    const blocks = mergeIdentical(own);
    const key = JSON.stringify(blocks);
    let e = memo.get(key);
    if (!e) {
      e = accountEpsilon(blocks, delta, accountant, ledger.orders);
      memo.set(key, e);
    }
    return e;
  });
  let worst = { epsilon: 0, order: NaN };
  for (const e of spent) if (e.epsilon > worst.epsilon) worst = e;
  return { ...worst, sites: spent.map((e) => e.epsilon) };
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
  const { epsilon, order, sites } = spentBudget(ledger);
  if (previous !== undefined && !(epsilon >= previous.epsilon)) {
    throw new Error(
      `closeRound: spent ε would decrease from ${previous.epsilon} (round ${previous.round}) to ` +
        `${epsilon}; the ledger is inconsistent`,
    );
  }
  const spend: RoundSpend = { round, epsilon, order, releases: ledger.releases.length };
  if (options.nominalEpsilon !== undefined) spend.nominalEpsilon = options.nominalEpsilon;
  if (sites !== undefined) spend.sites = sites;
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
  if (obj.accountant !== undefined && obj.accountant !== "pld") {
    fail(
      `accountant ${JSON.stringify(obj.accountant)} is not supported; expected "pld" or none (RDP)`,
    );
  }
  if (obj.localSites !== undefined && !(Number.isInteger(obj.localSites))) {
    fail(`localSites ${JSON.stringify(obj.localSites)} must be the number of sites`);
  }
  let ledger = createLedger({
    delta: obj.delta as number,
    orders: obj.orders as number[],
    accountant: obj.accountant === "pld" ? "pld" : "rdp",
    localSites: obj.localSites as number | undefined,
  });
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
