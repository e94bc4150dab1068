/**
 * `deno task demo` — the main job on the embedded default data and model, no flags: LoRA,
 * FFA-LoRA, DP-DyLoRA and DEeR under DP in the reference's ("paper") calibration, plus DEeR in
 * the strict client-level calibration; K = 12 clients, Dirichlet α = 0.1. Prints a table and
 * writes `results/demo/report.html` (Plotly, renders offline) beside each run's records.
 *
 * Whichever method wins is reported as measured.
 *
 * @module
 */
import "./threads.ts"; // first: sets the thread count before libtensorflow loads
import { join } from "node:path";
import { backendName } from "../lib/backend.ts";
import { parseArgs } from "../lib/cli.ts";
import { defaultConfig, type FederatedConfig, type RoundRecord } from "../lib/fl/simulation.ts";
import { type ExperimentSummary, loadInputs, runExperiment } from "../lib/experiment.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { barFigure, colorOf, lineFigure } from "../lib/plot/figures.ts";
import { reportHtml } from "../lib/plot/html.ts";

/** The demo's shared settings (SPEC §2 protocol, shortened to fit a few minutes on 2 cores). */
export const DEMO = {
  numClients: 12,
  dirichletAlpha: 0.1,
  rounds: 5,
  localEpochs: 1,
  batchSize: 10,
  lr: 0.01,
  rank: 8,
  alpha: 8,
  seed: 10,
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

/** The federated configuration of one demo run over `rounds` rounds. */
export function demoConfig(run: DemoRun, rounds: number): FederatedConfig {
  return {
    ...defaultConfig(),
    method: run.method,
    seed: DEMO.seed,
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

async function main(): Promise<void> {
  const flags = parseArgs(Deno.args, {
    string: ["out", "rounds"],
    default: { out: "results/demo" },
  });
  const out = String(flags.out);
  const rounds = flags.rounds === undefined ? DEMO.rounds : Number(flags.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) {
    throw new Error(`--rounds ${flags.rounds}: expected an integer ≥ 1`);
  }
  const started = performance.now();
  const inputs = await loadInputs({ dataset: "default", rank: DEMO.rank, alpha: DEMO.alpha });
  console.error(
    `demo: ${inputs.data.name}, ${inputs.data.train.labels.length} train images, ` +
      `${inputs.data.classNames.length} classes; model ${inputs.provenance.model}; backend ${backendName}`,
  );
  const summaries: { run: DemoRun; summary: ExperimentSummary; records: RoundRecord[] }[] = [];
  for (const run of DEMO_RUNS) {
    const t0 = performance.now();
    const result = await runExperiment(inputs, demoConfig(run, rounds), [DEMO.seed], {
      outDir: join(out, run.name.replace(/[^A-Za-z0-9-]+/g, "_")),
      describe: { demo: run.name, backend: backendName },
      onRound: (r) =>
        console.error(
          `  ${run.name} round ${r.round}/${rounds}: val acc ${pct(100 * r.val.accuracy)} ` +
            `ε spent ${r.epsilon.spent?.toFixed(2)}`,
        ),
    });
    summaries.push({ run, summary: result.summary, records: result.runs[0].records });
    console.error(`demo: ${run.name} done in ${((performance.now() - t0) / 1000).toFixed(1)}s`);
  }
  inputs.dispose();

  const columns = [
    "method",
    "calibration",
    "acc",
    "recall",
    "precision",
    "F1",
    "AUC",
    "nominal ε",
    "spent ε",
    "time (s)",
  ];
  const rows = summaries.map(({ run, summary: s }) => [
    run.name,
    run.calibration,
    pct(s.test.accuracy.mean),
    pct(s.test.recall.mean),
    pct(s.test.precision.mean),
    pct(s.test.f1.mean),
    pct(s.test.auc.mean),
    String(s.nominalEpsilon),
    s.spentEpsilon === null ? "-" : s.spentEpsilon.toFixed(2),
    s.seconds.toFixed(1),
  ]);
  printTable(columns, rows);
  const best =
    [...summaries].sort((a, b) => b.summary.test.accuracy.mean - a.summary.test.accuracy.mean)[0];
  console.log(
    `\nhighest test accuracy: ${best.run.name} (${pct(best.summary.test.accuracy.mean)}%)`,
  );
  console.log(
    `paper-calibrated runs claim ε = ${DEMO.epsilon} at δ = 1/${DEMO.numClients} (sample level); the ` +
      `"spent ε" column is the client-level ε at δ = 1e-5 their mechanism really spent.`,
  );

  const html = await reportHtml({
    title: "DEeR toolkit demo",
    intro: `<p>Federated LoRA fine-tuning of the embedded tiny CLIP-style ViT on the embedded ` +
      `Fashion-MNIST subset: K = ${DEMO.numClients} clients, Dirichlet α = ${DEMO.dirichletAlpha}, ` +
      `T = ${rounds} rounds, E = ${DEMO.localEpochs}, r = ${DEMO.rank}, C = ${DEMO.clip}, ` +
      `target ε = ${DEMO.epsilon}, seed ${DEMO.seed}, backend ${backendName}. Test metrics at the ` +
      `best-validation round (SPEC §2). Highest test accuracy: <b>${best.run.name}</b>.</p>`,
    sections: [
      { heading: "Results", table: { columns, rows } },
      {
        heading: "Per-round curves",
        figures: [
          curve(summaries, "Validation accuracy", "accuracy (%)", (r) => 100 * r.val.accuracy),
          curve(summaries, "Training loss", "loss", (r) => r.trainLoss),
          curve(
            summaries,
            "Aggregation deviation ‖D‖_F (sum over adapters)",
            "‖D‖_F",
            (r) => r.deviation,
            true,
          ),
          curve(summaries, "Client-level ε spent (δ = 1e-5)", "ε", (r) => r.epsilon.spent, true),
        ],
      },
      {
        heading: "Per-method comparison",
        figures: [
          barFigure({
            title: "Test metrics at the best-validation round",
            yTitle: "%",
            categories: ["accuracy", "recall", "precision", "F1", "AUC"],
            series: summaries.map(({ run, summary: s }) => ({
              name: `${run.name}`,
              values: [s.test.accuracy, s.test.recall, s.test.precision, s.test.f1, s.test.auc].map(
                (m) => m.mean,
              ),
              // The strict run in a darker shade of its family's colour.
              color: run.calibration === "strict" ? "#8c1c13" : colorOf(run.name),
            })),
          }),
          barFigure({
            title: "Nominal vs actually spent ε",
            yTitle: "ε (log scale)",
            logY: true,
            categories: summaries.map(({ run }) => run.name),
            series: [
              {
                name: "nominal ε (calibration target)",
                values: summaries.map(({ summary: s }) => s.nominalEpsilon),
              },
              {
                name: "client-level ε spent",
                values: summaries.map(({ summary: s }) => s.spentEpsilon),
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

function curve(
  summaries: { run: DemoRun; records: RoundRecord[] }[],
  title: string,
  yTitle: string,
  pick: (r: RoundRecord) => number | null,
  logY = false,
) {
  return lineFigure({
    title,
    xTitle: "round",
    yTitle,
    logY,
    integerX: true,
    series: summaries.map(({ run, records }) => ({
      name: run.name,
      x: records.map((r) => r.round),
      y: records.map((r) => {
        const v = pick(r);
        return v === null || (logY && v <= 0) ? null : v;
      }),
      dash: run.calibration === "strict" ? "dash" : "solid",
    })),
  });
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
