/**
 * Small dense linear algebra in float64 for the noise regulator and the privacy accounting
 * (docs/method.md#the-noise-regulator): Gram matrices of LoRA factors, Cholesky factorisation and
 * solves for r×r symmetric positive definite systems, the largest singular value, and the two
 * pseudo-inverses `A⁺ = Aᵀ(AAᵀ)⁻¹` and `B⁺ = (BᵀB)⁻¹Bᵀ`.
 *
 * Matrices are row-major flat arrays with their shape passed alongside. Inputs may be
 * Float32Array (as the engine keeps client tensors) or Float64Array / number[]; every
 * accumulation is in float64. tfjs has no inverse or SVD, and the r×r systems (r = 8) are far
 * too small to be worth a device round trip.
 *
 * @example
 * ```ts
 * import { gramRows, pinvRows, sigmaMax } from "./linalg.ts";
 * const A = new Float32Array([1, 0, 0, 0, 2, 0]); // 2×3
 * sigmaMax(gramRows(A, 2, 3), 2);                 // 2
 * pinvRows(A, 2, 3);                              // 3×2: Aᵀ(AAᵀ)⁻¹
 * ```
 * @module
 */

/** A row-major matrix buffer. */
export type Matrix = Float32Array | Float64Array | readonly number[];

function checkShape(where: string, field: string, m: Matrix, rows: number, cols: number): void {
  if (!(Number.isInteger(rows) && rows > 0 && Number.isInteger(cols) && cols > 0)) {
    throw new Error(`${where}: shape of ${field} [${rows}, ${cols}] must be positive integers`);
  }
  if (m.length !== rows * cols) {
    throw new Error(
      `${where}: ${field} has ${m.length} values; expected ${rows}×${cols} = ${rows * cols}`,
    );
  }
}

/**
 * `A Aᵀ` (r×r) for a row-major `A` of shape r×d — the Gram matrix of a LoRA down-projection.
 *
 * @example
 * ```ts
 * gramRows(new Float32Array([1, 2, 3, 4]), 2, 2); // Float64Array [5, 11, 11, 25]
 * ```
 */
export function gramRows(a: Matrix, rows: number, cols: number): Float64Array {
  checkShape("gramRows", "A", a, rows, cols);
  const g = new Float64Array(rows * rows);
  for (let i = 0; i < rows; i++) {
    for (let j = i; j < rows; j++) {
      let s = 0;
      const oi = i * cols, oj = j * cols;
      for (let k = 0; k < cols; k++) s += a[oi + k] * a[oj + k];
      g[i * rows + j] = s;
      g[j * rows + i] = s;
    }
  }
  return g;
}

/**
 * `Bᵀ B` (r×r) for a row-major `B` of shape d×r — the Gram matrix of a LoRA up-projection.
 *
 * @example
 * ```ts
 * gramCols(new Float32Array([1, 2, 3, 4]), 2, 2); // Float64Array [10, 14, 14, 20]
 * ```
 */
export function gramCols(b: Matrix, rows: number, cols: number): Float64Array {
  checkShape("gramCols", "B", b, rows, cols);
  const g = new Float64Array(cols * cols);
  for (let k = 0; k < rows; k++) {
    const o = k * cols;
    for (let i = 0; i < cols; i++) {
      const bi = b[o + i];
      if (bi === 0) continue;
      for (let j = i; j < cols; j++) g[i * cols + j] += bi * b[o + j];
    }
  }
  for (let i = 0; i < cols; i++) for (let j = 0; j < i; j++) g[i * cols + j] = g[j * cols + i];
  return g;
}

/**
 * Cholesky factor `L` (lower triangular, row-major n×n) with `M = L Lᵀ`, for a symmetric
 * positive definite `M`. Throws when `M` is not numerically positive definite — for the
 * regulator that means the peer factor is rank-deficient (e.g. B = 0 in the first round, or an
 * A with dependent rows), so `(AAᵀ)⁻¹` / `(BᵀB)⁻¹` does not exist.
 *
 * @example
 * ```ts
 * cholesky([4, 2, 2, 3], 2); // Float64Array [2, 0, 1, √2]
 * ```
 */
export function cholesky(m: Matrix, n: number, what = "matrix"): Float64Array {
  checkShape("cholesky", what, m, n, n);
  let scale = 0;
  for (let i = 0; i < n; i++) scale = Math.max(scale, Math.abs(m[i * n + i]));
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < i; j++) {
      const a = m[i * n + j], b = m[j * n + i];
      if (Math.abs(a - b) > 1e-10 * Math.max(scale, Math.abs(a), Math.abs(b))) {
        throw new Error(`cholesky: ${what} is not symmetric (entry [${i},${j}] ${a} ≠ ${b})`);
      }
    }
  }
  const l = new Float64Array(n * n);
  // A pivot below this is treated as zero: the Gram matrix of a rank-deficient factor.
  const floor = scale * n * 1e-13;
  for (let j = 0; j < n; j++) {
    let d = m[j * n + j];
    for (let k = 0; k < j; k++) d -= l[j * n + k] * l[j * n + k];
    if (!(d > floor) || !Number.isFinite(d)) {
      throw new Error(
        `cholesky: ${what} (${n}×${n}) is not positive definite (pivot ${j} = ${d}); ` +
          `if it is a LoRA factor's Gram matrix, that factor is rank-deficient (e.g. B = 0 in ` +
          `the first round, or dependent rows of A) and its Gram matrix has no inverse`,
      );
    }
    const ljj = Math.sqrt(d);
    l[j * n + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      let s = m[i * n + j];
      for (let k = 0; k < j; k++) s -= l[i * n + k] * l[j * n + k];
      l[i * n + j] = s / ljj;
    }
  }
  return l;
}

/**
 * Solves `M X = R` given the Cholesky factor `L` of `M` (n×n) and a right-hand side `R` of shape
 * n×cols (row-major); returns X (n×cols, float64).
 *
 * @example
 * ```ts
 * const L = cholesky([4, 2, 2, 3], 2);
 * choleskySolve(L, 2, [2, 1], 1); // X with [[4,2],[2,3]]·X = [2, 1]ᵀ → [0.5, 0]
 * ```
 */
export function choleskySolve(l: Matrix, n: number, rhs: Matrix, cols: number): Float64Array {
  checkShape("choleskySolve", "L", l, n, n);
  checkShape("choleskySolve", "rhs", rhs, n, cols);
  const x = Float64Array.from(rhs as ArrayLike<number>);
  for (let c = 0; c < cols; c++) {
    // L y = r (forward), then Lᵀ x = y (backward), column by column.
    for (let i = 0; i < n; i++) {
      let s = x[i * cols + c];
      for (let k = 0; k < i; k++) s -= l[i * n + k] * x[k * cols + c];
      x[i * cols + c] = s / l[i * n + i];
    }
    for (let i = n - 1; i >= 0; i--) {
      let s = x[i * cols + c];
      for (let k = i + 1; k < n; k++) s -= l[k * n + i] * x[k * cols + c];
      x[i * cols + c] = s / l[i * n + i];
    }
  }
  return x;
}

/**
 * Inverse of a symmetric positive definite n×n matrix through its Cholesky factor.
 *
 * @example
 * ```ts
 * spdInverse([4, 0, 0, 2], 2); // Float64Array [0.25, 0, 0, 0.5]
 * ```
 */
export function spdInverse(m: Matrix, n: number, what = "matrix"): Float64Array {
  const l = cholesky(m, n, what);
  const eye = new Float64Array(n * n);
  for (let i = 0; i < n; i++) eye[i * n + i] = 1;
  const inv = choleskySolve(l, n, eye, n);
  // Symmetrise away the rounding of the two triangular solves.
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < i; j++) {
      const s = 0.5 * (inv[i * n + j] + inv[j * n + i]);
      inv[i * n + j] = s;
      inv[j * n + i] = s;
    }
  }
  return inv;
}

/**
 * Largest eigenvalue of a symmetric positive semi-definite n×n matrix by power iteration.
 *
 * Plain power iteration converges like (λ₂/λ₁)^k, slow when the top two eigenvalues are close;
 * so the matrix is first squared repeatedly (G, G², G⁴, …, each rescaled) — after s squarings
 * one more product is worth 2^s plain iterations — and the best column of that power seeds a
 * final plain iteration on G. Returns the Rayleigh quotient (never above λ_max; within about
 * 1e-13 relative of it for r ≤ 64).
 *
 * @example
 * ```ts
 * lambdaMax([2, 1, 1, 2], 2); // 3
 * ```
 */
export function lambdaMax(g: Matrix, n: number): number {
  checkShape("lambdaMax", "G", g, n, n);
  let trace = 0;
  for (let i = 0; i < n; i++) trace += g[i * n + i];
  if (!(trace > 0)) return 0;
  // Repeated squaring of G / trace (bounded entries: the spectrum lies in [0, 1]).
  const p = Float64Array.from(g as ArrayLike<number>, (v) => v / trace);
  const tmp = new Float64Array(n * n);
  for (let s = 0; s < 40; s++) {
    tmp.fill(0);
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < n; k++) {
        const pik = p[i * n + k];
        if (pik === 0) continue;
        for (let j = 0; j < n; j++) tmp[i * n + j] += pik * p[k * n + j];
      }
    }
    let t = 0;
    for (let i = 0; i < n; i++) t += tmp[i * n + i];
    if (!(t > 0)) break;
    for (let i = 0; i < n * n; i++) p[i] = tmp[i] / t;
    if (Math.abs(t - 1) < 1e-15) break; // rank one already: P is the top projector
  }
  // The column of the power with the largest norm lies (almost) along the top eigenvector.
  let best = 0, bestNorm = -1;
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += p[i * n + j] * p[i * n + j];
    if (s > bestNorm) {
      bestNorm = s;
      best = j;
    }
  }
  let v = new Float64Array(n);
  for (let i = 0; i < n; i++) v[i] = p[i * n + best];
  if (!(bestNorm > 0)) v.fill(1);
  let lambda = 0;
  for (let it = 0; it < 200; it++) {
    let norm = 0;
    for (let i = 0; i < n; i++) norm += v[i] * v[i];
    norm = Math.sqrt(norm);
    for (let i = 0; i < n; i++) v[i] /= norm;
    const w = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let j = 0; j < n; j++) s += g[i * n + j] * v[j];
      w[i] = s;
    }
    let rq = 0;
    for (let i = 0; i < n; i++) rq += v[i] * w[i];
    const done = Math.abs(rq - lambda) <= 1e-15 * Math.abs(rq);
    lambda = Math.max(lambda, rq);
    v = w;
    if (done) break;
  }
  return lambda;
}

/**
 * Largest singular value of a factor from its r×r Gram matrix: `σ_max = √λ_max(G)`
 * (G = AAᵀ for A ∈ R^{r×d}, G = BᵀB for B ∈ R^{d×r}).
 *
 * @example
 * ```ts
 * sigmaMax(gramRows(new Float32Array([3, 0, 0, 1]), 2, 2), 2); // 3
 * ```
 */
export function sigmaMax(gram: Matrix, n: number): number {
  return Math.sqrt(Math.max(0, lambdaMax(gram, n)));
}

/**
 * Largest singular value of any rows×cols factor, through the smaller of its two Gram matrices.
 *
 * @example
 * ```ts
 * sigmaMaxOf(new Float32Array([3, 0, 0, 0, 1, 0]), 2, 3); // 3
 * ```
 */
export function sigmaMaxOf(m: Matrix, rows: number, cols: number): number {
  return rows <= cols
    ? sigmaMax(gramRows(m, rows, cols), rows)
    : sigmaMax(gramCols(m, rows, cols), cols);
}

/**
 * Pseudo-inverse of a full-row-rank `A` (r×d): `A⁺ = Aᵀ(AAᵀ)⁻¹` (d×r, float64), so that
 * `A A⁺ = I_r` and `A⁺A = P_A`, the orthogonal projector onto A's row space
 * (docs/method.md#the-noise-regulator). Throws when A is rank-deficient.
 *
 * @example
 * ```ts
 * pinvRows(new Float32Array([2, 0, 0, 0, 1, 0]), 2, 3); // [0.5, 0, 0, 1, 0, 0] (3×2)
 * ```
 */
export function pinvRows(a: Matrix, rows: number, cols: number): Float64Array {
  const l = cholesky(gramRows(a, rows, cols), rows, "A Aᵀ of the peer A");
  // X = (AAᵀ)⁻¹ A (r×d); A⁺ = Xᵀ.
  const x = choleskySolve(l, rows, a, cols);
  const out = new Float64Array(cols * rows);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j];
  return out;
}

/**
 * Pseudo-inverse of a full-column-rank `B` (d×r): `B⁺ = (BᵀB)⁻¹Bᵀ` (r×d, float64), so that
 * `B⁺B = I_r` and `B B⁺ = P_B`, the orthogonal projector onto B's column space
 * (docs/method.md#the-noise-regulator). Throws when B is rank-deficient (e.g. B = 0 in the first
 * round).
 *
 * @example
 * ```ts
 * pinvCols(new Float32Array([2, 0, 0, 1, 0, 0]), 3, 2); // [0.5, 0, 0, 0, 1, 0] (2×3)
 * ```
 */
export function pinvCols(b: Matrix, rows: number, cols: number): Float64Array {
  const l = cholesky(gramCols(b, rows, cols), cols, "Bᵀ B of the peer B");
  const bt = new Float64Array(cols * rows);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) bt[j * rows + i] = b[i * cols + j];
  return choleskySolve(l, cols, bt, rows);
}

/**
 * Plain float64 product `X Y` of X (m×k) and Y (k×n), row-major — for tests and small checks.
 *
 * @example
 * ```ts
 * matmul([1, 2], 1, 2, [3, 4], 1); // Float64Array [11]
 * ```
 */
export function matmul(x: Matrix, m: number, k: number, y: Matrix, n: number): Float64Array {
  checkShape("matmul", "X", x, m, k);
  checkShape("matmul", "Y", y, k, n);
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      const xip = x[i * k + p];
      if (xip === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j] += xip * y[p * n + j];
    }
  }
  return out;
}

/**
 * Frobenius norm in float64.
 *
 * @example
 * ```ts
 * frobenius(new Float32Array([3, 4])); // 5
 * ```
 */
export function frobenius(x: Matrix): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return Math.sqrt(s);
}

/**
 * Eigen-decomposition of a symmetric n×n matrix by cyclic Jacobi rotations: `G = W·diag(λ)·Wᵀ`
 * with W orthogonal (row-major, eigenvectors in columns), eigenvalues in decreasing order.
 * Meant for the small r×r matrices of LoRA factors.
 *
 * @example
 * ```ts
 * symmetricEigen([2, 1, 1, 2], 2).values; // [3, 1]
 * ```
 */
export function symmetricEigen(g: Matrix, n: number): { values: number[]; vectors: Float64Array } {
  checkShape("symmetricEigen", "G", g, n, n);
  const a = Float64Array.from(g as ArrayLike<number>);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0, total = 0;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        total += a[i * n + j] ** 2;
        if (i !== j) off += a[i * n + j] ** 2;
      }
    }
    if (off <= 1e-30 * total || off === 0) break;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (apq === 0) continue;
        const theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((x, y) => a[y * n + y] - a[x * n + x]);
  const vectors = new Float64Array(n * n);
  order.forEach((src, dst) => {
    for (let k = 0; k < n; k++) vectors[k * n + dst] = v[k * n + src];
  });
  return { values: order.map((i) => a[i * n + i]), vectors };
}

/**
 * Gram–Schmidt on the rows of a full-row-rank `A` (r×d): `A = L·Q` with Q (r×d) orthonormal rows
 * and L (r×r) lower triangular, both float64 (modified Gram–Schmidt, re-orthogonalised once).
 * Throws when A is rank-deficient.
 *
 * @example
 * ```ts
 * orthonormalRows([3, 0, 0, 0, 2, 0], 2, 3).q; // [1, 0, 0, 0, 1, 0]
 * ```
 */
export function orthonormalRows(
  a: Matrix,
  rows: number,
  cols: number,
): { l: Float64Array; q: Float64Array } {
  checkShape("orthonormalRows", "A", a, rows, cols);
  const q = Float64Array.from(a as ArrayLike<number>);
  const l = new Float64Array(rows * rows);
  let scale = 0;
  for (let i = 0; i < q.length; i++) scale = Math.max(scale, Math.abs(q[i]));
  for (let i = 0; i < rows; i++) {
    for (let pass = 0; pass < 2; pass++) {
      for (let j = 0; j < i; j++) {
        let dot = 0;
        for (let k = 0; k < cols; k++) dot += q[i * cols + k] * q[j * cols + k];
        l[i * rows + j] += dot;
        for (let k = 0; k < cols; k++) q[i * cols + k] -= dot * q[j * cols + k];
      }
    }
    let norm = 0;
    for (let k = 0; k < cols; k++) norm += q[i * cols + k] ** 2;
    norm = Math.sqrt(norm);
    if (!(norm > 1e-12 * scale * Math.sqrt(cols))) {
      throw new Error(
        `orthonormalRows: row ${i} of the ${rows}×${cols} matrix is (numerically) a combination ` +
          `of the rows before it; the matrix has rank < ${rows}`,
      );
    }
    l[i * rows + i] = norm;
    for (let k = 0; k < cols; k++) q[i * cols + k] /= norm;
  }
  return { l, q };
}
