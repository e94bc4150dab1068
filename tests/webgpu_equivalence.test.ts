/**
 * The `webgpu` backend gives the `tensorflow` backend's results (or those of the backend
 * `DEER_REFERENCE_BACKEND` names, e.g. `cpu` where libtensorflow is not installed): the same computations
 * (tests/helpers/backend_worker.ts) run in two child processes, one per backend, and are compared
 * — encoder features and LoRA gradients, the prototype loss, three trainer steps, a volume
 * encoder, `predict`, and a short federated run (DEeR, strict DP, K = 4, T = 2) whose records
 * must agree. The equivalence tests of the optimised path (perf_equivalence.test.ts) also run on
 * `webgpu`.
 *
 * They need a WebGPU adapter; a software one (Mesa's lavapipe: `apt-get install
 * mesa-vulkan-drivers`) is enough. Without one they are skipped (reported as ignored, with the
 * reason), unless `DEER_REQUIRE_WEBGPU=1` (CI) makes a missing adapter a failure.
 */
import assert from "node:assert/strict";
import { describeAdapter, probeInChild } from "../lib/backend_webgpu.ts";

const root = new URL("..", import.meta.url).pathname;
const adapter = await probeInChild();
const required = Deno.env.get("DEER_REQUIRE_WEBGPU") === "1";
const reference = Deno.env.get("DEER_REFERENCE_BACKEND") || "tensorflow";
const skip = adapter === null && !required;
if (adapter === null) {
  console.error(
    required
      ? "webgpu tests: DEER_REQUIRE_WEBGPU=1 but there is no WebGPU adapter"
      : "webgpu tests skipped: no WebGPU adapter (install a Vulkan driver; " +
        "`apt-get install mesa-vulkan-drivers` gives a software one)",
  );
} else {
  console.error(`webgpu tests on ${describeAdapter(adapter)}`);
}

function requireAdapter(): void {
  assert.ok(adapter !== null, "no WebGPU adapter (DEER_REQUIRE_WEBGPU=1 asks for one)");
}

async function run(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: root,
    env: { DEER_QUIET: "1", NO_COLOR: "1", ...env },
    stdin: "null",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

// deno-lint-ignore no-explicit-any
type Json = any;

async function worker(backend: string, which: string): Promise<Json> {
  const r = await run(["run", "-A", "tests/helpers/backend_worker.ts", which], {
    DEER_BACKEND: backend,
  });
  assert.equal(r.code, 0, `DEER_BACKEND=${backend} worker ${which} failed:\n${r.stderr}`);
  const out = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
  assert.equal(out.backend, backend);
  return out;
}

/** max |got − want| / max(1e-30, max |want|), over flattened arrays. */
function relativeError(got: Json, want: Json): number {
  const g = [got].flat(3) as number[], w = [want].flat(3) as number[];
  assert.equal(g.length, w.length);
  let err = 0, scale = 0;
  for (let i = 0; i < w.length; i++) {
    err = Math.max(err, Math.abs(g[i] - w[i]));
    scale = Math.max(scale, Math.abs(w[i]));
  }
  return err / Math.max(scale, 1e-30);
}

Deno.test({
  name:
    "webgpu: features, gradients, loss, trainer steps, volumes and predict equal the reference's",
  ignore: skip,
  async fn() {
    requireAdapter();
    const [gpu, cpu] = await Promise.all([worker("webgpu", "ops"), worker(reference, "ops")]);
    // The tolerances of perf_equivalence.test.ts (features 1e-5, gradients and factors 1e-4);
    // measured on lavapipe: ≤ 6e-7.
    const tolerances: Record<string, number> = {
      features: 1e-5,
      volumeFeatures: 1e-5,
      loss: 1e-5,
      stepLosses: 1e-5,
      probs: 1e-5,
      grads: 1e-4,
      lossGrads: 1e-4,
      factorsA: 1e-4,
      factorsB: 1e-4,
      momentum: 1e-4,
    };
    for (const [key, tol] of Object.entries(tolerances)) {
      const e = relativeError(gpu[key], cpu[key]);
      assert.ok(e < tol, `${key}: webgpu differs from ${reference} by ${e} (tolerance ${tol})`);
    }
  },
});

/**
 * Compares two round records field by field: strings, booleans, counts, the chosen round, the
 * participants, excluded clients and ε exactly; metrics to 1e-9 (they are ratios of counts);
 * other floats (losses, norms, noise energy) to a relative 1e-5, far below the 4 significant
 * digits a run prints; the aggregation deviation (zero up to rounding for DEeR) to 1e-12.
 */
function assertSameRecord(got: Json, want: Json, path: string): void {
  if (typeof want === "number" && typeof got === "number") {
    if (Number.isInteger(want) && Number.isInteger(got) && Math.abs(want) < 2 ** 31) {
      assert.equal(got, want, `${path}: ${got} vs ${want}`);
      return;
    }
    const leaf = path.split(".").at(-1)!;
    if (leaf === "deviation") {
      assert.ok(Math.abs(got - want) < 1e-12, `${path}: ${got} vs ${want}`);
    } else if (/^(val|test)\./.test(path.split(".").slice(-2).join("."))) {
      assert.ok(Math.abs(got - want) < 1e-9, `${path}: ${got} vs ${want}`);
    } else if (path.includes("epsilon")) {
      assert.equal(got, want, `${path}: ${got} vs ${want}`);
    } else {
      const rel = Math.abs(got - want) / Math.max(Math.abs(want), 1e-12);
      assert.ok(rel < 1e-5, `${path}: ${got} vs ${want} (relative ${rel})`);
    }
    return;
  }
  if (Array.isArray(want)) {
    assert.ok(Array.isArray(got) && got.length === want.length, `${path}: length`);
    want.forEach((w, i) => assertSameRecord(got[i], w, `${path}[${i}]`));
    return;
  }
  if (want !== null && typeof want === "object") {
    assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort(), `${path}: fields`);
    for (const k of Object.keys(want)) assertSameRecord(got[k], want[k], `${path}.${k}`);
    return;
  }
  assert.equal(got, want, path);
}

Deno.test({
  name: "webgpu: a federated run (DEeR, strict DP, K = 4, T = 2) gives the reference's records",
  ignore: skip,
  async fn() {
    requireAdapter();
    const [gpu, cpu] = await Promise.all([worker("webgpu", "fl"), worker(reference, "fl")]);
    assert.equal(gpu.records.length, 2);
    gpu.records.forEach((r: Json, i: number) =>
      assertSameRecord(r, cpu.records[i], `round ${i + 1}`)
    );
  },
});

Deno.test({
  name:
    "webgpu: the optimised-path equivalence tests pass on webgpu, with and without its fast path",
  ignore: skip,
  async fn() {
    requireAdapter();
    for (const fast of ["0", "1"]) {
      // --no-check: the type check is the main test run's business (and needs the .d.ts files).
      const r = await run(["test", "-A", "--no-check", "tests/perf_equivalence.test.ts"], {
        DEER_BACKEND: "webgpu",
        DEER_FAST_PATH: fast,
      });
      const what = `perf_equivalence on webgpu (DEER_FAST_PATH=${fast})`;
      assert.equal(r.code, 0, `${what} failed:\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, /ok \| \d+ passed \| 0 failed/);
    }
  },
});
