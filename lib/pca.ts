/**
 * Principal component analysis of a few hundred vectors: the plane that
 * keeps most of their spread, for drawing embeddings in 2-D.
 *
 * @module
 */

/** Points projected on their principal components. */
export interface Projection {
  /** N rows of `k` coordinates, component 1 first. */
  coords: number[][];
  /** Share of the total variance each component keeps (k values, falling). */
  explained: number[];
}

/**
 * Eigenvalues and eigenvectors of a symmetric n×n matrix (row-major, copied)
 * by cyclic Jacobi rotations: values falling, `vectors[j]` the unit vector of
 * `values[j]`.
 */
export function symmetricEigen(matrix: Float64Array, n: number): {
  values: number[];
  vectors: Float64Array[];
} {
  const a = Float64Array.from(matrix);
  const v = new Float64Array(n * n); // columns: eigenvectors
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p * n + q] ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (Math.abs(apq) < 1e-300) continue;
        // The rotation that zeroes a[p][q] (Golub & Van Loan, symmetric Schur).
        const theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) { // columns p and q of a
          const akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) { // rows p and q of a
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
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => a[j * n + j] - a[i * n + i]);
  return {
    values: order.map((i) => a[i * n + i]),
    vectors: order.map((i) => Float64Array.from({ length: n }, (_, k) => v[k * n + i])),
  };
}

/**
 * Projects `rows` (N vectors of D values) on their first `k` principal
 * components: the rows centred, then the directions of largest variance.
 * Each component's sign is fixed so that its largest coordinate in absolute
 * value is positive (PCA itself leaves the sign open).
 */
export function pca(rows: ArrayLike<number>[], k = 2): Projection {
  const N = rows.length;
  const D = N > 0 ? rows[0].length : 0;
  if (N < 2 || D < 1) throw new RangeError(`pca needs 2 or more vectors, got ${N} of size ${D}`);
  const x = new Float64Array(N * D); // (N, D), centred
  for (let d = 0; d < D; d++) {
    let mean = 0;
    for (let i = 0; i < N; i++) mean += rows[i][d];
    mean /= N;
    for (let i = 0; i < N; i++) x[i * D + d] = rows[i][d] - mean;
  }
  // The eigenvectors of the smaller of X Xᵀ (N, N) and Xᵀ X (D, D) give the same components.
  const useGram = N <= D;
  const n = useGram ? N : D;
  const m = new Float64Array(n * n);
  for (let p = 0; p < n; p++) {
    for (let q = p; q < n; q++) {
      let sum = 0;
      if (useGram) { for (let d = 0; d < D; d++) sum += x[p * D + d] * x[q * D + d]; }
      else for (let i = 0; i < N; i++) sum += x[i * D + p] * x[i * D + q];
      m[p * n + q] = m[q * n + p] = sum;
    }
  }
  const { values, vectors } = symmetricEigen(m, n);
  const total = values.reduce((s, l) => s + Math.max(l, 0), 0);
  const kept = Math.min(k, n);
  const coords = Array.from({ length: N }, () => new Array<number>(kept).fill(0));
  for (let j = 0; j < kept; j++) {
    const lambda = Math.max(values[j], 0);
    const column = new Float64Array(N);
    for (let i = 0; i < N; i++) {
      if (useGram) column[i] = vectors[j][i] * Math.sqrt(lambda); // X Xᵀ u = λu: X's coordinates are u·√λ
      else for (let d = 0; d < D; d++) column[i] += x[i * D + d] * vectors[j][d];
    }
    let largest = 0;
    for (let i = 0; i < N; i++) if (Math.abs(column[i]) > Math.abs(largest)) largest = column[i];
    const sign = largest < 0 ? -1 : 1;
    for (let i = 0; i < N; i++) coords[i][j] = sign * column[i];
  }
  return {
    coords,
    explained: values.slice(0, kept).map((l) => total > 0 ? Math.max(l, 0) / total : 0),
  };
}
