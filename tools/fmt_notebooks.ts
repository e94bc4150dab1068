/**
 * `deno fmt` for the notebooks, one file at a time in a scratch folder.
 *
 * Deno 2.9.6's `deno fmt --check` reports most of these notebooks as "not formatted" with an
 * empty diff, while `deno fmt` leaves them byte for byte unchanged (a false positive of its
 * `.ipynb` check). So `deno.json` excludes `notebooks/` from `deno fmt` — which then refuses them
 * even by name ("No target files found") — and this script formats them the reliable way: a copy
 * with the project's settings, compared byte for byte with the original.
 *
 * Checks by default (`deno task check` runs it so), exiting 1 and naming each notebook that
 * `deno fmt` would change; `--write` formats them in place (each replaced whole, through a
 * temporary file renamed over it).
 */
import { basename, join, resolve } from "node:path";
import { parseCommandArgs, UsageError } from "../lib/cli.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";

const USAGE = `Usage: deno run -A tools/fmt_notebooks.ts [--write] [NOTEBOOK.ipynb ...]
Checks that the notebooks are formatted as deno fmt formats them with the project's settings
(deno.json "fmt"); exits 1 naming those that are not.
  NOTEBOOK.ipynb ...   the notebooks (default: every notebooks/*.ipynb)
  --write              format them in place instead
  -h, --help           this text`;

const root = new URL("..", import.meta.url).pathname;

const flags = parseCommandArgs("tools/fmt_notebooks.ts", USAGE, Deno.args, {
  boolean: ["write"],
}, (f) => {
  for (const path of f._) {
    if (!path.endsWith(".ipynb")) throw new UsageError(`${path}: not a notebook (.ipynb)`);
  }
});
const write = flags.write === true;
const notebooks = flags._.length > 0
  ? flags._.map((p) => resolve(p))
  : [...Deno.readDirSync(join(root, "notebooks"))]
    .filter((e) => e.isFile && e.name.endsWith(".ipynb"))
    .map((e) => join(root, "notebooks", e.name))
    .sort();

const config = JSON.parse(await Deno.readTextFile(join(root, "deno.json")));
const scratch = await Deno.makeTempDir({ prefix: "deer-fmt-notebooks-" });
await Deno.writeTextFile(
  join(scratch, "deno.json"),
  JSON.stringify({ fmt: { ...config.fmt, exclude: [] } }),
);
const changed: string[] = [];
let rewritten = 0;
let failed = false;
try {
  for (const [i, path] of notebooks.entries()) {
    let original: Uint8Array;
    try {
      original = await Deno.readFile(path);
    } catch (err) {
      console.error(`${path}: cannot read it: ${(err as Error).message}`);
      failed = true;
      continue;
    }
    // A folder of its own for each copy: two notebooks given from different folders may share
    // a name.
    const dir = join(scratch, String(i));
    await Deno.mkdir(dir);
    const copy = join(dir, basename(path));
    await Deno.writeFile(copy, original);
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["fmt", "--quiet", copy],
      cwd: scratch,
    }).output();
    if (code !== 0) {
      console.error(`${path}: deno fmt failed:\n${new TextDecoder().decode(stderr)}`);
      failed = true;
      continue;
    }
    const formatted = await Deno.readFile(copy);
    if (formatted.length === original.length && formatted.every((b, j) => b === original[j])) {
      continue;
    }
    if (write) {
      await writeFileAtomic(path, formatted);
      console.log(`formatted ${path}`);
      rewritten++;
    } else {
      changed.push(path.startsWith(root) ? path.slice(root.length) : path);
    }
  }
} finally {
  await Deno.remove(scratch, { recursive: true });
}
if (changed.length > 0) {
  console.error(
    `notebooks not formatted: ${changed.join(", ")}\n` +
      `(deno run -A tools/fmt_notebooks.ts --write formats them; deno fmt skips notebooks/)`,
  );
  Deno.exit(1);
}
if (failed) Deno.exit(1);
console.log(
  write
    ? `notebooks: ${notebooks.length} checked, ${rewritten} formatted in place`
    : `notebooks: ${notebooks.length} checked, all formatted`,
);
