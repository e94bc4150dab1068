/**
 * `deno fmt --check` on the notebooks, one file at a time in a scratch folder.
 *
 * Deno 2.9.6's `deno fmt --check` reports most of these notebooks as "not formatted" with an
 * empty diff, while `deno fmt` leaves them byte for byte unchanged (a false positive of its
 * `.ipynb` check). So `deno.json` excludes `notebooks/` from `deno fmt`, and this script checks
 * them the reliable way: format a copy with the project's settings and compare the bytes.
 * Exits 1 naming each notebook that `deno fmt` would change.
 */
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const config = JSON.parse(await Deno.readTextFile(join(root, "deno.json")));
const scratch = await Deno.makeTempDir({ prefix: "deer-fmt-notebooks-" });
await Deno.writeTextFile(
  join(scratch, "deno.json"),
  JSON.stringify({ fmt: { ...config.fmt, exclude: [] } }),
);
const changed: string[] = [];
try {
  for (
    const entry of [...Deno.readDirSync(join(root, "notebooks"))].sort((a, b) =>
      a.name < b.name ? -1 : 1
    )
  ) {
    if (!entry.isFile || !entry.name.endsWith(".ipynb")) continue;
    const original = await Deno.readFile(join(root, "notebooks", entry.name));
    const copy = join(scratch, entry.name);
    await Deno.writeFile(copy, original);
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["fmt", "--quiet", copy],
      cwd: scratch,
    }).output();
    if (code !== 0) {
      console.error(new TextDecoder().decode(stderr));
      changed.push(`${entry.name} (deno fmt failed)`);
      continue;
    }
    const formatted = await Deno.readFile(copy);
    if (formatted.length !== original.length || formatted.some((b, i) => b !== original[i])) {
      changed.push(entry.name);
    }
  }
} finally {
  await Deno.remove(scratch, { recursive: true });
}
if (changed.length > 0) {
  console.error(`notebooks not formatted (run deno fmt on them): ${changed.join(", ")}`);
  Deno.exit(1);
}
console.log("notebooks: formatted");
