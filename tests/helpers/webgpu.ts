/**
 * What the webgpu tests share: whether there is an adapter to run them on (probed in a child
 * process, as the library does), child Deno processes in the repository root, and the comparison
 * of the numbers they print.
 *
 * Without an adapter the tests are skipped (reported as ignored) with a printed reason, unless
 * `DEER_REQUIRE_WEBGPU=1` (CI) makes a missing adapter a failure. A software adapter is enough:
 * Mesa's lavapipe (`apt-get install mesa-vulkan-drivers`).
 * @module
 */
import assert from "node:assert/strict";
import {
  describeAdapter,
  probeInChild,
  type WebGpuAdapterSummary,
} from "../../lib/backend_webgpu.ts";

const root = new URL("../..", import.meta.url).pathname;

/** The adapter the webgpu tests of one file run on, and whether they are skipped. */
export interface WebgpuGate {
  adapter: WebGpuAdapterSummary | null;
  /** No adapter and `DEER_REQUIRE_WEBGPU` is not 1: the tests are ignored. */
  skip: boolean;
  /** Fails the test when there is no adapter (where `DEER_REQUIRE_WEBGPU=1` asked for one). */
  requireAdapter(): void;
}

/** Probes for an adapter and says on stderr what `what` (the tests of a file) will run on. */
export async function webgpuGate(what: string): Promise<WebgpuGate> {
  const adapter = await probeInChild();
  const required = Deno.env.get("DEER_REQUIRE_WEBGPU") === "1";
  if (adapter !== null) {
    console.error(`${what} on ${describeAdapter(adapter)}`);
  } else if (required) {
    console.error(`${what}: DEER_REQUIRE_WEBGPU=1 but there is no WebGPU adapter`);
  } else {
    console.error(`${what} skipped: no WebGPU adapter (mesa-vulkan-drivers gives one)`);
  }
  return {
    adapter,
    skip: adapter === null && !required,
    requireAdapter() {
      assert.ok(adapter !== null, "no WebGPU adapter (DEER_REQUIRE_WEBGPU=1 asks for one)");
    },
  };
}

/** A finished child process's exit code and output. */
export interface ChildResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `deno ARGS` once in the repository root, quiet and uncoloured, with `env` added. */
async function runDenoOnce(args: string[], env: Record<string, string>): Promise<
  ChildResult & {
    signal: Deno.Signal | null;
  }
> {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: root,
    env: { DEER_QUIET: "1", NO_COLOR: "1", ...env },
    stdin: "null",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return {
    code: out.code,
    signal: out.signal,
    stdout: text(out.stdout),
    stderr: text(out.stderr),
  };
}

/** glibc's words when it aborts on a damaged heap (`malloc_printerr`). */
const HEAP_ABORT =
  /corrupted size vs\. prev_size|corrupted double-linked list|double free or corruption|free\(\): invalid|malloc\(\): [a-z ]*corrupted|free\(\): corrupted/;

/**
 * Runs `deno ARGS` in the repository root, quiet and uncoloured, with `env` added.
 *
 * A child that glibc aborts for a damaged heap (SIGABRT with one of its heap messages on stderr)
 * is run once more, and that is said on stderr with the first run's last lines. CI saw a child
 * that had passed all its tests die so at exit, twice ("corrupted size vs. prev_size in
 * fastbins", "double free or corruption (out)"; lavapipe), in the native teardown of the GPU
 * stack; 64 runs of that child here did not repeat it (docs/gpu.md#correctness). A second such
 * death, or any other failure, is returned as it is.
 */
export async function runDeno(
  args: string[],
  env: Record<string, string> = {},
): Promise<ChildResult> {
  const first = await runDenoOnce(args, env);
  if (first.signal !== "SIGABRT" || !HEAP_ABORT.test(first.stderr)) return first;
  const last3 = (text: string) => text.trim().split("\n").slice(-3);
  const tail = [...last3(first.stdout), ...last3(first.stderr)].join("\n  ");
  console.error(
    `deno ${args.join(" ")}: glibc aborted the child for a damaged heap (SIGABRT); running it ` +
      `once more. Its environment (added): ${JSON.stringify(env)}. Its last lines:\n  ${tail}`,
  );
  const second = await runDenoOnce(args, env);
  return {
    code: second.code,
    stdout: second.stdout,
    stderr: `(second run; the first was aborted by glibc: ${
      first.stderr.match(HEAP_ABORT)?.[0]
    })\n${second.stderr}`,
  };
}

/** {@link runDeno} on the webgpu backend, which must succeed; its stdout. */
export async function webgpuStdout(
  args: string[],
  env: Record<string, string> = {},
): Promise<string> {
  const r = await runDeno(args, { DEER_BACKEND: "webgpu", ...env });
  assert.equal(r.code, 0, `child ${args.join(" ")} failed:\n${r.stderr}`);
  return r.stdout;
}

// deno-lint-ignore no-explicit-any
export type Json = any;

/** The JSON value on the last line of a child's stdout. */
export function lastJsonLine(stdout: string): Json {
  return JSON.parse(stdout.trim().split("\n").at(-1)!);
}

/**
 * max |got − want| / max(1e-30, max |want|), over the numbers of (nested) arrays flattened: an
 * all-zero `want` makes any difference fail a tolerance.
 */
export function jsonRelativeError(got: Json, want: Json): number {
  const g = [got].flat(3) as number[], w = [want].flat(3) as number[];
  assert.equal(g.length, w.length);
  let err = 0, scale = 0;
  for (let i = 0; i < w.length; i++) {
    err = Math.max(err, Math.abs(g[i] - w[i]));
    scale = Math.max(scale, Math.abs(w[i]));
  }
  return err / Math.max(scale, 1e-30);
}
