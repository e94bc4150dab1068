import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { backendName, tf } from "../lib/backend.ts";
import { NATIVE_LIBRARY, nativeOps, nativeOpsStatus } from "../lib/native.ts";
import { geluBackward, geluForward } from "../lib/model/vit_fast.ts";

// `deno task setup` (which the test task runs first) builds the library wherever a C compiler and
// tfjs-node are there — CI included; on such a machine the fused kernels must load and agree.
const expected = backendName === "tensorflow" && existsSync(NATIVE_LIBRARY) &&
  Deno.env.get("DEER_NATIVE") !== "0";

Deno.test("native: the fused GELU kernels load where setup built them", () => {
  assert.equal(nativeOps(), expected, nativeOpsStatus());
  if (!expected) assert.match(nativeOpsStatus(), /not (used|built)|cannot load/);
});

Deno.test("native: DeerGelu and DeerGeluGrad equal TensorFlow's kernels (also the scalar tail)", () => {
  if (!nativeOps()) return; // nothing fused to compare (the status test says why)
  tf.tidy(() => {
    // 1003 values: 125 vector blocks of 8 and a tail of 3; |z| up to 6 (erf saturated), and 0.
    const z = tf.concat([tf.linspace(-6, 6, 1002), tf.tensor1d([0])]);
    const d = tf.cos(tf.mul(z, 3));
    const [act1, gate1] = geluForward(z, true);
    const [act0, gate0] = geluForward(z, false);
    const dz1 = geluBackward(d, z, gate1, true);
    const dz0 = geluBackward(d, z, gate0, false);
    for (const [name, a, b] of [["act", act1, act0], ["gate", gate1, gate0], ["dz", dz1, dz0]]) {
      const x = (a as tf.Tensor).dataSync(), y = (b as tf.Tensor).dataSync();
      assert.equal(x.length, 1003);
      let worst = 0;
      for (let i = 0; i < x.length; i++) {
        worst = Math.max(worst, Math.abs(x[i] - y[i]) / Math.max(1, Math.abs(y[i])));
      }
      assert.ok(worst < 2e-6, `${name}: relative difference ${worst}`);
    }
    // Spot values: z = 0 → gate 1, act 0, dz = d·1; z = 6 → gate 2, act 12.
    const at = (t: tf.Tensor, i: number) => t.dataSync()[i];
    assert.equal(at(gate1, 1002), 1);
    assert.equal(at(act1, 1002), 0);
    assert.ok(Math.abs(at(dz1, 1002) - 1) < 1e-6);
    assert.ok(Math.abs(at(act1, 1001) - 12) < 1e-5);
  });
});

Deno.test("native: a shape mismatch in DeerGeluGrad is an error, not a wrong result", () => {
  if (!nativeOps()) return;
  const z = tf.ones([4]), gate = tf.ones([4]), d = tf.ones([5]);
  assert.throws(() => geluBackward(d, z, gate, true), /one size/);
  tf.dispose([z, gate, d]);
});

Deno.test("native: without the fused kernels (DEER_NATIVE=0) the frozen path still equals the reference", async () => {
  // The fallback (TensorFlow's own kernels) is what machines without a C compiler run: the
  // equivalence tests, run in a process that does not load the library.
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", new URL("./perf_equivalence.test.ts", import.meta.url).pathname],
    env: { DEER_NATIVE: "0", DEER_QUIET: "1", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text.slice(-2000));
  assert.match(text, /ok \| 9 passed \| 0 failed/);
});
