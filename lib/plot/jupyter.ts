/**
 * Plotly figures (and small tables) inline in Jupyter notebooks run by the Deno kernel.
 *
 * A figure is published as one display bundle (docs/notebooks.md says why, and how the Deno
 * kernel's output faults are guarded against):
 * * `application/vnd.plotly.v1+json` — the figure itself, for front ends with a Plotly renderer;
 * * `text/html` — a `<div>` and a script that draws it with plotly.js. The first figure of a
 *   kernel session carries the whole plotly.js bundle (from the `plotly.js-dist-min` npm package,
 *   ~4.8 MB) inline, later ones wait for `window.Plotly`. So a notebook, and its HTML export,
 *   renders with no network and holds the library once, not once per figure;
 * * `text/plain` — a one-line description for terminals and diffs.
 *
 * Cells cannot use `import.meta`, and the kernel does not type-check: keep the logic in checked
 * modules (`lib/ablations.ts`, `lib/plot/ablations.ts`) and call them from the cells.
 *
 * @example
 * ```ts
 * import { display, type MimeBundle } from "./jupyter.ts";
 * import { lineFigure } from "./figures.ts";
 * const fig = lineFigure({ title: "acc", xTitle: "round", yTitle: "%", series: [] });
 * // In a notebook cell: `await display(fig)`. Outside the kernel, pass a publisher:
 * const shown: MimeBundle[] = [];
 * await display(fig, { publish: (bundle) => void shown.push(bundle) });
 * Object.keys(shown[0]).length; // 3: Plotly JSON, HTML, plain text
 * ```
 * @module
 */
import type { Figure } from "./figures.ts";
import { escapeHtml, plotlyJs, tableHtml } from "./html.ts";

/** MIME type of Plotly's JSON figure (what JupyterLab's Plotly renderer reads). */
export const PLOTLY_MIME = "application/vnd.plotly.v1+json";

/** Marker attribute on the script element that carries plotly.js (checked by the runner). */
export const PLOTLY_LIBRARY_MARKER = "data-deer-plotly-library";

/** A Jupyter MIME bundle: MIME type → content. */
export type MimeBundle = Record<string, unknown>;

/** Options of {@link figureBundle}. */
export interface BundleOptions {
  /** The plotly.js source to inline before the figure (omit: the figure waits for Plotly). */
  library?: string;
  /** The `<div>` id (default: a random one). */
  id?: string;
}

/**
 * The display bundle of a figure: Plotly JSON, self-drawing HTML and a plain-text line.
 *
 * @example
 * ```ts
 * const bundle = figureBundle({ data: [], layout: { title: { text: "empty" } } });
 * Object.keys(bundle); // ["application/vnd.plotly.v1+json", "text/html", "text/plain"]
 * ```
 */
export function figureBundle(fig: Figure, opts: BundleOptions = {}): MimeBundle {
  const id = opts.id ?? `deer-fig-${crypto.randomUUID()}`;
  if (!/^[A-Za-z][A-Za-z0-9_-]*$/.test(id)) {
    // It goes into an HTML attribute and a script: nothing there may be markup.
    throw new Error(`figureBundle: id ${JSON.stringify(id)} must be letters, digits, _ and -`);
  }
  // JSON inside <script>: keep "</script>" (and "<!--") from ending the element early.
  const json = JSON.stringify(fig).replace(/</g, "\\u003c");
  const height = Number(fig.layout.height ?? 380);
  const library = opts.library === undefined
    ? ""
    : `<script ${PLOTLY_LIBRARY_MARKER}="1">${opts.library}</script>\n`;
  // Wait up to ~60 s for plotly.js (the library may sit in an earlier output still loading),
  // then say plainly why nothing is drawn.
  const draw = `<script>(function(){var f=${json};var id=${JSON.stringify(id)};var n=0;` +
    `function draw(){var el=document.getElementById(id);if(!el)return;` +
    `if(window.Plotly){window.Plotly.newPlot(el,f.data,f.layout,` +
    `{responsive:true,displaylogo:false});return;}` +
    `if(++n<1200){setTimeout(draw,50);return;}` +
    `el.textContent="plotly.js is not loaded on this page: re-run the notebook's first figure ` +
    `cell (it carries the library), or call resetPlotlyLibrary() and re-run this cell.";}` +
    `draw();})();</script>`;
  return {
    [PLOTLY_MIME]: fig,
    "text/html": `${library}<div id="${id}" class="deer-figure" style="width:100%;` +
      `min-height:${height}px"></div>\n${draw}`,
    "text/plain": describeFigure(fig),
  };
}

/** One line describing a figure: its title and traces. */
export function describeFigure(fig: Figure): string {
  const title = (fig.layout.title as { text?: string } | undefined)?.text ?? "untitled";
  const names = fig.data.map((t) => t.name).filter((n) => n !== undefined);
  return `Plotly figure "${title}": ${fig.data.length} trace(s)` +
    (names.length ? ` (${names.join(", ")})` : "");
}

/** Publishes a bundle; by default through the kernel's `Deno.jupyter.display`. */
export type Publisher = (bundle: MimeBundle) => Promise<void> | void;

let libraryShown = false;

/**
 * Forgets that plotly.js was already sent, so the next figure inlines it again (after clearing
 * the output that carried it).
 */
export function resetPlotlyLibrary(): void {
  libraryShown = false;
}

/** Whether this code runs inside the Deno Jupyter kernel. */
export function inJupyter(): boolean {
  try {
    // Outside `deno jupyter` the getter throws.
    return typeof (Deno as unknown as { jupyter?: unknown }).jupyter === "object";
  } catch {
    return false;
  }
}

/** Options of {@link kernelPublisher}. */
export interface KernelPublisherOptions {
  /**
   * Wait after each publish for the kernel to finish writing the message (default true): see
   * {@link settleMs}. Off only to demonstrate the kernel's fault
   * (`notebooks/tools/interleave_probe.py`).
   */
  settle?: boolean;
}

/**
 * How long to wait after publishing a bundle of `bytes` (its JSON length) before the cell may
 * go on: 50 ms plus 100 ms per MB.
 *
 * Why: Deno 2.9's kernel writes the iopub messages of two of its tasks to the same TCP
 * connection without a lock. A display message goes through one task (it serializes, signs
 * and writes it after `Deno.jupyter.display` has resolved); `status: idle` at the end of the
 * cell, and `busy`/`execute_input` at the start of the next, through the other. A message
 * larger than the socket's send buffer (4 MB at most on Linux; the first figure of a session
 * carries 4.8 MB of plotly.js) is written in several parts, and a message written between two
 * parts lands inside it: the client then refuses it (`Invalid Signature`) and every later
 * message of the session. A cell that ends right after `display()` opens that window; waiting
 * here lets the write finish first. Measured on a 2-core machine: a 1 MB display reaches the
 * client 12 ms after the kernel starts writing it, 5 MB 60 ms, 30 MB 460 ms, so this wait is 5
 * to 9 times that. docs/notebooks.md has the evidence.
 *
 * @example
 * ```ts
 * settleMs(0); // 50
 * settleMs(5_000_000); // 550
 * ```
 */
export function settleMs(bytes: number): number {
  return 50 + Math.ceil(bytes / 10_000);
}

/**
 * The publisher `display()` uses by default: the kernel's `Deno.jupyter.display`, then a wait
 * of {@link settleMs} (see there). Throws outside the Deno kernel.
 */
export function kernelPublisher(opts: KernelPublisherOptions = {}): Publisher {
  if (!inJupyter()) {
    throw new Error(
      "display() publishes to a Jupyter front end and works only in the Deno kernel " +
        "(`deno jupyter`); outside it use reportHtml() (lib/plot/html.ts) or savePng() " +
        "(lib/plot/png.ts)",
    );
  }
  const jupyter = (Deno as unknown as {
    jupyter: { display(obj: unknown, opts: { raw: boolean }): Promise<void> };
  }).jupyter;
  const settle = opts.settle ?? true;
  return async (bundle) => {
    await jupyter.display(bundle, { raw: true });
    if (settle) {
      const ms = settleMs(JSON.stringify(bundle).length);
      await new Promise((resolve) => setTimeout(resolve, ms));
    }
  };
}

/**
 * Shows a figure inline: one bundle with Plotly JSON, HTML and text. The first call of a kernel
 * session inlines plotly.js; `await` it so the output belongs to the running cell. Resolves to
 * nothing, so that a cell ending in `await display(fig)` shows the figure and no echo of it
 * (the bundle itself: {@link figureBundle}).
 *
 * @example
 * ```ts
 * import { lineFigure } from "./figures.ts";
 * const fig = lineFigure({ title: "acc", xTitle: "round", yTitle: "%", series: [] });
 * const shown: MimeBundle[] = [];
 * await display(fig, { publish: (bundle) => void shown.push(bundle) }); // in a cell: await display(fig)
 * shown.length; // 1
 * ```
 */
export async function display(
  fig: Figure,
  opts: { publish?: Publisher; id?: string } = {},
): Promise<void> {
  const publish = opts.publish ?? kernelPublisher();
  const bundle = figureBundle(fig, {
    id: opts.id,
    library: libraryShown ? undefined : await plotlyJs(),
  });
  await publish(bundle);
  libraryShown = true;
}

/** Alias of {@link display}. */
export const show: typeof display = display;

/**
 * Shows a small table (HTML, with a Markdown-ish plain-text fallback).
 *
 * @example
 * ```ts
 * const shown: MimeBundle[] = [];
 * await displayTable({ columns: ["method", "acc"], rows: [["DEeR", "71.2"]] }, {
 *   publish: (bundle) => void shown.push(bundle), // omit in a notebook cell
 * });
 * String(shown[0]["text/plain"]).includes("DEeR"); // true
 * ```
 */
export async function displayTable(
  t: { columns: string[]; rows: (string | number)[][]; caption?: string },
  opts: { publish?: Publisher } = {},
): Promise<void> {
  const publish = opts.publish ?? kernelPublisher();
  await publish(tableBundle(t));
}

/** The bundle of {@link displayTable}: `text/html` and `text/plain`. */
export function tableBundle(
  t: { columns: string[]; rows: (string | number)[][]; caption?: string },
): MimeBundle {
  const cells = [t.columns, ...t.rows.map((r) => r.map(String))];
  const widths = t.columns.map((_, i) => Math.max(...cells.map((r) => String(r[i]).length)));
  const text = cells.map((r) => r.map((c, i) => String(c).padEnd(widths[i])).join("  ").trimEnd());
  text.splice(1, 0, widths.map((w) => "-".repeat(w)).join("  "));
  const caption = t.caption ? `<p><b>${escapeHtml(t.caption)}</b></p>\n` : "";
  return {
    "text/html": caption + tableHtml(t),
    "text/plain": (t.caption ? t.caption + "\n" : "") + text.join("\n"),
  };
}
