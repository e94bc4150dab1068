/**
 * Sweep files: a study (methods × privacy budgets × seeds × data sets …) written as JSON — a
 * base configuration of `train` flags, grid axes crossed with each other, and optional explicit
 * points — expanded into points, each with a stable id (a hash of its settings) and its own
 * folder under the sweep's results root.
 *
 * ```json
 * {
 *   "name": "quick",
 *   "results": "results/sweeps/quick",
 *   "base": { "T": 3, "is_DP": 1 },
 *   "grid": { "method": ["LoRA", "DEeR"], "epsilon": [1, 6], "seeds": [10, 100] },
 *   "points": [{ "method": "DEeR", "module1": 0, "module2": 1, "epsilon": 6, "seeds": 10 }],
 *   "threads_per_run": 1,
 *   "slurm": { "partition": "cpu", "time": "01:00:00", "cpus_per_task": 2, "max_parallel": 8 }
 * }
 * ```
 *
 * A point's settings are `base`, then one value of every grid axis (or one explicit point's
 * values) on top. A `seeds` axis makes one point per seed, so seeds run in parallel; the report
 * pools them again. Values are train flags as `deno task train --help` lists them (snake_case);
 * `out`, `exp_name` and `resume` belong to the sweep.
 *
 * @example
 * ```ts
 * const sweep = parseSweep({ base: { T: 2 }, grid: { method: ["LoRA", "DEeR"] } }, "s.json");
 * expandPoints(sweep).map((p) => p.settings.method); // ["LoRA", "DEeR"]
 * ```
 * @module
 */
import { createHash } from "node:crypto";
import { basename, extname, resolve } from "node:path";

/** One flag value as written in the file. */
export type FlagValue = string | number | boolean;

/** Slurm options of a sweep (all optional; the cluster's defaults apply otherwise). */
export interface SlurmOptions {
  partition?: string;
  /** Wall time per array task, Slurm syntax (`HH:MM:SS`, `D-HH:MM:SS`). */
  time?: string;
  /** Memory per node (`--mem`), e.g. `8G`. */
  mem?: string;
  cpusPerTask?: number;
  gpusPerTask?: number;
  account?: string;
  /** Array tasks running at once (`%max`); default: all. */
  maxParallel?: number;
  /** Extra `#SBATCH` lines, verbatim (`--qos=long`, `--constraint=avx2`). */
  sbatch?: string[];
  /** Shell lines run before `train` in every task (`module load …`, `source env.sh`). */
  setup?: string[];
  /** The deno executable on the compute nodes (default: the one running the sweep). */
  deno?: string;
}

/** A validated sweep file. */
export interface Sweep {
  /** The file it came from (messages name it). */
  file: string;
  name: string;
  /** Results root, absolute. */
  root: string;
  /** Where the root came from, for messages: the file's `results` or the `--out` flag. */
  rootFrom?: "results" | "--out";
  base: Record<string, string>;
  grid: [string, string[]][];
  points: Record<string, string>[];
  /** libtensorflow threads per run (`TF_NUM_INTRAOP_THREADS`); null: decided per executor. */
  threadsPerRun: number | null;
  slurm: SlurmOptions;
  /** The file's content, with its name (written to `<root>/sweep.json` when it runs). */
  source: Record<string, unknown>;
}

/** One point of a sweep. */
export interface SweepPoint {
  /** Position in the expanded list (the Slurm array index when all points run). */
  index: number;
  /** First 12 hex digits of the SHA-256 of the canonical settings. */
  id: string;
  /** Every flag the point sets (base included), flag name → value. */
  settings: Record<string, string>;
  /** The settings that vary across the sweep (axes and explicit points), for labels. */
  varied: Record<string, string>;
  /** `train` arguments, without the sweep's own `--out/--exp_name/--resume`. */
  args: string[];
}

/** A sweep file that cannot be used; the message names the file, the field and the fix. */
export class SweepError extends Error {
  override name = "SweepError";
}

/** ASCII control characters (C0 and DEL): never in a path the sweep writes into scripts. */
// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;

/** Flags the sweep sets itself. */
const RESERVED = new Set(["out", "exp_name", "resume", "help", "h"]);
const SLURM_KEYS = [
  "partition",
  "time",
  "mem",
  "cpus_per_task",
  "gpus_per_task",
  "account",
  "max_parallel",
  "sbatch",
  "setup",
  "deno",
];
const TOP_KEYS = ["name", "results", "base", "grid", "points", "threads_per_run", "slurm"];

/** Reads and validates a sweep file (see the module doc for the format). */
export async function loadSweep(path: string, opts: { root?: string } = {}): Promise<Sweep> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new SweepError(`${path}: no such sweep file (sweeps/ holds the shipped ones)`);
    }
    throw err;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new SweepError(`${path}: not valid JSON (${(err as Error).message})`);
  }
  return parseSweep(raw, path, opts);
}

/** Validates a parsed sweep file; `file` is used in messages and for the default name. */
export function parseSweep(raw: unknown, file: string, opts: { root?: string } = {}): Sweep {
  // The path is written into messages, job scripts and comments: one line, no terminal escapes.
  if (CONTROL.test(file)) {
    throw new SweepError(
      `${JSON.stringify(file)}: the sweep file's path holds a control character (a newline, a ` +
        `tab, an escape); rename the file`,
    );
  }
  const fail = (field: string, msg: string): never => {
    throw new SweepError(`${file}: ${field}: ${msg}`);
  };
  if (opts.root !== undefined && (opts.root === "" || CONTROL.test(opts.root))) {
    throw new SweepError(
      `--out ${JSON.stringify(opts.root)}: expected a folder path without control characters ` +
        `(newlines, tabs, escapes)`,
    );
  }
  if (!isObject(raw)) return fail("top level", "expected a JSON object { base, grid, points }");
  for (const k of Object.keys(raw)) {
    if (!TOP_KEYS.includes(k)) fail(k, `unknown field; the fields are ${TOP_KEYS.join(", ")}`);
  }
  const name = raw.name === undefined ? basename(file, extname(file)) : raw.name;
  if (typeof name !== "string" || !/^[A-Za-z0-9._-]+$/.test(name)) {
    fail("name", `${JSON.stringify(name)}: expected letters, digits, '.', '_' or '-'`);
  }
  const results = raw.results === undefined ? `results/sweeps/${name}` : raw.results;
  if (typeof results !== "string" || results === "") {
    fail("results", "expected a folder path (the results root of the sweep)");
  }
  if (CONTROL.test(results as string)) {
    fail(
      "results",
      `${JSON.stringify(results)}: a folder path may not hold control characters (newlines, ` +
        `tabs, escapes)`,
    );
  }
  const base = raw.base === undefined ? {} : flagMap(raw.base, "base", fail);
  const grid: [string, string[]][] = [];
  if (raw.grid !== undefined) {
    if (!isObject(raw.grid)) fail("grid", 'expected an object of axes, e.g. { "epsilon": [1, 6] }');
    for (const [axis, values] of Object.entries(raw.grid as Record<string, unknown>)) {
      checkFlagName(axis, `grid.${axis}`, fail);
      if (!Array.isArray(values) || values.length === 0) {
        fail(`grid.${axis}`, "expected a non-empty array of values");
      }
      const vs = (values as unknown[]).map((v, i) => flagValue(v, `grid.${axis}[${i}]`, fail));
      if (new Set(vs).size !== vs.length) fail(`grid.${axis}`, "a value is repeated");
      if (Object.hasOwn(base, axis)) {
        fail(`grid.${axis}`, `also set in base; keep it in one place (the axis overrides nothing)`);
      }
      grid.push([axis, vs]);
    }
  }
  const points: Record<string, string>[] = [];
  if (raw.points !== undefined) {
    if (!Array.isArray(raw.points)) fail("points", "expected an array of flag objects");
    (raw.points as unknown[]).forEach((p, i) => points.push(flagMap(p, `points[${i}]`, fail)));
  }
  const gridPoints = grid.reduce((n, [, vs]) => n * vs.length, grid.length > 0 ? 1 : 0);
  if (gridPoints + points.length > MAX_SWEEP_POINTS) {
    fail(
      grid.length > 0 ? "grid" : "points",
      `${gridPoints + points.length} points (${
        grid.map(([a, vs]) => `${a}: ${vs.length}`).join(" × ") || "explicit"
      }), above the ${MAX_SWEEP_POINTS} a sweep may have; split it into several sweep files`,
    );
  }
  const threads = raw.threads_per_run;
  if (threads !== undefined && !(Number.isInteger(threads) && (threads as number) >= 1)) {
    fail("threads_per_run", `${JSON.stringify(threads)}: expected an integer ≥ 1`);
  }
  const sweep: Sweep = {
    file,
    name: name as string,
    root: resolve(opts.root ?? (results as string)),
    rootFrom: opts.root === undefined ? "results" : "--out",
    base,
    grid,
    points,
    threadsPerRun: (threads as number | undefined) ?? null,
    slurm: parseSlurm(raw.slurm, fail),
    source: { ...raw, name },
  };
  if (expandPoints(sweep).length === 0) {
    fail("grid/points", "the sweep has no point; give grid axes or explicit points");
  }
  return sweep;
}

/**
 * The most points one sweep file may describe (grid cross product plus explicit points), checked
 * before the grid is expanded: the paper's protocols have 72, and a hostile or mistyped file
 * (a few axes of many values) would otherwise fill the memory while it is read.
 */
export const MAX_SWEEP_POINTS = 100_000;

/**
 * The sweep's points: the cross product of the grid axes over `base` (axes vary fastest from the
 * last one), then the explicit points. Two points with the same settings are one point.
 */
export function expandPoints(sweep: Pick<Sweep, "base" | "grid" | "points">): SweepPoint[] {
  const combos: Record<string, string>[] = [];
  if (sweep.grid.length > 0) {
    const walk = (i: number, acc: Record<string, string>) => {
      if (i === sweep.grid.length) return void combos.push(acc);
      const [axis, values] = sweep.grid[i];
      for (const v of values) walk(i + 1, { ...acc, [axis]: v });
    };
    walk(0, {});
  }
  const out: SweepPoint[] = [];
  const seen = new Set<string>();
  for (const varied of [...combos, ...sweep.points]) {
    const settings = { ...sweep.base, ...varied };
    const id = pointId(settings);
    if (seen.has(id)) continue;
    seen.add(id);
    out.push({ index: out.length, id, settings, varied, args: trainArgs(settings) });
  }
  return out;
}

/**
 * A point's id: the first 12 hex digits of the SHA-256 of its settings, keys sorted — the same
 * settings give the same id whatever their order or whether they came from base, grid or points.
 *
 * @example
 * ```ts
 * pointId({ T: "2", method: "LoRA" }) === pointId({ method: "LoRA", T: "2" }); // true
 * ```
 */
export function pointId(settings: Record<string, string>): string {
  const canonical = JSON.stringify(Object.keys(settings).sort().map((k) => [k, settings[k]]));
  return createHash("sha256").update(canonical).digest("hex").slice(0, 12);
}

/** `train` arguments for a point's settings (`--flag=value`, keys sorted). */
export function trainArgs(settings: Record<string, string>): string[] {
  return Object.keys(settings).sort().map((k) => `--${k}=${settings[k]}`);
}

/** A short label of a point: its varied settings (`method=LoRA epsilon=1 seeds=10`). */
export function pointLabel(p: SweepPoint): string {
  const parts = Object.entries(p.varied).map(([k, v]) => `${k}=${v}`);
  return parts.length ? parts.join(" ") : p.id;
}

function parseSlurm(raw: unknown, fail: (f: string, m: string) => never): SlurmOptions {
  if (raw === undefined) return {};
  if (!isObject(raw)) return fail("slurm", "expected an object of sbatch options");
  for (const k of Object.keys(raw)) {
    if (!SLURM_KEYS.includes(k)) {
      fail(`slurm.${k}`, `unknown option; the options are ${SLURM_KEYS.join(", ")}`);
    }
  }
  const WANT: Record<string, string> = {
    partition: "a partition name (letters, digits, '_', '.', ',', '-')",
    time: 'a wall time like "HH:MM:SS" or "D-HH:MM:SS"',
    mem: 'a memory size like "8G" or "16000M"',
    account: "an account name (letters, digits, '_', '.', '-')",
    deno: "the path of deno on the compute nodes",
  };
  const str = (k: string, pattern?: RegExp) => {
    const v = raw[k];
    if (v === undefined) return undefined;
    if (typeof v !== "string" || v === "" || /[\n\r]/.test(v) || (pattern && !pattern.test(v))) {
      fail(`slurm.${k}`, `${JSON.stringify(v)}: expected ${WANT[k]}`);
    }
    return v as string;
  };
  const int = (k: string) => {
    const v = raw[k];
    if (v === undefined) return undefined;
    if (!Number.isInteger(v) || (v as number) < 1) {
      fail(`slurm.${k}`, `${JSON.stringify(v)}: expected an integer ≥ 1`);
    }
    return v as number;
  };
  const lines = (k: string) => {
    const v = raw[k];
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || v.some((l) => typeof l !== "string" || /[\n\r]/.test(l))) {
      fail(`slurm.${k}`, "expected an array of one-line strings");
    }
    return v as string[];
  };
  const sbatch = lines("sbatch");
  for (const l of sbatch ?? []) {
    if (!l.startsWith("-")) {
      fail("slurm.sbatch", `${JSON.stringify(l)}: expected an option (--qos=…)`);
    }
    if (/^--?(array|a)\b/.test(l)) {
      fail("slurm.sbatch", "--array is set by the sweep; use max_parallel");
    }
  }
  return {
    partition: str("partition", /^[A-Za-z0-9_.,-]+$/),
    time: str("time", /^(\d+-)?\d+(:\d{1,2}){0,2}$/),
    mem: str("mem", /^\d+[KMGT]?$/i),
    cpusPerTask: int("cpus_per_task"),
    gpusPerTask: int("gpus_per_task"),
    account: str("account", /^[A-Za-z0-9_.-]+$/),
    maxParallel: int("max_parallel"),
    sbatch,
    setup: lines("setup"),
    deno: str("deno"),
  };
}

function flagMap(
  raw: unknown,
  field: string,
  fail: (f: string, m: string) => never,
): Record<string, string> {
  if (!isObject(raw)) return fail(field, 'expected an object of train flags, e.g. { "T": 50 }');
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw)) {
    checkFlagName(k, `${field}.${k}`, fail);
    out[k] = flagValue(v, `${field}.${k}`, fail);
  }
  return out;
}

function checkFlagName(name: string, field: string, fail: (f: string, m: string) => never) {
  const bare = name.replace(/^-+/, "");
  if (RESERVED.has(bare)) {
    fail(field, `--${bare} is set by the sweep (each point gets its own folder); drop it`);
  }
  if (bare !== name) fail(field, `write the flag without dashes ("${bare}")`);
  if (!/^[A-Za-z][A-Za-z0-9_]*$/.test(name)) {
    fail(field, `"${name}" is not a train flag name; write it as --help lists it (snake_case)`);
  }
}

function flagValue(v: unknown, field: string, fail: (f: string, m: string) => never): string {
  if (typeof v === "number" && Number.isFinite(v)) return String(v);
  if (typeof v === "boolean") return v ? "1" : "0";
  if (typeof v === "string" && v !== "" && !/[\n\r\0]/.test(v)) return v;
  return fail(field, `${JSON.stringify(v)}: expected a number or a non-empty one-line string`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
