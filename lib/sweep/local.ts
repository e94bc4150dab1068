/**
 * The local executor: a pool of `workers` concurrent `train --resume` processes, one point each,
 * with one combined progress display. Each process appends its output to the point's
 * `train.log` and, when it ends, the pool writes the point's `exit.json`. Aborting (Ctrl-C in
 * `deno task sweep run`) sends SIGTERM to every running `train` and waits for it; since `train`
 * writes atomically and every point runs with `--resume`, a rerun continues the unfinished
 * points from their last round.
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
 * outcome.failed; // [] (ids of the points whose train exited non-zero)
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
  /** Aborting stops every worker (SIGTERM) and returns once they have exited. */
  signal?: AbortSignal;
  /** Progress output (default: a bar on stderr). */
  onProgress?: (text: string, done: number) => void;
}

/** What a local run did. */
export interface LocalOutcome {
  finished: string[];
  failed: string[];
  /** Points not run to the end because of the abort. */
  stopped: string[];
  interrupted: boolean;
  seconds: number;
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

/** Runs `points` with a pool of `train` processes (see the module doc). */
export async function runLocal(
  sweep: Sweep,
  points: SweepPoint[],
  opts: LocalOptions,
): Promise<LocalOutcome> {
  const started = performance.now();
  const queue = [...points];
  const running = new Map<string, { child: Deno.ChildProcess; round: string }>();
  const outcome: LocalOutcome = {
    finished: [],
    failed: [],
    stopped: [],
    interrupted: false,
    seconds: 0,
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
  const onAbort = () => {
    outcome.interrupted = true;
    for (const { child } of running.values()) {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
    }
  };
  opts.signal?.addEventListener("abort", onAbort, { once: true });

  const runOne = async (point: SweepPoint) => {
    const dir = await preparePoint(sweep, point);
    const log = await Deno.open(join(dir, "train.log"), { append: true, create: true });
    const header = `=== local attempt at ${new Date().toISOString()} (pid of sweep ${Deno.pid})\n`;
    await log.write(new TextEncoder().encode(header));
    const child = new Deno.Command(opts.command.executable, {
      args: [...opts.command.prefix, ...pointTrainArgs(sweep.root, point)],
      env: opts.env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const entry = { child, round: "" };
    running.set(point.id, entry);
    render();
    const copy = async (stream: ReadableStream<Uint8Array>, watch: boolean) => {
      const decoder = new TextDecoder();
      let pending = "";
      for await (const chunk of stream) {
        await log.write(chunk);
        if (!watch) continue;
        pending += decoder.decode(chunk, { stream: true });
        const lines = pending.split("\n");
        pending = lines.pop()!;
        for (const l of lines) {
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
    log.close();
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
    (status.success ? outcome.finished : outcome.failed).push(point.id);
    if (!status.success) {
      console.error(
        `sweep: point ${point.id} (${pointLabel(point)}) failed with exit code ${status.code}; ` +
          `log: ${join(dir, "train.log")}`,
      );
    }
    render();
  };

  const worker = async () => {
    while (!outcome.interrupted && queue.length > 0) await runOne(queue.shift()!);
  };
  try {
    await Promise.all(Array.from({ length: Math.max(1, opts.workers) }, worker));
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
  }
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
