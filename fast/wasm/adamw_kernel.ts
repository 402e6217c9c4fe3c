/**
 * AdamW's update as one WebAssembly SIMD loop over tfjs-backend-wasm's
 * heap, in place: one pass over each parameter instead of 13 elementwise
 * kernels, each a pass of its own. Float32, as PyTorch.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import type { AdamWStep } from "../../nn/fast_paths.ts";
import {
  add,
  assemble,
  type Code,
  F32,
  fourThenOne,
  get,
  I32,
  i32,
  type Lanes,
  SCALAR,
  set,
  shl,
  uleb,
  V128,
  VECTOR,
  vectorBytes,
  vSplat,
} from "./asm.ts";
import { heapAddress, onHeap, wasmBackend } from "./heap.ts";

const adamwOnHeap = onHeap(adamwModule);

/** The update of [param, grad, expAvg, expAvgSq] on WASM, in place. */
export function adamwUpdateWasm(tensors: tf.Tensor[], step: AdamWStep): void {
  const { beta1, beta2, eps, decay, stepSize, bc2Sqrt } = step;
  const backend = wasmBackend();
  const adamw = adamwOnHeap().adamw as (...args: number[]) => void;
  adamw(
    ...tensors.map((t) => heapAddress(backend, t)),
    tensors[0].size,
    ...[beta1, beta2, 1 - beta1, 1 - beta2, decay, stepSize, bc2Sqrt, eps],
  );
}

/**
 * `adamw(p, g, m, v, n, β1, β2, 1−β1, 1−β2, decay, stepSize, bc2Sqrt, eps)`:
 * the update of n parameters at byte addresses p, g, m, v (moments and
 * parameters in place), four at a time in f32x4 lanes, then one at a time.
 * 1−β come from JavaScript's doubles, as PyTorch's do from Python's: from a
 * float32 β2, 1−β2 would be 1.3e-5 off.
 *
 *   m ← β1·m + (1−β1)·g    v ← β2·v + (1−β2)·g·g
 *   p ← p·decay − stepSize·m / (√v / bc2Sqrt + eps)
 */
function adamwModule(): Uint8Array<ArrayBuffer> {
  const [P, G, M, V, N] = [0, 1, 2, 3, 4]; // i32 parameters
  const F32_PARAMS = [5, 6, 7, 8, 9, 10, 11, 12];
  const [BETA1, BETA2, ONE_MINUS_BETA1, ONE_MINUS_BETA2, DECAY, STEP_SIZE, BC2_SQRT, EPS] =
    F32_PARAMS;
  const [OFFSET, VECTOR_END, END] = [13, 14, 15]; // i32 locals: byte offsets
  const lanes = (x: number) => 16 + (x - BETA1); // v128 locals: each f32 parameter splatted
  const [GV, MV, VV] = [24, 25, 26]; // v128 locals: g, new m, new v
  const [GS, MS, VS] = [27, 28, 29]; // f32 locals: the same, one at a time
  const at = (base: number) => add(get(base), get(OFFSET));
  const vector = (x: number) => get(lanes(x));
  const scalar = (x: number) => get(x);

  /** One step of the update in vector (f32x4) or scalar (f32) operations; `param` reads a parameter. */
  const update = (ops: Lanes, param: (x: number) => Code, [g, m, v]: number[]): Code[] => [
    set(g, ops.load(at(G))),
    set(
      m,
      ops.add(ops.mul(param(BETA1), ops.load(at(M))), ops.mul(param(ONE_MINUS_BETA1), get(g))),
    ),
    set(
      v,
      ops.add(
        ops.mul(param(BETA2), ops.load(at(V))),
        ops.mul(param(ONE_MINUS_BETA2), ops.mul(get(g), get(g))),
      ),
    ),
    ops.store(at(M), get(m)),
    ops.store(at(V), get(v)),
    ops.store(
      at(P),
      ops.sub(
        ops.mul(ops.load(at(P)), param(DECAY)),
        ops.div(
          ops.mul(param(STEP_SIZE), get(m)),
          ops.add(ops.div(ops.sqrt(get(v)), param(BC2_SQRT)), param(EPS)),
        ),
      ),
    ),
  ];

  const body: Code = [
    ...F32_PARAMS.flatMap((x) => set(lanes(x), vSplat(get(x)))),
    ...set(END, shl(get(N), i32(2))),
    ...set(VECTOR_END, vectorBytes(get(N))),
    ...fourThenOne(
      OFFSET,
      VECTOR_END,
      END,
      (ops) =>
        ops === VECTOR
          ? update(VECTOR, vector, [GV, MV, VV])
          : update(SCALAR, scalar, [GS, MS, VS]),
    ),
  ];
  return assemble([0x00, ...uleb(0)], [{ // tfjs's memory: not shared, no maximum required
    name: "adamw",
    params: [...new Array(5).fill(I32), ...new Array(8).fill(F32)],
    locals: [[3, I32], [11, V128], [3, F32]],
    body,
  }]);
}
