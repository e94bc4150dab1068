/**
 * LoRA adapters on q, k and v of every block (docs/method.md#lora-on-a-frozen-clip-image-tower):
 * three independent pairs per block, `A ∈ R^{r×d}` and `B ∈ R^{d×r}`, adding `s · B A x` to the
 * projection with `s = alpha / r`.
 *
 * The federated engine keeps adapters as plain `Float32Array`s (row-major, A as r×d and B as
 * d×r, in the encoder's `adapterNames` order) — easy to average, clip, add noise to and save —
 * and turns them into tensors only around a forward/backward pass.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * import { createRng } from "../rng.ts";
 * const lora = initLora(encoder.config, 8, createRng(10));
 * const tensors = loraToTensors(lora, encoder.config.width);
 * const f = tf.tidy(() =>
 *   encoder.encode(tf.zeros<tf.Rank.R4>([2, 28, 28, 3]), { ...tensors, scale: loraScale(8, 8) })
 * );
 * f.shape; // [2, 64]: B = 0, so the frozen model's features
 * tf.dispose(f);
 * disposeLora(tensors);
 * encoder.dispose();
 * ```
 * @module
 */
import { tf } from "../backend.ts";
import type { Rng } from "../rng.ts";
import type { LoraInput } from "./transformer.ts";

/** LoRA factors in host memory: `A[i]` is r×width, `B[i]` width×r, both row-major. */
export interface LoraFactors {
  A: Float32Array[];
  B: Float32Array[];
}

/** LoRA factors as tensors (the shape `encode` takes, without the scale). */
export interface LoraTensors {
  A: tf.Tensor2D[];
  B: tf.Tensor2D[];
}

/**
 * Fresh adapters for every q, k, v of every block: A Kaiming-uniform with a = √5, i.e.
 * U(−1/√d, 1/√d) with d = fan_in = width (PyTorch's `nn.Linear` default, as in the reference);
 * B zeros, so the adapted model starts equal to the frozen one
 * (docs/method.md#lora-on-a-frozen-clip-image-tower). The draws go adapter by adapter, row-major,
 * so a seed gives the same A on every machine.
 *
 * @example
 * ```ts
 * import { createRng } from "../rng.ts";
 * const { A, B } = initLora({ width: 768, layers: 12 }, 8, createRng(10));
 * A.length; // 36
 * B[0].every((b) => b === 0); // true
 * ```
 */
export function initLora(
  config: { width: number; layers: number },
  rank: number,
  rng: Rng,
): LoraFactors {
  const { width, layers } = config;
  if (!Number.isInteger(rank) || rank < 1 || rank > width) {
    throw new Error(`initLora: rank ${rank} must be an integer in [1, width = ${width}]`);
  }
  const bound = 1 / Math.sqrt(width);
  const A: Float32Array[] = [];
  const B: Float32Array[] = [];
  for (let i = 0; i < 3 * layers; i++) {
    const a = new Float32Array(rank * width);
    for (let j = 0; j < a.length; j++) a[j] = (2 * rng.uniform() - 1) * bound;
    A.push(a);
    B.push(new Float32Array(width * rank));
  }
  return { A, B };
}

/**
 * The LoRA scale `s = alpha / r` (docs/method.md#lora-on-a-frozen-clip-image-tower;
 * alpha = 8, r = 8 gives 1).
 *
 * @example
 * ```ts
 * loraScale(8, 8); // 1
 * ```
 */
export function loraScale(alpha: number, rank: number): number {
  if (!(rank > 0) || !Number.isFinite(alpha)) {
    throw new Error(`loraScale: alpha ${alpha} must be finite and rank ${rank} > 0`);
  }
  return alpha / rank;
}

/** The rank of host factors (from the first A), checking every factor's size against `width`. */
export function loraRank(lora: LoraFactors, width: number): number {
  if (lora.A.length === 0 || lora.A.length !== lora.B.length) {
    throw new Error(
      `LoRA has ${lora.A.length} A and ${lora.B.length} B factors; expected the same number > 0`,
    );
  }
  const rank = lora.A[0].length / width;
  if (!Number.isInteger(rank) || rank < 1) {
    throw new Error(
      `LoRA A[0] has ${lora.A[0].length} values; expected r × width (width ${width})`,
    );
  }
  lora.A.forEach((a, i) => {
    if (a.length !== rank * width || lora.B[i].length !== width * rank) {
      throw new Error(
        `LoRA adapter ${i}: A has ${a.length} and B ${
          lora.B[i].length
        } values; expected ${rank}×${width} each`,
      );
    }
  });
  return rank;
}

/**
 * Host factors → tensors (A as [r, width], B as [width, r]). The caller owns the tensors (use
 * them as `tf.variable`s or `tf.grads` inputs; free them with {@link disposeLora}).
 *
 * @example
 * ```ts
 * import { createRng } from "../rng.ts";
 * const t = loraToTensors(initLora({ width: 16, layers: 1 }, 4, createRng(1)), 16);
 * t.A[0].shape; // [4, 16]
 * disposeLora(t);
 * ```
 */
export function loraToTensors(lora: LoraFactors, width: number): LoraTensors {
  const rank = loraRank(lora, width);
  return {
    A: lora.A.map((a) => tf.tensor2d(a, [rank, width])),
    B: lora.B.map((b) => tf.tensor2d(b, [width, rank])),
  };
}

/**
 * Tensors → host factors (copies; the tensors stay alive).
 *
 * @example
 * ```ts
 * import { createRng } from "../rng.ts";
 * const t = loraToTensors(initLora({ width: 16, layers: 1 }, 4, createRng(1)), 16);
 * const host = await loraFromTensors(t);
 * host.A[0].length; // 64
 * disposeLora(t);
 * ```
 */
export async function loraFromTensors(lora: LoraTensors): Promise<LoraFactors> {
  const read = (ts: tf.Tensor2D[]) =>
    Promise.all(ts.map(async (t) => Float32Array.from(await t.data() as Float32Array)));
  return { A: await read(lora.A), B: await read(lora.B) };
}

/** Frees LoRA tensors. */
export function disposeLora(lora: LoraTensors): void {
  for (const t of [...lora.A, ...lora.B]) t.dispose();
}

/**
 * A `LoraInput` for factors held stacked, A as [count, r, width] and B as [count, width, r] (the
 * trainer's parameters): `packed` carries them to the frozen fast path as they are, and the
 * per-adapter lists `A` and `B` are cut from them only if a path reads them (the autodiff path,
 * adapters of mixed rank), once, in the scope of that first read. Meant for one `encode` call:
 * the lists are tensors of the tidy scope that made them.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { createRng } from "../rng.ts";
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const t = loraToTensors(initLora(encoder.config, 8, createRng(10)), encoder.config.width);
 * const A = tf.stack(t.A) as tf.Tensor3D, B = tf.stack(t.B) as tf.Tensor3D; // [9, 8, 64], [9, 64, 8]
 * const x = tf.zeros<tf.Rank.R4>([2, 28, 28, 3]);
 * const f = tf.tidy(() => encoder.encode(x, packedLora(A, B, { scale: loraScale(8, 8) })));
 * f.shape; // [2, 64]
 * tf.dispose([A, B, x, f]);
 * disposeLora(t);
 * encoder.dispose();
 * ```
 */
export function packedLora(
  A: tf.Tensor3D,
  B: tf.Tensor3D,
  rest: Omit<LoraInput, "A" | "B" | "packed">,
): LoraInput {
  let listA: tf.Tensor2D[] | undefined;
  let listB: tf.Tensor2D[] | undefined;
  return {
    ...rest,
    packed: { A, B },
    get A() {
      return listA ??= tf.unstack(A) as tf.Tensor2D[];
    },
    get B() {
      return listB ??= tf.unstack(B) as tf.Tensor2D[];
    },
  };
}
