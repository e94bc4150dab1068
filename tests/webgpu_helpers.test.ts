/**
 * The webgpu tests' child runner (tests/helpers/webgpu.ts `runDeno`): a child that glibc aborts
 * for a damaged heap is run once more and that is said; a second abort, and any other failure,
 * is returned as it is. Real child processes (tests/helpers/abort_child.ts), no adapter needed.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { runDeno } from "./helpers/webgpu.ts";
import { withDir } from "./helpers/temp.ts";

const CHILD = "tests/helpers/abort_child.ts";

async function counted(dir: string, times: number) {
  const counter = join(dir, "runs");
  const r = await runDeno(["run", "-A", CHILD], {
    ABORT_CHILD_COUNTER: counter,
    ABORT_CHILD_TIMES: String(times),
  });
  return { ...r, runs: Number(await Deno.readTextFile(counter)) };
}

Deno.test("webgpu helpers: a child aborted by glibc for a damaged heap runs once more", () =>
  withDir(async (dir) => {
    const r = await counted(dir, 1);
    assert.equal(r.runs, 2);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "ok");
    assert.match(
      r.stderr,
      /second run; the first was aborted by glibc: corrupted size vs\. prev_size/,
    );
  }, "deer-abort-"));

Deno.test("webgpu helpers: a second abort is returned as a failure", () =>
  withDir(async (dir) => {
    const r = await counted(dir, 2);
    assert.equal(r.runs, 2);
    assert.equal(r.code, 134); // 128 + SIGABRT
    assert.match(r.stdout, /run 2: all done/);
  }, "deer-abort-"));

Deno.test("webgpu helpers: any other failure is not run again", () =>
  withDir(async (dir) => {
    const script = join(dir, "fails.ts");
    await Deno.writeTextFile(script, 'console.error("plain failure"); Deno.exit(3);\n');
    const r = await runDeno(["run", "-A", script]);
    assert.equal(r.code, 3);
    assert.doesNotMatch(r.stderr, /second run/);
  }, "deer-abort-"));
