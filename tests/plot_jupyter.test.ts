import assert from "node:assert/strict";
import { lineFigure } from "../lib/plot/figures.ts";
import {
  describeFigure,
  display,
  figureBundle,
  inJupyter,
  type MimeBundle,
  PLOTLY_LIBRARY_MARKER,
  PLOTLY_MIME,
  resetPlotlyLibrary,
  tableBundle,
} from "../lib/plot/jupyter.ts";
import { plotlyJs } from "../lib/plot/html.ts";

const fig = lineFigure({
  title: "Validation accuracy",
  xTitle: "round",
  yTitle: "%",
  series: [{ name: "DEeR", x: [1, 2], y: [40, 55] }, { name: "LoRA", x: [1, 2], y: [30, 45] }],
});

Deno.test("jupyter: a figure bundle holds Plotly JSON, self-drawing HTML and a text line", () => {
  const b = figureBundle(fig, { id: "f1" });
  assert.deepEqual(Object.keys(b).sort(), [PLOTLY_MIME, "text/html", "text/plain"].sort());
  assert.deepEqual(b[PLOTLY_MIME], fig);
  const html = b["text/html"] as string;
  assert.match(html, /<div id="f1"/);
  assert.match(html, /Plotly\.newPlot\(el,f\.data,f\.layout/);
  assert.ok(!html.includes(PLOTLY_LIBRARY_MARKER), "no library unless asked for");
  assert.equal(b["text/plain"], 'Plotly figure "Validation accuracy": 2 trace(s) (DEeR, LoRA)');
  // The figure JSON round-trips through the script.
  const json = /var f=(\{.*?\});var id=/.exec(html)![1];
  assert.deepEqual(JSON.parse(json), JSON.parse(JSON.stringify(fig)));
});

Deno.test("jupyter: text that would close the script element is escaped", () => {
  const evil = lineFigure({ title: "</script><b>x</b>", xTitle: "", yTitle: "", series: [] });
  const html = figureBundle(evil, { id: "f2" })["text/html"] as string;
  const scripts = html.match(/<\/script>/g) ?? [];
  assert.equal(scripts.length, 1, "only the drawing script's own closing tag");
  assert.match(html, /\\u003c\/script>/);
  assert.equal(describeFigure(evil), 'Plotly figure "</script><b>x</b>": 0 trace(s)');
  // The element id goes into an attribute and a script: markup there is refused.
  assert.throws(
    () => figureBundle(evil, { id: 'x" onerror="alert(1)' }),
    /figureBundle: id .* must be letters, digits, _ and -/,
  );
});

Deno.test("jupyter: display inlines plotly.js in the first bundle of a session only", async () => {
  resetPlotlyLibrary();
  const sent: MimeBundle[] = [];
  const publish = (b: MimeBundle) => {
    sent.push(b);
  };
  const result = await display(fig, { publish });
  assert.equal(result, undefined, "nothing to echo as the cell's result");
  await display(fig, { publish });
  await display(fig, { publish });
  assert.equal(sent.length, 3);
  const lib = await plotlyJs();
  const first = sent[0]["text/html"] as string;
  assert.ok(first.includes(PLOTLY_LIBRARY_MARKER) && first.includes(lib.slice(0, 200)));
  assert.ok(first.length > lib.length);
  for (const b of sent.slice(1)) {
    const html = b["text/html"] as string;
    assert.ok(!html.includes(PLOTLY_LIBRARY_MARKER));
    assert.ok(html.length < 10_000, `later bundles stay small (${html.length} chars)`);
  }
  resetPlotlyLibrary();
  await display(fig, { publish });
  assert.ok((sent[3]["text/html"] as string).includes(PLOTLY_LIBRARY_MARKER), "after a reset");
  resetPlotlyLibrary();
});

Deno.test("jupyter: outside the kernel, display says where it works", async () => {
  assert.equal(inJupyter(), false);
  await assert.rejects(() => display(fig), /only in the Deno kernel/);
});

Deno.test("jupyter: a table bundle has HTML and aligned plain text", () => {
  const b = tableBundle({
    caption: "Results",
    columns: ["method", "acc"],
    rows: [["DEeR", "71.20"], ["LoRA <x>", 65]],
  });
  assert.match(b["text/html"] as string, /<p><b>Results<\/b><\/p>/);
  assert.match(b["text/html"] as string, /<td>LoRA &lt;x&gt;<\/td>/);
  assert.equal(
    b["text/plain"],
    "Results\nmethod    acc\n--------  -----\nDEeR      71.20\nLoRA <x>  65",
  );
});
