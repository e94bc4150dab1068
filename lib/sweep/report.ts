/**
 * Collection: a sweep's finished points merged into one tidy table (one row per point and seed:
 * the point's settings, the test metrics at the best-validation round ×100, nominal and spent ε,
 * time), a paper-style table (one row per setting pooled over seeds: mean ± population std, as
 * `train`'s summary, and the 95 % t interval of the mean) and an offline HTML report with Plotly
 * figures (accuracy against the ε actually spent per method; the eliminator × regulator heat map
 * when the sweep has DEeR's module1 × module2; the metric over any other numeric axis).
 *
 * Notebooks load a finished sweep the same way:
 *
 * @example
 * ```ts
 * import { expandPoints, parseSweep } from "./spec.ts";
 * const root = await Deno.makeTempDir();
 * const sweep = parseSweep({
 *   name: "tiny",
 *   results: root,
 *   base: { T: 1, E: 1, node_num: 2, seeds: 10 }, // the embedded data and model
 *   grid: { method: ["LoRA"] },
 * }, "tiny.json");
 * const points = expandPoints(sweep);
 * import { runLocal, trainCommand } from "./local.ts";
 * import { type MimeBundle, display } from "../plot/jupyter.ts";
 * import { epsilonFigure } from "../plot/ablations.ts";
 * await runLocal(sweep, points, { workers: 1, command: trainCommand(), onProgress: () => {} });
 * const study = await collectSweep(sweep, points);
 * study.table.map((g) => [g.label, g.accuracy.mean, g.accuracy.low, g.accuracy.high]);
 * const shown: MimeBundle[] = []; // in a notebook: await display(fig)
 * await display(epsilonFigure(summaryRows(study.table), "nominal"), { publish: (b) => void shown.push(b) });
 * ```
 * @module
 */
import { join } from "node:path";
import { meanStd } from "../metrics/classification.ts";
import { type MeanInterval, meanInterval } from "../metrics/interval.ts";
import type { SummaryRow } from "../ablations.ts";
import { epsilonFigure, moduleHeatmap, sweepFigure } from "../plot/ablations.ts";
import type { Figure } from "../plot/figures.ts";
import { escapeHtml, reportHtml } from "../plot/html.ts";
import { writeFileAtomic, writeJsonAtomic } from "../io/atomic.ts";
import { resolveMethod } from "../fl/methods/mod.ts";
import { pointLabel, type Sweep, type SweepPoint } from "./spec.ts";
import { readJson } from "./state.ts";
import {
  findRunDir,
  logTail,
  pointDir,
  type PointState,
  pointState,
  readRecords,
} from "./state.ts";

const METRICS = ["accuracy", "recall", "precision", "f1", "auc"] as const;
/** A metric of the tables (×100). */
export type Metric = typeof METRICS[number];

/** One row of the tidy table: one point, one seed. */
export interface SeedRow {
  point: string;
  label: string;
  seed: number;
  settings: Record<string, string>;
  /** Method label (`DEeR(m1=1,m2=0)`) and family (`DEeR`). */
  method: string;
  family: string;
  calibration: "paper" | "strict" | "local" | null;
  rounds: number;
  bestRound: number;
  accuracy: number;
  recall: number;
  precision: number;
  f1: number;
  auc: number;
  nominalEpsilon: number | null;
  spentEpsilon: number | null;
  /** The round before which the budget guard (`--max_epsilon`) stopped this seed, else null. */
  stoppedAtBudget: number | null;
  seconds: number;
}

/** One row of the paper table: one setting, pooled over its seeds. */
export interface GroupRow {
  /** The varied settings other than the seed (`method=DEeR epsilon=1`). */
  label: string;
  settings: Record<string, string>;
  method: string;
  family: string;
  calibration: "paper" | "strict" | "local" | null;
  seeds: number[];
  /** Per metric: mean, population std (as `train`'s summary) and the 95 % t interval. */
  accuracy: Pooled;
  recall: Pooled;
  precision: Pooled;
  f1: Pooled;
  auc: Pooled;
  nominalEpsilon: number | null;
  /** Largest client-level ε spent over the seeds. */
  spentEpsilon: number | null;
  /** Seeds the budget guard stopped, and before which round. */
  stoppedAtBudget: { seed: number; round: number }[];
  bestRounds: number[];
  seconds: number;
}

/** A metric pooled over seeds. */
export interface Pooled extends MeanInterval {
  /** Population standard deviation (n). */
  std: number;
  /** The value of each seed, in the order of {@link GroupRow.seeds}. */
  values: number[];
}

/** A sweep's collected results. */
export interface SweepResults {
  rows: SeedRow[];
  table: GroupRow[];
  states: PointState[];
  /** What the pooling had to decide (a seed run by two points of one setting is pooled once). */
  warnings: string[];
}

/** Reads every finished point of `points` (unfinished ones are listed in `states` only). */
export async function collectSweep(sweep: Sweep, points: SweepPoint[]): Promise<SweepResults> {
  const rows: SeedRow[] = [];
  const states: PointState[] = [];
  for (const p of points) {
    const state = await pointState(sweep.root, p);
    states.push(state);
    if (state.status !== "finished") continue;
    rows.push(...await pointRows(sweep, p));
  }
  const warnings: string[] = [];
  const table = poolSeeds(rows, sweep, (m) => {
    warnings.push(m);
    console.warn(`sweep: ${m}`);
  });
  return { rows, table, states, warnings };
}

async function pointRows(sweep: Sweep, p: SweepPoint): Promise<SeedRow[]> {
  const runDir = (await findRunDir(pointDir(sweep.root, p.id)))!;
  const config = JSON.parse(await Deno.readTextFile(join(runDir, "config.json")));
  const varied = Object.fromEntries(
    Object.entries(p.varied).filter(([k]) => k !== "seeds" && k !== "seed"),
  );
  const out: SeedRow[] = [];
  for (const seed of config.seeds as number[]) {
    const path = join(runDir, `seed-${seed}`, "records.jsonl");
    const records = await readRecords(path);
    const last = records.at(-1);
    const stop = await readJson<{ round: number }>(join(runDir, `seed-${seed}`, "stop.json"));
    // The budget guard may stop a seed before its first round: no records, no metrics (NaN).
    if (!last && stop === null) throw new Error(`${path}: no records although the point finished`);
    const best = last && records.find((r) => r.round === last.bestRound && r.test);
    if (last && !best) {
      throw new Error(`${path}: no test metrics at the best round ${last.bestRound}`);
    }
    // A metric a split cannot define (the AUC of a one-class test split) is NaN in memory and
    // null in the records: NaN here, never 0.
    const test = (best?.test ?? {}) as Record<Metric, number | null>;
    const eps = (last?.epsilon ?? { nominal: null, spent: null }) as {
      nominal: number | null;
      spent: number | null;
    };
    out.push({
      point: p.id,
      label: Object.entries(varied).map(([k, v]) => `${k}=${v}`).join(" ") || p.id,
      seed,
      settings: Object.fromEntries(
        Object.entries(p.settings).filter(([k]) => k !== "seeds" && k !== "seed"),
      ),
      method: config.method.label,
      family: resolveMethod(config.method).name,
      calibration: config.dp?.calibration ?? null,
      rounds: records.length,
      bestRound: (last?.bestRound as number | undefined) ?? -1,
      ...Object.fromEntries(
        METRICS.map((m) => [m, typeof test[m] === "number" ? 100 * test[m]! : NaN]),
      ) as Record<Metric, number>,
      nominalEpsilon: eps.nominal,
      spentEpsilon: eps.spent,
      stoppedAtBudget: stop?.round ?? null,
      seconds: records.reduce((s, r) => s + (r.seconds as number), 0),
    });
  }
  return out;
}

/**
 * Pools the seed rows of each setting (settings without the seed), in the sweep's order. One seed
 * counts once per setting: when two points ran the same seed of one setting (`seeds: [10,
 * "10,100"]`), the first point's row is kept and `warn` says so.
 */
export function poolSeeds(
  rows: SeedRow[],
  _sweep?: Sweep,
  warn: (message: string) => void = (m) => console.warn(`sweep: ${m}`),
): GroupRow[] {
  const groups = new Map<string, SeedRow[]>();
  for (const r of rows) {
    const key = JSON.stringify(Object.entries(r.settings).sort());
    const group = groups.get(key) ?? [];
    const twin = group.find((x) => x.seed === r.seed);
    if (twin) {
      warn(
        `seed ${r.seed} of ${r.label} was run by two points (${twin.point} and ${r.point}); ` +
          `the table counts it once, from ${twin.point}`,
      );
      continue;
    }
    group.push(r);
    groups.set(key, group);
  }
  return [...groups.values()].map((g) => {
    // Over the seeds that have the metric (a NaN seed is left out, as its value is unknown).
    const pooled = (m: Metric): Pooled => {
      const v = g.map((r) => r[m]);
      const known = v.filter(Number.isFinite);
      if (known.length === 0) {
        return { mean: NaN, low: NaN, high: NaN, sd: NaN, n: 0, level: 0.95, std: NaN, values: v };
      }
      return { ...meanInterval(known), std: meanStd(known).std, values: v };
    };
    const spent = g.map((r) => r.spentEpsilon).filter((e): e is number => e !== null);
    return {
      label: g[0].label,
      settings: g[0].settings,
      method: g[0].method,
      family: g[0].family,
      calibration: g[0].calibration,
      seeds: g.map((r) => r.seed),
      ...Object.fromEntries(METRICS.map((m) => [m, pooled(m)])) as Record<Metric, Pooled>,
      nominalEpsilon: g[0].nominalEpsilon,
      spentEpsilon: spent.length ? Math.max(...spent) : null,
      stoppedAtBudget: g.flatMap((r) =>
        r.stoppedAtBudget === null ? [] : [{ seed: r.seed, round: r.stoppedAtBudget }]
      ),
      bestRounds: g.map((r) => r.bestRound),
      seconds: g.reduce((s, r) => s + r.seconds, 0),
    };
  });
}

/** The paper table's rows as the figure builders' {@link SummaryRow}s (params: the settings). */
export function summaryRows(table: GroupRow[]): SummaryRow[] {
  return table.map((g) => ({
    label: g.label,
    params: Object.fromEntries(
      Object.entries(g.settings).map(([k, v]) => [k, Number.isFinite(Number(v)) ? Number(v) : v]),
    ),
    method: g.method,
    family: g.family,
    calibration: g.calibration,
    accuracy: g.accuracy.mean,
    accuracyStd: g.accuracy.std,
    recall: g.recall.mean,
    precision: g.precision.mean,
    f1: g.f1.mean,
    auc: g.auc.mean,
    seeds: g.seeds,
    perSeed: Object.fromEntries(METRICS.map((m) => [m, g[m].values])) as Record<Metric, number[]>,
    interval: Object.fromEntries(
      METRICS.map((m) => {
        const { mean, low, high, sd, n, level } = g[m];
        return [m, { mean, low, high, sd, n, level }];
      }),
    ) as Record<Metric, MeanInterval>,
    bestRounds: g.bestRounds,
    nominalEpsilon: g.nominalEpsilon,
    spentEpsilon: g.spentEpsilon,
    noiseMultiplier: null,
    stoppedAtBudget: g.stoppedAtBudget,
    seconds: g.seconds,
    error: null,
  }));
}

/** CSV text (RFC 4180 quoting) of columns and rows. */
export function toCsv(columns: string[], rows: (string | number | null)[][]): string {
  const cell = (v: string | number | null) => {
    const s = v === null ? "" : typeof v === "number" ? (Number.isFinite(v) ? String(v) : "") : v;
    return /[",\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  };
  return [columns, ...rows].map((r) => r.map(cell).join(",")).join("\n") + "\n";
}

/** The tidy table's columns: point, seed, every setting, then the results. */
export function tidyTable(
  rows: SeedRow[],
): { columns: string[]; rows: (string | number | null)[][] } {
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r.settings)))].sort();
  const columns = [
    "point",
    "seed",
    ...keys,
    "method_label",
    "calibration",
    "rounds",
    "best_round",
    ...METRICS,
    "nominal_epsilon",
    "spent_epsilon",
    "seconds",
  ];
  return {
    columns,
    rows: rows.map((r) => [
      r.point,
      r.seed,
      ...keys.map((k) => r.settings[k] ?? null),
      r.method,
      r.calibration,
      r.rounds,
      r.bestRound,
      ...METRICS.map((m) => r[m]),
      r.nominalEpsilon,
      r.spentEpsilon,
      r.seconds,
    ]),
  };
}

const fmt = (p: Pooled) =>
  p.n === 0 ? "– (no seed has it)" : `${p.mean.toFixed(2)} ± ${p.std.toFixed(2)}`;
const fmtCi = (p: Pooled) =>
  Number.isFinite(p.low)
    ? `[${p.low.toFixed(2)}, ${p.high.toFixed(2)}]`
    : p.n === 0
    ? "–"
    : `– (${p.n} seed)`;

/** The paper-style table: mean ± std over seeds and the 95 % interval, per setting. */
export function paperTable(table: GroupRow[]): { columns: string[]; rows: string[][] } {
  return {
    columns: [
      "setting",
      "method",
      "calibration",
      "seeds",
      "acc (mean ± std)",
      "acc 95 % CI",
      "F1 (mean ± std)",
      "AUC (mean ± std)",
      "nominal ε",
      "spent ε",
    ],
    rows: table.map((g) => [
      g.label,
      g.method,
      g.calibration ?? "no DP",
      String(g.seeds.length),
      fmt(g.accuracy),
      fmtCi(g.accuracy),
      fmt(g.f1),
      fmt(g.auc),
      g.nominalEpsilon === null ? "–" : String(g.nominalEpsilon),
      (g.spentEpsilon === null ? "–" : g.spentEpsilon.toPrecision(4)) +
      (g.stoppedAtBudget.length === 0
        ? ""
        : ` (stopped at budget: ${g.stoppedAtBudget.length} of ${g.seeds.length} seeds)`),
    ]),
  };
}

/** A table as Markdown (for the terminal and notes). */
export function markdownTable(t: { columns: string[]; rows: string[][] }): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(t.columns), line(t.columns.map(() => "---")), ...t.rows.map(line)].join("\n");
}

/** The figures of a sweep's report (see the module doc). */
export function sweepFigures(sweep: Sweep, table: GroupRow[]): Figure[] {
  const rows = summaryRows(table);
  const figs: Figure[] = [];
  // A line holds the points that differ only in its x: every other varied setting is part of
  // the line's name (else a rank × clients grid would zigzag through both in one line).
  const besides = (r: SummaryRow, ...axes: string[]) =>
    Object.entries(r.params).filter(([k]) =>
      ![...axes, "method", "calibration", "seeds", "seed"].includes(k)
    ).map(([k, v]) => ` ${k}=${v}`).join("");
  if (rows.some((r) => r.spentEpsilon !== null)) {
    const byEps = (r: SummaryRow) =>
      `${r.params.method ?? r.family} · ${r.calibration}${besides(r, "epsilon")}`;
    figs.push(
      epsilonFigure(rows, "spent", "accuracy", byEps),
      epsilonFigure(rows, "nominal", "accuracy", byEps),
    );
  }
  // The 2×2 ablation, once per combination of the other varied settings.
  const moduled = rows.filter((r) =>
    r.params.module1 !== undefined && r.params.module2 !== undefined
  );
  const others = (r: SummaryRow) =>
    Object.entries(r.params).filter(([k]) => !["module1", "module2", "method"].includes(k))
      .map(([k, v]) => `${k}=${v}`).join(" ");
  for (const key of new Set(moduled.map(others))) {
    const mine = moduled.filter((r) => others(r) === key);
    const cells = new Set(mine.map((r) => `${r.params.module1}${r.params.module2}`));
    if (!["00", "01", "10", "11"].every((c) => cells.has(c))) continue;
    const fig = moduleHeatmap(mine);
    const title = fig.layout.title as Record<string, unknown>;
    fig.layout.title = { ...title, text: `${title.text}<br><sub>${escapeHtml(key)}</sub>` };
    figs.push(fig);
  }
  // Any other numeric grid axis: the metric over it, one line per method.
  for (const [axis, values] of sweep.grid) {
    if (["method", "epsilon", "seeds", "seed", "module1", "module2"].includes(axis)) continue;
    if (values.length < 2) continue;
    const numeric = values.every((v) => Number.isFinite(Number(v)));
    figs.push(sweepFigure(rows, {
      title: `Test accuracy over ${axis}`,
      x: (r) => r.params[axis] as number | string,
      xTitle: axis,
      categorical: !numeric,
      group: (r) =>
        `${r.method}${r.calibration ? ` · ${r.calibration}` : ""}${
          r.nominalEpsilon === null ? "" : ` ε=${r.nominalEpsilon}`
        }${besides(r, axis, "epsilon")}`,
    }));
  }
  return figs;
}

/**
 * Writes `<root>/report/`: `points.csv` and `points.json` (tidy), `table.csv` and `table.md`
 * (paper style), `report.html` (offline). Returns the collected results.
 */
export async function writeReport(sweep: Sweep, points: SweepPoint[]): Promise<SweepResults> {
  const results = await collectSweep(sweep, points);
  const dir = join(sweep.root, "report");
  const tidy = tidyTable(results.rows);
  await writeFileAtomic(join(dir, "points.csv"), toCsv(tidy.columns, tidy.rows));
  await writeJsonAtomic(join(dir, "points.json"), results.rows);
  const paper = paperTable(results.table);
  const groupCsv = {
    columns: ["setting", "method", "calibration", "seeds", "nominal_epsilon", "spent_epsilon"]
      .concat(METRICS.flatMap((m) => [`${m}_mean`, `${m}_std`, `${m}_ci95_low`, `${m}_ci95_high`])),
    rows: results.table.map((g) =>
      [g.label, g.method, g.calibration, g.seeds.join(" "), g.nominalEpsilon, g.spentEpsilon]
        .concat(METRICS.flatMap((m) => [g[m].mean, g[m].std, g[m].low, g[m].high]))
    ),
  };
  await writeFileAtomic(join(dir, "table.csv"), toCsv(groupCsv.columns, groupCsv.rows));
  await writeFileAtomic(join(dir, "table.md"), markdownTable(paper) + "\n");
  const unfinished = results.states.filter((s) => s.status !== "finished");
  const failedHtml: string[] = [];
  for (const s of unfinished.filter((s) => s.status === "failed")) {
    const p = points.find((q) => q.id === s.id)!;
    failedHtml.push(
      `<h3>${escapeHtml(`${s.id} (${pointLabel(p)}): exit code ${s.exit?.exitCode}`)}</h3>` +
        `<pre>${escapeHtml(await logTail(sweep.root, s.id))}</pre>`,
    );
  }
  const html = await reportHtml({
    title: `Sweep ${sweep.name}`,
    intro:
      `<p>${results.table.length} settings from ${
        points.length - unfinished.length
      } of ${points.length} finished points (${escapeHtml(sweep.file)}); test metrics at the ` +
      `best-validation round, ×100; mean ± population std over seeds and the 95 % t interval ` +
      `of the mean. Results root: <code>${escapeHtml(sweep.root)}</code>.</p>` +
      results.warnings.map((w) => `<p><strong>Note:</strong> ${escapeHtml(w)}</p>`).join(""),
    sections: [
      { heading: "Results", table: paper },
      { heading: "Figures", figures: sweepFigures(sweep, results.table) },
      ...(unfinished.length
        ? [{
          heading: "Unfinished points",
          html: `<p>${unfinished.map((s) => `${s.id}: ${s.status}`).join(", ")}</p>${
            failedHtml.join("\n")
          }`,
        }]
        : []),
    ],
  });
  await writeFileAtomic(join(dir, "report.html"), html);
  return results;
}
