/**
 * A keyed local-DP site's own privacy account, independent of the coordinator's ledger: the site
 * does not take the coordinator's word for what its releases spend. Every release it makes under
 * its noise key is logged with the noise multiplier it actually used (σ_loc, from the
 * calibration the site computed itself from the task's flags) and its running ε; before a new
 * release it composes, with the toolkit's own accountant (a one-site local-DP ledger:
 * `createLedger({ localSites: 1 })`, `localRelease`, `spentBudget` — the code that gives the
 * coordinator's per-site ε), the releases it already made under the key (every run) and those
 * the task's run still plans, at rate 1 (the coordinator sees who takes part, so no sampling
 * discount), and refuses the task when that would pass its cap `--max_epsilon`
 * (docs/federation.md#a-sites-own-budget).
 *
 * @example
 * ```ts
 * import { siteEpsilon } from "./site_budget.ts";
 * // Ten releases at σ_loc = 2.417, accounted at δ = 1e-5 (PLD):
 * siteEpsilon(Array(10).fill({ phase: "B", noiseMultiplier: 2.417, clip: 0.5 }), 1e-5); // ≈ 5.99
 * ```
 * @module
 */
import { strictCalibration } from "../privacy/calibration.ts";
import { localRelease } from "../privacy/calibration.ts";
import {
  createLedger,
  type PrivacyLedger,
  recordRelease,
  type ReleasePhase,
  spentBudget,
} from "../privacy/ledger.ts";

/** The accountant a site uses: PLD, the toolkit's tightest (and its strict/local default). */
export const SITE_ACCOUNTANT = "pld" as const;

/** A site's own cap: refuse what would take its ε above `maxEpsilon` (null: no cap), at δ. */
export interface SiteBudget {
  maxEpsilon: number | null;
  delta: number;
}

/** One release a keyed site made, as its log keeps it. */
export interface LoggedRelease {
  /** SHA-256 (hex) of the task's inputs (global factors and merges). */
  inputs: string;
  /**
   * SHA-256 (hex) of the whole task: its inputs, the run's settings the site trains under (seed,
   * optimiser, calibration, …) and the site's client index. A second release for the same id is
   * made only for the same task (absent in logs written before it was recorded: then the inputs
   * alone are compared).
   */
  task?: string;
  phase: ReleasePhase;
  /** σ_loc of the release: its noise std over its clip bound (per-site sensitivity C). */
  noiseMultiplier: number;
  clip: number;
  /** The site's ε after this release, over every release of its log, at the log's δ. */
  epsilon: number;
  /** When it was made (ISO time). */
  at: string;
}

/** A task the site refused, as its log keeps it. */
export interface LoggedRefusal {
  /** `<run>/<round>/<phase>`. */
  id: string;
  reason: string;
  at: string;
}

/**
 * A keyed site's log (`<noise key>.releases.json`): every release made under the key by
 * `<run>/<round>/<phase>`, every refused task, and the δ and accountant of its ε.
 */
export interface SiteLog {
  version: 2;
  delta: number;
  accountant: typeof SITE_ACCOUNTANT;
  releases: Record<string, LoggedRelease>;
  refused: LoggedRefusal[];
}

/** An empty log accounting at `delta`. */
export function emptySiteLog(delta: number): SiteLog {
  return { version: 2, delta, accountant: SITE_ACCOUNTANT, releases: {}, refused: [] };
}

/**
 * The site's ε at `delta` over `releases` (each a Gaussian release of sensitivity C and noise
 * multiplier σ at rate 1), with the ledger's own per-site accounting (PLD).
 */
export function siteEpsilon(
  releases: readonly Pick<LoggedRelease, "phase" | "noiseMultiplier" | "clip">[],
  delta: number,
): number {
  let ledger: PrivacyLedger = createLedger({ delta, accountant: SITE_ACCOUNTANT, localSites: 1 });
  releases.forEach((r, i) => {
    ledger = recordRelease(ledger, localRelease(r, i + 1, r.phase, [0]));
  });
  return spentBudget(ledger).sites?.[0] ?? 0;
}

/** What the site is asked to make: a release of `run` at σ_loc, in a run of `planned` releases. */
export interface BudgetAsk {
  id: string;
  run: string;
  phase: ReleasePhase;
  phases: readonly ReleasePhase[];
  rounds: number;
  noiseMultiplier: number;
  clip: number;
}

/**
 * Checks a new release against the site's cap: the releases of `log` plus the ones `ask`'s run
 * still plans (its rounds × phases, less those of the run already in the log; this one among
 * them), at σ_loc and rate 1. Returns the ε after this one release (what the log will hold), or
 * the reason to refuse: the plan would pass the cap, i.e. σ_loc is below what the cap implies for
 * the run's planned releases (given what the key already spent).
 */
export function checkSiteBudget(
  log: SiteLog,
  budget: SiteBudget,
  ask: BudgetAsk,
): { epsilon: number; refusal: null } | { epsilon: number; refusal: string } {
  const made = Object.values(log.releases);
  const one = { phase: ask.phase, noiseMultiplier: ask.noiseMultiplier, clip: ask.clip };
  const epsilon = siteEpsilon([...made, one], log.delta);
  if (budget.maxEpsilon === null) return { epsilon, refusal: null };
  const cap = budget.maxEpsilon;
  const ofRun = Object.keys(log.releases).filter((id) => id.startsWith(`${ask.run}/`)).length;
  const remaining = Math.max(1, ask.rounds * ask.phases.length - ofRun);
  const plan = siteEpsilon([...made, ...Array(remaining).fill(one)], log.delta);
  if (plan <= cap) return { epsilon, refusal: null };
  const fresh = strictCalibration({
    targetEpsilon: cap,
    rounds: ask.rounds,
    phases: ask.phases,
    sampleRate: 1,
    delta: log.delta,
    clip: ask.clip,
    accountant: SITE_ACCOUNTANT,
  }).noiseMultiplier;
  const spent = siteEpsilon(made, log.delta);
  return {
    epsilon,
    refusal: `local DP: refusing ${ask.id}: the run asks for noise multiplier σ_loc = ` +
      `${ask.noiseMultiplier.toPrecision(5)} over ${
        ask.rounds * ask.phases.length
      } planned release(s) (T = ${ask.rounds} × ${ask.phases.length} phase(s)); ` +
      `with the ${made.length} release(s) this key already made (ε = ${spent.toFixed(4)}) ` +
      `and the ${remaining} the run still plans, this site's ε would reach ${
        plan.toFixed(4)
      } at δ = ${log.delta}, above its cap --max_epsilon ${cap} (a fresh key's cap implies ` +
      `σ_loc ≥ ${fresh.toPrecision(5)} for this run); nothing was released`,
  };
}

/**
 * Reads a site log from its JSON text (`source` names the file in errors). A log of the first
 * format (release → input digest, without the noise of each release) cannot be accounted and is
 * refused with the fix.
 */
export function parseSiteLog(text: string, source: string): SiteLog {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new Error(`${source}: ${(err as Error).message}`);
  }
  const fail = (what: string): never => {
    throw new Error(`${source}: ${what}`);
  };
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    fail("expected the site's release log, a JSON object with version 2");
  }
  const obj = raw as Record<string, unknown>;
  if (obj.version === undefined && Object.values(obj).every((v) => typeof v === "string")) {
    fail(
      "a release log of the first format (release → input digest) does not say what noise " +
        "each release used, so this site cannot account it; keep the file as the record of " +
        "what the key released, and start the site with a new --noise_key (its log starts " +
        "empty) — the earlier releases still spent budget on this site's data",
    );
  }
  if (obj.version !== 2) fail(`version ${JSON.stringify(obj.version)}: expected 2`);
  if (!(typeof obj.delta === "number" && obj.delta > 0 && obj.delta < 1)) {
    fail(`delta ${JSON.stringify(obj.delta)} must be in (0, 1)`);
  }
  if (obj.accountant !== SITE_ACCOUNTANT) {
    fail(`accountant ${JSON.stringify(obj.accountant)}: expected "${SITE_ACCOUNTANT}"`);
  }
  const releases = obj.releases;
  if (releases === null || typeof releases !== "object" || Array.isArray(releases)) {
    fail("releases must be an object of <run>/<round>/<phase> → release");
  }
  for (const [id, r] of Object.entries(releases as Record<string, unknown>)) {
    const e = r as Partial<LoggedRelease> | null;
    if (
      e === null || typeof e !== "object" || typeof e.inputs !== "string" ||
      (e.task !== undefined && typeof e.task !== "string") ||
      !["A", "B", "AB"].includes(e.phase as string) ||
      !(typeof e.noiseMultiplier === "number" && e.noiseMultiplier >= 0) ||
      !(typeof e.clip === "number" && e.clip > 0) || typeof e.epsilon !== "number"
    ) {
      fail(
        `releases.${id} must hold inputs, phase (A, B or AB), noiseMultiplier ≥ 0, clip > 0 ` +
          `and epsilon`,
      );
    }
  }
  if (!Array.isArray(obj.refused)) fail("refused must be a list");
  return obj as unknown as SiteLog;
}
