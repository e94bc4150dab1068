/**
 * Command-line argument parsing and progress output — the one module that stands in for
 * `jsr:@std/cli`, which cannot be installed where JSR (its registry) is unreachable, as on the
 * machines this toolkit was built on; only the npm registry is needed.
 *
 * `parseArgs` takes the options object of `@std/cli`'s `parseArgs` (a subset: `string`,
 * `boolean`, `default`, `alias`, `collect`) and returns the same shape (`_` for positionals), but
 * is strict: an unknown flag or a missing value is an error. It is built on `node:util`
 * `parseArgs`. Moving to `jsr:@std/cli` is a change to this file only.
 *
 * @example
 * ```ts
 * const flags = parseArgs(["--T", "3", "--iid"], { string: ["T"], boolean: ["iid"] });
 * flags.T; // "3"
 * flags.iid; // true
 * ```
 * @module
 */
import { parseArgs as nodeParseArgs } from "node:util";

/** Options accepted by {@link parseArgs}, a subset of `@std/cli`'s `ParseOptions`. */
export interface ParseOptions {
  /** Flags that take a value. */
  string?: readonly string[];
  /** Flags that are on or off (`--x`, `--no-x`). */
  boolean?: readonly string[];
  /** Flags that may repeat; their values are collected into an array. */
  collect?: readonly string[];
  /** Default values, keyed by canonical flag name. */
  default?: Record<string, string | boolean | string[]>;
  /** Extra names for a flag: `{ canonical: ["alias", ...] }`. */
  alias?: Record<string, readonly string[]>;
}

/** Parsed flags: canonical names to values, plus `_` for positional arguments. */
export type Args = Record<string, string | boolean | string[] | undefined> & { _: string[] };

/** Thrown for an unknown flag, a flag without its value, or a flag given twice. */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * Parses command-line flags strictly. Every alias is folded into its canonical name; a flag given
 * under two of its names is an error.
 */
export function parseArgs(args: readonly string[], opts: ParseOptions = {}): Args {
  const strings = new Set(opts.string ?? []);
  const booleans = new Set(opts.boolean ?? []);
  const collect = new Set(opts.collect ?? []);
  const canonical = new Map<string, string>();
  for (const name of [...strings, ...booleans]) canonical.set(name, name);
  for (const [name, aliases] of Object.entries(opts.alias ?? {})) {
    if (!canonical.has(name)) throw new Error(`alias given for undeclared flag --${name}`);
    for (const a of aliases) canonical.set(a, name);
  }
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {};
  for (const [name, target] of canonical) {
    // node:util rejects `multiple: undefined`: set the key only for collected flags.
    options[name] = {
      type: booleans.has(target) ? "boolean" : "string",
      ...(collect.has(target) ? { multiple: true } : {}),
    };
    if (booleans.has(target)) options[`no-${name}`] = { type: "boolean" };
  }
  let parsed;
  try {
    parsed = nodeParseArgs({ args: [...args], options, strict: true, allowPositionals: true });
  } catch (err) {
    throw new UsageError(explain((err as Error).message, [...canonical.keys()]));
  }
  const out: Args = { _: parsed.positionals };
  const seenUnder = new Map<string, string>();
  for (const [given, value] of Object.entries(parsed.values)) {
    const negated = given.startsWith("no-") && !canonical.has(given);
    const name = canonical.get(negated ? given.slice(3) : given)!;
    const previous = seenUnder.get(name);
    if (previous !== undefined) {
      throw new UsageError(`--${name} was given twice (as --${previous} and --${given})`);
    }
    seenUnder.set(name, given);
    out[name] = negated ? !value : value as string | boolean | string[];
  }
  for (const [name, value] of Object.entries(opts.default ?? {})) {
    if (out[name] === undefined) out[name] = value;
  }
  return out;
}

/**
 * `node:util`'s parse errors in the toolkit's words: an unknown flag with the nearest declared
 * name when one is close, a flag without its value, a value that looks like a flag, a value given
 * to an on/off flag.
 */
function explain(message: string, known: readonly string[]): string {
  const text = message.replace(/^TypeError \[[A-Z_]+\]: /, "");
  const unknown = /^Unknown option '(-{1,2})([^']+)'/.exec(text);
  if (unknown) {
    const [, dashes, name] = unknown;
    const near = nearest(name, known);
    return `unknown flag ${dashes}${name}${near ? ` (did you mean --${near}?)` : ""}`;
  }
  const missing = /^Option '(-{1,2}[^ ']+)[^']*' argument missing/.exec(text);
  if (missing) return `${missing[1]} needs a value (${missing[1]} VALUE)`;
  const dashed = /^Option '(-{1,2}[^ ']+)[^']*' argument is ambiguous/.exec(text);
  if (dashed) {
    return `${dashed[1]} is followed by a flag, not its value; give ${dashed[1]} VALUE (a value ` +
      `that starts with a dash: ${dashed[1]}=-VALUE)`;
  }
  const onOff = /^Option '(-{1,2}[^ ']+)' does not take an argument/.exec(text);
  if (onOff) {
    const flag = onOff[1];
    return `${flag} takes no value: it is on or off (${flag}, --no-${flag.replace(/^-+/, "")})`;
  }
  return text;
}

/** The declared name nearest to `name` by edit distance, if it is near enough to be a typo. */
function nearest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined, bestDistance = Infinity;
  for (const k of known) {
    const d = editDistance(k.toLowerCase(), name.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return bestDistance <= Math.max(2, name.length / 3) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

/**
 * A command's flags, with the behaviour every `deno task` shares: `--help` or `-h` prints `usage`
 * on stdout and exits 0; a usage error ({@link UsageError}: an unknown flag, a missing value, or
 * one that `check` throws) prints `<command>: <message> (see deno task <command> --help)` on
 * stderr and exits 2, without a stack trace ({@link usageExit}).
 *
 * @example
 * ```ts ignore
 * const flags = parseCommandArgs("bench", "Usage: deno task bench [--only tiny,b16]", Deno.args, {
 *   string: ["only"],
 * });
 * ```
 */
export function parseCommandArgs(
  command: string,
  usage: string,
  args: readonly string[],
  opts: ParseOptions,
  check?: (flags: Args) => void,
): Args {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(usage);
    Deno.exit(0);
  }
  try {
    const flags = parseArgs(args, opts);
    check?.(flags);
    return flags;
  } catch (err) {
    if (err instanceof UsageError) usageExit(command, err.message);
    throw err;
  }
}

/** A `check` for {@link parseCommandArgs}: the command takes flags only. */
export function noPositionals(flags: Args): void {
  if (flags._.length > 0) {
    throw new UsageError(`unexpected argument ${flags._[0]}; this command takes flags only`);
  }
}

/**
 * Prints `<command>: <message> (see deno task <command> --help)` on stderr and exits 2. A
 * `command` that is a script's path (`bench/figures.ts`) is named as it is run, `deno run -A
 * bench/figures.ts --help`.
 */
export function usageExit(command: string, message: string): never {
  const how = command.endsWith(".ts") ? `deno run -A ${command}` : `deno task ${command}`;
  console.error(`${command}: ${message} (see ${how} --help)`);
  Deno.exit(2);
}

/** A progress display: a redrawn bar on a terminal, plain lines otherwise. */
export interface Progress {
  /** Advances to `value` (of `total`) with an optional short status text. */
  update(value: number, status?: string): void;
  /** Ends the display (a newline on a terminal). */
  done(status?: string): void;
}

/**
 * A progress bar on stderr. On a terminal it redraws one line; elsewhere (CI, pipes, notebooks)
 * it prints a plain line at most every `minIntervalMs` and at the end.
 *
 * @example
 * ```ts
 * const p = createProgress("round 1", 12);
 * for (let k = 1; k <= 12; k++) p.update(k, `client ${k}`);
 * p.done();
 * ```
 */
export function createProgress(
  label: string,
  total: number,
  { minIntervalMs = 2000, interactive = isInteractive() } = {},
): Progress {
  const started = performance.now();
  let lastPrint = -Infinity;
  const write = (s: string) => Deno.stderr.writeSync(new TextEncoder().encode(s));
  const line = (value: number, status: string) => {
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    if (!interactive) return `${label} ${value}/${total} ${status} (${secs}s)`;
    const width = 24;
    const filled = total > 0 ? Math.round((width * value) / total) : width;
    return `${label} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${value}/${total} ` +
      `${status} ${secs}s`;
  };
  return {
    update(value, status = "") {
      const now = performance.now();
      if (interactive) write(`\r\x1b[2K${line(value, status)}`);
      else if (now - lastPrint >= minIntervalMs) {
        write(line(value, status) + "\n");
        lastPrint = now;
      }
    },
    done(status = "done") {
      write(interactive ? `\r\x1b[2K${line(total, status)}\n` : line(total, status) + "\n");
    },
  };
}

/** Whether stderr is a terminal (and not CI), i.e. whether a redrawn bar makes sense. */
export function isInteractive(): boolean {
  return Deno.stderr.isTerminal() && Deno.env.get("CI") === undefined;
}
