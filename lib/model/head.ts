/**
 * The classification head: fixed class prototypes `T ∈ R^{C×e}` with L2-normalised rows
 * (docs/method.md#the-classification-head). In the reference they are the text features of "this is
 * an image of {class}"; models without a text tower may use fixed orthonormal prototypes.
 *
 * Training logits: `exp(logit_scale) · normalize(f(x)) · Tᵀ` with `logit_scale = ln(1/0.07)`;
 * evaluation uses the cosine scores `normalize(f(x)) · Tᵀ` (and `softmax(cosine)` for AUC).
 *
 * Prototype files are safetensors with one tensor `prototypes` [C, e] and the class names in the
 * metadata key `class_names` (a JSON list).
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const T = orthonormalPrototypes(6, encoder.config.embedDim, 10);
 * const logits = tf.tidy(() => prototypeLogits(encoder.encode(tf.zeros<tf.Rank.R4>([2, 28, 28, 3])), T));
 * logits.shape; // [2, 6]
 * tf.dispose([T, logits]);
 * encoder.dispose();
 * ```
 * @module
 */
import { tf } from "../backend.ts";
import { createRng } from "../rng.ts";
import { readSafetensors, writeSafetensors } from "./safetensors.ts";

/** CLIP's initial temperature: ln(1/0.07) ≈ 2.659 (docs/method.md#the-classification-head). */
export const DEFAULT_LOGIT_SCALE = Math.log(1 / 0.07);

/** Rows divided by their L2 norm (norms clamped at 1e-12, as PyTorch's F.normalize). */
function normalizeRows(x: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => x.div(tf.maximum(tf.norm(x, 2, 1, true), 1e-12)));
}

/**
 * Cosine similarity of each feature row with each prototype: `normalize(features) · Tᵀ`
 * ([N, e] × [C, e] → [N, C]). `prototypes` must already have unit rows.
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const features = tf.tensor2d([[3, 0], [1, 1]]);
 * const prototypes = tf.tensor2d([[1, 0], [0, 1]]);
 * const scores = cosineScores(features, prototypes); // [N, C] in [−1, 1]
 * await scores.data(); // ≈ [1, 0, 0.707, 0.707]
 * tf.dispose([features, prototypes, scores]);
 * ```
 */
export function cosineScores(features: tf.Tensor2D, prototypes: tf.Tensor2D): tf.Tensor2D {
  checkDims(features, prototypes);
  return tf.tidy(() => tf.matMul(normalizeRows(features), prototypes, false, true));
}

/**
 * Training logits `exp(logitScale) · normalize(features) · Tᵀ`
 * (docs/method.md#the-classification-head). `logitScale` may be a scalar tensor (to train it) or a
 * number (default ln(1/0.07)).
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const features = tf.tensor2d([[3, 0], [1, 1]]);
 * const prototypes = tf.tensor2d([[1, 0], [0, 1]]);
 * const oneHot = tf.tensor2d([[1, 0], [0, 1]]);
 * const loss = tf.tidy(() => {
 *   const logits = prototypeLogits(features, prototypes); // [N, C], scaled by exp(ln(1/0.07))
 *   return tf.losses.softmaxCrossEntropy(oneHot, logits);
 * });
 * tf.dispose([features, prototypes, oneHot, loss]);
 * ```
 */
export function prototypeLogits(
  features: tf.Tensor2D,
  prototypes: tf.Tensor2D,
  logitScale: number | tf.Scalar = DEFAULT_LOGIT_SCALE,
): tf.Tensor2D {
  checkDims(features, prototypes);
  return tf.tidy(() => {
    const cosine = tf.matMul(normalizeRows(features), prototypes, false, true);
    return typeof logitScale === "number"
      ? cosine.mul(Math.exp(logitScale))
      : cosine.mul(tf.exp(logitScale));
  });
}

function checkDims(features: tf.Tensor, prototypes: tf.Tensor): void {
  if (features.rank !== 2 || prototypes.rank !== 2 || features.shape[1] !== prototypes.shape[1]) {
    throw new Error(
      `features [${features.shape}] and prototypes [${prototypes.shape}] must be [N, e] and [C, e] ` +
        `with the same e (the encoder's embedDim)`,
    );
  }
}

/**
 * `numClasses` fixed orthonormal prototypes in R^embedDim: Gram–Schmidt (twice, in float64) of
 * seeded standard normal vectors. For models without a text tower
 * (docs/method.md#the-classification-head).
 *
 * @example
 * ```ts
 * const T = orthonormalPrototypes(11, 512, 10); // [11, 512], T Tᵀ = I
 * ```
 */
export function orthonormalPrototypes(
  numClasses: number,
  embedDim: number,
  seed: number,
): tf.Tensor2D {
  if (
    !Number.isInteger(numClasses) || numClasses < 1 || !Number.isInteger(embedDim) ||
    numClasses > embedDim
  ) {
    throw new Error(
      `orthonormalPrototypes: need 1 ≤ numClasses (${numClasses}) ≤ embedDim (${embedDim}), both integers`,
    );
  }
  const rng = createRng(seed);
  const rows: Float64Array[] = [];
  while (rows.length < numClasses) {
    const v = new Float64Array(embedDim);
    rng.fillNormal(v);
    for (let pass = 0; pass < 2; pass++) {
      for (const u of rows) {
        let dot = 0;
        for (let j = 0; j < embedDim; j++) dot += u[j] * v[j];
        for (let j = 0; j < embedDim; j++) v[j] -= dot * u[j];
      }
    }
    let norm = 0;
    for (let j = 0; j < embedDim; j++) norm += v[j] * v[j];
    norm = Math.sqrt(norm);
    if (norm < 1e-6) continue; // a (vanishingly unlikely) dependent draw: draw again
    for (let j = 0; j < embedDim; j++) v[j] /= norm;
    rows.push(v);
  }
  const data = new Float32Array(numClasses * embedDim);
  rows.forEach((r, i) => data.set(r, i * embedDim));
  return tf.tensor2d(data, [numClasses, embedDim]);
}

/**
 * Saves prototypes [C, e] and their class names (atomically) as safetensors.
 *
 * @example
 * ```ts
 * const T = orthonormalPrototypes(2, 4, 10);
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await savePrototypes(path, T, ["basophil", "eosinophil"]);
 * (await loadPrototypes(path)).classNames; // ["basophil", "eosinophil"]
 * T.dispose();
 * ```
 */
export async function savePrototypes(
  path: string,
  prototypes: tf.Tensor2D,
  classNames: string[],
): Promise<void> {
  if (prototypes.rank !== 2 || prototypes.shape[0] !== classNames.length) {
    throw new Error(
      `${path}: prototypes have shape [${prototypes.shape}] but there are ${classNames.length} class names; ` +
        `expected [${classNames.length}, e]`,
    );
  }
  await writeSafetensors(
    path,
    { prototypes: { shape: prototypes.shape, data: await prototypes.data() as Float32Array } },
    { class_names: JSON.stringify(classNames), format: "deer-prototypes" },
  );
}

/**
 * Loads prototypes saved by {@link savePrototypes}; checks the size against `expected` when
 * given, checks the rows are finite and non-zero, and L2-normalises them.
 *
 * @example
 * ```ts
 * const { prototypes, classNames } = await loadPrototypes("models/default/prototypes.safetensors", {
 *   numClasses: 6,
 *   embedDim: 64,
 * });
 * classNames[0]; // "T-shirt/top"
 * prototypes.dispose();
 * ```
 */
export async function loadPrototypes(
  path: string,
  expected: { numClasses?: number; embedDim?: number } = {},
): Promise<{ prototypes: tf.Tensor2D; classNames: string[] }> {
  const { tensors, metadata } = await readSafetensors(path);
  const t = tensors.prototypes;
  const want = `[${expected.numClasses ?? "C"}, ${expected.embedDim ?? "e"}]`;
  if (!t) {
    throw new Error(
      `${path}: no tensor "prototypes"; expected one of shape ${want} (write it with savePrototypes)`,
    );
  }
  const [c, e] = t.shape;
  if (
    t.shape.length !== 2 || (expected.numClasses !== undefined && c !== expected.numClasses) ||
    (expected.embedDim !== undefined && e !== expected.embedDim)
  ) {
    throw new Error(
      `${path}: "prototypes" has shape [${t.shape}]; expected ${want} (classes of the data set × the encoder's embedDim)`,
    );
  }
  let classNames: string[] = [];
  if (metadata.class_names !== undefined) {
    try {
      classNames = JSON.parse(metadata.class_names);
    } catch {
      throw new Error(`${path}: metadata "class_names" is not a JSON list of strings`);
    }
    if (
      !Array.isArray(classNames) || classNames.length !== c ||
      !classNames.every((n) => typeof n === "string")
    ) {
      throw new Error(
        `${path}: metadata "class_names" must list ${c} strings, one per prototype row`,
      );
    }
  }
  const data = Float32Array.from(t.data);
  for (let i = 0; i < c; i++) {
    let norm = 0;
    for (let j = 0; j < e; j++) norm += data[i * e + j] ** 2;
    norm = Math.sqrt(norm);
    if (!(norm > 0) || !Number.isFinite(norm)) {
      throw new Error(
        `${path}: prototype row ${i}${
          classNames[i] ? ` ("${classNames[i]}")` : ""
        } has norm ${norm}; rows must be finite and non-zero`,
      );
    }
    for (let j = 0; j < e; j++) data[i * e + j] /= norm;
  }
  return { prototypes: tf.tensor2d(data, [c, e]), classNames };
}
