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
import {
  type Json,
  jsonRelativeError,
  lastJsonLine,
  runDeno,
  webgpuGate,
} from "./helpers/webgpu.ts";

const reference = Deno.env.get("DEER_REFERENCE_BACKEND") || "tensorflow";
const { skip, requireAdapter } = await webgpuGate("webgpu tests");

async function worker(backend: string, which: string): Promise<Json> {
  const r = await runDeno(["run", "-A", "tests/helpers/backend_worker.ts", which], {
    DEER_BACKEND: backend,
  });
  assert.equal(r.code, 0, `DEER_BACKEND=${backend} worker ${which} failed:\n${r.stderr}`);
  const out = lastJsonLine(r.stdout);
  assert.equal(out.backend, backend);
  return out;
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
      const e = jsonRelativeError(gpu[key], cpu[key]);
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
    "webgpu: the optimised-path equivalence tests pass on webgpu, with and without its fast path (and with DeerWgsl_MatMul on every product, and one adapted-weight product per block)",
  ignore: skip,
  async fn() {
    requireAdapter();
    // The third: the fast path with every product on DeerWgsl_MatMul (lib/webgpu_kernels.ts);
    // the fourth: with each block's adapted weight a product of its own (as where the stack of
    // frozen weights does not fit the adapter, lib/model/vit_fast.ts stackedQkvUsed).
    const runs: Record<string, string>[] = [
      { DEER_FAST_PATH: "0" },
      { DEER_FAST_PATH: "1" },
      { DEER_FAST_PATH: "1", DEER_WGSL_MM_MIN_OUTPUTS: "0" },
      { DEER_FAST_PATH: "1", DEER_WGSL_QKV_STACK: "0" },
    ];
    for (const env of runs) {
      // --no-check: the type check is the main test run's business (and needs the .d.ts files).
      const r = await runDeno(["test", "-A", "--no-check", "tests/perf_equivalence.test.ts"], {
        DEER_BACKEND: "webgpu",
        ...env,
      });
      const what = `perf_equivalence on webgpu (${JSON.stringify(env)})`;
      assert.equal(r.code, 0, `${what} failed:\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, /ok \| \d+ passed \| 0 failed/);
    }
  },
});
