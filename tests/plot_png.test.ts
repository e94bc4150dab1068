import assert from "node:assert/strict";
import { join } from "node:path";
import { lineFigure } from "../lib/plot/figures.ts";
import {
  ChromiumMissingError,
  findChromium,
  renderFigure,
  savePng,
  saveSvg,
  screenshotPage,
} from "../lib/plot/png.ts";
import { withDir } from "./helpers/temp.ts";

const chromium = findChromium();
// DEER_REQUIRE_CHROMIUM=1 (CI installs Debian's chromium) makes a missing browser a failure.
const chromiumRequired = Deno.env.get("DEER_REQUIRE_CHROMIUM") === "1";
if (!chromium) {
  console.error(
    `plot_png: ${chromiumRequired ? "FAILING (DEER_REQUIRE_CHROMIUM=1)" : "SKIPPED"} — ` +
      "chromium is not installed (apt-get install -y --no-install-recommends chromium)",
  );
}
const skipRender = !chromium && !chromiumRequired;

const fig = lineFigure({
  title: "Validation accuracy",
  xTitle: "round",
  yTitle: "%",
  series: [{ name: "DEeR", x: [1, 2, 3], y: [40, 55, 61] }],
});

/** Width and height from a PNG's IHDR chunk. */
function pngSize(png: Uint8Array): [number, number] {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  assert.deepEqual([...png.subarray(0, 8)], signature, "PNG signature");
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  return [view.getUint32(16), view.getUint32(20)];
}

Deno.test({
  name: "png: PNG and SVG of a figure, at the asked size, written atomically",
  ignore: skipRender,
  sanitizeResources: false,
  fn: async () => {
    await withDir(async (dir) => {
      const png = join(dir, "sub", "acc.png");
      await savePng(fig, png, { width: 500, height: 300, scale: 2 });
      assert.deepEqual(pngSize(await Deno.readFile(png)), [1000, 600]);
      const svgPath = join(dir, "acc.svg");
      await saveSvg(fig, svgPath, { width: 500, height: 300 });
      const svg = await Deno.readTextFile(svgPath);
      assert.match(svg, /^<svg[^>]*width="500"[^>]*height="300"/);
      assert.match(svg, /Validation accuracy/);
      // A title that spells out the old fixed markers is only a title.
      const marked = lineFigure({
        title: "run DEERERROR:x:END DEERIMAGE:foo:END",
        xTitle: "round",
        yTitle: "%",
        series: [{ name: "LoRA", x: [1, 2], y: [1, 2] }],
      });
      const markedPng = join(dir, "marked.png");
      await savePng(marked, markedPng, { width: 300, height: 200 });
      assert.deepEqual(pngSize(await Deno.readFile(markedPng)), [300, 200]);
      await Deno.remove(markedPng);
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
        "acc.svg",
        "sub",
      ]);
    }, "deer-png-");
  },
});

Deno.test({
  name: "png: a screenshot of an HTML page",
  ignore: skipRender,
  sanitizeResources: false,
  fn: async () => {
    await withDir(async (dir) => {
      const page = join(dir, "page.html");
      await Deno.writeTextFile(page, "<html><body><h1>hello</h1></body></html>");
      await screenshotPage(page, join(dir, "page.png"), { width: 320, height: 200 });
      assert.deepEqual(pngSize(await Deno.readFile(join(dir, "page.png"))), [320, 200]);
    }, "deer-shot-");
  },
});

Deno.test("png: a missing Chromium is a clear error", async () => {
  const saved = Deno.env.get("DEER_CHROMIUM");
  Deno.env.set("DEER_CHROMIUM", "/nonexistent/chromium");
  try {
    assert.equal(findChromium(), null);
    await assert.rejects(
      () => renderFigure(fig, "png"),
      (err: Error) =>
        err instanceof ChromiumMissingError && /apt-get install .*chromium/.test(err.message),
    );
  } finally {
    if (saved === undefined) Deno.env.delete("DEER_CHROMIUM");
    else Deno.env.set("DEER_CHROMIUM", saved);
  }
});
