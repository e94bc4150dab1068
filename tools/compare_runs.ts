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
import { readSafetensors } from "../lib/model/safetensors.ts";

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

function strip(value: unknown, roots: string[], ignore: ReadonlySet<string>): unknown {
  if (Array.isArray(value)) return value.map((v) => strip(v, roots, ignore));
  if (typeof value === "string") {
    return roots.reduce((s, r) => s.split(r).join("<root>"), value);
  }
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).filter(([k]) => !VOLATILE.has(k) && !ignore.has(k))
        .map(([k, v]) => [k, strip(v, roots, ignore)]),
    );
  }
  return value;
}

/** What {@link compareRuns} and {@link describeDifference} set aside besides timings and paths. */
export interface CompareOptions {
  /**
   * JSON fields to ignore wherever they appear, e.g. `noiseEnergy` when comparing a federation
   * under the paper calibration (null at its coordinator) with `train`.
   */
  ignore?: readonly string[];
}

/** The JSON values of a JSON file (one) or a JSON-lines file (one per line), volatile fields out. */
function values(path: string, root: string, opts: CompareOptions = {}): unknown[] {
  const text = Deno.readTextFileSync(path);
  const lines = path.endsWith(".jsonl") ? text.split("\n").filter((l) => l.trim()) : [text];
  const ignore = new Set(opts.ignore ?? []);
  return lines.map((l) => strip(JSON.parse(l), [root], ignore));
}

function normalised(path: string, root: string, opts: CompareOptions = {}): string {
  return values(path, root, opts).map((v) => JSON.stringify(v)).join("\n");
}

const show = (v: unknown) => {
  const text = JSON.stringify(v) ?? String(v);
  return text.length > 60 ? `${text.slice(0, 57)}…` : text;
};

/** The first place two JSON values differ, as `path: x ≠ y`, or null when they are equal. */
export function firstJsonDifference(x: unknown, y: unknown, path = ""): string | null {
  if (Array.isArray(x) && Array.isArray(y)) {
    for (let i = 0; i < Math.min(x.length, y.length); i++) {
      const d = firstJsonDifference(x[i], y[i], `${path}[${i}]`);
      if (d) return d;
    }
    return x.length === y.length ? null : `${path || "."}: ${x.length} items ≠ ${y.length}`;
  }
  const isObject = (v: unknown): v is Record<string, unknown> =>
    v !== null && typeof v === "object" && !Array.isArray(v);
  if (isObject(x) && isObject(y)) {
    const keys = [...new Set([...Object.keys(x), ...Object.keys(y)])].sort();
    for (const k of keys) {
      const at = `${path}.${k}`;
      if (!(k in x)) return `${at}: absent ≠ ${show(y[k])}`;
      if (!(k in y)) return `${at}: ${show(x[k])} ≠ absent`;
      const d = firstJsonDifference(x[k], y[k], at);
      if (d) return d;
    }
    return null;
  }
  return JSON.stringify(x) === JSON.stringify(y) ? null : `${path || "."}: ${show(x)} ≠ ${show(y)}`;
}

/**
 * Where two files of the same relative path differ, for a reader: a JSON(-lines) file's first
 * differing line and field, a safetensors file's first differing tensor (or metadata key) and
 * value, another file's first differing byte.
 */
export async function describeDifference(
  a: string,
  b: string,
  file: string,
  opts: CompareOptions = {},
): Promise<string> {
  const [pa, pb] = [join(a, file), join(b, file)];
  if (/\.jsonl?$/.test(file)) {
    const [va, vb] = [values(pa, a, opts), values(pb, b, opts)];
    for (let i = 0; i < Math.min(va.length, vb.length); i++) {
      const d = firstJsonDifference(va[i], vb[i]);
      if (d) return file.endsWith(".jsonl") ? `line ${i + 1}, ${d}` : d;
    }
    return `${va.length} lines ≠ ${vb.length}`;
  }
  if (file.endsWith(".safetensors")) {
    try {
      const [ta, tb] = [await readSafetensors(pa), await readSafetensors(pb)];
      const meta = firstJsonDifference(ta.metadata, tb.metadata, "metadata");
      if (meta) return meta;
      const names = [...new Set([...Object.keys(ta.tensors), ...Object.keys(tb.tensors)])].sort();
      for (const name of names) {
        const [x, y] = [ta.tensors[name], tb.tensors[name]];
        if (!x || !y) {
          return `tensor ${name}: ${x ? "present" : "absent"} ≠ ${y ? "present" : "absent"}`;
        }
        if (x.dtype !== y.dtype || x.shape.join() !== y.shape.join()) {
          return `tensor ${name}: ${x.dtype}[${x.shape}] ≠ ${y.dtype}[${y.shape}]`;
        }
        for (let i = 0; i < x.data.length; i++) {
          if (!Object.is(x.data[i], y.data[i])) {
            return `tensor ${name}[${i}]: ${x.data[i]} ≠ ${y.data[i]}`;
          }
        }
      }
    } catch (err) {
      return `not comparable as safetensors (${(err as Error).message})`;
    }
  }
  const [x, y] = [Deno.readFileSync(pa), Deno.readFileSync(pb)];
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return `byte ${i}: ${x[i]} ≠ ${y[i]}`;
  return `${x.length} bytes ≠ ${y.length}`;
}

/** The relative paths that differ between two run folders (missing files included). */
export function compareRuns(a: string, b: string, opts: CompareOptions = {}): string[] {
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
      ? normalised(pa, a, opts) === normalised(pb, b, opts)
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

const USAGE = `Usage: deno run -A tools/compare_runs.ts [--ignore FIELD[,FIELD…]] BEFORE AFTER
  Compares two run folders (records, ledgers, checkpoints, state; timings and paths aside), prints
  each difference with where it starts (a JSON file's line and field, a checkpoint's tensor and
  index, or a byte), and exits 0 when they are identical, 1 when they differ.
  --ignore: JSON fields to set aside wherever they appear, e.g. noiseEnergy to compare a
  federation under the paper calibration (whose coordinator cannot measure it) with train.`;

if (import.meta.main) {
  const flags = parseCommandArgs("tools/compare_runs.ts", USAGE, Deno.args, {
    string: ["ignore"],
  }, (f) => {
    if (f._.length !== 2) throw new UsageError("give two run folders, BEFORE and AFTER");
  });
  const [a, b] = flags._;
  const opts = {
    ignore: String(flags.ignore ?? "").split(",").map((k) => k.trim()).filter((k) => k),
  };
  const diffs = compareRuns(a, b, opts);
  for (const d of diffs) {
    const file = d.endsWith(": differs") ? d.slice(0, -": differs".length) : null;
    console.log(file === null ? d : `${d} (${await describeDifference(a, b, file, opts)})`);
  }
  console.log(
    diffs.length ? `${diffs.length} difference(s)` : "identical (timings and paths aside)",
  );
  Deno.exit(diffs.length ? 1 : 0);
}
