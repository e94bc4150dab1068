/**
 * `deno task demo` — the main job on the embedded default data and model, no flags: LoRA,
 * FFA-LoRA, DP-DyLoRA and DEeR under DP in the reference's ("paper") calibration, plus DEeR in
 * the strict client-level calibration; K = 12 clients, Dirichlet α = 0.1; each over three seeds
 * (`--seeds` to change them). Prints a table of mean ± 95 % t interval over the seeds and the
 * paired comparisons (by seed: the same split and initialisation) of each method with LoRA and of
 * DEeR's strict calibration with its paper one, in sentences computed from the tests; writes
 * `results/demo/report.html` (Plotly, renders offline) beside each run's records.
 *
 * Whichever method wins is reported as measured, and whether the seeds show it as tested.
 *
 * @module
 */
import "./threads.ts"; // first: sets the thread count before libtensorflow loads
import { join } from "node:path";
import { backendName } from "../lib/backend.ts";
import { noPositionals, parseCommandArgs, UsageError } from "../lib/cli.ts";
import { defaultConfig, type FederatedConfig } from "../lib/fl/simulation.ts";
import { type ExperimentResult, loadInputs, runExperiment } from "../lib/experiment.ts";
import {
  comparePoints,
  describeComparisons,
  experimentRows,
  type RoundRow,
  type SummaryRow,
  summaryRow,
} from "../lib/ablations.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { barFigure, colorOf } from "../lib/plot/figures.ts";
import {
  comparisonFigure,
  comparisonTable,
  meanPlusMinus,
  roundCurves,
} from "../lib/plot/ablations.ts";
import { escapeHtml, reportHtml } from "../lib/plot/html.ts";

/** The demo's shared settings (docs/protocol.md#defaults, cut to a few minutes on 2 cores). */
export const DEMO = {
  numClients: 12,
  dirichletAlpha: 0.1,
  rounds: 5,
  localEpochs: 1,
  batchSize: 10,
  lr: 0.01,
  rank: 8,
  alpha: 8,
  /** `deno task train`'s default seeds: three, the fewest that give an interval worth reading. */
  seeds: [10, 100, 1000],
  clip: 0.5,
  epsilon: 6,
} as const;

/** One line of the demo: a method and its DP calibration. */
export interface DemoRun {
  name: string;
  method: FederatedConfig["method"];
  calibration: "paper" | "strict";
}

export const DEMO_RUNS: DemoRun[] = [
  { name: "LoRA", method: { method: "LoRA" }, calibration: "paper" },
  { name: "FFA-LoRA", method: { method: "FFA-LoRA" }, calibration: "paper" },
  { name: "DP-DyLoRA", method: { method: "DP-DyLoRA" }, calibration: "paper" },
  { name: "DEeR", method: { method: "DEeR" }, calibration: "paper" },
  { name: "DEeR (strict)", method: { method: "DEeR" }, calibration: "strict" },
];

/**
 * The comparisons the demo tests, paired by seed: each method with federated LoRA (same
 * calibration), and DEeR's strict calibration with its paper one (the price of the guarantee).
 */
export const DEMO_COMPARISONS: [string, string][] = [
  ["FFA-LoRA", "LoRA"],
  ["DP-DyLoRA", "LoRA"],
  ["DEeR", "LoRA"],
  ["DEeR (strict)", "DEeR"],
];

/** The federated configuration of one demo run over `rounds` rounds (seed: the first). */
export function demoConfig(run: DemoRun, rounds: number): FederatedConfig {
  return {
    ...defaultConfig(),
    method: run.method,
    seed: DEMO.seeds[0],
    numClients: DEMO.numClients,
    rounds,
    localEpochs: DEMO.localEpochs,
    batchSize: DEMO.batchSize,
    sgd: { lr: DEMO.lr, momentum: 0.9, weightDecay: 5e-4 },
    split: { iid: false, dirichletAlpha: DEMO.dirichletAlpha },
    dp: { calibration: run.calibration, clip: DEMO.clip, epsilon: DEMO.epsilon, delta: 1e-5 },
  };
}

const pct = (x: number) => x.toFixed(2);
const METRICS = ["accuracy", "recall", "precision", "f1", "auc"] as const;

/** `--seeds 10,100,1000` as numbers (each once). */
export function parseSeeds(text: string): number[] {
  const parts = text.split(",").map((p) => p.trim());
  const seeds = parts.map(Number);
  if (parts.some((p) => p === "") || seeds.some((s) => !Number.isSafeInteger(s))) {
    throw new UsageError(`--seeds ${text}: expected integers separated by commas`);
  }
  if (new Set(seeds).size !== seeds.length) {
    throw new UsageError(`--seeds ${text}: a seed is repeated; give each seed once`);
  }
  return seeds;
}

/** The demo's results table: one row per run, each metric as mean ± 95 % interval half-width. */
export function demoTable(rows: SummaryRow[]): { columns: string[]; rows: string[][] } {
  return {
    columns: [
      "method",
      "calibration",
      "seeds",
      "acc ± 95 % CI",
      "recall ± CI",
      "precision ± CI",
      "F1 ± CI",
      "AUC ± CI",
      "nominal ε",
      "spent ε",
      "time (s)",
    ],
    rows: rows.map((r) => [
      r.label,
      r.calibration ?? "no DP",
      String(r.seeds.length),
      ...METRICS.map((m) => meanPlusMinus(r.interval[m])),
      String(r.nominalEpsilon),
      r.spentEpsilon === null ? "-" : r.spentEpsilon.toFixed(2),
      r.seconds.toFixed(1),
    ]),
  };
}

const USAGE =
  `Usage: deno task demo [--seeds 10,100,1000] [--rounds ${DEMO.rounds}] [--out results/demo]
  LoRA, FFA-LoRA, DP-DyLoRA and DEeR under DP at ε = ${DEMO.epsilon} (paper calibration) and DEeR
  under strict DP on the embedded data and model, K = ${DEMO.numClients}, Dirichlet α = ${DEMO.dirichletAlpha}, over
  the seeds; prints the table and the paired comparisons, writes <out>/report.html beside each
  run's records.
  --seeds LIST   comma-separated integer seeds, each once (default ${DEMO.seeds.join(",")})
  --rounds N     federated rounds per run (default ${DEMO.rounds})
  --out DIR      the results folder (default results/demo)`;

async function main(): Promise<void> {
  let rounds: number = DEMO.rounds, seeds: number[] = [...DEMO.seeds];
  const flags = parseCommandArgs("demo", USAGE, Deno.args, {
    string: ["out", "rounds", "seeds"],
    default: { out: "results/demo" },
  }, (f) => {
    noPositionals(f);
    if (f.rounds !== undefined) rounds = Number(f.rounds);
    if (!Number.isInteger(rounds) || rounds < 1) {
      throw new UsageError(`--rounds ${f.rounds}: expected an integer ≥ 1`);
    }
    if (f.seeds !== undefined) seeds = parseSeeds(String(f.seeds));
  });
  const out = String(flags.out);
  const started = performance.now();
  const inputs = await loadInputs({ dataset: "default", rank: DEMO.rank, alpha: DEMO.alpha });
  console.error(
    `demo: ${inputs.data.name}, ${inputs.data.train.labels.length} train images, ` +
      `${inputs.data.classNames.length} classes; model ${inputs.provenance.model}; backend ` +
      `${backendName}; seeds ${seeds.join(", ")}`,
  );
  const runs: { run: DemoRun; result: ExperimentResult; row: SummaryRow; rounds: RoundRow[] }[] =
    [];
  for (const run of DEMO_RUNS) {
    const t0 = performance.now();
    const config = demoConfig(run, rounds);
    const result = await runExperiment(inputs, config, seeds, {
      outDir: join(out, run.name.replace(/[^A-Za-z0-9-]+/g, "_")),
      describe: { demo: run.name, backend: backendName },
      onRound: (r) =>
        console.error(
          `  ${run.name} seed ${r.seed} round ${r.round}/${rounds}: val acc ` +
            `${pct(100 * r.val.accuracy)} ε spent ${r.epsilon.spent?.toFixed(2)}`,
        ),
    });
    const params = { method: run.name, calibration: run.calibration };
    runs.push({
      run,
      result,
      row: summaryRow({ label: run.name, params, config }, result),
      rounds: experimentRows(result, run.name, params).rounds,
    });
    console.error(`demo: ${run.name} done in ${((performance.now() - t0) / 1000).toFixed(1)}s`);
  }
  inputs.dispose();

  const rows = runs.map((r) => r.row);
  const table = demoTable(rows);
  printTable(table.columns, table.rows);
  const comparisons = comparePoints(rows, DEMO_COMPARISONS);
  const compared = comparisonTable(comparisons);
  console.log(`\npaired comparisons of test accuracy (difference in points, paired by seed):`);
  printTable(compared.columns, compared.rows);
  const findings = describeComparisons(comparisons);
  console.log(`\n${findings}`);
  const best = [...rows].sort((a, b) => b.accuracy - a.accuracy)[0];
  console.log(
    `\nhighest mean test accuracy: ${best.label} (${pct(best.accuracy)}%); the comparisons ` +
      `above say which differences the seeds support.`,
  );
  console.log(
    `paper-calibrated runs claim ε = ${DEMO.epsilon} at δ = 1/${DEMO.numClients} (sample level); the ` +
      `"spent ε" column is the client-level ε at δ = 1e-5 their mechanism really spent (largest ` +
      `over the seeds).`,
  );

  const html = await reportHtml({
    title: "DEeR toolkit demo",
    intro: `<p>Federated LoRA fine-tuning of the embedded tiny CLIP-style ViT on the embedded ` +
      `Fashion-MNIST subset: K = ${DEMO.numClients} clients, Dirichlet α = ${DEMO.dirichletAlpha}, ` +
      `T = ${rounds} rounds, E = ${DEMO.localEpochs}, r = ${DEMO.rank}, C = ${DEMO.clip}, ` +
      `target ε = ${DEMO.epsilon}, seeds ${seeds.join(", ")}, backend ${backendName}. Test ` +
      `metrics at each seed's best-validation round (docs/protocol.md), mean ± the half-width of the 95 % ` +
      `t interval over the seeds. Highest mean test accuracy: <b>${escapeHtml(best.label)}</b>; ` +
      `whether the seeds support a difference is the paired comparisons' verdict below.</p>`,
    sections: [
      { heading: "Results", table },
      {
        heading: "Paired comparisons",
        html: `<p>Test accuracy, paired by seed (seed s of every run shares the split and the ` +
          `initialisation): the mean difference, its 95 % t interval, the paired t-test and the ` +
          `exact sign-flip p-value.</p>\n${findingsHtml(findings)}`,
        table: compared,
        figures: [comparisonFigure(comparisons, { title: "Paired differences in test accuracy" })],
      },
      {
        heading: "Per-round curves",
        figures: [
          curve(runs, "Validation accuracy", "accuracy (%)", (r) => r.valAccuracy),
          curve(runs, "Training loss", "loss", (r) => r.trainLoss),
          curve(
            runs,
            "Aggregation deviation ‖D‖_F (sum over adapters)",
            "‖D‖_F",
            (r) => r.deviation,
            true,
          ),
          curve(runs, "Client-level ε spent (δ = 1e-5)", "ε", (r) => r.spentEpsilon, true),
        ],
      },
      {
        heading: "Per-method comparison",
        figures: [
          barFigure({
            title: `Test metrics at the best-validation round (mean over ${seeds.length} ` +
              `seed${seeds.length === 1 ? "" : "s"}${
                seeds.length > 1 ? "; bars: 95 % t interval" : ""
              })`,
            yTitle: "%",
            categories: ["accuracy", "recall", "precision", "F1", "AUC"],
            series: runs.map(({ run, row }) => ({
              name: run.name,
              values: METRICS.map((m) => row.interval[m].mean),
              errors: seeds.length > 1
                ? METRICS.map((m) => row.interval[m].high - row.interval[m].mean)
                : undefined,
              // The strict run in a darker shade of its family's colour.
              color: run.calibration === "strict" ? "#8c1c13" : colorOf(run.name),
            })),
          }),
          barFigure({
            title: "Nominal vs actually spent ε",
            yTitle: "ε (log scale)",
            logY: true,
            categories: rows.map((r) => r.label),
            series: [
              {
                name: "nominal ε (calibration target)",
                values: rows.map((r) => r.nominalEpsilon),
              },
              {
                name: "client-level ε spent (largest over seeds)",
                values: rows.map((r) => r.spentEpsilon),
              },
            ],
          }),
        ],
      },
    ],
  });
  await writeFileAtomic(join(out, "report.html"), html);
  console.log(
    `report: ${join(out, "report.html")}  (total ${
      ((performance.now() - started) / 1000).toFixed(1)
    }s)`,
  );
}

/** The findings text as HTML: its "- " lines as a list, the other lines as paragraphs. */
function findingsHtml(text: string): string {
  const lines = text.split("\n");
  const items = lines.filter((l) => l.startsWith("- ")).map((l) =>
    `<li>${escapeHtml(l.slice(2))}</li>`
  );
  const notes = lines.filter((l) => !l.startsWith("- ")).map((l) => `<p>${escapeHtml(l)}</p>`);
  return `<ul>\n${items.join("\n")}\n</ul>\n${notes.join("\n")}`;
}

/** A per-round curve of every run: mean over seeds, 95 % interval bars (not on log axes). */
function curve(
  runs: { rounds: RoundRow[] }[],
  title: string,
  yTitle: string,
  pick: (r: RoundRow) => number | null,
  logY = false,
) {
  return roundCurves(runs.flatMap((r) => r.rounds), { title, yTitle, value: pick, logY });
}

function printTable(columns: string[], rows: string[][]): void {
  const widths = columns.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  console.log(line(columns));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of rows) console.log(line(r));
}

if (import.meta.main) {
  try {
    await main();
  } catch (err) {
    console.error(`demo: ${(err as Error).message}`);
    Deno.exit(1);
  }
}
