/**
 * Static images of Plotly figures (PNG, SVG) and screenshots of HTML pages, rendered by a
 * headless Chromium with plotly.js inlined — no network, no Python, no kaleido.
 *
 * Chromium is found as `$DEER_CHROMIUM`, else `chromium`, `chromium-browser`, `google-chrome`
 * on PATH (Debian: `apt-get install -y --no-install-recommends chromium`). Every call starts a
 * fresh browser with a new, temporary profile and the launch flags that work headless as root and
 * in containers ({@link CHROMIUM_FLAGS}); a render costs a few seconds, mostly start-up.
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
 * if (findChromium()) { // a headless Chromium renders the figure
 *   await savePng(fig, `${await Deno.makeTempDir()}/accuracy.png`, { width: 900, height: 420 });
 * }
 * ```
 * @module
 */
import { dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { writeFileAtomic } from "../io/atomic.ts";
import type { Figure } from "./figures.ts";
import { plotlyJs } from "./html.ts";

/** The Chromium launch flags that work headless, as root and in containers without a GPU. */
export const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
] as const;

/** How to get Chromium, for error messages. */
export const CHROMIUM_HINT =
  "install it with `apt-get install -y --no-install-recommends chromium` " +
  "(Debian/Ubuntu), or point DEER_CHROMIUM at a Chrome/Chromium binary";

/** Thrown when no Chromium binary can be found. */
export class ChromiumMissingError extends Error {
  override name = "ChromiumMissingError";
}

/** The Chromium binary to use, or null when none is installed. */
export function findChromium(): string | null {
  const forced = Deno.env.get("DEER_CHROMIUM");
  if (forced) return isFile(forced) ? forced : null;
  const path = (Deno.env.get("PATH") ?? "").split(":").filter((p) => p !== "");
  for (const name of ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]) {
    for (const dir of path) {
      const candidate = join(dir, name);
      if (isFile(candidate)) return candidate;
    }
  }
  return null;
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function requireChromium(): string {
  const found = findChromium();
  if (found) return found;
  const forced = Deno.env.get("DEER_CHROMIUM");
  throw new ChromiumMissingError(
    forced
      ? `DEER_CHROMIUM=${forced} is not a file; ${CHROMIUM_HINT}`
      : `static figure export needs Chromium, which is not installed: ${CHROMIUM_HINT}`,
  );
}

/** Runs Chromium headless on a page with a fresh profile; returns stdout. */
async function runChromium(extraArgs: string[], timeoutMs: number): Promise<string> {
  const binary = requireChromium();
  const profile = await Deno.makeTempDir({ prefix: "deer-chromium-" });
  try {
    const child = new Deno.Command(binary, {
      args: [...CHROMIUM_FLAGS, `--user-data-dir=${profile}`, ...extraArgs],
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }).spawn();
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, timeoutMs);
    const out = await child.output();
    clearTimeout(timer);
    const stdout = new TextDecoder().decode(out.stdout);
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).split("\n").filter((l) =>
        l.trim() !== "" && !l.includes("dbus")
      ).slice(-5).join("\n");
      throw new Error(
        `${binary} exited with code ${out.code}${
          out.signal ? ` (${out.signal}, limit ${timeoutMs} ms)` : ""
        }: ${err}`,
      );
    }
    return stdout;
  } finally {
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }
}

/** Options of {@link renderFigure}. */
export interface ImageOptions {
  /** Width and height in CSS pixels (default: the layout's, else 900 × 420). */
  width?: number;
  height?: number;
  /** Pixel ratio of a PNG (default 1; 2 for print). */
  scale?: number;
  /** Give up after this long (default 60 s). */
  timeoutMs?: number;
}

const OUT_ID = "deer-image-out";

/**
 * Renders a figure to PNG bytes or SVG text with plotly.js in headless Chromium.
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
 * if (findChromium()) {
 *   const png = await renderFigure(fig, "png"); // Uint8Array
 *   const svg = await renderFigure(fig, "svg"); // string
 *   [png[1], png[2], png[3]]; // "PNG"
 *   svg.startsWith("<svg"); // true
 * }
 * ```
 */
export function renderFigure(fig: Figure, format: "png", opts?: ImageOptions): Promise<Uint8Array>;
export function renderFigure(fig: Figure, format: "svg", opts?: ImageOptions): Promise<string>;
export async function renderFigure(
  fig: Figure,
  format: "png" | "svg",
  opts: ImageOptions = {},
): Promise<Uint8Array | string> {
  const width = opts.width ?? Number(fig.layout.width ?? 900);
  const height = opts.height ?? Number(fig.layout.height ?? 420);
  const scale = opts.scale ?? 1;
  const json = JSON.stringify(fig).replace(/</g, "\\u003c");
  // The result goes into a <pre> as text, framed by a marker drawn for this render.
  const marker = `DEER${crypto.randomUUID().replaceAll("-", "")}`;
  const page = `<!DOCTYPE html><html><head><meta charset="utf-8">
<script>${await plotlyJs()}</script></head><body>
<div id="fig" style="width:${width}px;height:${height}px"></div><pre id="${OUT_ID}"></pre>
<script>
(function(){
  var out = document.getElementById(${JSON.stringify(OUT_ID)});
  var f = ${json};
  var layout = Object.assign({}, f.layout, { width: ${width}, height: ${height} });
  Plotly.newPlot("fig", f.data, layout, { staticPlot: true })
    .then(function (gd) {
      return Plotly.toImage(gd, { format: ${JSON.stringify(format)}, width: ${width},
        height: ${height}, scale: ${scale} });
    })
    .then(function (url) { out.textContent = ${JSON.stringify(marker)} + "IMAGE:" + url + ":END"; })
    .catch(function (e) { out.textContent = ${JSON.stringify(marker)} + "ERROR:" + e + ":END"; });
})();
</script></body></html>`;
  const dir = await Deno.makeTempDir({ prefix: "deer-figure-" });
  try {
    const file = join(dir, "figure.html");
    await Deno.writeTextFile(file, page);
    const dom = await runChromium(
      ["--virtual-time-budget=10000", "--dump-dom", pathToFileURL(file).href],
      opts.timeoutMs ?? 60_000,
    );
    // Only the output element, and a marker no figure text can know: a title that spells the
    // marker out is rendered before it and must not be taken for the result.
    const out = new RegExp(`<pre id="${OUT_ID}"[^>]*>([\\s\\S]*?)</pre>`).exec(dom)?.[1] ?? "";
    const failed = new RegExp(`^${marker}ERROR:([\\s\\S]*?):END$`).exec(out);
    if (failed) {
      throw new Error(`plotly.js could not render the figure: ${unescapeHtml(failed[1])}`);
    }
    const found = new RegExp(`^${marker}IMAGE:([\\s\\S]*?):END$`).exec(out);
    if (!found) {
      throw new Error(
        "Chromium rendered the page but no image came back (plotly.js did not finish within the " +
          "virtual time budget)",
      );
    }
    const url = unescapeHtml(found[1]);
    if (format === "png") {
      const prefix = "data:image/png;base64,";
      if (!url.startsWith(prefix)) throw new Error(`unexpected PNG data URL: ${url.slice(0, 40)}…`);
      return Uint8Array.from(atob(url.slice(prefix.length)), (c) => c.charCodeAt(0));
    }
    const comma = url.indexOf(",");
    if (!url.startsWith("data:image/svg+xml") || comma < 0) {
      throw new Error(`unexpected SVG data URL: ${url.slice(0, 40)}…`);
    }
    const body = url.slice(comma + 1);
    return url.slice(0, comma).endsWith(";base64") ? atob(body) : decodeURIComponent(body);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function unescapeHtml(s: string): string {
  return s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'").replace(/&amp;/g, "&");
}

/**
 * Saves a figure as a PNG file (written atomically; the folder is created).
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
 * if (findChromium()) await savePng(fig, `${await Deno.makeTempDir()}/deviation.png`);
 * ```
 */
export async function savePng(fig: Figure, path: string, opts: ImageOptions = {}): Promise<void> {
  const png = await renderFigure(fig, "png", opts);
  await Deno.mkdir(dirname(resolve(path)), { recursive: true });
  await writeFileAtomic(path, png);
}

/**
 * Saves a figure as an SVG file. (For HTML made by Debian's nbconvert 6.5 use PNG: it blanks
 * inline SVG.)
 */
export async function saveSvg(fig: Figure, path: string, opts: ImageOptions = {}): Promise<void> {
  const svg = await renderFigure(fig, "svg", opts);
  await Deno.mkdir(dirname(resolve(path)), { recursive: true });
  await writeFileAtomic(path, svg);
}

/**
 * A PNG screenshot of an HTML page (e.g. an exported notebook), `width` × `height` CSS pixels
 * from the top of the page, after its scripts ran.
 *
 * @example
 * ```ts
 * import { reportHtml } from "./html.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/page.html`, await reportHtml({ title: "Page", sections: [] }));
 * if (findChromium()) await screenshotPage(`${dir}/page.html`, `${dir}/page.png`);
 * ```
 */
export async function screenshotPage(
  htmlPath: string,
  pngPath: string,
  opts: { width?: number; height?: number; timeoutMs?: number; waitMs?: number } = {},
): Promise<void> {
  const width = opts.width ?? 1200;
  const height = opts.height ?? 2400;
  const dir = await Deno.makeTempDir({ prefix: "deer-shot-" });
  try {
    const tmp = join(dir, "shot.png");
    await runChromium(
      [
        `--window-size=${width},${height}`,
        "--hide-scrollbars",
        `--virtual-time-budget=${opts.waitMs ?? 15_000}`,
        `--screenshot=${tmp}`,
        pathToFileURL(resolve(htmlPath)).href,
      ],
      opts.timeoutMs ?? 120_000,
    );
    const png = await Deno.readFile(tmp).catch(() => {
      throw new Error(`Chromium wrote no screenshot of ${htmlPath}`);
    });
    await Deno.mkdir(dirname(resolve(pngPath)), { recursive: true });
    await writeFileAtomic(pngPath, png);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
