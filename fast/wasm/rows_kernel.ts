/**
 * Rows picked, added and scaled by index on WASM, as WebAssembly SIMD loops
 * on tfjs-backend-wasm's heap: `embedding` (table rows by id), whose
 * gradient is the rows' sums by id (a scatter-add); `indexAdd` (that
 * scatter-add), whose gradient is a pick; `scaleRows` (each row times
 * its own number); and `concatColumns` (2-D parts side by side, as
 * `memory.copy` row by row), whose gradient cuts the columns apart again. The MoE models gather each expert's tokens, weight its
 * outputs by their gates and scatter them back this way, several times a
 * layer; a JavaScript loop would first copy the whole table out of the heap
 * and its result back in, and tfjs-backend-wasm's `ScatterNd` is ~4× slower.
 *
 *   out[n] = table[ids[n]]          dTable[v] = Σ_{n : ids[n] = v} dOut[n]
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  add,
  assemble,
  type Code,
  copyRowsBody,
  eqz,
  F32,
  f32Add,
  f32Load,
  f32Store,
  fourThenOne,
  get,
  I32,
  i32,
  i32Load,
  mul,
  SCALAR,
  set,
  shl,
  sub,
  uleb,
  V128,
  VECTOR,
  vectorBytes,
  vLaneSum,
  vSplat,
  whileNot,
} from "./asm.ts";
import { heapAddress, onHeap, registerHeapKernel, type WasmBackendInternals } from "./heap.ts";

const GATHER = "SimpleLMGatherRows";
const SCATTER_ADD = "SimpleLMScatterAddRows";
const SCALE = "SimpleLMScaleRows";
const SCALE_GRAD = "SimpleLMScaleRowsGrad";
const CONCAT_COLUMNS = "SimpleLMConcatColumns";
const SPLIT_COLUMNS = "SimpleLMSplitColumns";

/**
 * Rows of `table` (V, C) picked by int32 `ids` (...) → (..., C), on WASM;
 * its gradient adds each row's gradient to its id's row (ids get none).
 */
export const embeddingWasm = tf.customGrad((table, ids, save) => {
  const [t, at] = [table as tf.Tensor2D, ids as tf.Tensor];
  (save as tf.GradSaveFunc)([at]);
  return {
    value: tf.engine().runKernel(GATHER, { table: t, ids: at }) as tf.Tensor, // (..., C)
    gradFunc: (dy, saved) => {
      const savedIds = saved[0] as tf.Tensor;
      const inputs = { values: dy as tf.Tensor, ids: savedIds };
      const dTable = tf.engine().runKernel(SCATTER_ADD, inputs, { rows: t.shape[0] }); // (V, C)
      return [dTable as tf.Tensor, tf.zeros(savedIds.shape)];
    },
  };
}) as (table: tf.Tensor2D, ids: tf.Tensor) => tf.Tensor;

/**
 * `indexAdd` on WASM: values (M, C) added into n rows at int32 `rows` (M)
 * → (n, C), in order; its gradient picks the output gradient's rows.
 */
export function indexAddWasm(values: tf.Tensor2D, rows: tf.Tensor1D, n: number): tf.Tensor2D {
  const op = tf.customGrad((input, picked, save) => {
    const [v, at] = [input as tf.Tensor2D, picked as tf.Tensor1D];
    (save as tf.GradSaveFunc)([at]);
    return {
      value: tf.engine().runKernel(SCATTER_ADD, { values: v, ids: at }, { rows: n }) as tf.Tensor,
      gradFunc: (dy, saved) => {
        const savedRows = saved[0] as tf.Tensor;
        return [embeddingWasm(dy as tf.Tensor2D, savedRows), tf.zeros(savedRows.shape)];
      },
    };
  });
  return op(values, rows) as tf.Tensor2D; // (n, C)
}

/**
 * `scaleRows` on WASM: x (M, C) · scale (M, 1), each row times its number,
 * in one pass; its gradient in one more (tfjs's broadcast multiply
 * differentiates as two multiplies, a row sum and a cast):
 *
 *   dx[m] = dy[m] · scale[m]      dscale[m] = Σ_c dy[m, c] · x[m, c]
 */
export const scaleRowsWasm = tf.customGrad((x, scale, save) => {
  const inputs = { x: x as tf.Tensor2D, scale: scale as tf.Tensor2D };
  (save as tf.GradSaveFunc)([inputs.x, inputs.scale]);
  return {
    value: tf.engine().runKernel(SCALE, inputs) as tf.Tensor2D, // (M, C)
    gradFunc: (dy, saved) => {
      const [xs, ss] = saved as tf.Tensor[];
      return tf.engine().runKernel(SCALE_GRAD, {
        dy: dy as tf.Tensor,
        x: xs,
        scale: ss,
      }) as tf.Tensor[]; // dx (M, C), dscale (M, 1)
    },
  };
}) as (x: tf.Tensor2D, scale: tf.Tensor2D) => tf.Tensor2D;

/**
 * `tf.concat(parts, 1)` of 2-D parts (rows, cols_i) → (rows, Σ cols_i) on
 * WASM; its gradient gives each part its columns of the output's.
 */
export function concatColumnsWasm(parts: tf.Tensor2D[]): tf.Tensor2D {
  const widths = parts.map((p) => p.shape[1]);
  const op = tf.customGrad((...inputs) => ({
    value: tf.engine().runKernel(
      CONCAT_COLUMNS,
      Object.fromEntries(inputs.slice(0, parts.length).map((p, i) => [i, p as tf.Tensor])),
    ) as tf.Tensor, // (rows, Σ cols_i)
    gradFunc: (dy) =>
      tf.engine().runKernel(SPLIT_COLUMNS, { dy: dy as tf.Tensor }, { widths }) as tf.Tensor[], // (rows, cols_i) each
  }));
  return op(...parts) as tf.Tensor2D;
}

const kernels = onHeap(rowsModule);

/**
 * The ids' address on the heap, checked to be int32 with values in [0,
 * rows) (the loops trust them; the plain layers refuse other dtypes too);
 * `op` names the layer in the error.
 */
function checkedIds(
  wasm: WasmBackendInternals,
  ids: tf.TensorInfo,
  rows: number,
  op: string,
): number {
  if (ids.dtype !== "int32") throw new Error(`${op}: indices must be int32, not ${ids.dtype}`);
  const count = ids.shape.reduce((a, b) => a * b, 1);
  if (count === 0) return 0; // nothing on the heap to point at, nothing read
  const at = heapAddress(wasm, ids);
  const values = new Int32Array(wasm.wasm.asm.memory.buffer, at, count);
  for (let n = 0; n < count; n++) {
    if (!(values[n] >= 0 && values[n] < rows)) {
      throw new Error(`${op}: index ${values[n]} at ${n} is outside its ${rows} rows`);
    }
  }
  return at;
}

registerHeapKernel(GATHER, ({ inputs: { table, ids }, wasm, at }) => {
  const [V, C] = table.shape;
  const idsAt = checkedIds(wasm, ids, V, "embedding");
  const out = wasm.makeOutput([...ids.shape, C], "float32"); // (..., C)
  const n = ids.shape.reduce((a, b) => a * b, 1);
  if (n * C === 0) return out; // nothing to copy
  (kernels().gatherRows as (...args: number[]) => void)(at(table), idsAt, at(out), n, C);
  return out;
});

registerHeapKernel(SCATTER_ADD, ({ inputs: { values, ids }, attrs, wasm, at }) => {
  const rows = attrs.rows as number;
  const C = values.shape[values.shape.length - 1];
  const idsAt = checkedIds(wasm, ids, rows, "indexAdd");
  const out = wasm.makeOutput([rows, C], "float32"); // (V, C)
  if (rows * C === 0) return out; // nothing to add to
  const n = ids.shape.reduce((a, b) => a * b, 1);
  const from = n === 0 ? 0 : at(values); // no rows: none read
  (kernels().scatterAddRows as (...args: number[]) => void)(from, idsAt, at(out), n, rows * C, C);
  return out;
});

registerHeapKernel(SCALE, ({ inputs: { x, scale }, wasm, at }) => {
  const [M, C] = x.shape;
  const y = wasm.makeOutput([M, C], "float32");
  if (M * C === 0) return y;
  (kernels().scaleRows as (...args: number[]) => void)(at(x), at(scale), at(y), M, C);
  return y;
});

registerHeapKernel(SCALE_GRAD, ({ inputs: { dy, x, scale }, wasm, at }) => {
  const [M, C] = x.shape;
  const outputs = [[M, C], [M, 1]].map((s) => wasm.makeOutput(s, "float32")); // dx, dscale
  if (M * C === 0) return outputs;
  const scaleRowsGrad = kernels().scaleRowsGrad as (...args: number[]) => void;
  scaleRowsGrad(...[dy, x, scale, ...outputs].map(at), M, C);
  return outputs;
});

/** Copies runs of bytes within the heap: see `copyRowsBody` in `asm.ts`. */
const copyRows = (...args: number[]) =>
  (kernels().copyRows as (...args: number[]) => void)(...args);

registerHeapKernel(CONCAT_COLUMNS, ({ inputs, wasm, at }) => {
  const parts = Object.values(inputs); // in order: "0", "1", …
  const rows = parts[0].shape[0];
  const width = parts.reduce((sum, p) => sum + p.shape[1], 0);
  const out = wasm.makeOutput([rows, width], "float32"); // (rows, Σ cols_i)
  let first = 0; // the part's first column
  for (const part of parts) {
    const cols = part.shape[1];
    if (rows * cols > 0) {
      copyRows(at(out) + first * 4, at(part), rows, cols * 4, width * 4, cols * 4);
    }
    first += cols;
  }
  return out;
});

registerHeapKernel(SPLIT_COLUMNS, ({ inputs: { dy }, attrs, wasm, at }) => {
  const [rows, width] = dy.shape;
  let first = 0; // the part's first column
  return (attrs.widths as number[]).map((cols) => {
    const part = wasm.makeOutput([rows, cols], "float32"); // (rows, cols)
    if (rows * cols > 0) {
      copyRows(at(part), at(dy) + first * 4, rows, cols * 4, cols * 4, width * 4);
    }
    first += cols;
    return part;
  });
});

/**
 * `gatherRows(table, ids, out, n, C)`: out's n rows of C floats are
 * table's rows ids[0…n−1]. `scatterAddRows(values, ids, out, n, outFloats,
 * C)`: out (outFloats floats) is zeroed, then values' row i added to out's
 * row ids[i], in order. `scaleRows(x, scale, y, M, C)`: y's row m is x's
 * times scale[m]; `scaleRowsGrad(dy, x, scale, dx, dscale, M, C)` its
 * gradient. Rows go four floats at a time, then one.
 */
function rowsModule(): Uint8Array<ArrayBuffer> {
  // gatherRows: parameters, then i32 locals.
  const [TABLE, IDS, OUT, N, C] = [0, 1, 2, 3, 4];
  const [ROW_BYTES, VECTOR_END, OFF, SRC] = [5, 6, 7, 8];
  const gather: Code = [
    ...set(ROW_BYTES, shl(get(C), i32(2))),
    ...set(VECTOR_END, vectorBytes(get(C))),
    ...whileNot(
      eqz(get(N)),
      set(SRC, add(get(TABLE), mul(i32Load(get(IDS)), get(ROW_BYTES)))),
      fourThenOne(OFF, VECTOR_END, ROW_BYTES, (ops) => [
        ops.store(add(get(OUT), get(OFF)), ops.load(add(get(SRC), get(OFF)))),
      ]),
      set(IDS, add(get(IDS), i32(4))),
      set(OUT, add(get(OUT), get(ROW_BYTES))),
      set(N, sub(get(N), i32(1))),
    ),
  ];

  // scatterAddRows: parameters, then i32 locals.
  const [VALUES, S_IDS, S_OUT, S_N, OUT_FLOATS, S_C] = [0, 1, 2, 3, 4, 5];
  const [S_ROW_BYTES, S_VECTOR_END, S_OFF, DST, OUT_BYTES, OUT_VECTOR_END] = [6, 7, 8, 9, 10, 11];
  const scatterAdd: Code = [
    ...set(OUT_BYTES, shl(get(OUT_FLOATS), i32(2))),
    ...set(OUT_VECTOR_END, vectorBytes(get(OUT_FLOATS))),
    ...fourThenOne(S_OFF, OUT_VECTOR_END, OUT_BYTES, (ops) => [
      ops.store(add(get(S_OUT), get(S_OFF)), ops.constant(0)),
    ]),
    ...set(S_ROW_BYTES, shl(get(S_C), i32(2))),
    ...set(S_VECTOR_END, vectorBytes(get(S_C))),
    ...whileNot(
      eqz(get(S_N)),
      set(DST, add(get(S_OUT), mul(i32Load(get(S_IDS)), get(S_ROW_BYTES)))),
      fourThenOne(S_OFF, S_VECTOR_END, S_ROW_BYTES, (ops) => [
        ops.store(
          add(get(DST), get(S_OFF)),
          ops.add(ops.load(add(get(DST), get(S_OFF))), ops.load(add(get(VALUES), get(S_OFF)))),
        ),
      ]),
      set(S_IDS, add(get(S_IDS), i32(4))),
      set(VALUES, add(get(VALUES), get(S_ROW_BYTES))),
      set(S_N, sub(get(S_N), i32(1))),
    ),
  ];
  // scaleRows and scaleRowsGrad: parameters, then locals.
  const [X, SCALE_AT, Y, M, SC] = [0, 1, 2, 3, 4];
  const [X_ROW_BYTES, X_VECTOR_END, X_OFF] = [5, 6, 7]; // i32
  const [FACTOR, FACTORS] = [8, 9]; // f32: the row's scale, v128: it in every lane
  const scale: Code = [
    ...set(X_ROW_BYTES, shl(get(SC), i32(2))),
    ...set(X_VECTOR_END, vectorBytes(get(SC))),
    ...whileNot(
      eqz(get(M)),
      set(FACTOR, f32Load(get(SCALE_AT))),
      set(FACTORS, vSplat(get(FACTOR))),
      fourThenOne(X_OFF, X_VECTOR_END, X_ROW_BYTES, (ops) => [
        ops.store(
          add(get(Y), get(X_OFF)),
          ops.mul(ops.load(add(get(X), get(X_OFF))), get(ops === VECTOR ? FACTORS : FACTOR)),
        ),
      ]),
      ...[X, Y].map((base) => set(base, add(get(base), get(X_ROW_BYTES)))),
      set(SCALE_AT, add(get(SCALE_AT), i32(4))),
      set(M, sub(get(M), i32(1))),
    ),
  ];
  const [G_DY, G_X, G_SCALE, G_DX, G_DSCALE, G_M, G_C] = [0, 1, 2, 3, 4, 5, 6];
  const [G_ROW_BYTES, G_VECTOR_END, G_OFF] = [7, 8, 9]; // i32
  const [G_FACTOR, G_FACTORS, G_SUMS, G_SUM] = [10, 11, 12, 13]; // f32, v128, v128, f32
  const scaleGrad: Code = [
    ...set(G_ROW_BYTES, shl(get(G_C), i32(2))),
    ...set(G_VECTOR_END, vectorBytes(get(G_C))),
    ...whileNot(
      eqz(get(G_M)),
      set(G_FACTOR, f32Load(get(G_SCALE))),
      set(G_FACTORS, vSplat(get(G_FACTOR))),
      set(G_SUMS, VECTOR.constant(0)),
      set(G_SUM, SCALAR.constant(0)),
      fourThenOne(G_OFF, G_VECTOR_END, G_ROW_BYTES, (ops) => {
        const dyAt = ops.load(add(get(G_DY), get(G_OFF)));
        const [factor, sum] = ops === VECTOR ? [G_FACTORS, G_SUMS] : [G_FACTOR, G_SUM];
        return [
          ops.store(add(get(G_DX), get(G_OFF)), ops.mul(dyAt, get(factor))),
          set(sum, ops.add(get(sum), ops.mul(dyAt, ops.load(add(get(G_X), get(G_OFF)))))),
        ];
      }),
      f32Store(get(G_DSCALE), f32Add(vLaneSum(get(G_SUMS)), get(G_SUM))),
      ...[G_DY, G_X, G_DX].map((base) => set(base, add(get(base), get(G_ROW_BYTES)))),
      ...[G_SCALE, G_DSCALE].map((base) => set(base, add(get(base), i32(4)))),
      set(G_M, sub(get(G_M), i32(1))),
    ),
  ];
  return assemble([0x00, ...uleb(0)], [ // tfjs's memory: not shared
    {
      name: "scaleRows",
      params: new Array(5).fill(I32),
      locals: [[3, I32], [1, F32], [1, V128]],
      body: scale,
    },
    {
      name: "scaleRowsGrad",
      params: new Array(7).fill(I32),
      locals: [[3, I32], [1, F32], [2, V128], [1, F32]],
      body: scaleGrad,
    },
    { name: "gatherRows", params: new Array(5).fill(I32), locals: [[4, I32]], body: gather },
    {
      name: "scatterAddRows",
      params: new Array(6).fill(I32),
      locals: [[6, I32]],
      body: scatterAdd,
    },
    { name: "copyRows", params: new Array(6).fill(I32), locals: [], body: copyRowsBody() },
  ]);
}
