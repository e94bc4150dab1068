/**
 * 3D volumes through a 2D-pretrained ViT: {@link inflateForVolumes} makes an encoder that reads
 * [N, D, H, W, 1] volumes and shares the 2D encoder's frozen transformer. The scheme:
 * * Patches become cubic-ish: depthPatch × P × P voxels of a one-channel volume. The 2D kernel
 *   is summed over RGB (a gray voxel is the same value in all three channels) and replicated
 *   over depth divided by depthPatch (I3D inflation, Carreira & Zisserman 2017), so a patch that
 *   is constant in depth embeds exactly as its 2D slice.
 * * Position embeddings: the pretrained grid is resampled in-plane to the volume's grid (bicubic,
 *   PyTorch `F.interpolate(align_corners=False)`, as open_clip's `resize_pos_embed`) and a fixed
 *   sinusoidal depth signal is added, centred over depth and scaled to `depthScale` × the RMS of
 *   the in-plane position embeddings (default 1: depth is as visible as a row or a column).
 * * Attention: a volume has D/depthPatch tokens for every in-plane position. Each patch key gets a
 *   bias of −ln(D/depthPatch) so that the class token's attention budget between itself and the
 *   image is what the pretrained model expects. With `depthScale: 0`, a volume that is constant
 *   in depth then gives exactly the features of its 2D slice (tested).
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const volumeEncoder = await inflateForVolumes(encoder, { depth: 28, height: 28, width: 28, depthPatch: 4 });
 * const f = tf.tidy(() => volumeEncoder.encode(tf.zeros<tf.Rank.R5>([2, 28, 28, 28, 1])));
 * f.shape; // [2, 64]
 * f.dispose();
 * volumeEncoder.dispose();
 * encoder.dispose();
 * ```
 * @module
 */
import { tf } from "../backend.ts";
import { deriveVitEncoder, type VisionEncoder, type VitConfig, type VitEncoder } from "./vit.ts";

// ---------------------------------------------------------------------------------------------
// Position embeddings on a new grid

/**
 * Resamples a grid of vectors [inH, inW, channels] (row-major) to [outH, outW, channels] with
 * PyTorch's bicubic interpolation (`F.interpolate(mode="bicubic", align_corners=False)`,
 * A = −0.75, edge clamping, no antialiasing) — what open_clip's `resize_pos_embed` does.
 *
 * @example
 * ```ts
 * const grid2 = new Float32Array([1, 1, 1, 1]); // a constant 2×2 grid, one channel
 * const grid4 = resizeGridBicubic(grid2, [2, 2], 1, [4, 4]);
 * grid4.length; // 16, every value 1
 * ```
 */
export function resizeGridBicubic(
  data: Float32Array,
  [inH, inW]: [number, number],
  channels: number,
  [outH, outW]: [number, number],
): Float32Array {
  const rows = resampleAxis(Float64Array.from(data), inH, inW * channels, outH); // [outH, inW, C]
  const out = new Float32Array(outH * outW * channels);
  for (let r = 0; r < outH; r++) {
    const line = rows.subarray(r * inW * channels, (r + 1) * inW * channels);
    out.set(resampleAxis(line, inW, channels, outW), r * outW * channels);
  }
  return out;
}

/** Resamples `src` = [inLen, inner] along its first axis to [outLen, inner] (PyTorch bicubic). */
function resampleAxis(
  src: Float64Array,
  inLen: number,
  inner: number,
  outLen: number,
): Float64Array {
  const out = new Float64Array(outLen * inner);
  const scale = inLen / outLen;
  for (let i = 0; i < outLen; i++) {
    const real = (i + 0.5) * scale - 0.5;
    const i0 = Math.floor(real);
    const coeffs = cubicCoefficients(real - i0);
    for (let k = 0; k < 4; k++) {
      const j = Math.min(Math.max(i0 - 1 + k, 0), inLen - 1);
      for (let s = 0; s < inner; s++) out[i * inner + s] += coeffs[k] * src[j * inner + s];
    }
  }
  return out;
}

function cubicCoefficients(t: number): number[] {
  const A = -0.75;
  const conv1 = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1;
  const conv2 = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
  return [conv2(t + 1), conv1(t), conv1(1 - t), conv2(2 - t)];
}

// ---------------------------------------------------------------------------------------------
// Inflation

/** Options for {@link inflateForVolumes}. */
export interface VolumeOptions {
  /** Voxels along depth (28 for OrganMNIST3D). */
  depth: number;
  /** In-plane size; defaults to the encoder's imageSize. Multiples of the patch size. */
  height?: number;
  width?: number;
  /** Voxels per patch along depth; defaults to the in-plane patch size. Must divide depth. */
  depthPatch?: number;
  /** Depth signal amplitude relative to the in-plane position embeddings' RMS (default 1). */
  depthScale?: number;
}

/**
 * Makes a volume encoder from a 2D encoder (scheme in the module doc): input [N, D, H, W, 1]
 * (one normalised gray channel). The new encoder borrows the transformer blocks, norms and
 * projection of `encoder` (one frozen backbone) and owns only its inflated patch embedding,
 * position embeddings and attention bias: dispose it before, or with, the 2D encoder.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const volumeEncoder = await inflateForVolumes(encoder, { depth: 28, height: 28, width: 28, depthPatch: 4 });
 * const f = tf.tidy(() => volumeEncoder.encode(tf.zeros<tf.Rank.R5>([2, 28, 28, 28, 1])));
 * f.shape; // [2, 64]
 * f.dispose();
 * volumeEncoder.dispose();
 * encoder.dispose();
 * ```
 */
export async function inflateForVolumes(
  encoder: VisionEncoder,
  options: VolumeOptions,
): Promise<VitEncoder> {
  const base = encoder as VitEncoder;
  if (!base.weights) {
    throw new Error(
      "inflateForVolumes: the encoder must come from loadVisionEncoder/createVitEncoder",
    );
  }
  const cfg = base.config;
  if (cfg.volume) {
    throw new Error("inflateForVolumes: the encoder already reads volumes; inflate the 2D encoder");
  }
  const P = cfg.patchSize;
  const depth = options.depth;
  const height = options.height ?? cfg.imageSize;
  const width = options.width ?? cfg.imageSize;
  const depthPatch = options.depthPatch ?? P;
  const depthScale = options.depthScale ?? 1;
  if (
    !Number.isInteger(depth) || depth < 1 || !Number.isInteger(depthPatch) || depthPatch < 1 ||
    depth % depthPatch !== 0
  ) {
    throw new Error(
      `inflateForVolumes: depth ${depth} must be a positive multiple of depthPatch ${depthPatch}`,
    );
  }
  if (height % P !== 0 || width % P !== 0 || height < P || width < P) {
    throw new Error(
      `inflateForVolumes: height ${height} and width ${width} must be positive multiples of the patch size ${P}`,
    );
  }
  if (!(depthScale >= 0)) {
    throw new Error(`inflateForVolumes: depthScale ${depthScale} must be ≥ 0`);
  }
  const C = cfg.channels, dim = cfg.width;
  const dt = depth / depthPatch, ht = height / P, wt = width / P;

  // Patch kernel: sum over channels, replicate over depth, divide by depthPatch.
  const k2 = await base.weights.patchWeight.data() as Float32Array;
  const k3 = new Float32Array(depthPatch * P * P * dim);
  for (let pix = 0; pix < P * P; pix++) {
    for (let o = 0; o < dim; o++) {
      let sum = 0;
      for (let c = 0; c < C; c++) sum += k2[(pix * C + c) * dim + o];
      for (let d = 0; d < depthPatch; d++) k3[(d * P * P + pix) * dim + o] = sum / depthPatch;
    }
  }

  // Positions: class row; in-plane grid resampled; plus a centred sinusoidal depth signal.
  const pos2 = await base.weights.positionEmbedding.data() as Float32Array;
  const grid = cfg.imageSize / P;
  let plane: Float32Array = Float32Array.from(pos2.subarray(dim));
  if (grid !== ht || grid !== wt) plane = resizeGridBicubic(plane, [grid, grid], dim, [ht, wt]);
  let ms = 0;
  for (const v of plane) ms += v * v;
  const rms = Math.sqrt(ms / plane.length);
  const signal = depthSignal(dt, dim, depthScale * rms);
  const tokens = dt * ht * wt;
  const pos3 = new Float32Array((1 + tokens) * dim);
  pos3.set(pos2.subarray(0, dim));
  for (let d = 0; d < dt; d++) {
    for (let p = 0; p < ht * wt; p++) {
      const row = (1 + d * ht * wt + p) * dim;
      for (let j = 0; j < dim; j++) pos3[row + j] = plane[p * dim + j] + signal[d * dim + j];
    }
  }
  const keyBias = new Float32Array(1 + tokens).fill(-Math.log(dt));
  keyBias[0] = 0;

  const own = {
    patchWeight: tf.tensor2d(k3, [depthPatch * P * P, dim]),
    positionEmbedding: tf.tensor2d(pos3, [1 + tokens, dim]),
    keyBias: tf.tensor1d(keyBias),
  };
  const config: VitConfig = {
    ...cfg,
    channels: 1,
    volume: { depth, height, width, depthPatch, depthScale },
  };
  return deriveVitEncoder(base, config, own);
}

/** Sinusoids over depth (Vaswani et al. 2017), centred over depth, RMS = `amplitude`. */
function depthSignal(count: number, dim: number, amplitude: number): Float32Array {
  const out = new Float32Array(count * dim);
  if (count < 2 || amplitude === 0) return out;
  const raw = new Float64Array(count * dim);
  for (let d = 0; d < count; d++) {
    for (let j = 0; j < dim; j++) {
      const freq = Math.pow(10000, -(2 * Math.floor(j / 2)) / dim);
      raw[d * dim + j] = j % 2 === 0 ? Math.sin(d * freq) : Math.cos(d * freq);
    }
  }
  for (let j = 0; j < dim; j++) {
    let mean = 0;
    for (let d = 0; d < count; d++) mean += raw[d * dim + j] / count;
    for (let d = 0; d < count; d++) raw[d * dim + j] -= mean;
  }
  let ms = 0;
  for (const v of raw) ms += v * v;
  const k = amplitude / Math.sqrt(ms / raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw[i] * k;
  return out;
}
