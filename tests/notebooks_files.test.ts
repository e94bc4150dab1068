/**
 * The notebooks themselves, without Jupyter: structure, the runner's figure count, and a type
 * check of every notebook's code (the kernel does not type-check cells).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { installKernelspec, selectNotebooks } from "../tasks/notebooks.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DIR = join(ROOT, "notebooks");
const names = [...Deno.readDirSync(DIR)].map((e) => e.name).filter((n) => n.endsWith(".ipynb"))
  .sort();

interface Notebook {
  cells: { cell_type: string; source: string | string[]; outputs?: unknown[] }[];
  metadata: { kernelspec: { name: string }; deer?: { figures?: number } };
}

const read = (name: string) => JSON.parse(Deno.readTextFileSync(join(DIR, name))) as Notebook;
const text = (s: string | string[]) => (Array.isArray(s) ? s.join("") : s);
const code = (nb: Notebook) =>
  nb.cells.filter((c) => c.cell_type === "code").map((c) => text(c.source));

Deno.test("notebooks: the eight studies and the sweep loader, Deno kernel, no stored outputs", () => {
  assert.deepEqual(names.map((n) => n.slice(0, 3)), [
    "01_",
    "02_",
    "03_",
    "04_",
    "05_",
    "06_",
    "07_",
    "08_",
    "09_",
    "10_",
  ]);
  for (const name of names) {
    const nb = read(name);
    assert.equal(nb.metadata.kernelspec.name, "deno", name);
    for (const c of nb.cells) assert.deepEqual(c.outputs ?? [], [], `${name}: outputs stored`);
    const md = nb.cells.filter((c) => c.cell_type === "markdown").map((c) => text(c.source));
    assert.ok(md.some((m) => /What this run showed/.test(m)), `${name}: findings section`);
  }
});

Deno.test("notebooks: figure counts match metadata.deer.figures (what the runner checks)", () => {
  for (const name of names) {
    const nb = read(name);
    const shown = code(nb).join("\n").match(/await display\(/g)?.length ?? 0;
    assert.equal(nb.metadata.deer?.figures, shown, `${name}: metadata.deer.figures`);
    assert.ok(shown >= 1, name);
  }
});

Deno.test("notebooks: cells import checked modules relative to notebooks/, no import.meta", () => {
  for (const name of names) {
    const all = code(read(name)).join("\n");
    assert.ok(!all.includes("import.meta"), `${name} uses import.meta`);
    for (const [, spec] of all.matchAll(/from "([^"]+)"/g)) {
      assert.match(spec, /^\.\.\/(lib\/|mod\.ts)/, `${name}: import ${spec}`);
      const file = join(DIR, spec);
      assert.ok(Deno.statSync(file).isFile, `${name}: ${spec} does not exist`);
    }
  }
});

Deno.test({
  name: "notebooks: every notebook's code type-checks (deno check)",
  sanitizeResources: false,
  fn: async () => {
    // Each notebook's cells, in order, as one module in a scratch folder two levels below the
    // root (imports rewritten from ../ to ../../).
    const scratch = join(ROOT, ".tools", "notebook-check");
    await Deno.mkdir(scratch, { recursive: true });
    const files: string[] = [];
    try {
      for (const name of names) {
        const body = code(read(name)).join("\n\n").replace(/from "\.\.\//g, 'from "../../');
        const file = join(scratch, name.replace(/\.ipynb$/, ".ts"));
        await Deno.writeTextFile(file, `// generated from notebooks/${name}\n${body}\n`);
        files.push(file);
      }
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["check", "-q", ...files],
        cwd: ROOT,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const msg = new TextDecoder().decode(out.stderr);
      assert.ok(out.success, `deno check of the notebooks' code failed:\n${msg}`);
    } finally {
      await Deno.remove(scratch, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test("notebooks task: --only picks by prefix and rejects unknown ones", () => {
  const files = ["02_b.ipynb", "01_a.ipynb", "README.md", "10_c.ipynb"];
  assert.deepEqual(selectNotebooks(files, []), ["01_a.ipynb", "02_b.ipynb", "10_c.ipynb"]);
  assert.deepEqual(selectNotebooks(files, ["02", "1"]), ["02_b.ipynb", "10_c.ipynb"]);
  assert.throws(() => selectNotebooks(files, ["07"]), /--only 07: no notebook starts with/);
});

Deno.test("notebooks task: the kernelspec points at this Deno", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-kernelspec-" });
  try {
    const kernelDir = await installKernelspec(dir);
    const spec = JSON.parse(await Deno.readTextFile(join(kernelDir, "kernel.json")));
    assert.equal(kernelDir, join(dir, "kernels", "deno"));
    assert.deepEqual(spec.argv, [
      Deno.execPath(),
      "jupyter",
      "--kernel",
      "--conn",
      "{connection_file}",
    ]);
    assert.equal(spec.language, "typescript");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
