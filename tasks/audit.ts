/**
 * `deno task audit` — an empirical check of a run's privacy accounting, from the outside.
 *
 * Runs the training that `deno task train` would run (same flags) with `--canaries N` canary
 * clients added: each releases a fixed random direction of norm C instead of an update. From the
 * final global update it measures the cosine with every inserted direction and with N directions
 * never inserted, fits a Gaussian to each set, and reports the ε at which the two can be told
 * apart (one-shot estimation, Andrew et al.; docs/privacy.md, "Auditing a run") next to the ε the
 * ledger accounted. A valid accountant gives an estimate at or below the accounted ε (up to the
 * estimate's interval); a mechanism that leaks more than it claims shows an estimate above it.
 *
 * Writes `<out>/audit/<exp_name>/audit.json`. Nothing else is saved (an audit run carries
 * canaries and is not a result to keep).
 *
 *   deno task audit --is_DP 1 --calibration strict --epsilon 6 --canaries 200
 *
 * @module
 */
import "./threads.ts"; // first: sets the thread count before libtensorflow loads
import { join } from "node:path";
import { UsageError } from "../lib/cli.ts";
import { loadInputs } from "../lib/experiment.ts";
import { auditConfig, resolveCanarySpace } from "../lib/fl/audit.ts";
import type { CanarySpace } from "../lib/fl/canaries.ts";
import { resolveMethod } from "../lib/fl/methods/mod.ts";
import { writeJsonAtomic } from "../lib/io/atomic.ts";
import type { auditVerdict } from "../lib/privacy/audit.ts";
import { parseTrainArgs } from "./train.ts";

const HELP =
  `Usage: deno task audit [train flags] [--canaries N] [--canary-space factor|product|auto]

Runs the training \`deno task train\` would run with the same flags, plus N canary clients
(default 400) whose releases are fixed random directions of norm C, and estimates ε from the final
update's cosines with the inserted directions against N never-inserted ones (one-shot empirical
privacy estimation). Prints the estimate and its 95 % bootstrap interval beside the accounted ε,
and whether the interval is consistent with it; with several seeds also one estimate from all of
them (their mean separation, whose interval narrows as 1/√seeds). Canaries do not train, so more of
them cost little: the interval's width falls as 1/√N.

--canary-space: factor (directions in the LoRA factors) or product (directions in ΔW = B·A,
where DEeR's regulated strict mechanism has its guarantee). auto (default): product for DEeR
under strict calibration, factor otherwise.

Writes <out>/audit/<exp_name>/audit.json.`;

/** Splits `--canaries N` and `--canary-space S` off the train flags. */
export function parseAuditArgs(
  argv: string[],
): { canaries: number; space: CanarySpace | "auto"; trainArgs: string[] } {
  const trainArgs: string[] = [];
  let canaries = 400;
  let space: CanarySpace | "auto" = "auto";
  for (let i = 0; i < argv.length; i++) {
    const m = /^--(canaries|canary-space|canary_space)(?:=(.*))?$/.exec(argv[i]);
    if (!m) {
      trainArgs.push(argv[i]);
      continue;
    }
    const raw = m[2] ?? argv[++i];
    if (m[1] === "canaries") {
      const n = Number(raw);
      if (raw === undefined || !Number.isInteger(n) || n < 2) {
        throw new UsageError(`--canaries ${raw}: expected an integer ≥ 2`);
      }
      canaries = n;
    } else {
      if (raw !== "factor" && raw !== "product" && raw !== "auto") {
        throw new UsageError(`--canary-space ${raw}: expected factor, product or auto`);
      }
      space = raw;
    }
  }
  return { canaries, space, trainArgs };
}

async function main(): Promise<number> {
  if (Deno.args.includes("--help") || Deno.args.includes("-h")) {
    console.log(HELP);
    return 0;
  }
  const { canaries, space: asked, trainArgs } = parseAuditArgs(Deno.args);
  const args = parseTrainArgs(trainArgs);
  if (args === null) {
    console.log(HELP);
    return 0;
  }
  if (args.config.weights !== "uniform") {
    throw new UsageError(`--weights ${args.config.weights}: an audit needs uniform weights`);
  }
  let space: CanarySpace;
  try {
    space = resolveCanarySpace(args.config, asked);
  } catch (err) {
    throw new UsageError(`--canary-space ${asked}: ${(err as Error).message}`);
  }
  const inputs = await loadInputs(args.inputs);
  const label = resolveMethod(args.config.method).label;
  console.error(
    `audit: ${label} on ${inputs.data.name}, K=${args.config.numClients}, T=${args.config.rounds}, ` +
      `${canaries} canaries (+${canaries} held out) in ${space} space, seeds ${
        args.seeds.join(",")
      }`,
  );
  const audit = await auditConfig(inputs.backbone, inputs.data, args.config, {
    canaries,
    seeds: args.seeds,
    space,
    onRound: (seed, r) =>
      console.error(
        `  seed ${seed} round ${r.round}: val acc ${(100 * r.val.accuracy).toFixed(2)}` +
          (r.epsilon.spent === null ? "" : ` ε spent ${r.epsilon.spent.toFixed(3)}`),
      ),
    onRun: (run) => {
      const est = run.estimate;
      const accounted = run.accountedEpsilon === null
        ? "none (no DP)"
        : run.accountedEpsilon.toFixed(3);
      const nominal = run.nominalEpsilon === null ? "" : ` (nominal ${run.nominalEpsilon})`;
      console.log(
        `seed ${run.seed}: empirical ε ${est.epsilon.toFixed(3)} [95 % interval ` +
          `${est.interval[0].toFixed(3)}, ${est.interval[1].toFixed(3)}] at δ ${est.delta}; ` +
          `accounted ε ${accounted}${nominal}; canary cosines: inserted ${
            est.inserted.mean.toExponential(2)
          } ± ${est.inserted.std.toExponential(2)}, held out ${est.held.mean.toExponential(2)} ± ${
            est.held.std.toExponential(2)
          }; ${verdictText(run.verdict)}`,
      );
    },
  });
  inputs.dispose();
  const combined = audit.combined;
  if (combined) {
    console.log(
      `all ${audit.runs.length} seeds: empirical ε ${combined.epsilon.toFixed(3)} [95 % interval ` +
        `${combined.interval[0].toFixed(3)}, ${combined.interval[1].toFixed(3)}] ` +
        `(separation μ ${combined.mu.toFixed(4)} ± ${combined.muStdErr.toFixed(4)}); accounted ε ` +
        `${combined.accountedEpsilon.toFixed(3)}; ${
          verdictText(combined.verdict as ReturnType<typeof auditVerdict>)
        }`,
    );
  }
  const delta = audit.delta;
  const seeds = audit.runs.map((r) => ({
    seed: r.seed,
    accountedEpsilon: r.accountedEpsilon,
    nominalEpsilon: r.nominalEpsilon,
    estimate: r.estimate.epsilon,
    interval: r.estimate.interval,
    verdict: r.verdict,
    mu: r.estimate.mu,
    muStdErr: r.estimate.muStdErr,
    separateVariances: {
      estimate: r.separateVariances.epsilon,
      interval: r.separateVariances.interval,
    },
    inserted: r.estimate.inserted,
    held: r.estimate.held,
    testAccuracy: r.testAccuracy,
    cosines: r.cosines,
  }));
  const path = join(args.out, "audit", args.expName, "audit.json");
  await Deno.mkdir(join(args.out, "audit", args.expName), { recursive: true });
  await writeJsonAtomic(path, {
    method: label,
    data: inputs.provenance.data,
    flags: Deno.args,
    canaries,
    canarySpace: audit.space,
    delta,
    calibration: args.config.dp?.calibration ?? null,
    seeds,
    combined,
  });
  console.log(`audit: ${path}`);
  return 0;
}

function verdictText(v: ReturnType<typeof auditVerdict>): string {
  if (v === "consistent") return "consistent with the accounted ε";
  if (v === "no accounting") return "no accounted ε to compare";
  return "ABOVE the accounted ε: the mechanism leaks more than accounted, or a sampling tail " +
    "(1 in 40 for one run) — rerun with more canaries or seeds";
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (err) {
    const usage = err instanceof UsageError;
    console.error(
      `audit: ${(err as Error).message}${usage ? "\n(see deno task audit --help)" : ""}`,
    );
    Deno.exit(usage ? 2 : 1);
  }
}
