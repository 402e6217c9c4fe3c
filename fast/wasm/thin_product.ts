/**
 * Matrix products with few rows on one side — sampling's products, one row
 * per sample — computed in place on tfjs-backend-wasm's heap by one
 * thread. The product kernel of `matmul.ts` copies both operands into
 * shared memory and packs the weight into panels at every call, work that
 * pays off when hundreds of rows reuse each panel; with a few rows, a
 * product is one pass over the weight, and that copy and packing cost
 * more than the product itself.
 *
 * - `rowsTimes`: C (m, n) = A (m, k) @ B (k, n) + bias, A the thin side.
 *   Row i of C gathers A[i, p]·B[p, :] four p at a time, so B streams
 *   through once and each of its rows meets every row of A in cache.
 * - `dots`: C[i, j] = big[i, :] · small[j, :] for row-major `big` (nBig, k)
 *   and thin `small` (nSmall, k), written with any strides: A Bᵀ with
 *   either operand the thin one. Columns where every thin row starts
 *   with zeros are skipped: mlpLM's input is all zeros before the first
 *   characters, and its first weight is most of its bytes.
 *
 * It relies on internals of tfjs-backend-wasm 4.22 (see `heap.ts`).
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import {
  add,
  assemble,
  type Code,
  eqz,
  F32,
  f32Add,
  f32Load,
  f32Mul,
  f32Store,
  f32Zero,
  get,
  geU,
  gtU,
  I32,
  i32,
  ifElse,
  mul,
  set,
  shl,
  V128,
  vAdd,
  vLaneSum,
  vLoad,
  vMul,
  vSplat,
  vStore,
  vZero,
  whileNot,
} from "./asm.ts";
import { rowPass } from "./attention_kernel.ts";
import { heapAddress, onHeap, type WasmBackendInternals } from "./heap.ts";

/** The most rows the thin side of a {@link thinProduct} has. */
export const THIN_ROWS = 8;

/**
 * Whether {@link thinProduct} computes `op(A) @ op(B)` (+ bias) for these
 * shapes: one matrix, A not transposed, and A thin; or, for A Bᵀ without a
 * bias, either side thin.
 */
export function thinProductFits(
  batch: number,
  m: number,
  n: number,
  transposeA: boolean,
  transposeB: boolean,
  hasBias: boolean,
): boolean {
  if (batch !== 1 || transposeA) return false;
  return transposeB ? !hasBias && Math.min(m, n) <= THIN_ROWS : m <= THIN_ROWS;
}

const kernels = onHeap(thinProductModule);

/**
 * `A @ op(B)` (+ bias) as {@link thinProductFits} allows: a (m, k); b (k, n),
 * or (n, k) when `transposeB`; bias (n) → a new tensor of `shape` (m·n
 * values).
 */
export function thinProduct(
  wasm: WasmBackendInternals,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  bias: tf.TensorInfo | undefined,
  transposeB: boolean,
  shape: number[],
): tf.TensorInfo {
  const [m, k] = a.shape.slice(-2);
  const n = transposeB ? b.shape[b.shape.length - 2] : b.shape[b.shape.length - 1];
  const out = wasm.makeOutput(shape, "float32");
  const at = (t: tf.TensorInfo) => heapAddress(wasm, t);
  const { rowsTimes, dots } = kernels() as Record<string, (...args: number[]) => void>;
  if (!transposeB) {
    rowsTimes(at(a), at(b), bias ? at(bias) : 0, bias ? 1 : 0, at(out), m, k, n);
  } else {
    const [big, small] = m >= n ? [a, b] : [b, a];
    const skip = leadingZeros(wasm, small, k) * 4; // bytes of each row left out
    const [bigStride, smallStride] = m >= n ? [n * 4, 4] : [4, n * 4]; // C[i, j] at (i·n + j)·4
    const [nBig, nSmall] = m >= n ? [m, n] : [n, m];
    dots(
      at(big) + skip,
      at(small) + skip,
      at(out),
      nBig,
      nSmall,
      k - skip / 4,
      k * 4,
      bigStride,
      smallStride,
    );
  }
  return out;
}

/** The number of columns, from the first, in which every row of x (rows of k) is 0. */
function leadingZeros(wasm: WasmBackendInternals, x: tf.TensorInfo, k: number): number {
  const values = new Float32Array(
    wasm.wasm.asm.memory.buffer,
    heapAddress(wasm, x),
    x.shape.reduce((p, q) => p * q, 1),
  );
  let zeros = k;
  for (let row = 0; row < values.length; row += k) {
    let j = 0;
    while (j < zeros && values[row + j] === 0) j++;
    zeros = j;
  }
  return zeros;
}

/** Byte address `base + i·stride` on the stack, from locals. */
const addr = (base: number, i: number, stride: number): Code =>
  add(get(base), mul(get(i), get(stride)));

/**
 * `rowsTimes(a, b, bias, hasBias, c, m, k, n)`: C = A B (+ bias), byte
 * addresses, rows of A and C with every row of B read four at a time.
 */
function rowsTimes(): Code {
  const [A, B, BIAS, HAS_BIAS, C, M, K, N] = [0, 1, 2, 3, 4, 5, 6, 7]; // parameters
  // i32 locals: row i, p, column j, C row, A's p-th value of row i, B rows p…p+3,
  // moving addresses in a row (C, B rows p…p+3, bias), row bytes of B/C and of A.
  const [I, P, J, CROW, AP, B0, B1, B2, B3] = [8, 9, 10, 11, 12, 13, 14, 15, 16];
  const [CAT, W0, W1, W2, W3, BAT, NB, KB] = [17, 18, 19, 20, 21, 22, 23, 24];
  const [X0, X1, X2, X3] = [25, 26, 27, 28]; // v128: A[i, p…p+3] splatted
  const [S0, S1, S2, S3] = [29, 30, 31, 32]; // f32: the same, for the leftover columns
  const vs = [X0, X1, X2, X3];
  const ss = [S0, S1, S2, S3];
  const ws = [W0, W1, W2, W3];
  const bs = [B0, B1, B2, B3];

  /** Over the rows of A (C): `body` with AP at A[i, p] and CROW at C[i, 0]. */
  const overRows = (...body: Code[]): Code => [
    ...set(I, i32(0)),
    ...set(CROW, get(C)),
    ...set(AP, add(get(A), shl(get(P), i32(2)))),
    ...whileNot(
      geU(get(I), get(M)),
      ...body,
      set(CROW, add(get(CROW), get(NB))),
      set(AP, add(get(AP), get(KB))),
      set(I, add(get(I), i32(1))),
    ),
  ];
  /** C[i, :] += Σ_q A[i, p+q]·B[p+q, :] for q < `count`. */
  const accumulate = (count: number): Code[] => [
    ...ss.slice(0, count).map((s, q) => set(s, f32Load(add(get(AP), i32(4 * q))))),
    ...vs.slice(0, count).map((v, q) => set(v, vSplat(get(ss[q])))),
    set(J, i32(0)),
    set(CAT, get(CROW)),
    ...ws.slice(0, count).map((w, q) => set(w, get(bs[q]))),
    rowPass(
      J,
      N,
      [CAT, ...ws.slice(0, count)],
      [vStore(
        get(CAT),
        vs.slice(0, count).reduce(
          (sum: Code, v, q) => vAdd(sum, vMul(get(v), vLoad(get(ws[q]), 0))),
          vLoad(get(CAT), 0),
        ),
        0,
      )],
      [f32Store(
        get(CAT),
        ss.slice(0, count).reduce(
          (sum: Code, s, q) => f32Add(sum, f32Mul(get(s), f32Load(get(ws[q])))),
          f32Load(get(CAT)),
        ),
      )],
    ),
  ];

  return [
    ...set(NB, shl(get(N), i32(2))),
    ...set(KB, shl(get(K), i32(2))),
    // C = bias, or 0.
    ...set(P, i32(0)),
    ...overRows(
      set(J, i32(0)),
      set(CAT, get(CROW)),
      set(BAT, get(BIAS)),
      ifElse(
        eqz(get(HAS_BIAS)),
        [rowPass(J, N, [CAT], [vStore(get(CAT), vZero, 0)], [f32Store(get(CAT), f32Zero)])],
        [rowPass(
          J,
          N,
          [CAT, BAT],
          [vStore(get(CAT), vLoad(get(BAT), 0), 0)],
          [f32Store(get(CAT), f32Load(get(BAT)))],
        )],
      ),
    ),
    // Four rows of B at a time, then the leftovers one by one.
    ...whileNot(
      gtU(add(get(P), i32(4)), get(K)),
      set(B0, addr(B, P, NB)),
      ...bs.slice(1).map((b, q) => set(b, add(get(bs[q]), get(NB)))),
      overRows(...accumulate(4)),
      set(P, add(get(P), i32(4))),
    ),
    ...whileNot(
      geU(get(P), get(K)),
      set(B0, addr(B, P, NB)),
      overRows(...accumulate(1)),
      set(P, add(get(P), i32(1))),
    ),
  ];
}

/**
 * `dots(big, small, c, nBig, nSmall, k, rowBytes, bigStride, smallStride)`:
 * for every row i of `big` (read once) and j of `small`, rows `rowBytes`
 * apart in both, the dot product of their first k floats, stored at
 * c + i·bigStride + j·smallStride.
 */
function dots(): Code {
  const [BIG, SMALL, C, NBIG, NSMALL, K, KB, BS, SS] = [0, 1, 2, 3, 4, 5, 6, 7, 8]; // parameters
  const [I, J, P, BROW, SROW, BAT, SAT] = [9, 10, 11, 12, 13, 14, 15]; // i32 locals
  const [ACC0, ACC1] = [16, 17]; // v128: two sums, so that additions overlap
  const SUM = 18; // f32: the leftover elements' sum
  return [
    ...set(I, i32(0)),
    ...set(BROW, get(BIG)),
    ...whileNot(
      geU(get(I), get(NBIG)),
      set(J, i32(0)),
      set(SROW, get(SMALL)),
      whileNot(
        geU(get(J), get(NSMALL)),
        set(ACC0, vZero),
        set(ACC1, vZero),
        set(SUM, f32Zero),
        set(P, i32(0)),
        set(BAT, get(BROW)),
        set(SAT, get(SROW)),
        whileNot(
          gtU(add(get(P), i32(8)), get(K)),
          set(ACC0, vAdd(get(ACC0), vMul(vLoad(get(BAT), 0), vLoad(get(SAT), 0)))),
          set(ACC1, vAdd(get(ACC1), vMul(vLoad(get(BAT), 16), vLoad(get(SAT), 16)))),
          set(BAT, add(get(BAT), i32(32))),
          set(SAT, add(get(SAT), i32(32))),
          set(P, add(get(P), i32(8))),
        ),
        rowPass(
          P,
          K,
          [BAT, SAT],
          [set(ACC0, vAdd(get(ACC0), vMul(vLoad(get(BAT), 0), vLoad(get(SAT), 0))))],
          [set(SUM, f32Add(get(SUM), f32Mul(f32Load(get(BAT)), f32Load(get(SAT)))))],
        ),
        f32Store(
          add(addr(C, I, BS), mul(get(J), get(SS))),
          f32Add(vLaneSum(vAdd(get(ACC0), get(ACC1))), get(SUM)),
        ),
        set(SROW, add(get(SROW), get(KB))),
        set(J, add(get(J), i32(1))),
      ),
      set(BROW, add(get(BROW), get(KB))),
      set(I, add(get(I), i32(1))),
    ),
  ];
}

function thinProductModule(): Uint8Array<ArrayBuffer> {
  return assemble([0x00, ...[0]], [ // tfjs's memory: not shared
    {
      name: "rowsTimes",
      params: new Array(8).fill(I32),
      locals: [[17, I32], [4, V128], [4, F32]],
      body: rowsTimes(),
    },
    {
      name: "dots",
      params: new Array(9).fill(I32),
      locals: [[7, I32], [2, V128], [1, F32]],
      body: dots(),
    },
  ]);
}
