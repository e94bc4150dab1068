// The repository explains itself: every pointer into docs/ (a comment, a notebook, the README)
// names a page that exists and, with an anchor, a heading of that page.
import assert from "node:assert/strict";
import { join, relative } from "node:path";

const ROOT = new URL("..", import.meta.url).pathname;
const SKIP = new Set(["node_modules", ".tools", ".git", "results"]);
const SCANNED = /\.(ts|md|ipynb|py|json)$/;

/**
 * The repository's files: those git tracks and the new ones it does not ignore (a developer's
 * scratch folders and copies of the tree are not the repository); without git, a walk that skips
 * the folders above.
 */
async function* files(dir: string): AsyncGenerator<string> {
  const git = await new Deno.Command("git", {
    args: ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd: dir,
    stdout: "piped",
    stderr: "null",
  }).output().catch(() => null);
  if (git?.success) {
    for (const name of new TextDecoder().decode(git.stdout).split("\0")) {
      if (SCANNED.test(name)) {
        const path = join(dir, name);
        if (await Deno.stat(path).then((s) => s.isFile, () => false)) yield path;
      }
    }
    return;
  }
  yield* walk(dir);
}

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    if (SKIP.has(e.name)) continue;
    const path = join(dir, e.name);
    if (e.isDirectory) yield* walk(path);
    else if (e.isFile && SCANNED.test(e.name)) yield path;
  }
}

/** GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens. */
export function slug(heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, "").replace(/\s/g, "-");
}

async function anchorsOf(page: string): Promise<Set<string>> {
  const text = await Deno.readTextFile(join(ROOT, "docs", page));
  const headings = text.split("\n").filter((l) => /^#{1,6} /.test(l));
  return new Set(headings.map((h) => slug(h.replace(/^#+ /, ""))));
}

Deno.test("slug follows GitHub's rules on this project's headings", () => {
  assert.equal(slug("DEeR's ablation grid"), "deers-ablation-grid");
  assert.equal(
    slug("Exact accounting: the privacy loss distribution"),
    "exact-accounting-the-privacy-loss-distribution",
  );
  assert.equal(slug("RDP, as opacus"), "rdp-as-opacus");
  assert.equal(slug("LoRA (FedLoRA)"), "lora-fedlora");
});

Deno.test("every docs/ page and anchor the tree points at exists", async () => {
  const pages = new Set<string>();
  for await (const e of Deno.readDir(join(ROOT, "docs"))) pages.add(e.name);
  const anchors = new Map<string, Set<string>>();
  const broken: string[] = [];
  let checked = 0;
  for await (const path of files(ROOT)) {
    const rel = relative(ROOT, path);
    if (rel === "tests/docs_links.test.ts") continue;
    const text = await Deno.readTextFile(path);
    const inDocs = rel.startsWith("docs/");
    // `docs/page.md#anchor` anywhere; inside docs/ also `page.md#anchor` and `(#anchor)`.
    const refs: { page: string; anchor?: string; at: string }[] = [];
    for (const m of text.matchAll(/\bdocs\/([a-z_]+\.md)(?:#([\p{L}\p{N}_-]+))?/gu)) {
      refs.push({ page: m[1], anchor: m[2], at: rel });
    }
    if (inDocs) {
      const page = rel.slice("docs/".length);
      for (const m of text.matchAll(/\]\(([a-z_]+\.md)?(?:#([\p{L}\p{N}_-]+))?\)/gu)) {
        if (m[1] || m[2]) refs.push({ page: m[1] ?? page, anchor: m[2], at: rel });
      }
    }
    for (const { page, anchor, at } of refs) {
      checked++;
      if (!pages.has(page)) {
        broken.push(`${at}: docs/${page} does not exist`);
        continue;
      }
      if (!anchor) continue;
      if (!anchors.has(page)) anchors.set(page, await anchorsOf(page));
      if (!anchors.get(page)!.has(anchor)) broken.push(`${at}: docs/${page}#${anchor}: no heading`);
    }
  }
  assert.deepEqual(broken, [], `broken pointers into docs/:\n${broken.join("\n")}`);
  assert.ok(checked > 100, `only ${checked} pointers found: the scan is broken`);
});

Deno.test("no pointer into the team's working notes is left", async () => {
  const left: string[] = [];
  for await (const path of files(ROOT)) {
    const rel = relative(ROOT, path);
    if (rel === "tests/docs_links.test.ts") continue;
    const text = await Deno.readTextFile(path);
    if (/SPEC\.md|STYLE\.md|SPEC §/.test(text)) left.push(rel);
  }
  assert.deepEqual(left, []);
});
