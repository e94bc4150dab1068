/**
 * An empirical privacy audit of a configuration, run by run: the training `runFederated` does,
 * with canary clients ({@link ./canaries.ts}), one run per seed, each turned into an ε estimate
 * with its interval and verdict against the ε the run accounted, and one estimate from all seeds
 * (`privacy/audit.ts`; docs/privacy.md, "Auditing a run"). `deno task audit` and notebook 07 both
 * call it.
 *
 * @example
 * ```ts
 * import { loadInputs } from "../experiment.ts";
 * import { defaultConfig } from "./simulation.ts";
 * import { auditConfig } from "./audit.ts";
 * const inputs = await loadInputs({ dataset: "default", rank: 8, alpha: 8 });
 * const audit = await auditConfig(inputs.backbone, inputs.data, {
 *   ...defaultConfig(),
 *   method: { method: "LoRA" },
 *   rounds: 1,
 *   dp: { calibration: "strict", clip: 0.5, epsilon: 6 },
 * }, { canaries: 20, seeds: [10] });
 * audit.space; // "factor": LoRA's guarantee is in the factors
 * inputs.dispose();
 * ```
 * @module
 */
import type { ImageDataset } from "../data/dataset.ts";
import {
  auditVerdict,
  type CombinedEstimate,
  combineEstimates,
  type EpsilonEstimate,
  estimateEpsilon,
} from "../privacy/audit.ts";
import type { SharedBackbone } from "./backbone.ts";
import { type CanarySpace, productCanariesRefusal } from "./canaries.ts";
import { resolveMethod } from "./methods/mod.ts";
import { type FederatedConfig, type RoundRecord, runFederated } from "./simulation.ts";

/** One audited run (one seed). */
export interface AuditedRun {
  seed: number;
  /** The ε the run's ledger accounted (null without DP). */
  accountedEpsilon: number | null;
  nominalEpsilon: number | null;
  /** Pooled-variance estimate: ε, bootstrap interval, the fitted Gaussians, μ ± its error. */
  estimate: EpsilonEstimate;
  /** The estimate with each set's own variance. */
  separateVariances: { epsilon: number; interval: [number, number] };
  verdict: ReturnType<typeof auditVerdict>;
  cosines: { inserted: number[]; held: number[] };
  /** The run's best-validation test accuracy (canaries in the mix). */
  testAccuracy: number | null;
}

/** What {@link auditConfig} returns. */
export interface ConfigAudit {
  method: string;
  space: CanarySpace;
  canaries: number;
  delta: number;
  runs: AuditedRun[];
  /**
   * One estimate from all seeds, with its verdict — when there are several and they accounted the
   * same ε (the same mechanism), else null.
   */
  combined: (CombinedEstimate & { accountedEpsilon: number; verdict: string }) | null;
}

/**
 * The canary space `space` resolves to for a configuration: `auto` is product for a method whose
 * every phase releases one regulated factor under strict calibration (DEeR), factor otherwise.
 * Throws when `product` is asked of a configuration it does not apply to.
 */
export function resolveCanarySpace(
  config: Pick<FederatedConfig, "method" | "dp">,
  space: CanarySpace | "auto",
): CanarySpace {
  const method = resolveMethod(config.method);
  const refusal = productCanariesRefusal(method.phases, config.dp?.calibration ?? null);
  if (space === "product" && refusal) {
    throw new Error(`product-space canaries for ${method.label}: ${refusal}`);
  }
  return space === "auto" ? (refusal ? "factor" : "product") : space;
}

/**
 * Audits `config` once per seed with `canaries` canary clients (and as many held-out
 * directions) in `space` (default `auto`, {@link resolveCanarySpace}).
 */
export async function auditConfig(
  backbone: SharedBackbone,
  data: ImageDataset,
  /** The run's settings; the seed comes from `opts.seeds`. */
  config: Omit<FederatedConfig, "seed">,
  opts: {
    canaries: number;
    seeds: readonly number[];
    space?: CanarySpace | "auto";
    /** Bootstrap resamples of each run's interval (default 1000). */
    resamples?: number;
    onRound?: (seed: number, record: RoundRecord) => void;
    /** Called with each run's result as it finishes. */
    onRun?: (run: AuditedRun) => void;
  },
): Promise<ConfigAudit> {
  if (config.weights !== "uniform") {
    throw new Error(`weights ${config.weights}: an audit needs uniform weights`);
  }
  if (opts.seeds.length === 0) throw new Error("auditConfig: no seeds");
  const space = resolveCanarySpace(config, opts.space ?? "auto");
  const delta = config.dp?.delta ?? 1e-5;
  const runs: AuditedRun[] = [];
  for (const seed of opts.seeds) {
    const run = await runFederated(backbone, data, { ...config, seed }, {
      canaries: { count: opts.canaries, space },
      onRound: opts.onRound && ((r) => opts.onRound!(seed, r)),
    });
    const resamples = opts.resamples;
    const estimate = estimateEpsilon({ ...run.audit!, delta, seed, resamples });
    const separate = estimateEpsilon({
      ...run.audit!,
      delta,
      seed,
      resamples,
      variance: "separate",
    });
    const audited: AuditedRun = {
      seed,
      accountedEpsilon: run.epsilonSpent,
      nominalEpsilon: run.calibration?.nominalEpsilon ?? null,
      estimate,
      separateVariances: { epsilon: separate.epsilon, interval: separate.interval },
      verdict: auditVerdict(estimate.interval, run.epsilonSpent),
      cosines: run.audit!,
      testAccuracy: run.best.test?.accuracy ?? null,
    };
    runs.push(audited);
    opts.onRun?.(audited);
  }
  const accounted = runs.map((r) => r.accountedEpsilon);
  const same = accounted.every((a) => a !== null && a === accounted[0]);
  let combined: ConfigAudit["combined"] = null;
  if (runs.length > 1 && same) {
    const c = combineEstimates(runs.map((r) => r.estimate), delta);
    combined = {
      ...c,
      accountedEpsilon: accounted[0]!,
      verdict: auditVerdict(c.interval, accounted[0]),
    };
  }
  return {
    method: resolveMethod(config.method).label,
    space,
    canaries: opts.canaries,
    delta,
    runs,
    combined,
  };
}
