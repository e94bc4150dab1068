/**
 * Saves every Plotly figure of an executed notebook as a PNG (headless Chromium, via
 * lib/plot/png.ts): `<prefix>_1.png`, `<prefix>_2.png`, … in output order.
 *
 * ```sh
 * deno run -A tools/notebook_pngs.ts results/notebooks/09_privacy_frontier.ipynb \
 *   results/notebooks/09_privacy_frontier
 * ```
 */
import type { Figure } from "../lib/plot/figures.ts";
import { savePng } from "../lib/plot/png.ts";
import { parseCommandArgs, UsageError } from "../lib/cli.ts";

const USAGE = `Usage: deno run -A tools/notebook_pngs.ts NOTEBOOK.ipynb OUT_PREFIX
  Saves every Plotly figure of an executed notebook as OUT_PREFIX_1.png, _2.png, … (Chromium).`;
const flags = parseCommandArgs("tools/notebook_pngs.ts", USAGE, Deno.args, {}, (f) => {
  if (f._.length !== 2) throw new UsageError("give the notebook and the prefix of the PNGs");
});
const [nbPath, prefix] = flags._;
const nb = JSON.parse(await Deno.readTextFile(nbPath)) as {
  cells: { outputs?: { data?: Record<string, unknown> }[] }[];
};
let count = 0;
for (const cell of nb.cells) {
  for (const output of cell.outputs ?? []) {
    const fig = output.data?.["application/vnd.plotly.v1+json"];
    if (fig === undefined) continue;
    count++;
    const path = `${prefix}_${count}.png`;
    await savePng(fig as Figure, path, { width: 1000, height: 560 });
    console.log(path);
  }
}
if (count === 0) {
  console.error(`${nbPath}: no Plotly figure in its outputs (was it executed?)`);
  Deno.exit(1);
}
