/**
 * The `webgpu` backend's selection: forced with `DEER_BACKEND=webgpu` it prints the adapter and
 * its limits; without an adapter the forced choice fails saying what is missing; the automatic
 * choice never takes a software (fallback) adapter, and probing for one does not crash a process
 * that then loads libtensorflow. Each case runs in a fresh process.
 */
import assert from "node:assert/strict";
import { webgpuGate } from "./helpers/webgpu.ts";

const root = new URL("..", import.meta.url).pathname;
const { adapter, skip, requireAdapter } = await webgpuGate("webgpu adapter tests");

/** Hides every Vulkan driver and EGL vendor from wgpu: `requestAdapter()` then returns null. */
const NO_ADAPTER = {
  VK_ICD_FILENAMES: "/nonexistent",
  VK_DRIVER_FILES: "/nonexistent",
  __EGL_VENDOR_LIBRARY_FILENAMES: "/nonexistent",
};

const SOURCE = `
import { backendName, tf } from "./lib/backend.ts";
const y = tf.matMul(tf.tensor2d([1, 2, 3, 4], [2, 2]), tf.tensor2d([5, 6, 7, 8], [2, 2]));
console.log(JSON.stringify({ backend: backendName, product: Array.from(await y.data()) }));
`;

async function start(env: Record<string, string>, unset: string[] = [], source = SOURCE) {
  const vars: Record<string, string> = { ...Deno.env.toObject(), NO_COLOR: "1", ...env };
  for (const k of unset) delete vars[k];
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", source],
    cwd: root,
    env: vars,
    clearEnv: true,
    stdin: "null",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test({
  name: "webgpu: DEER_BACKEND=webgpu computes and prints the adapter and its limits",
  ignore: skip,
  async fn() {
    requireAdapter();
    const r = await start({ DEER_BACKEND: "webgpu" }, ["DEER_QUIET"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { backend: "webgpu", product: [19, 22, 43, 50] });
    assert.match(
      r.stderr,
      /deer: tfjs backend webgpu \(.+, vendor .+; maxStorageBufferBindingSize \d+(\.\d)? (MiB|GiB), maxBufferSize \d+(\.\d)? (MiB|GiB)\)/,
    );
    assert.ok(r.stderr.includes(adapter!.description), r.stderr);
    assert.doesNotMatch(r.stderr, /XDG_RUNTIME_DIR/, "Mesa's warning is silenced");
  },
});

Deno.test("webgpu: DEER_BACKEND=webgpu without an adapter fails and says what is missing", async () => {
  const r = await start({ DEER_BACKEND: "webgpu", ...NO_ADAPTER });
  assert.notEqual(r.code, 0);
  assert.match(
    r.stderr,
    /DEER_BACKEND=webgpu was requested but cannot be loaded: no WebGPU adapter/,
  );
  assert.match(r.stderr, /mesa-vulkan-drivers/);
});

Deno.test("webgpu: the automatic choice skips a fallback adapter", async () => {
  const r = await start({}, ["DEER_BACKEND", "DEER_QUIET"]);
  assert.equal(r.code, 0, r.stderr);
  const { backend, product } = JSON.parse(r.stdout);
  assert.deepEqual(product, [19, 22, 43, 50]);
  if (adapter === null || adapter.isFallback) assert.notEqual(backend, "webgpu");
  else assert.equal(backend, "webgpu", "a real GPU is chosen first");
});

Deno.test({
  name: "webgpu: probing for an adapter leaves the process able to load libtensorflow",
  ignore: skip,
  async fn() {
    // Probing in this process (navigator.gpu.requestAdapter with lavapipe installed) and then
    // loading tfjs-node ended in a segmentation fault (exit 139); the probe runs in a child.
    const probeFirst = `
import { probeInChild } from "./lib/backend_webgpu.ts";
const seen = await probeInChild();
const { backendName, tf } = await import("./lib/backend.ts");
console.log(JSON.stringify({ seen: seen !== null, backend: backendName,
  product: Array.from(await tf.add(tf.tensor1d([1, 2]), 1).data()) }));
`;
    const r = await start({ DEER_BACKEND: "tensorflow", DEER_QUIET: "1" }, [], probeFirst);
    assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
    assert.deepEqual(JSON.parse(r.stdout), { seen: true, backend: "tensorflow", product: [2, 3] });
  },
});

Deno.test({
  name: "webgpu: DEER_WEBGPU_SUBMIT_BATCH sets how many dispatches go into one submission",
  ignore: skip,
  async fn() {
    requireAdapter();
    // 40 dependent kernels on 2048 values (tfjs-webgpu runs tensors under 1000 values held on
    // the host on its CPU backend): with a batch of 1 every dispatch is its own submission, with
    // 1000 all of them wait for the read-back's; the values must not depend on it.
    const chain = `
import { backendName, tf } from "./lib/backend.ts";
let x = tf.mul(tf.range(0, 2048, 1, "float32"), 0.01);
for (let i = 0; i < 40; i++) x = tf.add(tf.mul(x, 0.9), i);
console.log(JSON.stringify({ backend: backendName, values: Array.from(await x.data()),
  flag: tf.env().getNumber("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE") }));
`;
    const runs = [];
    for (const n of ["1", "1000", ""]) {
      const env = { DEER_BACKEND: "webgpu", DEER_QUIET: "1", DEER_WEBGPU_SUBMIT_BATCH: n };
      const r = await start(env, [], chain);
      assert.equal(r.code, 0, r.stderr);
      runs.push(JSON.parse(r.stdout));
    }
    assert.deepEqual(runs.map((r) => r.backend), ["webgpu", "webgpu", "webgpu"]);
    assert.deepEqual(runs.map((r) => r.flag), [1, 1000, 15], "an empty value keeps tfjs' 15");
    assert.deepEqual(runs[1].values, runs[0].values);
    assert.deepEqual(runs[2].values, runs[0].values);
    const expect = (j: number) => {
      let v = Math.fround(j * Math.fround(0.01));
      for (let i = 0; i < 40; i++) v = Math.fround(Math.fround(v * Math.fround(0.9)) + i);
      return v;
    };
    for (const j of [0, 1, 777, 2047]) {
      const got = runs[0].values[j];
      assert.ok(Math.abs(got - expect(j)) <= 1e-5 * Math.abs(expect(j)), `${got} vs ${expect(j)}`);
    }

    const bad = await start({ DEER_BACKEND: "webgpu", DEER_WEBGPU_SUBMIT_BATCH: "0" });
    assert.notEqual(bad.code, 0);
    assert.match(
      bad.stderr,
      /DEER_WEBGPU_SUBMIT_BATCH="0": expected a whole number .* from 1 to 100000/,
    );
  },
});

Deno.test({
  name:
    "webgpu: the device takes up to 32 storage buffers per shader stage (a stack of 12 tensors is one dispatch where the adapter offers 13), patching nothing global",
  ignore: skip,
  async fn() {
    requireAdapter();
    // tfjs-webgpu cuts a concatenation of more inputs than the device's storage buffers per
    // shader stage less one into several (3 dispatches for 12 at WebGPU's default of 8); the
    // device now asks for the adapter's limit, up to 32 (lib/backend_webgpu.ts). Tensors of
    // 1,024 values each, with tfjs' CPU forwarding off: every kernel dispatches.
    const stack = `
const original = GPUAdapter.prototype.requestDevice;
const { backendName, tf } = await import("./lib/backend.ts");
const { STORAGE_BUFFERS_WANTED } = await import("./lib/backend_webgpu.ts");
tf.env().set("WEBGPU_CPU_FORWARD", false);
const parts = Array.from({ length: 12 }, (_, i) => tf.add(tf.range(0, 1024, 1, "float32"), 1e4 * i));
const backend = tf.backend();
const stock = backend.recordAndSubmit;
const programs = [];
backend.recordAndSubmit = function (...args) {
  programs.push(args[0].constructor.name);
  return stock.apply(this, args);
};
const y = tf.stack(parts);
backend.recordAndSubmit = stock;
const values = await y.data();
const a = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
console.log(JSON.stringify({ backend: backendName, programs,
  limit: backend.device.limits.maxStorageBuffersPerShaderStage,
  want: Math.min(a.limits.maxStorageBuffersPerShaderStage, STORAGE_BUFFERS_WANTED),
  exact: values.every((v, j) => v === (j % 1024) + 1e4 * Math.floor(j / 1024)),
  untouched: GPUAdapter.prototype.requestDevice === original,
  plain: (await a.requestDevice()).limits.maxStorageBuffersPerShaderStage }));
`;
    const r = await start({ DEER_BACKEND: "webgpu", DEER_QUIET: "1" }, [], stack);
    assert.equal(r.code, 0, r.stderr);
    const got = JSON.parse(r.stdout);
    assert.equal(got.backend, "webgpu");
    assert.equal(got.limit, got.want, r.stdout);
    if (got.limit >= 13) assert.deepEqual(got.programs, ["ConcatProgram"], r.stdout);
    else {
      // An adapter with fewer buffers: tfjs still cuts the concatenation, as it must.
      assert.ok(got.programs.length > 1, r.stdout);
      assert.ok(got.programs.every((p: string) => p === "ConcatProgram"), r.stdout);
    }
    assert.equal(got.exact, true);
    // Nothing global was patched: a device requested by other code gets WebGPU's default (8).
    assert.equal(got.untouched, true);
    assert.equal(got.plain, 8);
  },
});

Deno.test("webgpu: DEER_WEBGPU_SUBMIT_BATCH is read as a whole number or refused", async () => {
  const { submitBatchFromEnv } = await import("../lib/backend_webgpu.ts");
  const saved = Deno.env.get("DEER_WEBGPU_SUBMIT_BATCH");
  try {
    const read = (v: string) => {
      Deno.env.set("DEER_WEBGPU_SUBMIT_BATCH", v);
      return submitBatchFromEnv();
    };
    assert.equal(read(" 64 "), 64);
    assert.equal(read("1"), 1);
    assert.equal(read("100000"), 100000);
    assert.equal(read(""), undefined);
    for (const v of ["0", "-3", "2.5", "1e9", "many", "100001"]) {
      assert.throws(() => read(v), /DEER_WEBGPU_SUBMIT_BATCH=.*from 1 to 100000.*unset it/, v);
    }
    Deno.env.delete("DEER_WEBGPU_SUBMIT_BATCH");
    assert.equal(submitBatchFromEnv(), undefined);
  } finally {
    if (saved === undefined) Deno.env.delete("DEER_WEBGPU_SUBMIT_BATCH");
    else Deno.env.set("DEER_WEBGPU_SUBMIT_BATCH", saved);
  }
});
