/**
 * Measuring on a shared 2-core machine: wall time and process CPU time per repetition, medians,
 * the 1-minute load average beside every figure, and one JSON line per figure.
 *
 * @example
 * ```ts
 * const t = await timeRepeated(() => step(), { warmup: 3, reps: 20 });
 * emit({ name: "vit_lora_step_tiny", ms: t.ms, cpu_ms: t.cpuMs, load: t.load });
 * ```
 * @module
 */
import process from "node:process";

/** The 1-minute load average (`/proc/loadavg`), or NaN where there is none. */
export function loadAverage(): number {
  try {
    return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
  } catch {
    return NaN;
  }
}

/**
 * Waits until the 1-minute load average is at most `limit` (polling every 5 s), or `maxSeconds`
 * have passed; returns the load it ends at.
 */
export async function waitForLowLoad(limit = 1.5, maxSeconds = 120): Promise<number> {
  const until = performance.now() + maxSeconds * 1000;
  let load = loadAverage();
  while (load > limit && performance.now() < until) {
    await new Promise((r) => setTimeout(r, 5000));
    load = loadAverage();
  }
  return load;
}

/** Process CPU time (user + system, all threads) in milliseconds. */
export function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** The median of `xs`. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Medians (and spread) of a repeated measurement. */
export interface Timing {
  /** Median wall time per repetition. */
  ms: number;
  /** Median process CPU time per repetition (both cores count). */
  cpuMs: number;
  minMs: number;
  maxMs: number;
  reps: number;
  /** 1-minute load average, taken before and after; the larger. */
  load: number;
}

/**
 * Runs `fn` `warmup` times unmeasured, then `reps` times measured one by one (each awaited: a
 * step that reads its loss back has finished on the device when its promise settles).
 */
export async function timeRepeated(
  fn: () => void | Promise<void>,
  { warmup, reps }: { warmup: number; reps: number },
): Promise<Timing> {
  for (let i = 0; i < warmup; i++) await fn();
  const loadBefore = loadAverage();
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let i = 0; i < reps; i++) {
    const c0 = cpuMs();
    const t0 = performance.now();
    await fn();
    wall.push(performance.now() - t0);
    cpu.push(cpuMs() - c0);
  }
  return {
    ms: median(wall),
    cpuMs: median(cpu),
    minMs: Math.min(...wall),
    maxMs: Math.max(...wall),
    reps,
    load: Math.max(loadBefore, loadAverage()),
  };
}

/** Rounds to `digits` decimals for printing. */
export function round(x: number, digits = 1): number {
  const k = 10 ** digits;
  return Math.round(x * k) / k;
}

/** Prints one figure as one JSON line on stdout. */
export function emit(figure: Record<string, unknown>): void {
  console.log(JSON.stringify(figure));
}
