/**
 * The notebook runner (notebooks/tools/run_notebooks.py) with the real Deno kernel: a notebook
 * whose kernel message arrives damaged (jupyter_client's `Invalid Signature`) is run once more in
 * a fresh kernel and reported as retried, its frames kept as evidence and read (a random
 * signature; another message spliced into it, as the kernel's unlocked writes do); a second
 * damaged run fails; a cell error is never retried. The damage is injected by
 * tests/helpers/notebook_transport_fault.py. Also: the kernel publisher's wait after a display
 * (lib/plot/jupyter.ts `settleMs`), which keeps the kernel from writing two messages at once.
 *
 * Needs Debian's python3 with nbclient (`deno task notebooks --help` names the packages);
 * without it the tests are ignored, unless DEER_REQUIRE_JUPYTER=1 (CI), which makes that a
 * failure.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { checkPython, installKernelspec } from "../tasks/notebooks.ts";
import { withDir } from "./helpers/temp.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const FAULT = join(ROOT, "tests", "helpers", "notebook_transport_fault.py");
const PYTHON = Deno.env.get("DEER_PYTHON") ?? "/usr/bin/python3";

const required = Deno.env.get("DEER_REQUIRE_JUPYTER") === "1";
const missing = await checkPython(PYTHON);
if (missing) {
  console.error(
    `notebooks_runner: ${required ? "FAILING (DEER_REQUIRE_JUPYTER=1)" : "SKIPPED"} — ${missing}`,
  );
}

interface Summary {
  notebook: string;
  ok: boolean;
  problems: string[];
  transportError: string | null;
  retried: string | null;
  executed: string;
}

/** A one-cell notebook for the Deno kernel that shows no figure. */
function notebook(source: string): string {
  return JSON.stringify({
    nbformat: 4,
    nbformat_minor: 5,
    metadata: {
      kernelspec: { name: "deno", display_name: "Deno", language: "typescript" },
      deer: { figures: 0 },
    },
    cells: [{
      cell_type: "code",
      id: "only",
      metadata: {},
      execution_count: null,
      outputs: [],
      source,
    }],
  });
}

/**
 * Runs a Python script of the project with a project-local Deno kernelspec in `dir/jupyter`
 * (`JUPYTER_PATH`) and `env` added; its exit code and output.
 */
async function runWithKernel(
  dir: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const jupyter = join(dir, "jupyter");
  await installKernelspec(jupyter);
  const run = await new Deno.Command(PYTHON, {
    args,
    env: { JUPYTER_PATH: jupyter, JUPYTER_RUNTIME_DIR: join(jupyter, "runtime"), ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: run.code, stdout: text(run.stdout), stderr: text(run.stderr) };
}

/**
 * Runs the runner on one notebook with `faultyRuns` damaged runs (damaged as `kind` says: see
 * the helper); its exit code and summary.
 */
async function runWithFaults(
  dir: string,
  source: string,
  faultyRuns: number,
  kind: "hmac" | "interleave" = "hmac",
): Promise<{ code: number; stderr: string; summary: Summary }> {
  const path = join(dir, "probe.ipynb");
  await Deno.writeTextFile(path, notebook(source));
  const out = join(dir, "out");
  const { code, stderr } = await runWithKernel(
    dir,
    [FAULT, path, "--out", out, "--cell-timeout", "120"],
    { DEER_TEST_FAULTY_RUNS: String(faultyRuns), DEER_TEST_FAULT_KIND: kind, NO_COLOR: "1" },
  );
  const summary = JSON.parse(await Deno.readTextFile(join(out, "summary.json"))) as Summary[];
  assert.equal(summary.length, 1, stderr);
  return { code, stderr, summary: summary[0] };
}

/** Notebook text as nbformat stores it: a string, or a list of lines. */
function joined(text: string | string[] | undefined): string {
  return Array.isArray(text) ? text.join("") : text ?? "";
}

/** The text of the executed notebook's stream outputs. */
async function streamText(executed: string): Promise<string> {
  const nb = JSON.parse(await Deno.readTextFile(executed)) as {
    cells: { outputs?: { output_type: string; text?: string | string[] }[] }[];
  };
  return nb.cells.flatMap((c) => c.outputs ?? []).filter((o) => o.output_type === "stream")
    .map((o) => joined(o.text)).join("");
}

const ignore = missing !== null && !required;

Deno.test({
  name: "notebook runner: a damaged kernel message is retried once in a fresh kernel",
  ignore,
  fn: () =>
    withDir(async (dir) => {
      const { code, stderr, summary } = await runWithFaults(
        dir,
        'console.log("hello from the kernel");',
        1,
      );
      assert.equal(code, 0, stderr);
      assert.equal(summary.ok, true, stderr);
      assert.match(summary.retried ?? "", /^ValueError: Invalid Signature: /);
      assert.match(summary.retried ?? "", /raised in /);
      assert.match(stderr, /running it once more in a fresh kernel/);
      // nbclient's kernel-alive poll of the damaged run is stopped, not left to fail later.
      assert.doesNotMatch(stderr, /Task exception was never retrieved/);
      // The second run's notebook holds the output the damaged message carried.
      assert.equal(await streamText(summary.executed), "hello from the kernel\n");
      // The refused message's frames are kept as evidence, named in the error.
      const evidencePath = join(dir, "out", "probe.transport-fault.json");
      assert.match(
        summary.retried ?? "",
        /the refused message's frames: .*probe\.transport-fault\.json/,
      );
      const evidence = JSON.parse(await Deno.readTextFile(evidencePath));
      assert.equal(evidence.frames, 5); // signature, header, parent, metadata, content
      assert.deepEqual(evidence.signatureMatchesFramesAt, []); // a random HMAC matches nothing
      assert.notEqual(evidence.recomputed, evidence.signature);
      assert.equal(evidence.described[1].msg_type, "stream");
      assert.equal(evidence.described[1].json, true);
      assert.match(evidence.described[4].head, /hello from the kernel/);
      assert.match(summary.retried ?? "", /no other message found inside them/);
    }, "deer-nb-retry-"),
});

Deno.test({
  name: "notebook runner: a second damaged run fails, naming the first run's error",
  ignore,
  fn: () =>
    withDir(async (dir) => {
      const { code, stderr, summary } = await runWithFaults(dir, 'console.log("x");', 2);
      assert.equal(code, 1, stderr);
      assert.equal(summary.ok, false);
      assert.match(summary.retried ?? "", /Invalid Signature/);
      assert.match(summary.problems.join("\n"), /^ValueError: Invalid Signature: /);
      assert.match(stderr, /1 of 1 notebook\(s\) failed: probe/);
    }, "deer-nb-retry-"),
});

Deno.test({
  name: "notebook runner: a message with another spliced into it is read as interleaved writes",
  ignore,
  fn: () =>
    withDir(async (dir) => {
      const text = "y".repeat(400);
      const { code, stderr, summary } = await runWithFaults(
        dir,
        `console.log("${text}");`,
        1,
        "interleave",
      );
      assert.equal(code, 0, stderr);
      assert.equal(summary.ok, true, stderr);
      // The content frame (≈ 440 bytes) holds a whole status message from its middle on.
      assert.match(
        summary.retried ?? "",
        /interleaved: another message's frames inside the stream message's content frame at byte \d+ of \d+/,
      );
      const evidence = JSON.parse(
        await Deno.readTextFile(join(dir, "out", "probe.transport-fault.json")),
      );
      const content = evidence.described[4];
      assert.equal(content.json, false);
      assert.ok(content.delimiterInsideAt > 100 && content.delimiterInsideAt < content.bytes);
      assert.match(content.aroundDelimiter, /<IDS\|MSG>.*"msg_type":\s*"status"/s);
      assert.equal(await streamText(summary.executed), text + "\n");
    }, "deer-nb-retry-"),
});

Deno.test({
  name: "notebook runner: a cell error is not retried",
  ignore,
  fn: () =>
    withDir(async (dir) => {
      const { code, stderr, summary } = await runWithFaults(
        dir,
        'throw new Error("the cell fails");',
        0,
      );
      assert.equal(code, 1, stderr);
      assert.equal(summary.ok, false);
      assert.equal(summary.retried, null);
      assert.equal(summary.transportError, null);
      assert.match(summary.problems.join("\n"), /the cell fails/);
      assert.doesNotMatch(stderr, /once more/);
    }, "deer-nb-retry-"),
});

Deno.test({
  name: "jupyter: the kernel publisher waits settleMs after a display, and not when told not to",
  ignore,
  fn: () =>
    withDir(async (dir) => {
      const jupyterTs = new URL("../lib/plot/jupyter.ts", import.meta.url).href;
      const source = `import { kernelPublisher, settleMs } from "${jupyterTs}";
const bundle = { "text/plain": "x".repeat(5_000_000) };
let t = performance.now();
await kernelPublisher()(bundle);
const on = performance.now() - t;
t = performance.now();
await kernelPublisher({ settle: false })(bundle);
const off = performance.now() - t;
console.log(JSON.stringify({ on, off, want: settleMs(JSON.stringify(bundle).length) }));`;
      const { code, stderr, summary } = await runWithFaults(dir, source, 0);
      assert.equal(code, 0, stderr);
      const nb = JSON.parse(await Deno.readTextFile(summary.executed)) as {
        cells: { outputs: { output_type: string; data?: Record<string, string | string[]> }[] }[];
      };
      const outputs = nb.cells[0].outputs;
      // Both displays arrived, whole.
      const shown = outputs.filter((o) => o.output_type === "display_data");
      assert.equal(shown.length, 2);
      for (const o of shown) assert.equal(joined(o.data?.["text/plain"]).length, 5_000_000);
      const { on, off, want } = JSON.parse(await streamText(summary.executed));
      assert.equal(want, 50 + Math.ceil(5_000_017 / 10_000)); // 551 ms
      assert.ok(on >= want, `publish with settle took ${on} ms, less than ${want}`);
      assert.ok(off < on, `publish without settle took ${off} ms, with it ${on}`);
    }, "deer-nb-settle-"),
});

Deno.test({
  name: "interleave probe: publishes through the kernel publisher and reports every round",
  ignore,
  fn: () =>
    withDir(async (dir) => {
      const out = join(dir, "out");
      const probe = join(ROOT, "notebooks", "tools", "interleave_probe.py");
      const run = await runWithKernel(dir, [probe, "--rounds", "3", "--mb", "1", "--out", out]);
      const text = run.stdout + run.stderr;
      assert.equal(run.code, 0, text);
      const summary = JSON.parse(await Deno.readTextFile(join(out, "summary.json")));
      assert.deepEqual(summary.map((r: { mode: string }) => r.mode), ["off", "on"]);
      for (const r of summary) {
        assert.equal(r.rounds, 3);
        assert.equal(r.mb, 1);
        assert.equal(r.lost, 0, text); // every round's display arrived (or was damaged)
      }
      assert.equal(summary[1].faults, 0, text);
      assert.match(text, /^on\s+3\s+1\s+0\s+0\s+/m);
    }, "deer-nb-probe-"),
});
