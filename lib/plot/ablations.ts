/**
 * Figures and tables for the sweeps of `lib/ablations.ts` (the notebooks' figures): curves over
 * rounds or releases, one metric over a swept parameter, the eliminator × regulator heat map,
 * accuracy against nominal and spent ε, and the paired comparisons of points with their baseline.
 * Every builder takes tidy rows and returns a plain Plotly {@link Figure}; values that a log axis
 * cannot show (≤ 0) become gaps.
 *
 * Seeds: a point's value is its mean over seeds; with two seeds or more, error bars show the 95 %
 * t interval of that mean (tables: mean ± the interval's half-width).
 *
 * Colours: a series gets its method family's colour ({@link colorOf}) when the series are of
 * different families, else Plotly's palette; strict-calibration series are dashed.
 *
 * @example
 * ```ts
 * import { loadStudyInputs, moduleGridPoints, runSweep, studyConfig, studyScale } from "../ablations.ts";
 * import { type MimeBundle, display } from "./jupyter.ts";
 * const scale = studyScale(true);
 * const inputs = await loadStudyInputs(scale);
 * // A point that cannot run (regulated noise with a singular private peer) is recorded, not thrown.
 * const sweep = await runSweep(inputs, moduleGridPoints(studyConfig(scale)), { onError: "record" });
 * // In a notebook cell: `await display(fig)`; here the bundles are collected instead.
 * const shown: MimeBundle[] = [];
 * const publish = (bundle: MimeBundle) => void shown.push(bundle);
 * await display(moduleHeatmap(sweep.summary), { publish });
 * await display(roundCurves(sweep.rounds, { title: "Validation accuracy", yTitle: "%", value: (r) => r.valAccuracy }), { publish });
 * shown.length; // 2
 * inputs.dispose();
 * ```
 * @module
 */
import type {
  PointComparison,
  ReleaseRow,
  RoundRow,
  SummaryMetric,
  SummaryRow,
} from "../ablations.ts";
import { differenceName, formatEpsilon } from "../ablations.ts";
import { meanInterval } from "../metrics/interval.ts";
import { formatP } from "../metrics/paired.ts";
import { colorOf, type Figure, heatmapFigure, type Trace } from "./figures.ts";

/** A line of a {@link linesFigure}. */
export interface LineSeries {
  name: string;
  x: (number | string)[];
  y: (number | null)[];
  /** ± error bars (the 95 % interval's half-width over seeds); null: none at that point. */
  errors?: (number | null)[];
  color?: string;
  dash?: "solid" | "dash" | "dot";
  /** Hover text per point. */
  text?: string[];
}

/** Lines with markers over a shared x axis; either axis may be logarithmic or categorical. */
export function linesFigure(opts: {
  title: string;
  xTitle: string;
  yTitle: string;
  series: LineSeries[];
  logX?: boolean;
  logY?: boolean;
  /** Integer ticks (rounds, releases). */
  integerX?: boolean;
  height?: number;
}): Figure {
  const clean = (v: number | null, log?: boolean) =>
    v === null || !Number.isFinite(v) || (log && v <= 0) ? null : v;
  const data: Trace[] = opts.series.map((s) => ({
    type: "scatter",
    mode: "lines+markers",
    name: s.name,
    x: s.x,
    y: s.y.map((v) => clean(v, opts.logY)),
    line: { color: s.color, dash: s.dash ?? "solid" },
    marker: { color: s.color, size: 7 },
    error_y: s.errors ? { type: "data", array: s.errors, visible: true } : undefined,
    text: s.text,
  }));
  return {
    data,
    layout: {
      // Left-aligned, clear of the mode bar on the right.
      title: { text: opts.title, x: 0.01, xanchor: "left" },
      xaxis: {
        title: { text: opts.xTitle },
        type: opts.logX ? "log" : undefined,
        dtick: opts.integerX ? 1 : undefined,
        tickformat: opts.integerX ? "d" : undefined,
        exponentformat: opts.logX ? "power" : undefined,
      },
      yaxis: {
        title: { text: opts.yTitle },
        type: opts.logY ? "log" : "linear",
        // 10⁻¹⁵, not Plotly's SI "1f", on log axes that span many decades.
        exponentformat: opts.logY ? "power" : undefined,
      },
      legend: { orientation: "h", y: -0.25 },
      margin: { t: 70, r: 20, b: 90, l: 70 },
      height: opts.height ?? 400,
      template: "plotly_white",
    },
  };
}

function uniqueInOrder(xs: string[]): string[] {
  return [...new Set(xs)];
}

/** Half-width of a 95 % t interval, null when there is none (fewer than two seeds). */
function halfWidth(ci: { mean: number; high: number }): number | null {
  const h = ci.high - ci.mean;
  return Number.isFinite(h) ? h : null;
}

/** Whether any row has an interval (two seeds or more) for `metric`. */
function hasIntervals(rows: SummaryRow[], metric: SummaryMetric): boolean {
  return rows.some((r) => r.error === null && halfWidth(r.interval[metric]) !== null);
}

/** A figure title with a second line saying what the values and bars are. */
function titled(title: string, bars: boolean, seeds: number, what95 = "bars"): string {
  const what = seeds <= 1
    ? "one seed: no interval"
    : `mean over ${seeds} seeds${bars ? `; ${what95}: 95 % t interval` : ""}`;
  return `${title}<br><sub>${what}</sub>`;
}

function seedCount(rows: { seeds: number[] }[]): number {
  return Math.max(0, ...rows.map((r) => r.seeds.length));
}

/**
 * Family colours ({@link colorOf}) when colour and dash (strict calibration) together tell the
 * series apart, else none (Plotly's palette).
 */
function familyColors(
  labels: string[],
  familyOf: (label: string) => string | undefined,
  dashedOf: (label: string) => boolean = () => false,
) {
  const colors = labels.map((l) => colorOf(familyOf(l) ?? ""));
  const keys = labels.map((l, i) => `${colors[i]}|${dashedOf(l)}`);
  const usable = colors.every((c) => c !== undefined) && new Set(keys).size === labels.length;
  return (label: string) => (usable ? colorOf(familyOf(label) ?? "") : undefined);
}

/**
 * One line per sweep point of a per-round value, averaged over seeds (null values skipped).
 *
 * @example
 * ```ts
 * import { loadStudyInputs, rankPoints, runSweep, studyConfig, studyScale } from "../ablations.ts";
 * const scale = studyScale(true);
 * const inputs = await loadStudyInputs(scale);
 * const sweep = await runSweep(inputs, rankPoints(studyConfig(scale), [2]));
 * const fig = roundCurves(sweep.rounds, { title: "Deviation", yTitle: "‖D‖_F", value: (r) => r.deviation, logY: true });
 * fig.data.length; // 1: one curve per point and seed
 * inputs.dispose();
 * ```
 */
export function roundCurves(rows: RoundRow[], opts: {
  title: string;
  yTitle: string;
  value: (r: RoundRow) => number | null;
  logY?: boolean;
  /** Dashed lines for these labels (default: strict-calibration points). */
  dashed?: (label: string) => boolean;
  /**
   * Error bars of the 95 % t interval over seeds at each round (default: on, except on a log
   * axis, where a symmetric interval can reach below zero).
   */
  errorBars?: boolean;
}): Figure {
  const labels = uniqueInOrder(rows.map((r) => r.label));
  const bars = opts.errorBars ?? !opts.logY;
  const methodOf = new Map(rows.map((r) => [r.label, r.method]));
  const strict = new Set(rows.filter((r) => r.params.calibration === "strict").map((r) => r.label));
  const dashed = opts.dashed ?? ((l: string) => strict.has(l));
  const color = familyColors(labels, (l) => methodOf.get(l), dashed);
  const series = labels.map((label) => {
    const mine = rows.filter((r) => r.label === label);
    const rounds = [...new Set(mine.map((r) => r.round))].sort((a, b) => a - b);
    const cis = rounds.map((round) => {
      const vs = mine.filter((r) => r.round === round).map(opts.value)
        .filter((v): v is number => v !== null && Number.isFinite(v));
      return vs.length ? meanInterval(vs) : null;
    });
    const errors = cis.map((ci) => (ci ? halfWidth(ci) : null));
    return {
      name: label,
      x: rounds,
      y: cis.map((ci) => ci?.mean ?? null),
      errors: bars && errors.some((e) => e !== null) ? errors : undefined,
      color: color(label),
      dash: dashed(label) ? "dash" as const : "solid" as const,
    };
  });
  const seeds = Math.max(
    0,
    ...labels.map((l) => new Set(rows.filter((r) => r.label === l).map((r) => r.seed)).size),
  );
  return linesFigure({
    title: titled(opts.title, series.some((s) => s.errors !== undefined), seeds),
    xTitle: "round",
    yTitle: opts.yTitle,
    series,
    logY: opts.logY,
    integerX: true,
  });
}

/**
 * One line per sweep point of a per-release (per-aggregation) value, first seed of each point.
 * x is the round, releases of a multi-phase round spread over it: DEeR's phase B at r − ½,
 * phase A at r; single-phase methods at r.
 */
export function releaseCurves(rows: ReleaseRow[], opts: {
  title: string;
  yTitle: string;
  value: (r: ReleaseRow) => number | null;
  logY?: boolean;
}): Figure {
  const labels = uniqueInOrder(rows.map((r) => r.label));
  const methodOf = new Map(rows.map((r) => [r.label, r.method]));
  const strict = new Set(rows.filter((r) => r.params.calibration === "strict").map((r) => r.label));
  const color = familyColors(labels, (l) => methodOf.get(l), (l) => strict.has(l));
  return linesFigure({
    title: opts.title,
    xTitle: "round (two-phase rounds: phase B at r − ½, phase A at r)",
    yTitle: opts.yTitle,
    logY: opts.logY,
    integerX: true,
    series: labels.map((label) => {
      const mine = rows.filter((r) => r.label === label);
      const first = mine.filter((r) => r.seed === mine[0].seed);
      const x = first.map((r) => {
        const phases = first.filter((q) => q.round === r.round);
        return r.round - 1 + (phases.indexOf(r) + 1) / phases.length;
      });
      return {
        name: label,
        x,
        y: first.map(opts.value),
        text: first.map((r) => `round ${r.round}, phase ${r.phase}, release ${r.release}`),
        color: color(label),
        dash: strict.has(label) ? "dash" as const : "solid" as const,
      };
    }),
  });
}

export type { SummaryMetric } from "../ablations.ts";

const METRIC_NAMES: Record<SummaryMetric, string> = {
  accuracy: "test accuracy (%)",
  recall: "test macro recall (%)",
  precision: "test macro precision (%)",
  f1: "test macro F1 (%)",
  auc: "test macro AUC (%)",
};

/**
 * A metric over a swept parameter, one line per group (default: one line). The x values keep
 * the points' order, so categorical values such as `"IID"` sit where the sweep put them.
 *
 * @example
 * ```ts
 * import { loadStudyInputs, rankPoints, runSweep, studyConfig, studyScale } from "../ablations.ts";
 * const scale = studyScale(true);
 * const inputs = await loadStudyInputs(scale);
 * const sweep = await runSweep(inputs, rankPoints(studyConfig(scale), [2, 4]));
 * const fig = sweepFigure(sweep.summary, { title: "Rank", x: (r) => r.params.rank as number, xTitle: "r" });
 * fig.layout.title; // the figure's title
 * inputs.dispose();
 * ```
 */
export function sweepFigure(rows: SummaryRow[], opts: {
  title: string;
  x: (r: SummaryRow) => number | string;
  xTitle: string;
  metric?: SummaryMetric;
  group?: (r: SummaryRow) => string;
  logX?: boolean;
  /** Treat x as categories (e.g. mixed numbers and "IID"). */
  categorical?: boolean;
}): Figure {
  const metric = opts.metric ?? "accuracy";
  const group = opts.group ?? (() => METRIC_NAMES[metric]);
  const groups = uniqueInOrder(rows.map(group));
  const famOf = new Map(rows.map((r) => [group(r), r.family]));
  const strictGroups = new Set(rows.filter((r) => r.calibration === "strict").map(group));
  const color = familyColors(groups, (g) => famOf.get(g), (g) => strictGroups.has(g));
  const bars = hasIntervals(rows, metric);
  const fig = linesFigure({
    title: titled(opts.title, bars, seedCount(rows)),
    xTitle: opts.xTitle,
    yTitle: METRIC_NAMES[metric],
    logX: opts.logX,
    series: groups.map((g) => {
      const mine = rows.filter((r) => group(r) === g);
      // A line joins its points left to right, not in the order they were run.
      if (!opts.categorical) mine.sort((a, b) => Number(opts.x(a)) - Number(opts.x(b)));
      return {
        name: g,
        x: mine.map((r) => (opts.categorical ? String(opts.x(r)) : opts.x(r))),
        y: mine.map((r) => r[metric]),
        errors: bars ? mine.map((r) => halfWidth(r.interval[metric])) : undefined,
        color: color(g),
        dash: mine[0].calibration === "strict" ? "dash" : "solid",
        text: mine.map((r) => `${r.label}: ${intervalText(r, metric)}`),
      };
    }),
  });
  if (opts.categorical) (fig.layout.xaxis as Record<string, unknown>).type = "category";
  return fig;
}

/**
 * DEeR's 2×2 ablation as a heat map: rows eliminator (module1) off/on, columns regulator
 * (module2) off/on, cells the metric with its value written in.
 */
export function moduleHeatmap(rows: SummaryRow[], metric: SummaryMetric = "accuracy"): Figure {
  const rowAt = (m1: number, m2: number) => {
    const row = rows.find((r) => r.params.module1 === m1 && r.params.module2 === m2);
    if (!row) {
      throw new Error(
        `moduleHeatmap: no row with params { module1: ${m1}, module2: ${m2} }; pass the summary ` +
          `of moduleGridPoints()`,
      );
    }
    return row;
  };
  const cells = [[rowAt(0, 0), rowAt(0, 1)], [rowAt(1, 0), rowAt(1, 1)]];
  const z = cells.map((row) => row.map((r) => r[metric]));
  const x = ["regulator off", "regulator on"];
  const y = ["eliminator off", "eliminator on"];
  const withCi = hasIntervals(rows, metric);
  const fig = heatmapFigure({
    title: titled(
      `${METRIC_NAMES[metric]}: deviation eliminator × noise regulator`,
      withCi,
      seedCount(rows),
      "in brackets",
    ),
    x,
    y,
    z,
    xTitle: "module2",
    yTitle: "module1",
  });
  // Cell labels: one decimal, "failed" for a run that did not finish, contrast with the colour.
  const finite = z.flat().filter(Number.isFinite);
  const lo = Math.min(...finite), hi = Math.max(...finite);
  fig.layout.annotations = z.flatMap((row, i) =>
    row.map((v, j) => ({
      x: x[j],
      y: y[i],
      text: !Number.isFinite(v)
        ? "failed"
        : withCi && halfWidth(cells[i][j].interval[metric]) !== null
        ? `${v.toFixed(1)}<br>[${cells[i][j].interval[metric].low.toFixed(1)}, ${
          cells[i][j].interval[metric].high.toFixed(1)
        }]`
        : v.toFixed(1),
      showarrow: false,
      font: {
        size: withCi ? 15 : 18,
        color: !Number.isFinite(v) ? "#444" : v - lo > 0.6 * (hi - lo) ? "black" : "white",
      },
    }))
  );
  fig.layout.height = 380;
  fig.layout.margin = { t: 70, r: 20, b: 60, l: 130 };
  fig.layout.title = { ...(fig.layout.title as Record<string, unknown>), x: 0.01, xanchor: "left" };
  return fig;
}

/**
 * Accuracy against ε, one line per method and calibration (dashed: strict): against the
 * nominal ε the calibration targeted (`against: "nominal"`) or the client-level ε the mechanism
 * actually spent (`"spent"`, log axis).
 */
export function epsilonFigure(
  rows: SummaryRow[],
  against: "nominal" | "spent",
  metric: SummaryMetric = "accuracy",
  /** One line per value (default: method · calibration). */
  group: (r: SummaryRow) => string = (r) => `${r.params.method ?? r.family} · ${r.calibration}`,
): Figure {
  const groups = uniqueInOrder(rows.map(group));
  const bars = hasIntervals(rows, metric);
  return linesFigure({
    title: titled(
      against === "nominal"
        ? `${METRIC_NAMES[metric]} against the nominal (target) ε`
        : `${METRIC_NAMES[metric]} against the client-level ε actually spent`,
      bars,
      seedCount(rows),
    ),
    xTitle: against === "nominal"
      ? "nominal ε (paper: sample-level at δ = 1/K; strict: client-level)"
      : "client-level ε spent (δ = 1e-5, log scale)",
    yTitle: METRIC_NAMES[metric],
    logX: true,
    series: groups.map((g) => {
      const eps = (r: SummaryRow) => against === "nominal" ? r.nominalEpsilon : r.spentEpsilon;
      // No DP, no ε: such a point has no place on this axis.
      const mine = rows.filter((r) => group(r) === g && eps(r) !== null)
        .sort((a, b) => eps(a)! - eps(b)!);
      return {
        name: g,
        x: mine.map((r) => eps(r)!),
        y: mine.map((r) => r[metric]),
        errors: bars ? mine.map((r) => halfWidth(r.interval[metric])) : undefined,
        color: colorOf(mine[0]?.family ?? ""),
        dash: mine[0]?.calibration === "strict" ? "dash" : "solid",
        text: mine.map((r) =>
          `${r.label}: ${intervalText(r, metric)}; nominal ε ${r.nominalEpsilon}, spent ` +
          formatEpsilon(r.spentEpsilon)
        ),
      };
    }),
  });
}

/**
 * Client-level ε spent after each round, one line per point, with each point's nominal ε as a
 * dotted line (log scale).
 */
export function epsilonOverRounds(rows: RoundRow[]): Figure {
  const fig = roundCurves(rows, {
    title: "Client-level ε spent over rounds (δ = 1e-5), against the nominal ε",
    yTitle: "ε (log scale)",
    value: (r) => r.spentEpsilon,
    logY: true,
  });
  const nominal = new Map<string, number>();
  for (const r of rows) if (r.nominalEpsilon !== null) nominal.set(String(r.nominalEpsilon), 0);
  const rounds = rows.map((r) => r.round);
  const [lo, hi] = [Math.min(...rounds), Math.max(...rounds)];
  for (const e of nominal.keys()) {
    fig.data.push({
      type: "scatter",
      mode: "lines",
      name: `nominal ε = ${e}`,
      x: [lo, hi],
      y: [Number(e), Number(e)],
      line: { color: "#444", dash: "dot" },
    });
  }
  return fig;
}

/** "58.50 ± 3.21" (mean ± the 95 % interval's half-width), or "58.50" with one seed. */
export function meanPlusMinus(ci: { mean: number; high: number }, digits = 2): string {
  const h = halfWidth(ci);
  return h === null ? ci.mean.toFixed(digits) : `${ci.mean.toFixed(digits)} ± ${h.toFixed(digits)}`;
}

/** "58.5 [55.3, 61.7] (3 seeds)", or "58.5 (1 seed)". */
function intervalText(r: SummaryRow, metric: SummaryMetric): string {
  const ci = r.interval[metric];
  return halfWidth(ci) === null
    ? `${ci.mean.toFixed(1)} (${ci.n} seed${ci.n === 1 ? "" : "s"})`
    : `${ci.mean.toFixed(1)} [${ci.low.toFixed(1)}, ${ci.high.toFixed(1)}] (${ci.n} seeds)`;
}

/**
 * A summary table: label, method, calibration, seeds, metrics (mean ± 95 % interval half-width
 * over seeds), ε, best round of each seed, seconds.
 */
export function summaryTable(
  rows: SummaryRow[],
): { columns: string[]; rows: (string | number)[][] } {
  return {
    columns: [
      "point",
      "method",
      "calibration",
      "seeds",
      "acc ± 95 % CI",
      "F1 ± 95 % CI",
      "AUC ± 95 % CI",
      "nominal ε",
      "spent ε",
      "σ",
      "best round",
      "time (s)",
    ],
    rows: rows.map((r) =>
      r.error !== null
        ? [
          r.label,
          r.method,
          r.calibration ?? "no DP",
          String(r.seeds.length),
          `FAILED: ${shorten(r.error.split("\n")[0], 60)}`,
          ...Array(7).fill(""),
        ]
        : [
          r.label,
          r.method,
          r.calibration ?? "no DP",
          String(r.seeds.length),
          meanPlusMinus(r.interval.accuracy),
          meanPlusMinus(r.interval.f1),
          meanPlusMinus(r.interval.auc),
          r.nominalEpsilon === null ? "–" : String(r.nominalEpsilon),
          formatEpsilon(r.spentEpsilon) + budgetMark(r),
          r.noiseMultiplier === null ? "–" : r.noiseMultiplier.toPrecision(3),
          r.bestRounds.join(", "),
          r.seconds.toFixed(1),
        ]
    ),
  };
}

/** " (stopped at budget before round r)" for a point the budget guard stopped. */
function budgetMark(r: SummaryRow): string {
  if (r.stoppedAtBudget.length === 0) return "";
  const rounds = [...new Set(r.stoppedAtBudget.map((s) => s.round))].join("/");
  return ` (stopped at budget before round ${rounds})`;
}

function shorten(s: string, n: number): string {
  return s.length <= n ? s : s.slice(0, n - 1) + "…";
}

/**
 * The paired comparisons as a table: the difference point − baseline (mean over shared seeds),
 * its 95 % t interval, the paired t-test and exact sign-flip p-values, and the verdict at 5 %.
 */
export function comparisonTable(
  comparisons: PointComparison[],
): { columns: string[]; rows: string[][] } {
  return {
    columns: [
      "point",
      "baseline",
      "seeds",
      "difference",
      "95 % CI",
      "t-test p",
      "sign-flip p",
      "at 5 %",
    ],
    rows: comparisons.map((c) => {
      const p = c.comparison;
      if (!p) return [c.label, c.baseline, "", "", "", "", "", c.error ?? ""];
      const ci = p.n < 2 ? "– (1 seed)" : `[${p.low.toFixed(2)}, ${p.high.toFixed(2)}]`;
      return [
        c.label,
        c.baseline,
        String(p.n),
        (p.mean > 0 ? "+" : "") + p.mean.toFixed(2),
        ci,
        formatP(p.tTestP),
        p.n < 2 ? "–" : formatP(p.signFlipP),
        verdict(c),
      ];
    }),
  };
}

/** "higher", "lower" (t-test; "(t only)" when the sign-flip test does not confirm), or "n.s.". */
function verdict(c: PointComparison, alpha = 0.05): string {
  const p = c.comparison!;
  if (p.n < 2) return "no test (1 seed)";
  if (!(p.tTestP < alpha)) return "not significant";
  const dir = p.mean > 0 ? "higher" : "lower";
  return p.signFlipP < alpha ? dir : `${dir} (t-test only)`;
}

/**
 * The paired differences point − baseline with their 95 % t intervals, one row per comparison,
 * and a line at 0: an interval that crosses it is a difference the seeds do not show.
 */
export function comparisonFigure(
  comparisons: PointComparison[],
  opts: { title?: string; metric?: SummaryMetric } = {},
): Figure {
  const done = comparisons.filter((c) => c.comparison !== null);
  const metric = opts.metric ?? done[0]?.metric ?? "accuracy";
  const seeds = Math.max(0, ...done.map((c) => c.comparison!.n));
  const names = done.map(differenceName);
  const errors = done.map((c) => halfWidth(c.comparison!));
  const bars = errors.some((e) => e !== null);
  return {
    data: [{
      type: "scatter",
      mode: "markers",
      name: "difference",
      x: done.map((c) => c.comparison!.mean),
      y: names,
      error_x: bars ? { type: "data", array: errors, visible: true } : undefined,
      marker: {
        size: 10,
        color: done.map((c) =>
          c.comparison!.tTestP < 0.05 ? (c.comparison!.mean > 0 ? "#2ca02c" : "#d62728") : "#555"
        ),
      },
      text: done.map((c) => c.sentence),
      hovertemplate: "%{text}<extra></extra>",
    }],
    layout: {
      title: {
        text: titled(
          opts.title ?? `Paired differences in ${METRIC_NAMES[metric]}`,
          bars,
          seeds,
        ),
        x: 0.01,
        xanchor: "left",
      },
      xaxis: { title: { text: "difference (points); 0 = no difference" }, zeroline: true },
      yaxis: { type: "category", automargin: true, autorange: "reversed" },
      shapes: [{
        type: "line",
        x0: 0,
        x1: 0,
        yref: "paper",
        y0: 0,
        y1: 1,
        line: { color: "#444", dash: "dot" },
      }],
      showlegend: false,
      margin: { t: 70, r: 20, b: 60, l: 20 },
      height: Math.max(220, 90 + 40 * done.length),
      template: "plotly_white",
    },
  };
}
