/**
 * What a sweep's points have done, read from their own folders — the same whichever executor
 * ran them. A point lives in `<root>/points/<id>/`: `point.json` (its settings), `train.log`
 * (everything its `train` processes printed, appended across restarts), `exit.json` (the exit
 * status of the last attempt) and the run folder `train` writes (`<run>/seed-<s>/records.jsonl`,
 * `<run>/summary.json` once every seed has finished).
 *
 * @example
 * ```ts
 * import { expandPoints, parseSweep } from "./spec.ts";
 * const root = await Deno.makeTempDir();
 * const sweep = parseSweep({
 *   name: "tiny",
 *   results: root,
 *   base: { T: 1, E: 1, node_num: 2, seeds: 10 }, // the embedded data and model
 *   grid: { method: ["LoRA"] },
 * }, "tiny.json");
 * const points = expandPoints(sweep);
 * const s = await pointState(sweep.root, points[0]);
 * s.status; // "pending": nothing run yet ("partial" | "finished" | "failed" later)
 * ```
 * @module
 */
import { join } from "node:path";
import { writeJsonAtomic } from "../io/atomic.ts";
import { pathExists } from "../io/run_folder.ts";
import type { Sweep, SweepPoint } from "./spec.ts";

/** Where a point is. */
export type PointStatus = "pending" | "partial" | "finished" | "failed";

/** The exit record of a point's last attempt (`exit.json`). */
export interface PointExit {
  exitCode: number;
  executor: "local" | "slurm";
  /** Slurm `JOBID_TASK` of the attempt, or null. */
  job: string | null;
  at: string;
}

/** A point's state on disk. */
export interface PointState {
  id: string;
  status: PointStatus;
  /** The run folder `train` created (null before it started). */
  runDir: string | null;
  /** Rounds recorded, summed over seeds, and the total the settings ask for (null: unknown). */
  roundsDone: number;
  roundsTotal: number | null;
  exit: PointExit | null;
}

/** A point's folder under the sweep's results root. */
export function pointDir(root: string, id: string): string {
  return join(root, "points", id);
}

/** Creates a point's folder and its `point.json` (id, settings) before a first attempt. */
export async function preparePoint(sweep: Sweep, point: SweepPoint): Promise<string> {
  const dir = pointDir(sweep.root, point.id);
  await Deno.mkdir(dir, { recursive: true });
  await writeJsonAtomic(join(dir, "point.json"), {
    id: point.id,
    sweep: sweep.name,
    settings: point.settings,
    varied: point.varied,
  });
  return dir;
}

/** Reads a point's state from its folder. */
export async function pointState(root: string, point: SweepPoint): Promise<PointState> {
  const dir = pointDir(root, point.id);
  const runDir = await findRunDir(dir);
  const exit = await readJson<PointExit>(join(dir, "exit.json"));
  let roundsDone = 0, roundsTotal: number | null = null;
  if (runDir) {
    const config = await readJson<{ rounds?: number; seeds?: number[] }>(
      join(runDir, "config.json"),
    );
    const seeds = config?.seeds ?? [];
    if (config?.rounds !== undefined) roundsTotal = config.rounds * seeds.length;
    for (const seed of seeds) {
      roundsDone += (await readRecords(join(runDir, `seed-${seed}`, "records.jsonl"))).length;
    }
  }
  const finished = runDir !== null && await pathExists(join(runDir, "summary.json"));
  const status: PointStatus = finished
    ? "finished"
    : exit && exit.exitCode !== 0
    ? "failed"
    : roundsDone > 0
    ? "partial"
    : "pending";
  return { id: point.id, status, runDir, roundsDone, roundsTotal, exit };
}

/** The records of one seed (`records.jsonl`), [] when there are none yet. */
export async function readRecords(path: string): Promise<Record<string, unknown>[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
  return text.split("\n").filter((l) => l.trim() !== "").map((l, i) => {
    try {
      return JSON.parse(l);
    } catch {
      throw new Error(`${path}: line ${i + 1} is not JSON; the file is damaged`);
    }
  });
}

/** The last `lines` lines of a point's `train.log` ("" when there is none). */
export async function logTail(root: string, id: string, lines = 12): Promise<string> {
  try {
    const text = await Deno.readTextFile(join(pointDir(root, id), "train.log"));
    return text.trimEnd().split("\n").slice(-lines).join("\n");
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return "";
    throw err;
  }
}

/** The run folder `train` made inside a point folder: the one sub-folder with a config.json. */
export async function findRunDir(dir: string): Promise<string | null> {
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isDirectory && await pathExists(join(dir, e.name, "config.json"))) {
        return join(dir, e.name);
      }
    }
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  return null;
}

/** A JSON file's content, or null when the file does not exist. */
export async function readJson<T>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as T;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw new Error(`${path}: ${(err as Error).message}; the file is damaged`);
  }
}
