/**
 * Causal multi-head self-attention on WASM as one kernel per direction
 * (`attention_kernel.ts`), each (batch, head) pair a chunk for this thread
 * and the product's helper threads (`matmul.ts`). tfjs's composition is ~25
 * kernels a layer (transposes to split and merge the heads, six batched
 * products, the scale, the mask, the softmax and its gradient), most of
 * them a pass over (B, H, T, T) values; here the heads are read where they
 * are and each pair's work stays in cache.
 *
 * It relies on internals of tfjs-backend-wasm 4.22 (see `wasm_heap.ts`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { DropoutSpec } from "../../nn/fast_paths.ts";
import { dropoutMaskBytes } from "./dropout_kernel.ts";
import { COL_BLOCK, CONTROL_BYTES, Job, MAX_CHUNKS, PACK_SLACK, Slot } from "./gemm_kernel.ts";
import { growShared, runJob, sharedPool } from "./matmul.ts";
import { copyToShared, tensorFromShared } from "./shared_copy.ts";
import type { WasmBackendInternals } from "./heap.ts";

const FORWARD = "SimpleLMAttention";
const BACKWARD = "SimpleLMAttentionGrad";

/**
 * A kernel's attributes: the head count; whether q, k and v come side by
 * side in one tensor; the dropout mask's bytes (B, H, T, T) with keep =
 * 1/(1−p), if any.
 */
interface AttentionAttrs {
  nHead: number;
  packed: boolean;
  mask?: Uint8Array;
  keep?: number;
}

/** The attributes for a batch of B windows of T, with a fresh dropout mask if asked. */
function attentionAttrs(
  B: number,
  T: number,
  nHead: number,
  packed: boolean,
  weightsDropout?: DropoutSpec,
): tf.NamedAttrMap {
  const attrs: AttentionAttrs = { nHead, packed };
  if (weightsDropout) {
    const { p, rng } = weightsDropout;
    attrs.mask = dropoutMaskBytes(rng, B * nHead * T * T, p);
    attrs.keep = 1 / (1 - p);
  }
  return attrs as unknown as tf.NamedAttrMap;
}

/**
 * `softmax(q kᵀ · hs^-½ + causal mask) v` for every head: q, k, v (B, T, C)
 * with the heads side by side → (B, T, C), on WASM, with its gradient; with
 * `weightsDropout`, dropout on the weights, its mask drawn from the stream
 * as `layers.ts`'s dropout draws it (one draw per weight, in (B, H, T, T)
 * order), and kept for the backward pass.
 */
export function attentionWasm(nHead: number, weightsDropout?: DropoutSpec) {
  return tf.customGrad((q, k, v, save) => {
    const inputs = { q: q as tf.Tensor, k: k as tf.Tensor, v: v as tf.Tensor };
    const [B, T] = inputs.q.shape;
    const attrs = attentionAttrs(B, T, nHead, false, weightsDropout);
    const [y, weights] = tf.engine().runKernel(FORWARD, inputs, attrs) as tf.Tensor[];
    (save as tf.GradSaveFunc)([inputs.q, inputs.k, inputs.v, weights]);
    return {
      value: y, // (B, T, C)
      gradFunc: (dy, saved) => {
        const [sq, sk, sv, sp] = saved as tf.Tensor[];
        return tf.engine().runKernel(
          BACKWARD,
          { q: sq, k: sk, v: sv, p: sp, dy: dy as tf.Tensor },
          attrs,
        ) as tf.Tensor[]; // dq, dk, dv (B, T, C)
      },
    };
  }) as (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.Tensor;
}

/**
 * {@link attentionWasm} of q, k and v side by side in one tensor, qkv
 * (B, T, 3C) → (B, T, C): each is copied out of qkv's rows as the job
 * copies its inputs, and their gradients into one (B, T, 3C), so neither
 * direction splits or concatenates.
 */
export function packedAttentionWasm(nHead: number, weightsDropout?: DropoutSpec) {
  return tf.customGrad((qkv, save) => {
    const packed = qkv as tf.Tensor;
    const [B, T] = packed.shape;
    const attrs = attentionAttrs(B, T, nHead, true, weightsDropout);
    const [y, weights] = tf.engine().runKernel(FORWARD, { qkv: packed }, attrs) as tf.Tensor[];
    (save as tf.GradSaveFunc)([packed, weights]);
    return {
      value: y, // (B, T, C)
      gradFunc: (dy, saved) => {
        const [sqkv, sp] = saved as tf.Tensor[];
        return tf.engine().runKernel(
          BACKWARD,
          { qkv: sqkv, p: sp, dy: dy as tf.Tensor },
          attrs,
        ) as tf.Tensor[]; // [dqkv (B, T, 3C)]
      },
    };
  }) as (qkv: tf.Tensor) => tf.Tensor;
}

/** An input of a job: its control-block slot, the tensor, and which columns of its rows (all if none). */
type JobInput = [slot: number, tensor: tf.TensorInfo, columns?: [first: number, count: number]];

/** The width of a job input's rows as the kernel reads them (C): its columns, or its last axis. */
const inputWidth = ([, t, columns]: JobInput) => columns?.[1] ?? t.shape[2];

/** An output of a job: the slots of its parts (side by side along its last axis) and its shape. */
type JobOutput = [slots: number[], shape: number[]];

/**
 * Runs an attention job over every (batch, head) pair: the `inputs` are
 * copied into the shared memory, and the `outputs`, tensors of the given
 * shapes (P among them in the forward direction), out of it. Each region's
 * address goes to its control-block slot.
 */
function attentionJob(
  wasm: WasmBackendInternals,
  job: number,
  { nHead, mask, keep }: AttentionAttrs,
  inputs: JobInput[],
  outputs: JobOutput[],
): tf.TensorInfo[] {
  const [B, T] = inputs[0][1].shape;
  const C = inputWidth(inputs[0]);
  const hs = C / nHead;
  const pool = sharedPool();
  // Regions one after another, each with room for pack's reads past its end.
  let end = CONTROL_BYTES;
  const region = (bytes: number) => {
    const at = end;
    end += Math.ceil((bytes + PACK_SLACK) / 64) * 64;
    return at;
  };
  const inputAt = inputs.map((input) => {
    const t = input[1];
    return region(4 * tf.util.sizeFromShape(t.shape) / t.shape[2] * inputWidth(input)); // its rows, C wide
  });
  const outputAt = outputs.map(([slots, shape]) =>
    slots.map(() => region(4 * tf.util.sizeFromShape(shape) / slots.length))
  );
  const panelBytes = Math.ceil(
    (Math.max(Math.ceil(T / COL_BLOCK) * hs, Math.ceil(hs / COL_BLOCK) * T) * COL_BLOCK * 4 +
      PACK_SLACK) / 64,
  ) * 64;
  const scratchBytes = panelBytes + (2 * T * T + T * hs) * 4;
  const scratch = region(pool.threads * scratchBytes);
  const maskAt = mask ? region(mask.length) : 0;
  growShared(pool, end);

  const { memory, ctrl } = pool;
  inputs.forEach(([, t, columns], i) => copyToShared(wasm, memory, t, inputAt[i], columns));
  if (mask) new Uint8Array(memory.buffer, maskAt, mask.length).set(mask);
  ctrl[Slot.JOB] = job;
  inputs.forEach(([slot], i) => ctrl[slot] = inputAt[i]);
  outputs.forEach(([slots], i) => slots.forEach((slot, j) => ctrl[slot] = outputAt[i][j]));
  ctrl.set([T, C, nHead, scratch, scratchBytes, panelBytes], Slot.ATT_T);
  ctrl[Slot.ATT_MASK] = maskAt;
  ctrl[Slot.ATT_KEEP] = new Int32Array(Float32Array.of(keep ?? 1).buffer)[0];
  // A job's chunks are counted in 12 bits: whole batches at a time.
  const batches = Math.floor(MAX_CHUNKS / nHead);
  const slots = [...inputs.map(([slot]) => slot), ...outputs.flatMap(([parts]) => parts)];
  for (let b = 0; b < B; b += batches) {
    const count = Math.min(batches, B - b);
    runJob(pool, count * nHead);
    // The next group's pairs: every address one group further on (the mask's in bytes).
    for (const slot of slots) {
      ctrl[slot] += count * (slot === Slot.ATT_P ? nHead * T * T : T * C) * 4;
    }
    if (mask) ctrl[Slot.ATT_MASK] += count * nHead * T * T;
  }

  return outputs.map(([, shape], i) => {
    const at = outputAt[i];
    return tensorFromShared(wasm, memory, at.length === 1 ? at[0] : at, shape);
  });
}

/** q, k and v as a job's inputs: three tensors, or the three column blocks of qkv. */
function qkvInputs(inputs: Record<string, tf.TensorInfo>, packed: boolean): JobInput[] {
  if (!packed) return [[Slot.ATT_Q, inputs.q], [Slot.ATT_K, inputs.k], [Slot.ATT_V, inputs.v]];
  const { qkv } = inputs;
  const C = qkv.shape[2] / 3;
  return [[Slot.ATT_Q, qkv, [0, C]], [Slot.ATT_K, qkv, [C, C]], [Slot.ATT_V, qkv, [2 * C, C]]];
}

tf.registerKernel({
  kernelName: FORWARD,
  backendName: "wasm",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const named = inputs as Record<string, tf.TensorInfo>;
    const { nHead, packed } = attrs as unknown as AttentionAttrs;
    const qkv = qkvInputs(named, packed);
    const [B, T] = qkv[0][1].shape;
    const C = inputWidth(qkv[0]);
    return attentionJob(
      backend as unknown as WasmBackendInternals,
      Job.ATTENTION,
      attrs as unknown as AttentionAttrs,
      qkv,
      [[[Slot.ATT_Y], [B, T, C]], [[Slot.ATT_P], [B, nHead, T, T]]], // y (B, T, C), P (B, H, T, T)
    );
  },
});

tf.registerKernel({
  kernelName: BACKWARD,
  backendName: "wasm",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const named = inputs as Record<string, tf.TensorInfo>;
    const { packed } = attrs as unknown as AttentionAttrs;
    const { p, dy } = named;
    const grads: JobOutput[] = packed
      ? [[[Slot.ATT_DQ, Slot.ATT_DK, Slot.ATT_DV], named.qkv.shape]] // dqkv (B, T, 3C)
      : [Slot.ATT_DQ, Slot.ATT_DK, Slot.ATT_DV].map((slot) => [[slot], dy.shape]); // dq, dk, dv (B, T, C)
    return attentionJob(
      backend as unknown as WasmBackendInternals,
      Job.ATTENTION_GRAD,
      attrs as unknown as AttentionAttrs,
      [...qkvInputs(named, packed), [Slot.ATT_P, p], [Slot.ATT_Y, dy]],
      grads,
    );
  },
});
