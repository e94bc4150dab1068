/**
 * The local executor: a pool of `workers` concurrent `train --resume` processes, one point each,
 * with one combined progress display. Each process appends its output to the point's
 * `train.log` and, when it ends, the pool writes the point's `exit.json` (removed when the next
 * attempt starts). Aborting stops every running `train` and waits for it: Ctrl-C at a terminal
 * (an abort with the reason `"SIGINT"`) has reached every `train` of the process group already,
 * so each gets {@link LocalOptions.stopGraceMs} to stop on its own before SIGTERM; any other
 * abort sends SIGTERM at once. Since `train` writes atomically and every point runs with
 * `--resume`, a rerun continues the unfinished points from their last round. A point that cannot
 * be run (its folder cannot be made, a full disk) is that point's failure, not the pool's: the
 * other workers go on, and no `train` outlives the pool.
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
 * const outcome = await runLocal(sweep, points, { workers: 1, command: trainCommand(), onProgress: () => {} });
 * outcome.failed; // [] (ids of the points whose train exited non-zero or could not run)
 * ```
 * @module
 */
import { join } from "node:path";
import { createProgress } from "../cli.ts";
import { writeJsonAtomic } from "../io/atomic.ts";
import { type PointExit, preparePoint } from "./state.ts";
import { pointLabel, type Sweep, type SweepPoint } from "./spec.ts";

/** How to start `train`: the executable and the arguments before the point's own. */
export interface TrainCommand {
  executable: string;
  prefix: string[];
}

/** Options of {@link runLocal}. */
export interface LocalOptions {
  /** Concurrent `train` processes. */
  workers: number;
  command: TrainCommand;
  /** Extra environment for every `train` (e.g. `TF_NUM_INTRAOP_THREADS`). */
  env?: Record<string, string>;
  /**
   * Aborting stops every worker and returns once they have exited. Abort with the reason
   * `"SIGINT"` when the trains got the signal as well (Ctrl-C at a terminal reaches the whole
   * process group): a `train` that has not said it is stopping within {@link stopGraceMs} then
   * gets SIGTERM. Any other reason sends SIGTERM at once.
   */
  signal?: AbortSignal;
  /** After a `"SIGINT"` abort, how long a `train` may take to acknowledge it (default 10 s). */
  stopGraceMs?: number;
  /** Progress output (default: a bar on stderr). */
  onProgress?: (text: string, done: number) => void;
}

/** What a local run did. */
export interface LocalOutcome {
  finished: string[];
  /** Points whose `train` exited non-zero, or that could not be run at all (see `errors`). */
  failed: string[];
  /** Points not run to the end because of the abort. */
  stopped: string[];
  interrupted: boolean;
  seconds: number;
  /** Why a failed point could not be run or recorded (point id → message), when it is not its exit code. */
  errors: Record<string, string>;
}

/** The `train` command of this checkout, run by the Deno that runs the sweep. */
export function trainCommand(): TrainCommand {
  const script = new URL("../../tasks/train.ts", import.meta.url).pathname;
  return { executable: Deno.execPath(), prefix: ["run", "-A", script] };
}

/** The arguments that make `train` write a point into its folder and continue it if begun. */
export function pointTrainArgs(root: string, point: SweepPoint): string[] {
  return [...point.args, `--out=${join(root, "points")}`, `--exp_name=${point.id}`, "--resume"];
}

/** What `train` prints on stderr when a signal has reached it and it is stopping. */
const STOPPING = /^train: .*; stopping\b/;

interface Running {
  child: Deno.ChildProcess;
  round: string;
  /** `train` said it is stopping (it got the signal). */
  stopping: boolean;
  /** SIGTERM was sent. */
  terminated: boolean;
}

/** Runs `points` with a pool of `train` processes (see the module doc). */
export async function runLocal(
  sweep: Sweep,
  points: SweepPoint[],
  opts: LocalOptions,
): Promise<LocalOutcome> {
  const started = performance.now();
  const queue = [...points];
  const running = new Map<string, Running>();
  const outcome: LocalOutcome = {
    finished: [],
    failed: [],
    stopped: [],
    interrupted: false,
    seconds: 0,
    errors: {},
  };
  const bar = createProgress(`sweep ${sweep.name}`, points.length);
  const report = opts.onProgress ?? ((text: string, done: number) => bar.update(done, text));
  const render = () => {
    const live = [...running.entries()].map(([id, r]) => `${id}${r.round ? ` r${r.round}` : ""}`);
    const failed = outcome.failed.length ? `${outcome.failed.length} failed, ` : "";
    report(
      `${failed}running ${live.join(" ") || "–"}`,
      outcome.finished.length + outcome.failed.length,
    );
  };
  const terminate = (r: Running) => {
    if (r.terminated) return;
    r.terminated = true;
    try {
      r.child.kill("SIGTERM");
    } catch { /* already gone */ }
  };
  let grace: ReturnType<typeof setTimeout> | undefined;
  const stopping = () => outcome.interrupted || opts.signal?.aborted === true;
  const onAbort = () => {
    outcome.interrupted = true;
    if (opts.signal?.reason === "SIGINT") {
      // The terminal's Ctrl-C reached every train too: a second signal would make train exit at
      // once, without its clean stop. Only a train that has not heard it gets SIGTERM.
      grace = setTimeout(() => {
        for (const r of running.values()) if (!r.stopping) terminate(r);
      }, opts.stopGraceMs ?? 10_000);
    } else {
      for (const r of running.values()) terminate(r);
    }
  };
  if (opts.signal?.aborted) onAbort();
  else opts.signal?.addEventListener("abort", onAbort, { once: true });

  const failPoint = (point: SweepPoint, message: string) => {
    outcome.failed.push(point.id);
    outcome.errors[point.id] = message;
    console.error(`sweep: point ${point.id} (${pointLabel(point)}) could not run: ${message}`);
    render();
  };

  const runOne = async (point: SweepPoint) => {
    let log: Deno.FsFile | undefined;
    try {
      if (stopping()) {
        outcome.stopped.push(point.id);
        return;
      }
      const dir = await preparePoint(sweep, point);
      log = await Deno.open(join(dir, "train.log"), { append: true, create: true });
      // An abort that came while the point was prepared: start nothing. From here until the
      // child is in `running`, where the abort handler finds it, nothing awaits.
      if (stopping()) {
        outcome.stopped.push(point.id);
        return;
      }
      // A new attempt: the last one's exit code says nothing about this one.
      try {
        Deno.removeSync(join(dir, "exit.json"));
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      }
      const header = `=== local attempt at ${
        new Date().toISOString()
      } (pid of sweep ${Deno.pid})\n`;
      writeAllSync(log, new TextEncoder().encode(header));
      const child = new Deno.Command(opts.command.executable, {
        args: [...opts.command.prefix, ...pointTrainArgs(sweep.root, point)],
        env: opts.env,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const entry: Running = { child, round: "", stopping: false, terminated: false };
      running.set(point.id, entry);
      render();
      let logError: Error | null = null;
      const copy = async (stream: ReadableStream<Uint8Array>, watch: boolean) => {
        const decoder = new TextDecoder();
        let pending = "";
        for await (const chunk of stream) {
          // A log that cannot be written (a full disk) must not stop the copy: a train whose
          // pipe is not read would block.
          if (logError === null) {
            try {
              await writeAll(log!, chunk);
            } catch (err) {
              logError = err as Error;
            }
          }
          if (!watch) continue;
          pending += decoder.decode(chunk, { stream: true });
          const lines = pending.split("\n");
          pending = lines.pop()!;
          for (const l of lines) {
            if (STOPPING.test(l)) entry.stopping = true;
            const m = /^round (\d+):/.exec(l);
            if (m) {
              entry.round = point.settings.T ? `${m[1]}/${point.settings.T}` : m[1];
              render();
            }
          }
        }
      };
      const [status] = await Promise.all([
        child.status,
        copy(child.stdout, false),
        copy(child.stderr, true),
      ]);
      running.delete(point.id);
      // Ctrl-C at a terminal reaches every process of the group: a train that died of SIGINT was
      // stopped, not failed, even when its exit is seen before the abort.
      if (status.signal === "SIGINT" || (outcome.interrupted && !status.success)) {
        outcome.interrupted = true;
        outcome.stopped.push(point.id);
        return;
      }
      const exit: PointExit = {
        exitCode: status.code,
        executor: "local",
        job: null,
        at: new Date().toISOString(),
      };
      await writeJsonAtomic(join(dir, "exit.json"), exit);
      if (logError !== null) {
        console.error(
          `sweep: point ${point.id}: ${join(dir, "train.log")} could not be written ` +
            `(${(logError as Error).message}); its output is incomplete`,
        );
      }
      (status.success ? outcome.finished : outcome.failed).push(point.id);
      if (!status.success) {
        console.error(
          `sweep: point ${point.id} (${pointLabel(point)}) failed with exit code ${status.code}; ` +
            `log: ${join(dir, "train.log")}`,
        );
      }
      render();
    } catch (err) {
      const r = running.get(point.id);
      if (r) {
        terminate(r);
        // Unread pipes would block a train that writes while it stops (a stream already being
        // copied is locked, and keeps being drained by its copy).
        await r.child.stdout.cancel().catch(() => {});
        await r.child.stderr.cancel().catch(() => {});
        await r.child.status;
        running.delete(point.id);
      }
      failPoint(point, (err as Error).message);
    } finally {
      try {
        log?.close();
      } catch { /* closed */ }
    }
  };

  let fatal: unknown = null;
  const worker = async () => {
    try {
      while (!stopping() && queue.length > 0) await runOne(queue.shift()!);
    } catch (err) {
      // Not a point's failure (those are caught in runOne): stop the pool.
      fatal ??= err;
      outcome.interrupted = true;
      for (const r of running.values()) terminate(r);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.max(1, opts.workers) }, worker));
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
    if (grace !== undefined) clearTimeout(grace);
    // No train outlives the pool.
    for (const r of running.values()) terminate(r);
    await Promise.allSettled([...running.values()].map((r) => r.child.status));
  }
  if (fatal !== null) throw fatal;
  outcome.stopped.push(...queue.map((p) => p.id));
  outcome.seconds = (performance.now() - started) / 1000;
  if (!opts.onProgress) {
    bar.done(
      `${outcome.finished.length} finished, ${outcome.failed.length} failed` +
        (outcome.interrupted ? `, stopped (${outcome.stopped.length} left)` : "") +
        ` in ${outcome.seconds.toFixed(1)} s`,
    );
  }
  return outcome;
}

function writeAllSync(file: Deno.FsFile, bytes: Uint8Array): void {
  for (let off = 0; off < bytes.length;) off += file.writeSync(bytes.subarray(off));
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await file.write(bytes.subarray(off));
}
