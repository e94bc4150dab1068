/**
 * Self-contained HTML pages with Plotly figures: plotly.js (from the `plotly.js-dist-min` npm
 * package) is inlined once, so a report renders with no network (air-gapped hospitals).
 *
 * @example
 * ```ts
 * import { lineFigure } from "./figures.ts";
 * const fig = lineFigure({
 *   title: "Accuracy",
 *   xTitle: "round",
 *   yTitle: "%",
 *   series: [{ name: "DEeR", x: [1, 2, 3], y: [61, 66, 70] }],
 * });
 * import { writeFileAtomic } from "../io/atomic.ts";
 * const html = await reportHtml({ title: "Demo", sections: [{ heading: "Accuracy", figures: [fig] }] });
 * await writeFileAtomic(`${await Deno.makeTempDir()}/report.html`, html); // opens offline: plotly.js inlined
 * ```
 * @module
 */
import { createRequire } from "node:module";
import type { Figure } from "./figures.ts";

let plotlySource: string | undefined;

/** The minified plotly.js bundle, read once from the installed npm package. */
export async function plotlyJs(): Promise<string> {
  if (plotlySource === undefined) {
    const require = createRequire(import.meta.url);
    let path: string;
    try {
      path = require.resolve("plotly.js-dist-min/plotly.min.js");
    } catch {
      throw new Error(
        "plotly.js-dist-min is not installed; run `deno install` (it is listed in deno.json)",
      );
    }
    plotlySource = await Deno.readTextFile(path);
  }
  return plotlySource;
}

/** One part of a report: a heading, optional HTML text (trusted), figures and a table. */
export interface Section {
  heading: string;
  html?: string;
  figures?: Figure[];
  table?: { columns: string[]; rows: (string | number)[][] };
}

/** Escapes text for HTML. */
export function escapeHtml(s: string): string {
  return s.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!,
  );
}

/** An HTML table from columns and rows (cells escaped). */
export function tableHtml(t: { columns: string[]; rows: (string | number)[][] }): string {
  const head = t.columns.map((c) => `<th>${escapeHtml(c)}</th>`).join("");
  const body = t.rows.map((r) =>
    `<tr>${r.map((c) => `<td>${escapeHtml(String(c))}</td>`).join("")}</tr>`
  )
    .join("\n");
  return `<table><thead><tr>${head}</tr></thead><tbody>\n${body}\n</tbody></table>`;
}

/** A figure as a `<div>` plus the script that draws it (needs plotly.js on the page). */
export function figureHtml(fig: Figure, id: string): string {
  // JSON inside <script>: keep "</script>" from closing the element.
  const json = JSON.stringify(fig).replace(/</g, "\\u003c");
  return `<div id="${id}" class="figure"></div>\n<script>(function(){var f=${json};` +
    `Plotly.newPlot(${
      JSON.stringify(id)
    }, f.data, f.layout, {responsive: true, displaylogo: false});})();</script>`;
}

/** A complete, offline HTML page with the sections in order. */
export async function reportHtml(
  opts: { title: string; intro?: string; sections: Section[] },
): Promise<string> {
  let n = 0;
  const parts = opts.sections.map((s) => {
    const figs = (s.figures ?? []).map((f) => figureHtml(f, `fig${n++}`)).join("\n");
    const table = s.table ? tableHtml(s.table) : "";
    return `<section><h2>${escapeHtml(s.heading)}</h2>\n${
      s.html ?? ""
    }\n${table}\n${figs}</section>`;
  });
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(opts.title)}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.figure { width: 100%; min-height: 380px; }
code { background: #f4f4f4; padding: 1px 4px; }
</style>
<script>${await plotlyJs()}</script>
</head><body>
<h1>${escapeHtml(opts.title)}</h1>
${opts.intro ?? ""}
${parts.join("\n")}
</body></html>
`;
}
