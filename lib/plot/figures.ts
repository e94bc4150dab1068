/**
 * Plotly figure builders shared by the demo report, the notebooks and static export. A figure is
 * plain data (`{ data, layout }`, Plotly's JSON schema), so it can be rendered in a page, shown
 * inline in Jupyter or saved as JSON.
 *
 * @example
 * ```ts
 * const fig = lineFigure({
 *   title: "Validation accuracy",
 *   xTitle: "round",
 *   yTitle: "accuracy (%)",
 *   series: [{ name: "DEeR", x: [1, 2, 3], y: [40, 55, 61] }],
 * });
 * ```
 * @module
 */

/** A Plotly trace (the subset of fields the toolkit writes). */
export interface Trace {
  type: "scatter" | "bar" | "heatmap";
  name?: string;
  x?: (number | string)[];
  y?: (number | string | null)[];
  z?: number[][];
  mode?: string;
  /** ± error bars; a null entry draws none at that point. */
  error_y?: { type: "data"; array: (number | null)[]; visible: boolean };
  error_x?: { type: "data"; array: (number | null)[]; visible: boolean };
  marker?: Record<string, unknown>;
  line?: Record<string, unknown>;
  text?: string[];
  textposition?: string;
  hovertemplate?: string;
  yaxis?: string;
  colorscale?: string;
}

/** A Plotly figure. */
export interface Figure {
  data: Trace[];
  layout: Record<string, unknown>;
}

/** One line of a {@link lineFigure}. */
export interface Series {
  name: string;
  x: number[];
  y: (number | null)[];
  dash?: "solid" | "dash" | "dot";
}

/** The toolkit's colour per method family, so every plot agrees. */
export const METHOD_COLORS: Record<string, string> = {
  LoRA: "#7f7f7f",
  "FFA-LoRA": "#1f77b4",
  "DP-DyLoRA": "#9467bd",
  DEeR: "#d62728",
  "FedEx-LoRA": "#2ca02c",
  "FedSA-LoRA": "#ff7f0e",
};

/** The colour of a method label such as `DEeR(m1=1,m2=0)` (its family's colour). */
export function colorOf(label: string): string | undefined {
  const family = Object.keys(METHOD_COLORS).find((m) => label === m || label.startsWith(m + "("));
  return family ? METHOD_COLORS[family] : undefined;
}

function baseLayout(title: string, xTitle: string, yTitle: string, log = false) {
  return {
    title: { text: title },
    xaxis: { title: { text: xTitle } },
    yaxis: { title: { text: yTitle }, type: log ? "log" : "linear" },
    legend: { orientation: "h", y: -0.2 },
    margin: { t: 50, r: 20, b: 80, l: 60 },
    height: 380,
    template: "plotly_white",
  };
}

/** Lines over a shared x axis (e.g. a metric per round, one line per method). */
export function lineFigure(
  opts: {
    title: string;
    xTitle: string;
    yTitle: string;
    series: Series[];
    logY?: boolean;
    /** Integer ticks on x (rounds, ranks, client counts). */
    integerX?: boolean;
  },
): Figure {
  const layout = baseLayout(opts.title, opts.xTitle, opts.yTitle, opts.logY);
  if (opts.integerX) {
    layout.xaxis = { ...layout.xaxis, tickformat: "d", dtick: 1 } as typeof layout.xaxis;
  }
  return {
    data: opts.series.map((s) => ({
      type: "scatter",
      mode: "lines+markers",
      name: s.name,
      x: s.x,
      y: s.y,
      line: { color: colorOf(s.name), dash: s.dash ?? "solid" },
    })),
    layout,
  };
}

/** Grouped bars: one group per category, one bar per series, optional ± error bars. */
export function barFigure(opts: {
  title: string;
  yTitle: string;
  categories: string[];
  series: {
    name: string;
    values: (number | null)[];
    errors?: (number | null)[];
    color?: string;
  }[];
  logY?: boolean;
}): Figure {
  return {
    data: opts.series.map((s) => ({
      type: "bar",
      name: s.name,
      x: opts.categories,
      y: s.values,
      error_y: s.errors ? { type: "data", array: s.errors, visible: true } : undefined,
      marker: s.color ? { color: s.color } : undefined,
    })),
    layout: { ...baseLayout(opts.title, "", opts.yTitle, opts.logY), barmode: "group" },
  };
}

/** A heat map (e.g. accuracy over the eliminator × regulator grid). */
export function heatmapFigure(opts: {
  title: string;
  x: string[];
  y: string[];
  z: number[][];
  xTitle?: string;
  yTitle?: string;
}): Figure {
  return {
    data: [{
      type: "heatmap",
      x: opts.x,
      y: opts.y,
      z: opts.z,
      colorscale: "Viridis",
      hovertemplate: "%{y} / %{x}: %{z:.2f}<extra></extra>",
    }],
    layout: {
      ...baseLayout(opts.title, opts.xTitle ?? "", opts.yTitle ?? ""),
      // Categorical axes: a linear y axis has nowhere to put string categories.
      xaxis: { title: { text: opts.xTitle ?? "" }, type: "category" },
      yaxis: { title: { text: opts.yTitle ?? "" }, type: "category" },
      annotations: opts.z.flatMap((row, i) =>
        row.map((v, j) => ({ x: opts.x[j], y: opts.y[i], text: v.toFixed(2), showarrow: false }))
      ),
    },
  };
}
