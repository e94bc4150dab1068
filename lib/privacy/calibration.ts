/**
 * Calibration: the noise multiplier σ a run's privacy mechanism uses, in the three calibrations
 * (docs/privacy.md):
 *
 * * `paper` — as the reference: opacus' sample-level RDP search at δ = 1/K over the
 *   reference's step count ({@link paperCalibration}). Not a client-level guarantee; the ε the
 *   mechanism actually spends comes from its release records.
 * * `strict` — client-level: the smallest σ (within the search tolerance) for which the very
 *   releases the run will emit ({@link strictRelease}, one per phase and round) spend at most
 *   the target ε at δ ({@link strictCalibration}) — the idea of dp_accounting's
 *   `make_event_from_param`: the accountant is handed the mechanism's own records as a function
 *   of σ, so any number of releases per round is calibrated correctly.
 * * `local` — local DP, for an untrusted coordinator: every site noises its own release with
 *   σ_loc·C; σ_loc is the strict search over the releases one site makes when it takes part in
 *   every planned release, at rate 1 (no amplification: the coordinator sees who took part),
 *   and each site is accounted on its own ({@link localRelease}).
 *
 * @example
 * ```ts
 * const cal = calibrate(
 *   { calibration: "strict", clip: 0.5, epsilon: 6 },
 *   { phases: ["B", "A"], numClients: 12, participation: 1, rounds: 8, localEpochs: 1,
 *     batchSize: 10, clientSizes: new Array(12).fill(100) },
 * );
 * cal.noiseMultiplier; // σ for 16 client-level releases at ε = 6, δ = 1e-5
 * ```
 * @module
 */
import { epsilonForReleases, noiseMultiplierForBudget, searchNoiseMultiplier } from "./rdp.ts";
import {
  type Accountant,
  accountEpsilon,
  gaussianRelease,
  mergeIdentical,
  type Release,
  type ReleasePhase,
  releaseRecord,
} from "./ledger.ts";

/** DP settings as the user gives them. */
export interface DpSettings {
  /**
   * `paper` (the reference's mechanism), `strict` (client-level, trusted server adds the noise)
   * or `local` (local DP: every site noises its own release; the server adds none).
   */
  calibration: "paper" | "strict" | "local";
  /** Clip bound C. */
  clip: number;
  /**
   * Target ε: sample-level at δ = 1/K for `paper` (the reference's claim), client-level for
   * `strict`, per site for `local`.
   */
  epsilon: number;
  /** δ of the client-level accounting (default 1e-5); `paper` still calibrates at δ = 1/K. */
  delta?: number;
  /**
   * Budget guard (strict and local calibrations): the run stops before a round whose releases
   * would bring the spent client-level ε (local: any site's) above this; that round's releases
   * are never made.
   */
  maxEpsilon?: number;
  /**
   * The accountant of the client-level ε (and of the strict calibration's search): `pld`
   * (privacy loss distributions, the tightest; default under strict and local calibration) or `rdp` (as
   * opacus; default under paper calibration, whose σ always comes from opacus' RDP search).
   */
  accountant?: Accountant;
  /**
   * Where the noise this process draws (and the Poisson cohorts) come from: `seeded` (default),
   * the run's named streams — reproducible from the seed, so anyone who knows the seed can
   * regenerate the noise and subtract it: right for simulation studies, not for a model that is
   * released; or `secret`, streams keyed by a random key the run keeps in its seed folder
   * (`noise.key`, lib/privacy/noise_key.ts), which nobody without that file can predict.
   */
  noise?: "seeded" | "secret";
}

/** The accountant a run uses: the one asked for, else RDP for paper and PLD otherwise. */
export function accountantOf(dp: DpSettings): Accountant {
  return dp.accountant ?? (dp.calibration === "paper" ? "rdp" : "pld");
}

/** The calibrated mechanism of a run. */
export interface Calibration {
  calibration: "paper" | "strict" | "local";
  clip: number;
  /**
   * σ: noise std is σC/√K per client (paper), σ·C·max p_k on the weighted sum (strict), or
   * σ·C on every site's own release (local: σ_loc).
   */
  noiseMultiplier: number;
  /** The ε the calibration targeted, and the δ it targeted it at. */
  nominalEpsilon: number;
  nominalDelta: number;
  /** δ at which the spent client-level ε is reported. */
  accountingDelta: number;
  /** The accountant of the spent ε (and of the strict search). */
  accountant: Accountant;
  /** Client-level sampling rate of each release (participation fraction). */
  sampleRate: number;
  /** Releases the calibration planned for (T × phases). */
  plannedReleases: number;
  /** Local DP: the number of sites K, each accounted on its own (absent otherwise). */
  localSites?: number;
  /** Paper calibration: why its nominal ε is not a client-level guarantee. */
  warning?: string;
}

/** What {@link calibrate} needs to know about the run. */
export interface CalibrationSetting {
  /** The releases of one round, by the factors each releases (one per phase of the method). */
  phases: readonly ReleasePhase[];
  numClients: number;
  participation: number;
  rounds: number;
  localEpochs: number;
  batchSize: number;
  /** Training images per client (the reference's steps = Σ_k T·E·n_k/b). */
  clientSizes: number[];
}

/** Calibrates σ for a run: the paper calibration, or the strict one over the run's releases. */
export function calibrate(dp: DpSettings, s: CalibrationSetting): Calibration {
  const accountingDelta = dp.delta ?? 1e-5;
  const plannedReleases = s.rounds * s.phases.length;
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
      accountant: accountantOf(dp),
      sampleRate: 1,
      plannedReleases,
      warning: `paper calibration: the nominal ε = ${dp.epsilon} (δ = 1/${s.numClients}) is a ` +
        `sample-level figure for a mechanism that is not sample-level; the client-level ε this ` +
        `run actually spends (δ = ${accountingDelta}) is recorded every round`,
    };
  }
  const local = dp.calibration === "local";
  // Local DP: a site's own releases are not amplified by sampling (the coordinator sees who took
  // part), so σ_loc is searched at rate 1 over every planned release — the worst site's run.
  const sampleRate = local ? 1 : s.participation;
  const { noiseMultiplier } = strictCalibration({
    targetEpsilon: dp.epsilon,
    rounds: s.rounds,
    phases: s.phases,
    sampleRate,
    delta: accountingDelta,
    clip: dp.clip,
    accountant: accountantOf(dp),
  });
  // Keys in the order the records and saved state have always listed them.
  const head = {
    clip: dp.clip,
    noiseMultiplier,
    nominalEpsilon: dp.epsilon,
    nominalDelta: accountingDelta,
    accountingDelta,
    accountant: accountantOf(dp),
  };
  return local
    ? {
      calibration: "local",
      ...head,
      sampleRate,
      plannedReleases,
      localSites: s.numClients,
    }
    : { calibration: "strict", ...head, sampleRate: s.participation, plannedReleases };
}

/**
 * One release of the strict mechanism, as the ledger records it: noise std σ·C on the sum of
 * clipped releases (each of norm ≤ C, whole-release or product-space clipping), sensitivity C,
 * sampled at rate q. It depends on the calibration alone, so it is known before any client
 * trains — which lets the calibration search over it and a budget guard stop before a round.
 *
 * @example
 * ```ts
 * strictRelease({ noiseMultiplier: 1.3, clip: 0.5, sampleRate: 1 }, 1, "B").noiseMultiplier; // 1.3
 * ```
 */
export function strictRelease(
  cal: Pick<Calibration, "noiseMultiplier" | "clip" | "sampleRate">,
  round: number,
  phase: ReleasePhase,
): Release {
  return releaseRecord({
    round,
    phase,
    ...gaussianAtClip(cal),
    sampleRate: cal.sampleRate,
    calibration: "strict",
    exact: true,
    note: "whole-release (or product-space) clip to C, noise σ·C on the sum: sensitivity C",
  });
}

/**
 * The Gaussian mechanism of a clipped release: sensitivity C, noise std σ·C, and σ itself (not
 * σC/C), so that the records carry exactly the calibrated σ.
 */
function gaussianAtClip(cal: Pick<Calibration, "noiseMultiplier" | "clip">) {
  return {
    noiseStd: cal.noiseMultiplier * cal.clip,
    sensitivity: cal.clip,
    noiseMultiplier: cal.noiseMultiplier,
    clip: cal.clip,
  };
}

/**
 * One release of the local mechanism, as the ledger records it: each site in `sites` clipped its
 * own release to C (whole release, or in product space when regulated) and added its own noise of
 * std σ_loc·C — per site a Gaussian mechanism of sensitivity C (its release against its zero
 * update) and noise multiplier σ_loc, at rate 1. The ledger accounts each site over the releases
 * that list it.
 *
 * @example
 * ```ts
 * localRelease({ noiseMultiplier: 2, clip: 0.5 }, 1, "B", [0, 2]).sites; // [0, 2]
 * ```
 */
export function localRelease(
  cal: Pick<Calibration, "noiseMultiplier" | "clip">,
  round: number,
  phase: ReleasePhase,
  sites: readonly number[],
): Release {
  return releaseRecord({
    round,
    phase,
    ...gaussianAtClip(cal),
    sampleRate: 1,
    calibration: "local",
    exact: true,
    sites,
    note: "local DP: each listed site clipped its release to C (whole or product space) and " +
      "added its own noise σ·C: per site sensitivity C, rate 1",
  });
}

/** The PLD grid spacing of the strict calibration's search (the ledger uses 1e-4). */
const SEARCH_DISCRETIZATION = 1e-3;

/** What the strict calibration computed. */
export interface StrictCalibration {
  /** σ: noise std σ·C on the sum. */
  noiseMultiplier: number;
  /** Total composed releases (rounds × phases). */
  releases: number;
  delta: number;
  sampleRate: number;
}

/**
 * Strict calibration: the σ for which the run's releases — `rounds` rounds of one
 * {@link strictRelease} per entry of `phases` (or `releasesPerRound` of them), sampled at
 * `sampleRate` (1 = full participation) — spend at most `targetEpsilon` at `delta` (default
 * 1e-5) under `accountant` (RDP by default), by the search of opacus' `get_noise_multiplier`
 * over the records themselves.
 *
 * @example
 * ```ts
 * strictCalibration({ targetEpsilon: 8, rounds: 50, phases: ["B", "A"] }).noiseMultiplier;
 * ```
 */
export function strictCalibration(args: {
  targetEpsilon: number;
  rounds: number;
  phases?: readonly ReleasePhase[];
  releasesPerRound?: number;
  sampleRate?: number;
  delta?: number;
  clip?: number;
  tolerance?: number;
  /** `rdp` (default here, as opacus) or `pld`. */
  accountant?: Accountant;
}): StrictCalibration {
  const { targetEpsilon, rounds, sampleRate = 1, delta = 1e-5, clip = 1 } = args;
  if (!(Number.isInteger(rounds) && rounds > 0)) {
    throw new Error(`strictCalibration: rounds ${rounds} must be a positive integer`);
  }
  const phases = args.phases ??
    Array.from({ length: args.releasesPerRound ?? NaN }, () => "AB" as ReleasePhase);
  if (phases.length === 0) {
    throw new Error(
      `strictCalibration: give phases (the releases of one round, e.g. ["B", "A"] for DEeR) or ` +
        `releasesPerRound ≥ 1`,
    );
  }
  const releases = rounds * phases.length;
  // Degenerate settings get opacus' own refusals (and messages).
  if (sampleRate === 0) {
    noiseMultiplierForBudget({ targetEpsilon, targetDelta: delta, sampleRate, steps: releases });
  }
  const epsilonOf = (sigma: number) => {
    const planned: Release[] = [];
    for (let t = 1; t <= rounds; t++) {
      for (const phase of phases) {
        planned.push(strictRelease({ noiseMultiplier: sigma, clip, sampleRate }, t, phase));
      }
    }
    // PLD: the search runs on a 10× coarser grid than the ledger's. Its ε is a looser upper
    // bound, so the σ it finds spends at most the target also on the ledger's finer grid.
    return accountEpsilon(
      mergeIdentical(planned),
      delta,
      args.accountant ?? "rdp",
      undefined,
      SEARCH_DISCRETIZATION,
    ).epsilon;
  };
  const noiseMultiplier = searchNoiseMultiplier(epsilonOf, targetEpsilon, args.tolerance ?? 0.01);
  return { noiseMultiplier, releases, delta, sampleRate };
}

// The paper calibration.

/** What the paper calibration computed (docs/privacy.md#paper-calibration). */
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
 * The reference's noise calibration ("paper", docs/privacy.md): opacus `get_noise_multiplier` with
 * `accountant="rdp"`, tolerance 0.01, δ = 1/K, `sample_rate = b/N`, `steps = T·E·N/b`. Mirrors
 * the reference's `compute_noise_multiplier` (DEeR `utils.py`): N = Σ_k n_k over the clients'
 * index lists, `sample_rate = b / N`, and `steps = Σ_k T·E·(n_k/b)` summed client by client in
 * floating point and passed to opacus **unrounded** — opacus only applies `int()` when given
 * epochs instead of steps, so the per-step RDP is multiplied by a non-integer step count. Pass
 * `clientSizes` to reproduce that sum exactly; with `totalTrainImages` alone the steps are
 * `T·E·(N/b)` (equal up to rounding in the last bits).
 *
 * This σ is NOT a client-level guarantee for the mechanism that runs (docs/privacy.md); record
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
 * Per-entry noise std each client adds: `σ·C/√K` (docs/privacy.md), so the sum over K clients
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
