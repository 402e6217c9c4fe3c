/**
 * ReLU on WASM with its gradient as one WebAssembly SIMD loop on
 * tfjs-backend-wasm's heap. tfjs differentiates ReLU as dy · cast(step(x)):
 * three kernels, each a pass over the activations (the cast a copy); this
 * is the same product in one pass, from the output (y > 0 exactly where
 * x > 0):
 *
 *   y = max(x, 0)      dx = dy · (y > 0 ? 1 : 0)
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  add,
  assemble,
  type Code,
  f32,
  fourThenOne,
  get,
  I32,
  i32,
  type Lanes,
  op,
  select,
  set,
  shl,
  SIMD,
  uleb,
  vAnd,
  VECTOR,
  vectorBytes,
  vSplat,
} from "./asm.ts";
import { onHeap, registerHeapKernel } from "./heap.ts";

const BACKWARD = "SimpleLMReluGrad";

/** `relu(x)` on WASM, differentiated by one kernel. */
export const reluWasm = tf.customGrad((x, save) => {
  const y = tf.relu(x as tf.Tensor);
  (save as tf.GradSaveFunc)([y]);
  return {
    value: y,
    gradFunc: (dy, saved) =>
      tf.engine().runKernel(BACKWARD, {
        dy: dy as tf.Tensor,
        y: saved[0] as tf.Tensor,
      }) as tf.Tensor,
  };
}) as (x: tf.Tensor) => tf.Tensor;

const kernels = onHeap(reluModule);

registerHeapKernel(BACKWARD, ({ inputs: { dy, y }, wasm, at }) => {
  const dx = wasm.makeOutput(dy.shape, "float32");
  const count = dy.shape.reduce((a, b) => a * b, 1);
  if (count > 0) (kernels().reluGrad as (...args: number[]) => void)(at(dy), at(y), at(dx), count);
  return dx;
});

/** f32x4.gt and f32.gt: all ones, or 1, where a > b. */
const [vGt, sGt] = [op([SIMD, 0x44]), op([0x5e])];

/** `reluGrad(dy, y, dx, n)`: dx = dy · (y > 0 ? 1 : 0) over n floats, four at a time, then one. */
function reluModule(): Uint8Array<ArrayBuffer> {
  const [DY, Y, DX, N] = [0, 1, 2, 3]; // i32 parameters
  const [OFF, VECTOR_END, END] = [4, 5, 6]; // i32 locals: byte offsets
  const at = (base: number) => add(get(base), get(OFF));
  /** 1 where y > 0, else 0, in `ops`'s lanes. */
  const keep = (ops: Lanes): Code =>
    ops === VECTOR
      ? vAnd(vGt(ops.load(at(Y)), vSplat(f32(0))), vSplat(f32(1)))
      : select(f32(1), f32(0), sGt(ops.load(at(Y)), f32(0)));
  const body: Code = [
    ...set(END, shl(get(N), i32(2))),
    ...set(VECTOR_END, vectorBytes(get(N))),
    ...fourThenOne(OFF, VECTOR_END, END, (ops) => [
      ops.store(at(DX), ops.mul(ops.load(at(DY)), keep(ops))),
    ]),
  ];
  return assemble([0x00, ...uleb(0)], [ // tfjs's memory: not shared
    { name: "reluGrad", params: new Array(4).fill(I32), locals: [[3, I32]], body },
  ]);
}
