/**
 * TypeScript side of the ViT-B/16 cross-check: loads the checkpoints that `vit_compare.py`
 * wrote, encodes the same images, and reports, per layout, the largest absolute difference to
 * the PyTorch features relative to the feature scale (max |ref|). Target ≤ 1e-4.
 *
 * Writes `report.json` beside the checkpoints and exits non-zero when a layout misses the target.
 *
 * @example
 * ```sh
 * python tools/crosscheck/vit_compare.py /tmp/deer_crosscheck
 * deno run -A tools/crosscheck/vit_compare.ts /tmp/deer_crosscheck
 * ```
 * @module
 */
import { backendName, tf } from "../../lib/backend.ts";
import { writeJsonAtomic } from "../../lib/io/atomic.ts";
import { readSafetensors } from "../../lib/model/safetensors.ts";
import { loadVisionEncoder, type VitLoadOptions } from "../../lib/model/vit_checkpoints.ts";

const dir = Deno.args[0] ?? "/tmp/deer_crosscheck";
const TARGET = 1e-4;

const cases: { name: string; file: string; options: VitLoadOptions; ref: string }[] = [
  {
    name: "openai (QuickGELU, default)",
    file: "openai_b16.safetensors",
    options: {},
    ref: "ref_openai_quick_gelu",
  },
  {
    name: "openai (GELU)",
    file: "openai_b16.safetensors",
    options: { act: "gelu" },
    ref: "ref_openai_gelu",
  },
  { name: "hf", file: "hf_b16/model.safetensors", options: {}, ref: "ref_hf" },
  { name: "timm (BiomedCLIP tower)", file: "timm_b16.safetensors", options: {}, ref: "ref_timm" },
];

const { tensors } = await readSafetensors(`${dir}/inputs.safetensors`);
const images = tf.tensor4d(
  tensors.images.data,
  tensors.images.shape as [number, number, number, number],
);
const rows = [];
let failed = false;
for (const c of cases) {
  let t0 = performance.now();
  const encoder = await loadVisionEncoder(`${dir}/${c.file}`, c.options);
  const loadMs = performance.now() - t0;
  t0 = performance.now();
  const out = tf.tidy(() => encoder.encode(images));
  const got = await out.data();
  const encodeMs = performance.now() - t0;
  out.dispose();
  encoder.dispose();
  const ref = tensors[c.ref].data;
  let maxErr = 0, scale = 0;
  for (let i = 0; i < ref.length; i++) {
    maxErr = Math.max(maxErr, Math.abs(got[i] - ref[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  const relative = maxErr / scale;
  failed ||= !(relative <= TARGET);
  rows.push({
    layout: c.name,
    config:
      `${encoder.config.layers}×${encoder.config.width}, ${encoder.config.heads} heads, ${encoder.config.act}, eps ${encoder.config.lnEps}`,
    maxAbsError: maxErr,
    maxAbsRef: scale,
    relativeError: relative,
    loadMs: Math.round(loadMs),
    encodeMs: Math.round(encodeMs),
  });
  console.log(
    `${c.name.padEnd(28)} max|err| ${maxErr.toExponential(2)}  max|ref| ${scale.toFixed(3)}  ` +
      `relative ${relative.toExponential(2)}  ${relative <= TARGET ? "ok" : "FAIL"}  ` +
      `(load ${Math.round(loadMs)} ms, encode 4 images ${Math.round(encodeMs)} ms)`,
  );
}
images.dispose();
await writeJsonAtomic(`${dir}/report.json`, { backend: backendName, target: TARGET, rows });
if (failed) Deno.exit(1);
