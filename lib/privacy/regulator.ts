/**
 * DEeR's noise regulator on tfjs tensors — docs/method.md#the-noise-regulator.
 *
 * For a released B (peer A ∈ R^{r×d}) the client adds `W·Aᵀ(AAᵀ)⁻¹` instead of isotropic noise,
 * so the noise reaching ΔW = BA is `W·P_A`; for a released A (peer B ∈ R^{d×r}) it adds
 * `(BᵀB)⁻¹Bᵀ·W`, reaching ΔW as `P_B·W`. The r×r systems are solved in float64 on the host
 * (Cholesky; a rank-deficient peer is an error, not a silent general inverse).
 *
 * There is one implementation of the regulator: the peer of {@link peerForB} / {@link peerForA}
 * (noise.ts, re-exported here), prepared once per phase. The privacy mechanism of every run draws
 * its regulated noise from it (`PeerFactor.regulatedNoise`), and these tfjs functions apply the
 * same `PeerFactor.regulate` to tensors. This is the only file of `lib/privacy` that touches
 * tfjs.
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * import { regulateNoiseForB } from "./regulator.ts";
 * const W = tf.randomNormal([768, 768], 0, 0.1) as tf.Tensor2D;
 * const A = tf.randomUniform([8, 768], -0.036, 0.036) as tf.Tensor2D;
 * const noiseForB = await regulateNoiseForB(W, A); // [768, 8]; noiseForB·A = W·P_A
 * tf.dispose([W, A, noiseForB]);
 * ```
 * @module
 */
import { tf } from "../backend.ts";
import { sigmaMaxOf } from "./linalg.ts";
import { peerForA, peerForB } from "./noise.ts";

export {
  expectedNoiseEnergyInUpdate,
  isotropicNoise,
  noiseEnergyInUpdate,
  type PeerFactor,
  peerForA,
  peerForB,
  productSqNorm,
  type RegulatedDraw,
  regulatedNoiseA,
  regulatedNoiseB,
  regulateNoiseForAHost,
  regulateNoiseForBHost,
} from "./noise.ts";

function shapeError(fn: string, field: string, got: number[], want: string): Error {
  return new Error(`${fn}: ${field} has shape [${got.join(", ")}]; expected ${want}`);
}

/**
 * Regulated noise for a released B: `W · Aᵀ(AAᵀ)⁻¹` (docs/method.md#the-noise-regulator), with
 * `noise` W of shape [d, d] and the peer `peerA` of shape [r, d]; returns a new [d, r] tensor owned
 * by the caller. Throws when A has rank < r. (A non-square W of shape [dOut, d] is accepted too: B
 * is then [dOut, r].)
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const W = tf.eye(3) as tf.Tensor2D;
 * const A = tf.tensor2d([[2, 0, 0]]);
 * await (await regulateNoiseForB(W, A)).array(); // [[0.5], [0], [0]]
 * ```
 */
export async function regulateNoiseForB(
  noise: tf.Tensor2D,
  peerA: tf.Tensor2D,
): Promise<tf.Tensor2D> {
  const fn = "regulateNoiseForB";
  if (peerA.rank !== 2) throw shapeError(fn, "peerA", peerA.shape, "[r, d]");
  const [r, d] = peerA.shape;
  if (noise.rank !== 2 || noise.shape[1] !== d) {
    throw shapeError(fn, "noise", noise.shape, `[${d}, ${d}] (d×d, d from peerA [r, d])`);
  }
  const dOut = noise.shape[0];
  const peer = peerForB(await peerA.data() as Float32Array, r, d, dOut);
  return tf.tensor2d(peer.regulate(await noise.data() as Float32Array), [dOut, r]);
}

/**
 * Regulated noise for a released A: `(BᵀB)⁻¹Bᵀ · W` (docs/method.md#the-noise-regulator), with
 * `noise` W of shape [d, d] and the peer `peerB` of shape [d, r]; returns a new [r, d] tensor owned
 * by the caller. Throws when B has rank < r (e.g. B = 0 before the first phase B). (W of shape
 * [d, dIn] gives [r, dIn].)
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const W = tf.eye(3) as tf.Tensor2D;
 * const B = tf.tensor2d([[2], [0], [0]]);
 * await (await regulateNoiseForA(W, B)).array(); // [[0.5, 0, 0]]
 * ```
 */
export async function regulateNoiseForA(
  noise: tf.Tensor2D,
  peerB: tf.Tensor2D,
): Promise<tf.Tensor2D> {
  const fn = "regulateNoiseForA";
  if (peerB.rank !== 2) throw shapeError(fn, "peerB", peerB.shape, "[d, r]");
  const [d, r] = peerB.shape;
  if (noise.rank !== 2 || noise.shape[0] !== d) {
    throw shapeError(fn, "noise", noise.shape, `[${d}, ${d}] (d×d, d from peerB [d, r])`);
  }
  const dIn = noise.shape[1];
  const peer = peerForA(await peerB.data() as Float32Array, d, r, dIn);
  return tf.tensor2d(peer.regulate(await noise.data() as Float32Array), [r, dIn]);
}

/**
 * Largest singular value of a peer factor held as a tensor (A [r, d] or B [d, r]) — what the
 * accountant needs for the paper mechanism's regulated releases
 * (docs/privacy.md#what-the-paper-mechanism-really-spends).
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * await peerSigmaMax(tf.tensor2d([[3, 0], [0, 1]])); // 3
 * ```
 */
export async function peerSigmaMax(peer: tf.Tensor2D): Promise<number> {
  if (peer.rank !== 2) throw shapeError("peerSigmaMax", "peer", peer.shape, "a matrix");
  const [rows, cols] = peer.shape;
  return sigmaMaxOf(await peer.data() as Float32Array, rows, cols);
}
