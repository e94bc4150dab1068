/**
 * `deno task notebooks` — executes every notebook in `notebooks/` headless with the Deno kernel,
 * checks them and exports them: `results/notebooks/<name>.ipynb` (executed) and
 * `results/notebooks/<name>.html` (plotly.js inlined; renders offline).
 *
 * 1. Checks the prerequisites: Debian's `/usr/bin/python3` with nbclient and nbconvert (says
 *    which `apt-get` line installs them when missing).
 * 2. Installs the Deno kernelspec inside the project, `.tools/jupyter/kernels/deno/kernel.json`,
 *    pointing at this Deno (`Deno.execPath()`); nothing is written to the user's Jupyter folders.
 * 3. Runs `notebooks/tools/run_notebooks.py`, an nbclient runner that keeps reading a cell's
 *    outputs after the kernel reports it idle (the Deno kernel's late-output bug,
 *    docs/notebooks.md) and fails on any cell error, any lost or missing Plotly figure, or a
 *    plotly.js that is not inlined exactly once.
 *
 * Kernels start in `notebooks/` (as Jupyter starts them), so cells import `../lib/…`.
 * `--quick` sets `DEER_NOTEBOOK_QUICK=1`: fewer rounds, smaller grids and data (CI).
 *
 * @example
 * ```sh
 * deno task notebooks --quick
 * deno task notebooks --only 02 --screenshots
 * ```
 * @module
 */
import "./threads.ts"; // first: sets the thread count before libtensorflow loads
import { existsSync } from "node:fs";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { noPositionals, parseCommandArgs, UsageError, usageExit } from "../lib/cli.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { CHROMIUM_HINT, findChromium, screenshotPage } from "../lib/plot/png.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const NOTEBOOKS = join(ROOT, "notebooks");
const RUNNER = join(NOTEBOOKS, "tools", "run_notebooks.py");
/** Where the project-local kernelspec lives (`JUPYTER_PATH` entry). */
export const JUPYTER_DIR = join(ROOT, ".tools", "jupyter");

/** The apt line that installs what the runner needs (Debian 12). */
export const APT_LINE = "apt-get install -y --no-install-recommends jupyter-core jupyter-client " +
  "jupyter-nbconvert python3-nbclient";

const USAGE = `Usage: deno task notebooks [--quick] [--only 02 …] [--out DIR] [--cell-timeout S]
                           [--screenshots] [--python PATH]

Executes the notebooks in notebooks/ headless with the Deno kernel, checks their outputs and
writes executed notebooks and offline HTML exports.

  --quick             small rounds, grids and data (DEER_NOTEBOOK_QUICK=1; what CI runs)
  --only PREFIX       run only notebooks whose name starts with PREFIX (repeatable: --only 02
                      --only 07, or --only 02,07)
  --out DIR           output folder (default results/notebooks)
  --cell-timeout S    seconds a cell may run (default 900)
  --screenshots       also save a PNG screenshot of each HTML export (needs chromium)
  --python PATH       Python with nbclient and nbconvert (default $DEER_PYTHON or /usr/bin/python3)
  --help              this text

Needs Debian's Jupyter packages:
  ${APT_LINE}`;

/** The notebooks to run, in name order, filtered by name prefixes. */
export function selectNotebooks(names: string[], only: string[]): string[] {
  const all = names.filter((n) => n.endsWith(".ipynb")).sort();
  if (only.length === 0) return all;
  const picked = all.filter((n) => only.some((p) => n.startsWith(p)));
  const unmatched = only.filter((p) => !all.some((n) => n.startsWith(p)));
  if (unmatched.length) {
    throw new UsageError(
      `--only ${unmatched.join(", ")}: no notebook starts with that; have ${
        all.map((n) => n.replace(/\.ipynb$/, "")).join(", ")
      }`,
    );
  }
  return picked;
}

/** Writes the project-local Deno kernelspec; returns its folder. */
export async function installKernelspec(dir = JUPYTER_DIR): Promise<string> {
  const kernelDir = join(dir, "kernels", "deno");
  await Deno.mkdir(kernelDir, { recursive: true });
  const spec = {
    argv: [Deno.execPath(), "jupyter", "--kernel", "--conn", "{connection_file}"],
    display_name: "Deno",
    language: "typescript",
  };
  await writeFileAtomic(join(kernelDir, "kernel.json"), JSON.stringify(spec, null, 2) + "\n");
  return kernelDir;
}

/** Why the runner's Python cannot run, or null when it can. */
export async function checkPython(python: string): Promise<string | null> {
  if (!existsSync(python)) {
    return `${python} does not exist. The runner needs Debian's python3 with Jupyter:\n  ` +
      `apt-get update && ${APT_LINE}`;
  }
  const probe = await new Deno.Command(python, {
    args: ["-c", "import nbclient, nbformat, nbconvert, jupyter_client"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (probe.success) return null;
  const why = new TextDecoder().decode(probe.stderr).trim().split("\n").pop();
  return `${python} cannot import the Jupyter packages (${why}). Install them with:\n  ` +
    `apt-get update && ${APT_LINE}\n(use Debian's /usr/bin/python3, or --python / DEER_PYTHON ` +
    `for another Python that has nbclient and nbconvert)`;
}

interface RunnerResult {
  notebook: string;
  ok: boolean;
  seconds: number;
  figures: number;
  lateOutputsSameCell: number;
  lateOutputsRouted: number;
  htmlBytes: number;
  html: string;
  /** The first run's transport error when the notebook was run a second time, else null. */
  retried?: string | null;
}

async function main(): Promise<number> {
  const flags = parseCommandArgs("notebooks", USAGE, Deno.args, {
    string: ["out", "cell-timeout", "python", "only"],
    boolean: ["quick", "screenshots"],
    collect: ["only"],
    default: { out: join("results", "notebooks") },
  }, noPositionals);
  const only = ((flags.only as string[] | undefined) ?? []).flatMap((s) => s.split(","))
    .map((s) => s.trim()).filter((s) => s !== "");
  const cellTimeout = flags["cell-timeout"] === undefined ? 900 : Number(flags["cell-timeout"]);
  if (!Number.isInteger(cellTimeout) || cellTimeout < 1) {
    throw new UsageError(`--cell-timeout ${flags["cell-timeout"]}: expected whole seconds ≥ 1`);
  }
  const python = String(flags.python ?? Deno.env.get("DEER_PYTHON") ?? "/usr/bin/python3");
  const missing = await checkPython(python);
  if (missing) {
    console.error(`notebooks: ${missing}`);
    return 2;
  }
  if (flags.screenshots && !findChromium()) {
    console.error(`notebooks: --screenshots needs Chromium: ${CHROMIUM_HINT}`);
    return 2;
  }
  const names = [...Deno.readDirSync(NOTEBOOKS)].filter((e) => e.isFile).map((e) => e.name);
  const selected = selectNotebooks(names, only);
  if (selected.length === 0) throw new Error(`no notebooks in ${NOTEBOOKS}`);

  await installKernelspec();
  const out = String(flags.out);
  await Deno.mkdir(out, { recursive: true });
  const env: Record<string, string> = {
    JUPYTER_PATH: [JUPYTER_DIR, Deno.env.get("JUPYTER_PATH")].filter(Boolean).join(":"),
    JUPYTER_RUNTIME_DIR: join(JUPYTER_DIR, "runtime"),
    DEER_NOTEBOOK_QUICK: flags.quick ? "1" : "0",
    // The kernel's progress output goes to a notebook, not a terminal.
    NO_COLOR: "1",
  };
  console.log(
    `notebooks: ${selected.length} notebook(s), ${flags.quick ? "quick" : "full"} mode, ` +
      `kernel ${Deno.execPath()}, output ${out}`,
  );
  const started = performance.now();
  const run = await new Deno.Command(python, {
    args: [
      RUNNER,
      ...selected.map((n) => join(NOTEBOOKS, n)),
      "--out",
      out,
      "--cell-timeout",
      String(cellTimeout),
    ],
    env,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  const summaryPath = join(out, "summary.json");
  if (!existsSync(summaryPath)) {
    console.error(`notebooks: the runner ended (code ${run.code}) without ${summaryPath}`);
    return run.code || 1;
  }
  const results = JSON.parse(await Deno.readTextFile(summaryPath)) as RunnerResult[];
  if (flags.screenshots) {
    for (const r of results) {
      const png = r.html.replace(/\.html$/, ".png");
      await screenshotPage(r.html, png);
      console.log(`screenshot: ${png}`);
    }
  }
  console.log(
    `\nnotebook                        status  time (s)  figures  late outputs  HTML (MB)`,
  );
  for (const r of results) {
    console.log(
      `${basename(r.notebook).padEnd(32)}${
        (r.ok ? (r.retried ? "ok*" : "ok") : "FAILED").padEnd(8)
      }` +
        `${r.seconds.toFixed(1).padStart(8)}  ${String(r.figures).padStart(7)}  ` +
        `${String(r.lateOutputsSameCell + r.lateOutputsRouted).padStart(12)}  ` +
        `${(r.htmlBytes / 1e6).toFixed(1).padStart(9)}`,
    );
  }
  for (const r of results.filter((r) => r.retried)) {
    console.log(`* ${basename(r.notebook)}: second run, after ${r.retried}`);
  }
  const failed = results.filter((r) => !r.ok).length;
  console.log(
    `${results.length - failed} passed, ${failed} failed in ` +
      `${((performance.now() - started) / 1000).toFixed(1)} s; HTML in ${out}/`,
  );
  return run.code === 0 && failed === 0 ? 0 : 1;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (err) {
    if (err instanceof UsageError) usageExit("notebooks", err.message);
    console.error(`notebooks: ${(err as Error).message}`);
    Deno.exit(1);
  }
}
