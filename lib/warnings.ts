/**
 * Warnings of the library, by kind. A run prints each warning as it happens; a sweep of many runs
 * in one process (a notebook's ablation) prints each kind once, with how often it recurred, instead
 * of one identical red line per run.
 *
 * @example
 * ```ts
 * import { onePerKind, warn } from "./warnings.ts";
 * await onePerKind(async () => {
 *   warn("demo", "said once");
 *   warn("demo", "not said again");
 * }, () => {});
 * ```
 * @module
 */

/** Where warnings go: a printer, or the de-duplicating scope of {@link onePerKind}. */
type Sink = (kind: string, message: string) => void;

const sinks: Sink[] = [];

/** Reports a warning of `kind` ("paper-calibration", "empty-clients", …) to the current sink. */
export function warn(kind: string, message: string): void {
  const sink = sinks.at(-1);
  if (sink) sink(kind, message);
  else console.error(`deer: ${message}`);
}

/**
 * Runs `body` with every warning kind printed once (the first message of that kind); after
 * `body`, one line per kind that recurred says how many more times. Scopes nest: an inner scope
 * reports to the outer one.
 */
export async function onePerKind<T>(
  body: () => Promise<T>,
  print: (line: string) => void = (line) => console.error(line),
): Promise<T> {
  const seen = new Map<string, number>();
  sinks.push((kind, message) => {
    const n = seen.get(kind) ?? 0;
    seen.set(kind, n + 1);
    if (n === 0) print(`deer: ${message}`);
  });
  try {
    return await body();
  } finally {
    sinks.pop();
    for (const [kind, n] of seen) {
      if (n > 1) print(`deer: (the "${kind}" warning above recurred in ${n - 1} more run(s))`);
    }
  }
}
