/**
 * Compares two run folders file by file: binary files (checkpoints, state) byte for byte, JSON
 * and JSON-lines files with wall-clock fields (`seconds`, `wallSeconds`, timestamps) and the
 * output paths set aside. Exits 1 and names each difference when the runs differ.
 *
 *   deno run -A tools/compare_runs.ts BEFORE AFTER
 *
 * @module
 */
import { join, relative } from "node:path";
import { parseCommandArgs, UsageError } from "../lib/cli.ts";

const VOLATILE = new Set(["seconds", "wallSeconds", "startedAt", "finishedAt", "time", "out"]);

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) out.push(...walk(p));
    else if (e.isFile) out.push(p);
  }
  return out;
}

function strip(value: unknown, roots: string[]): unknown {
  if (Array.isArray(value)) return value.map((v) => strip(v, roots));
  if (typeof value === "string") {
    return roots.reduce((s, r) => s.split(r).join("<root>"), value);
  }
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).filter(([k]) => !VOLATILE.has(k)).map(([k, v]) => [k, strip(v, roots)]),
    );
  }
  return value;
}

function normalised(path: string, root: string): string {
  const text = Deno.readTextFileSync(path);
  const lines = path.endsWith(".jsonl") ? text.split("\n").filter((l) => l.trim()) : [text];
  return lines.map((l) => JSON.stringify(strip(JSON.parse(l), [root]))).join("\n");
}

/** The relative paths that differ between two run folders (missing files included). */
export function compareRuns(a: string, b: string): string[] {
  const filesA = walk(a).map((p) => relative(a, p)).sort();
  const filesB = new Set(walk(b).map((p) => relative(b, p)));
  const diffs: string[] = [];
  for (const f of filesA) {
    if (!filesB.delete(f)) {
      diffs.push(`${f}: only in ${a}`);
      continue;
    }
    const [pa, pb] = [join(a, f), join(b, f)];
    const same = /\.jsonl?$/.test(f)
      ? normalised(pa, a) === normalised(pb, b)
      : equalBytes(Deno.readFileSync(pa), Deno.readFileSync(pb));
    if (!same) diffs.push(`${f}: differs`);
  }
  for (const f of filesB) diffs.push(`${f}: only in ${b}`);
  return diffs;
}

function equalBytes(x: Uint8Array, y: Uint8Array): boolean {
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

const USAGE = `Usage: deno run -A tools/compare_runs.ts BEFORE AFTER
  Compares two run folders (records, ledgers, checkpoints, state; timings and paths aside), prints
  each difference, and exits 0 when they are identical, 1 when they differ.`;

if (import.meta.main) {
  const flags = parseCommandArgs("tools/compare_runs.ts", USAGE, Deno.args, {}, (f) => {
    if (f._.length !== 2) throw new UsageError("give two run folders, BEFORE and AFTER");
  });
  const [a, b] = flags._;
  const diffs = compareRuns(a, b);
  for (const d of diffs) console.log(d);
  console.log(
    diffs.length ? `${diffs.length} difference(s)` : "identical (timings and paths aside)",
  );
  Deno.exit(diffs.length ? 1 : 0);
}
