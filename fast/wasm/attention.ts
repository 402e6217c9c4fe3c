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
import { copyToShared, runJob, sharedFloats, sharedPool, tensorFromShared } from "./matmul.ts";
import type { WasmBackendInternals } from "./heap.ts";

const FORWARD = "SimpleLMAttention";
const BACKWARD = "SimpleLMAttentionGrad";

/** A kernel's attributes: the head count, and the dropout mask's bytes (B, H, T, T) with keep = 1/(1−p), if any. */
interface AttentionAttrs {
  nHead: number;
  mask?: Uint8Array;
  keep?: number;
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
    const attrs: AttentionAttrs = { nHead };
    if (weightsDropout) {
      const { p, rng } = weightsDropout;
      attrs.mask = dropoutMaskBytes(rng, B * nHead * T * T, p);
      attrs.keep = 1 / (1 - p);
    }
    const [y, weights] = tf.engine().runKernel(
      FORWARD,
      inputs,
      attrs as unknown as tf.NamedAttrMap,
    ) as tf.Tensor[];
    (save as tf.GradSaveFunc)([inputs.q, inputs.k, inputs.v, weights]);
    return {
      value: y, // (B, T, C)
      gradFunc: (dy, saved) => {
        const [sq, sk, sv, sp] = saved as tf.Tensor[];
        return tf.engine().runKernel(
          BACKWARD,
          { q: sq, k: sk, v: sv, p: sp, dy: dy as tf.Tensor },
          attrs as unknown as tf.NamedAttrMap,
        ) as tf.Tensor[]; // dq, dk, dv (B, T, C)
      },
    };
  }) as (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.Tensor;
}

/**
 * Runs an attention job over every (batch, head) pair: the `inputs` tensors
 * are copied into the shared memory, and the `outputs`, tensors of the
 * given shapes (P among them in the forward direction), out of it. Each
 * region's address goes to its control-block slot.
 */
function attentionJob(
  wasm: WasmBackendInternals,
  job: number,
  { nHead, mask, keep }: AttentionAttrs,
  inputs: [slot: number, tensor: tf.TensorInfo][],
  outputs: [slot: number, shape: number[]][],
): tf.TensorInfo[] {
  const [B, T, C] = inputs[0][1].shape;
  const hs = C / nHead;
  const pool = sharedPool();
  const size = (shape: number[]) => shape.reduce((x, y) => x * y, 1) * 4;
  // Regions one after another, each with room for pack's reads past its end.
  let end = CONTROL_BYTES;
  const region = (bytes: number) => {
    const at = end;
    end += Math.ceil((bytes + PACK_SLACK) / 64) * 64;
    return at;
  };
  const inputAt = inputs.map(([, t]) => region(size(t.shape)));
  const outputAt = outputs.map(([, shape]) => region(size(shape)));
  const panelBytes = Math.ceil(
    (Math.max(Math.ceil(T / COL_BLOCK) * hs, Math.ceil(hs / COL_BLOCK) * T) * COL_BLOCK * 4 +
      PACK_SLACK) / 64,
  ) * 64;
  const scratchBytes = panelBytes + (2 * T * T + T * hs) * 4;
  const scratch = region(pool.threads * scratchBytes);
  const maskAt = mask ? region(mask.length) : 0;
  const shared = sharedFloats(pool, end);

  inputs.forEach(([, t], i) => copyToShared(wasm, shared, t, inputAt[i]));
  if (mask) new Uint8Array(pool.memory.buffer, maskAt, mask.length).set(mask);
  const { ctrl } = pool;
  ctrl[Slot.JOB] = job;
  inputs.forEach(([slot], i) => ctrl[slot] = inputAt[i]);
  outputs.forEach(([slot], i) => ctrl[slot] = outputAt[i]);
  ctrl.set([T, C, nHead, scratch, scratchBytes, panelBytes], Slot.ATT_T);
  ctrl[Slot.ATT_MASK] = maskAt;
  ctrl[Slot.ATT_KEEP] = new Int32Array(Float32Array.of(keep ?? 1).buffer)[0];
  // A job's chunks are counted in 12 bits: whole batches at a time.
  const batches = Math.floor(MAX_CHUNKS / nHead);
  for (let b = 0; b < B; b += batches) {
    const count = Math.min(batches, B - b);
    runJob(pool, count * nHead);
    // The next group's pairs: every address one group further on (the mask's in bytes).
    for (const [slot] of [...inputs, ...outputs]) {
      ctrl[slot] += count * (slot === Slot.ATT_P ? nHead * T * T : T * C) * 4;
    }
    if (mask) ctrl[Slot.ATT_MASK] += count * nHead * T * T;
  }

  return outputs.map(([, shape], i) => tensorFromShared(wasm, pool, outputAt[i], shape));
}

tf.registerKernel({
  kernelName: FORWARD,
  backendName: "wasm",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { q, k, v } = inputs as Record<string, tf.TensorInfo>;
    const { nHead } = attrs as unknown as AttentionAttrs;
    const [B, T] = q.shape;
    return attentionJob(
      backend as unknown as WasmBackendInternals,
      Job.ATTENTION,
      attrs as unknown as AttentionAttrs,
      [[Slot.ATT_Q, q], [Slot.ATT_K, k], [Slot.ATT_V, v]],
      [[Slot.ATT_Y, q.shape], [Slot.ATT_P, [B, nHead, T, T]]], // y (B, T, C), P (B, H, T, T)
    );
  },
});

tf.registerKernel({
  kernelName: BACKWARD,
  backendName: "wasm",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { q, k, v, p, dy } = inputs as Record<string, tf.TensorInfo>;
    return attentionJob(
      backend as unknown as WasmBackendInternals,
      Job.ATTENTION_GRAD,
      attrs as unknown as AttentionAttrs,
      [[Slot.ATT_Q, q], [Slot.ATT_K, k], [Slot.ATT_V, v], [Slot.ATT_P, p], [Slot.ATT_Y, dy]],
      [[Slot.ATT_DQ, q.shape], [Slot.ATT_DK, q.shape], [Slot.ATT_DV, q.shape]],
    );
  },
});
