/**
 * PyTorch's `torch.optim.AdamW`, step for step: betas (0.9, 0.999), eps 1e-8,
 * bias correction, and weight decay decoupled from the gradient and applied
 * to every parameter (the original passes `model.parameters()` whole).
 *
 *   p ← p − lr·wd·p
 *   m ← β1·m + (1−β1)·g          v ← β2·v + (1−β2)·g²
 *   p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps)
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { fastPaths } from "./fast_paths.ts";
import {
  add,
  assemble,
  type Code,
  F32,
  get,
  geU,
  I32,
  i32,
  type Lanes,
  SCALAR,
  set,
  shl,
  shr,
  uleb,
  V128,
  VECTOR,
  vSplat,
  whileNot,
} from "./wasm_asm.ts";
import { heapAddress, onHeap, wasmBackend } from "./wasm_heap.ts";

/** AdamW settings; names follow PyTorch. */
export interface AdamWOptions {
  lr: number;
  weightDecay: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
}

/** First and second moments of one parameter. */
export interface Moments {
  expAvg: tf.Variable;
  expAvgSq: tf.Variable;
}

/** AdamW over a fixed list of variables. */
export class AdamW {
  readonly lr: number;
  readonly weightDecay: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  /** Steps taken so far (PyTorch's `state["step"]`). */
  step = 0;
  /** Moments by variable, in the order the variables were given. */
  readonly moments: Map<tf.Variable, Moments>;

  constructor(variables: tf.Variable[], options: AdamWOptions) {
    this.lr = options.lr;
    this.weightDecay = options.weightDecay;
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    // Inside tidy the zeros' handles are freed; each moment owns its memory.
    this.moments = new Map(variables.map((v) => [
      v,
      tf.tidy(() => ({
        expAvg: tf.variable(tf.zerosLike(v), false),
        expAvgSq: tf.variable(tf.zerosLike(v), false),
      })),
    ]));
  }

  /** Applies one update from gradients keyed by variable name. */
  applyGradients(grads: Record<string, tf.Tensor>): void {
    this.step++;
    const { lr, weightDecay, beta1, beta2, eps, step } = this;
    const constants: StepConstants = {
      beta1,
      beta2,
      eps,
      decay: 1 - lr * weightDecay,
      stepSize: lr / (1 - beta1 ** step),
      bc2Sqrt: Math.sqrt(1 - beta2 ** step),
    };
    const inPlace = fastPaths() ? inPlaceUpdate() : null;
    for (const [param, moments] of this.moments) {
      const grad = grads[param.name];
      if (!grad) continue; // like PyTorch: a parameter without gradient is left alone
      if (inPlace) inPlace([param, grad, moments.expAvg, moments.expAvgSq], constants);
      else updateWithOps(param, grad, moments, constants);
    }
  }

  /** Frees the moment tensors. */
  dispose(): void {
    for (const { expAvg, expAvgSq } of this.moments.values()) {
      expAvg.dispose();
      expAvgSq.dispose();
    }
  }
}

/** What one step's update uses, the same for every parameter. */
interface StepConstants {
  beta1: number;
  beta2: number;
  eps: number;
  /** 1 − lr·weight_decay. */
  decay: number;
  /** lr / (1 − β1ᵗ). */
  stepSize: number;
  /** √(1 − β2ᵗ). */
  bc2Sqrt: number;
}

/** The update as tensor ops: 13 elementwise kernels, fine on a GPU. */
function updateWithOps(
  param: tf.Variable,
  g: tf.Tensor,
  { expAvg, expAvgSq }: Moments,
  { beta1, beta2, eps, decay, stepSize, bc2Sqrt }: StepConstants,
): void {
  tf.tidy(() => {
    const m = expAvg.mul(beta1).add(g.mul(1 - beta1));
    const v = expAvgSq.mul(beta2).add(g.square().mul(1 - beta2));
    const denom = v.sqrt().div(bc2Sqrt).add(eps);
    param.assign(param.mul(decay).sub(m.div(denom).mul(stepSize)));
    expAvg.assign(m);
    expAvgSq.assign(v);
  });
}

/** The update of one parameter in place, from its tensors [p, g, m, v]. */
type InPlaceUpdate = (tensors: tf.Tensor[], constants: StepConstants) => void;

/** The AdamW kernel on tfjs-backend-wasm's heap. */
const adamwOnHeap = onHeap(adamwModule);

/**
 * The same update as one pass over the backend's own memory, in place: an
 * order of magnitude faster there than 13 kernels, each a pass over every
 * parameter. On WASM, {@link adamwModule} on tfjs's heap (float32, as
 * PyTorch); on cpu, a JavaScript loop over its arrays (float64); on WebGPU
 * (GPU memory), null.
 */
function inPlaceUpdate(): InPlaceUpdate | null {
  switch (tf.getBackend()) {
    case "wasm": {
      const backend = wasmBackend();
      const adamw = adamwOnHeap().adamw as (...args: number[]) => void;
      return (tensors, { beta1, beta2, eps, decay, stepSize, bc2Sqrt }) =>
        adamw(
          ...tensors.map((t) => heapAddress(backend, t)),
          tensors[0].size,
          ...[beta1, beta2, 1 - beta1, 1 - beta2, decay, stepSize, bc2Sqrt, eps],
        );
    }
    case "cpu": {
      const backend = tf.backend() as unknown as {
        data: { get(id: object): { values: Float32Array } };
      };
      return (tensors, constants) =>
        updateArrays(tensors.map((t) => backend.data.get(t.dataId).values), constants);
    }
    default:
      return null;
  }
}

/** The update over plain arrays [p, g, m, v], in float64. */
function updateArrays(
  [p, g, m, v]: Float32Array[],
  { beta1, beta2, eps, decay, stepSize, bc2Sqrt }: StepConstants,
): void {
  for (let i = 0; i < p.length; i++) {
    const gi = g[i];
    const mi = m[i] = beta1 * m[i] + (1 - beta1) * gi;
    const vi = v[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
    p[i] = p[i] * decay - (stepSize * mi) / (Math.sqrt(vi) / bc2Sqrt + eps);
  }
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
    ...set(VECTOR_END, shl(shl(shr(get(N), i32(2)), i32(2)), i32(2))), // 16·⌊n/4⌋
    ...set(OFFSET, i32(0)),
    ...whileNot(
      geU(get(OFFSET), get(VECTOR_END)),
      ...update(VECTOR, vector, [GV, MV, VV]),
      set(OFFSET, add(get(OFFSET), i32(16))),
    ),
    ...whileNot(
      geU(get(OFFSET), get(END)),
      ...update(SCALAR, scalar, [GS, MS, VS]),
      set(OFFSET, add(get(OFFSET), i32(4))),
    ),
  ];
  return assemble([0x00, ...uleb(0)], [{ // tfjs's memory: not shared, no maximum required
    name: "adamw",
    params: [...new Array(5).fill(I32), ...new Array(8).fill(F32)],
    locals: [[3, I32], [11, V128], [3, F32]],
    body,
  }]);
}
