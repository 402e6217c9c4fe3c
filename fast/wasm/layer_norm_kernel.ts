/**
 * LayerNorm over the last axis on WASM, forward and backward, as two
 * WebAssembly SIMD loops on tfjs-backend-wasm's heap: tfjs's composition is
 * ~30 kernels, each a pass over the activations, and a JavaScript loop must
 * copy its tensors out of the heap and back. Rows of C floats, C a multiple
 * of 4 (one f32x4 per four columns). Per row, with x̂ = (x − mean)·rstd
 * and g = dy·w:
 *
 *   y = x̂·w + b      dx = rstd · (g − mean(g) − x̂·mean(g·x̂))
 *   dw = Σ_rows dy·x̂   db = Σ_rows dy
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  add,
  assemble,
  type Code,
  eqz,
  F32,
  f32,
  f32Add,
  f32Div,
  f32FromU32,
  f32Load,
  f32Sqrt,
  f32Store,
  get,
  geU,
  I32,
  i32,
  set,
  shl,
  sub,
  V128,
  vAdd,
  vLaneSum,
  vLoad,
  vMul,
  vSplat,
  vStore,
  vSub,
  vZero,
  whileNot,
} from "./asm.ts";
import { onHeap, registerHeapKernel } from "./heap.ts";

const FORWARD = "SimpleLMLayerNorm";
const BACKWARD = "SimpleLMLayerNormGrad";

/** Whether {@link layerNormWasm} takes rows of width C. */
export function layerNormWasmFits(C: number): boolean {
  return C % 4 === 0;
}

/**
 * `LayerNorm(x) · w + b` over the last axis of x (..., C), on WASM with
 * C a multiple of 4; the gradient by the backward kernel.
 */
export function layerNormWasm(eps: number) {
  return tf.customGrad((x, w, b, save) => {
    const inputs = { x: x as tf.Tensor, w: w as tf.Tensor, b: b as tf.Tensor };
    const [y, xHat, rstd] = tf.engine().runKernel(FORWARD, inputs, { eps }) as tf.Tensor[];
    (save as tf.GradSaveFunc)([xHat, rstd, inputs.w]);
    return {
      value: y, // (..., C)
      gradFunc: (dy, saved) => {
        const [savedXHat, savedRstd, savedW] = saved as tf.Tensor[];
        return tf.engine().runKernel(BACKWARD, {
          dy: dy as tf.Tensor,
          xHat: savedXHat,
          rstd: savedRstd,
          w: savedW,
        }) as tf.Tensor[]; // dx (..., C), dw (C), db (C)
      },
    };
  }) as (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor;
}

const kernels = onHeap(layerNormModule);

registerHeapKernel(FORWARD, ({ inputs: { x, w, b }, attrs, wasm, at }) => {
  const C = x.shape[x.shape.length - 1];
  const rows = x.shape.reduce((p, q) => p * q, 1) / C;
  const outputs = [x.shape, x.shape, [rows]].map((s) => wasm.makeOutput(s, "float32")); // y, x̂, rstd
  const forward = kernels().forward as (...args: number[]) => void;
  forward(at(x), at(w), at(b), ...outputs.map(at), rows, C, attrs.eps as number);
  return outputs;
});

registerHeapKernel(BACKWARD, ({ inputs: { dy, xHat, rstd, w }, wasm, at }) => {
  const C = dy.shape[dy.shape.length - 1];
  const outputs = [dy.shape, [C], [C]].map((s) => wasm.makeOutput(s, "float32")); // dx, dw, db
  const backward = kernels().backward as (...args: number[]) => void;
  backward(at(dy), at(xHat), at(rstd), at(w), ...outputs.map(at), rstd.shape[0], C);
  return outputs;
});

/**
 * `forward(x, w, b, y, xHat, rstd, rows, C, eps)` and
 * `backward(dy, xHat, rstd, w, dx, dw, db, rows, C)`: byte addresses,
 * rows of C floats, sums in f32x4 lanes.
 */
function layerNormModule(): Uint8Array<ArrayBuffer> {
  /** `for (i = 0; i < rowBytes; i += 16) body`, i in local I. */
  const overRow = (I: number, ROW_BYTES: number, ...body: Code[]): Code => [
    ...set(I, i32(0)),
    ...whileNot(geU(get(I), get(ROW_BYTES)), ...body, set(I, add(get(I), i32(16)))),
  ];
  const load = (base: number, I: number) => vLoad(add(get(base), get(I)), 0);
  const store = (base: number, I: number, value: Code) => vStore(add(get(base), get(I)), value, 0);

  // forward: parameters, then locals.
  const [X, W, B, Y, X_HAT, RSTD, ROWS, C, EPS] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const [ROW, I, ROW_BYTES, COUNT] = [9, 10, 11, 12]; // i32: rows left, byte in row, C·4, rows done
  const [SUM, MEAN, D] = [13, 14, 15]; // v128
  const [R, N] = [16, 17]; // f32: rstd, C
  const forward: Code = [
    ...set(ROW_BYTES, shl(get(C), i32(2))),
    ...set(N, f32FromU32(get(C))),
    ...set(ROW, get(ROWS)),
    ...set(COUNT, i32(0)),
    ...whileNot(
      eqz(get(ROW)),
      set(SUM, vZero),
      overRow(I, ROW_BYTES, set(SUM, vAdd(get(SUM), load(X, I)))),
      set(MEAN, vSplat(f32Div(vLaneSum(get(SUM)), get(N)))),
      set(SUM, vZero),
      overRow(
        I,
        ROW_BYTES,
        set(D, vSub(load(X, I), get(MEAN))),
        set(SUM, vAdd(get(SUM), vMul(get(D), get(D)))),
      ),
      set(R, f32Div(f32(1), f32Sqrt(f32Add(f32Div(vLaneSum(get(SUM)), get(N)), get(EPS))))),
      f32Store(add(get(RSTD), shl(get(COUNT), i32(2))), get(R)),
      overRow(
        I,
        ROW_BYTES,
        set(D, vMul(vSub(load(X, I), get(MEAN)), vSplat(get(R)))),
        store(X_HAT, I, get(D)),
        store(Y, I, vAdd(vMul(get(D), load(W, I)), load(B, I))),
      ),
      // next row
      ...[X, X_HAT, Y].map((base) => set(base, add(get(base), get(ROW_BYTES)))),
      set(COUNT, add(get(COUNT), i32(1))),
      set(ROW, sub(get(ROW), i32(1))),
    ),
  ];

  // backward
  const [DY, BX_HAT, BRSTD, BW, DX, DW, DB, BROWS, BC] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const [BROW, BI, BROW_BYTES] = [9, 10, 11]; // i32
  const [G_SUM, GX_SUM, G, DYV, XHV, G_MEAN, GX_MEAN, RV] = [12, 13, 14, 15, 16, 17, 18, 19]; // v128
  const BN = 20; // f32: C
  const backward: Code = [
    ...set(BROW_BYTES, shl(get(BC), i32(2))),
    ...set(BN, f32FromU32(get(BC))),
    ...overRow(BI, BROW_BYTES, store(DW, BI, vZero), store(DB, BI, vZero)),
    ...set(BROW, get(BROWS)),
    ...whileNot(
      eqz(get(BROW)),
      set(G_SUM, vZero),
      set(GX_SUM, vZero),
      overRow(
        BI,
        BROW_BYTES,
        set(DYV, load(DY, BI)),
        set(XHV, load(BX_HAT, BI)),
        set(G, vMul(get(DYV), load(BW, BI))),
        set(G_SUM, vAdd(get(G_SUM), get(G))),
        set(GX_SUM, vAdd(get(GX_SUM), vMul(get(G), get(XHV)))),
        store(DW, BI, vAdd(load(DW, BI), vMul(get(DYV), get(XHV)))),
        store(DB, BI, vAdd(load(DB, BI), get(DYV))),
      ),
      set(G_MEAN, vSplat(f32Div(vLaneSum(get(G_SUM)), get(BN)))),
      set(GX_MEAN, vSplat(f32Div(vLaneSum(get(GX_SUM)), get(BN)))),
      set(RV, vSplat(f32Load(get(BRSTD)))),
      overRow(
        BI,
        BROW_BYTES,
        store(
          DX,
          BI,
          vMul(
            get(RV),
            vSub(
              vSub(vMul(load(DY, BI), load(BW, BI)), get(G_MEAN)),
              vMul(load(BX_HAT, BI), get(GX_MEAN)),
            ),
          ),
        ),
      ),
      // next row
      ...[DY, BX_HAT, DX].map((base) => set(base, add(get(base), get(BROW_BYTES)))),
      set(BRSTD, add(get(BRSTD), i32(4))),
      set(BROW, sub(get(BROW), i32(1))),
    ),
  ];
  return assemble([0x00, ...[0]], [ // tfjs's memory: not shared
    {
      name: "forward",
      params: [...new Array(8).fill(I32), F32],
      locals: [[4, I32], [3, V128], [2, F32]],
      body: forward,
    },
    {
      name: "backward",
      params: new Array(9).fill(I32),
      locals: [[3, I32], [8, V128], [1, F32]],
      body: backward,
    },
  ]);
}
