/**
 * Volumes (OrganMNIST3D and the other 28³ MedMNIST sets): trilinear resampling of uint8 volumes
 * so that a 2D-pretrained encoder with cubic patches (`inflateForVolumes`,
 * lib/model/vit_volume.ts) can read them — a volume side must be a multiple of the patch size.
 *
 * The interpolation is PyTorch's `F.interpolate(mode="trilinear", align_corners=False)`: source
 * coordinate `(i + 0.5)·in/out − 0.5`, clamped at the edges; values are rounded half-up and
 * clipped to uint8.
 *
 * @example
 * ```ts
 * import { writeNpz } from "./npy.ts";
 * // A small OrganMNIST3D-shaped file: volumes [N, 28, 28, 28] uint8, labels [N, 1].
 * const path = `${await Deno.makeTempDir()}/organmnist3d.npz`;
 * const split = (n: number) => ({
 *   images: { shape: [n, 28, 28, 28], data: new Uint8Array(n * 28 ** 3) },
 *   labels: { shape: [n, 1], data: new Uint8Array(n).map((_, i) => i % 11) },
 * });
 * const [tr, va, te] = [split(11), split(11), split(11)];
 * await writeNpz(path, {
 *   train_images: tr.images, train_labels: tr.labels,
 *   val_images: va.images, val_labels: va.labels,
 *   test_images: te.images, test_labels: te.labels,
 * });
 * import { loadMedMnist } from "./medmnist.ts";
 * const organ = await loadMedMnist(path);
 * const split32 = resizeVolumes(organ.train, 32);
 * split32.sampleShape; // [32, 32, 32, 1]
 * ```
 * @module
 */
import type { ImageSplit } from "./dataset.ts";

/** Source index pairs and weights of a linear resampling axis. */
function axis(
  inSize: number,
  outSize: number,
): { i0: Int32Array; i1: Int32Array; w: Float64Array } {
  const i0 = new Int32Array(outSize), i1 = new Int32Array(outSize), w = new Float64Array(outSize);
  const scale = inSize / outSize;
  for (let o = 0; o < outSize; o++) {
    const src = Math.max(0, (o + 0.5) * scale - 0.5);
    const lo = Math.min(Math.floor(src), inSize - 1);
    i0[o] = lo;
    i1[o] = Math.min(lo + 1, inSize - 1);
    w[o] = src - lo;
  }
  return { i0, i1, w };
}

/** Resamples every volume of a split ([D, H, W, 1] samples) to `size³`. */
export function resizeVolumes(split: ImageSplit, size: number): ImageSplit {
  const [D, H, W, C] = split.sampleShape;
  if (split.sampleShape.length !== 4 || C !== 1) {
    throw new Error(
      `resizeVolumes: samples are [${split.sampleShape}]; expected [D, H, W, 1] volumes`,
    );
  }
  if (!Number.isInteger(size) || size < 1) {
    throw new Error(`resizeVolumes: size ${size} must be an integer ≥ 1`);
  }
  if (D === size && H === size && W === size) return split;
  const n = split.labels.length;
  const az = axis(D, size), ay = axis(H, size), ax = axis(W, size);
  const inVol = D * H * W, outVol = size ** 3;
  const out = new Uint8Array(n * outVol);
  const src = split.images;
  for (let s = 0; s < n; s++) {
    const base = s * inVol;
    let o = s * outVol;
    for (let z = 0; z < size; z++) {
      const z0 = az.i0[z] * H * W, z1 = az.i1[z] * H * W, wz = az.w[z];
      for (let y = 0; y < size; y++) {
        const y0 = ay.i0[y] * W, y1 = ay.i1[y] * W, wy = ay.w[y];
        for (let x = 0; x < size; x++) {
          const x0 = ax.i0[x], x1 = ax.i1[x], wx = ax.w[x];
          const at = (zz: number, yy: number) =>
            src[base + zz + yy + x0] * (1 - wx) + src[base + zz + yy + x1] * wx;
          const v = (at(z0, y0) * (1 - wy) + at(z0, y1) * wy) * (1 - wz) +
            (at(z1, y0) * (1 - wy) + at(z1, y1) * wy) * wz;
          out[o++] = Math.min(255, Math.max(0, Math.floor(v + 0.5)));
        }
      }
    }
  }
  return { images: out, sampleShape: [size, size, size, 1], labels: split.labels };
}

/**
 * The volume side an encoder with patch size `patch` reads: the data's side rounded up to a
 * multiple of the patch, and at least 4 patches per axis (so even ViT-B/16 sees 4³ tokens).
 */
export function volumeSide(dataSide: number, patch: number): number {
  return patch * Math.max(Math.ceil(dataSide / patch), 4);
}
