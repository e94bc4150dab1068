/**
 * Figures and tables for the sweeps of `lib/ablations.ts` (the notebooks' figures): curves over
 * rounds or releases, one metric over a swept parameter, the eliminator × regulator heat map,
 * accuracy against nominal and spent ε. Every builder takes tidy rows and returns a plain
 * Plotly {@link Figure}; values that a log axis cannot show (≤ 0) become gaps.
 *
 * Colours: a series gets its method family's colour ({@link colorOf}) when the series are of
 * different families, else Plotly's palette; strict-calibration series are dashed.
 *
 * @example
 * ```ts
 * const sweep = await runSweep(inputs, moduleGridPoints(base));
 * await display(moduleHeatmap(sweep.summary));
 * await display(roundCurves(sweep.rounds, { title: "Validation accuracy", yTitle: "%", value: (r) => r.valAccuracy }));
 * ```
 * @module
 */
import type { ReleaseRow, RoundRow, SummaryRow } from "../ablations.ts";
import { formatEpsilon } from "../ablations.ts";
import { colorOf, type Figure, heatmapFigure, type Trace } from "./figures.ts";

/** A line of a {@link linesFigure}. */
export interface LineSeries {
  name: string;
  x: (number | string)[];
  y: (number | null)[];
  /** ± error bars (e.g. population std over seeds). */
  errors?: number[];
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
      margin: { t: 50, r: 20, b: 90, l: 70 },
      height: opts.height ?? 400,
      template: "plotly_white",
    },
  };
}

function uniqueInOrder(xs: string[]): string[] {
  return [...new Set(xs)];
}

function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
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
 * roundCurves(sweep.rounds, { title: "Deviation", yTitle: "‖D‖_F", value: (r) => r.deviation, logY: true });
 * ```
 */
export function roundCurves(rows: RoundRow[], opts: {
  title: string;
  yTitle: string;
  value: (r: RoundRow) => number | null;
  logY?: boolean;
  /** Dashed lines for these labels (default: strict-calibration points). */
  dashed?: (label: string) => boolean;
}): Figure {
  const labels = uniqueInOrder(rows.map((r) => r.label));
  const methodOf = new Map(rows.map((r) => [r.label, r.method]));
  const strict = new Set(rows.filter((r) => r.params.calibration === "strict").map((r) => r.label));
  const dashed = opts.dashed ?? ((l: string) => strict.has(l));
  const color = familyColors(labels, (l) => methodOf.get(l), dashed);
  const series = labels.map((label) => {
    const mine = rows.filter((r) => r.label === label);
    const rounds = [...new Set(mine.map((r) => r.round))].sort((a, b) => a - b);
    const y = rounds.map((round) => {
      const vs = mine.filter((r) => r.round === round).map(opts.value)
        .filter((v): v is number => v !== null && Number.isFinite(v));
      return vs.length ? mean(vs) : null;
    });
    return {
      name: label,
      x: rounds,
      y,
      color: color(label),
      dash: dashed(label) ? "dash" as const : "solid" as const,
    };
  });
  return linesFigure({
    title: opts.title,
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

/** The metrics a {@link SummaryRow} carries (×100). */
export type SummaryMetric = "accuracy" | "recall" | "precision" | "f1" | "auc";

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
 * sweepFigure(sweep.summary, { title: "Rank", x: (r) => r.params.rank as number, xTitle: "r" });
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
  const fig = linesFigure({
    title: opts.title,
    xTitle: opts.xTitle,
    yTitle: METRIC_NAMES[metric],
    logX: opts.logX,
    series: groups.map((g) => {
      const mine = rows.filter((r) => group(r) === g);
      const hasStd = metric === "accuracy" && mine.some((r) => r.accuracyStd > 0);
      return {
        name: g,
        x: mine.map((r) => (opts.categorical ? String(opts.x(r)) : opts.x(r))),
        y: mine.map((r) => r[metric]),
        errors: hasStd ? mine.map((r) => r.accuracyStd) : undefined,
        color: color(g),
        dash: mine[0].calibration === "strict" ? "dash" : "solid",
        text: mine.map((r) => r.label),
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
  const at = (m1: number, m2: number) => {
    const row = rows.find((r) => r.params.module1 === m1 && r.params.module2 === m2);
    if (!row) {
      throw new Error(
        `moduleHeatmap: no row with params { module1: ${m1}, module2: ${m2} }; pass the summary ` +
          `of moduleGridPoints()`,
      );
    }
    return row[metric];
  };
  const z = [[at(0, 0), at(0, 1)], [at(1, 0), at(1, 1)]];
  const x = ["regulator off", "regulator on"];
  const y = ["eliminator off", "eliminator on"];
  const fig = heatmapFigure({
    title: `${METRIC_NAMES[metric]}: deviation eliminator × noise regulator`,
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
      text: Number.isFinite(v) ? v.toFixed(1) : "failed",
      showarrow: false,
      font: {
        size: 18,
        color: !Number.isFinite(v) ? "#444" : v - lo > 0.6 * (hi - lo) ? "black" : "white",
      },
    }))
  );
  fig.layout.height = 380;
  fig.layout.margin = { t: 50, r: 20, b: 60, l: 130 };
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
): Figure {
  const group = (r: SummaryRow) => `${r.params.method ?? r.family} · ${r.calibration}`;
  const groups = uniqueInOrder(rows.map(group));
  return linesFigure({
    title: against === "nominal"
      ? `${METRIC_NAMES[metric]} against the nominal (target) ε`
      : `${METRIC_NAMES[metric]} against the client-level ε actually spent`,
    xTitle: against === "nominal"
      ? "nominal ε (paper: sample-level at δ = 1/K; strict: client-level)"
      : "client-level ε spent (δ = 1e-5, log scale)",
    yTitle: METRIC_NAMES[metric],
    logX: true,
    series: groups.map((g) => {
      const eps = (r: SummaryRow) => against === "nominal" ? r.nominalEpsilon : r.spentEpsilon;
      // No DP, no ε: such a point has no place on this axis.
      const mine = rows.filter((r) => group(r) === g && eps(r) !== null);
      return {
        name: g,
        x: mine.map((r) => eps(r)!),
        y: mine.map((r) => r[metric]),
        color: colorOf(mine[0]?.family ?? ""),
        dash: mine[0]?.calibration === "strict" ? "dash" : "solid",
        text: mine.map((r) =>
          `${r.label}: nominal ε ${r.nominalEpsilon}, spent ${formatEpsilon(r.spentEpsilon)}`
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

/** A summary table: label, method, calibration, metrics, ε, best round, seconds. */
export function summaryTable(
  rows: SummaryRow[],
): { columns: string[]; rows: (string | number)[][] } {
  return {
    columns: [
      "point",
      "method",
      "calibration",
      "acc",
      "F1",
      "AUC",
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
          `FAILED: ${shorten(r.error.split("\n")[0], 60)}`,
          ...Array(7).fill(""),
        ]
        : [
          r.label,
          r.method,
          r.calibration ?? "no DP",
          r.accuracy.toFixed(2),
          r.f1.toFixed(2),
          r.auc.toFixed(2),
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
