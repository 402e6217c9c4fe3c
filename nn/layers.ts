/**
 * The layers the models are built from, each written as PyTorch computes
 * it, as a plain composition of tfjs ops whose gradients tfjs derives.
 *
 * Each layer first asks for a fast path (`fast_paths.ts`): where the
 * current backend has one (a WebAssembly kernel, a loop over CPU memory, a
 * WGSL shader, all under `fast/`), it computes the same numbers by that
 * route. A reader can skip those lines: what follows them is the layer.
 *
 * Linear weights are stored `[in, out]` (tfjs's natural layout); the
 * checkpoint code transposes them to PyTorch's `[out, in]`. mlpLM's layers
 * keep PyTorch's layout: {@link linearOutIn}.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { Rng } from "../lib/rng.ts";
import {
  type BatchNormState,
  type DropoutSpec,
  type ExpertGroups,
  fastPath,
  type TopkGates,
} from "./fast_paths.ts";

/**
 * `op(a) @ op(b)`, where op transposes the last two axes when asked:
 * a (..., m, k) or (..., k, m), b (..., k, n) or (..., n, k) → (..., m, n).
 */
export function matMul(
  a: tf.Tensor,
  b: tf.Tensor,
  transposeA = false,
  transposeB = false,
): tf.Tensor {
  const fast = fastPath("matMul");
  if (fast) return fast(a, b, transposeA, transposeB);
  return tf.matMul(a, b, transposeA, transposeB);
}

/**
 * PyTorch `nn.Linear` on the last axis, `x @ w + b`, followed by a ReLU when
 * asked (the first half of gptLM's feed-forward net). x (..., in), w (in,
 * out), b (out) → (..., out).
 */
export function linear(
  x: tf.Tensor,
  w: tf.Tensor2D,
  b?: tf.Tensor1D,
  activation?: "relu",
): tf.Tensor {
  const fast = fastPath("linear");
  if (fast) return fast(x, w, b, activation);
  const [inFeatures, outFeatures] = w.shape;
  const flat = x.reshape([-1, inFeatures]); // (N, in)
  let y = matMul(flat, w); // (N, in) @ (in, out) -> (N, out)
  if (b) y = y.add(b);
  if (activation === "relu") y = y.relu();
  return y.reshape([...x.shape.slice(0, -1), outFeatures]); // (..., out)
}

/**
 * PyTorch `nn.Linear` with the weight in PyTorch's own `[out, in]` layout,
 * `F.linear(x, w, b) = x @ wᵀ + b`: mlpLM's layers. x (N, in), w (out, in),
 * b (out) → (N, out). `inputIsData` says x is the model's input, whose
 * gradient nobody needs.
 */
export function linearOutIn(
  x: tf.Tensor2D,
  w: tf.Tensor2D,
  b: tf.Tensor1D,
  inputIsData: boolean,
): tf.Tensor2D {
  const fast = fastPath("linearOutIn");
  if (fast) return fast(x, w, b, inputIsData);
  return matMul(x, w, false, true).add(b); // (N, in) @ (in, out) + (out) -> (N, out)
}

/**
 * PyTorch `nn.Embedding`: row `ids[n]` of `table` (V, C) for every id, i.e.
 * the one-hot vector of each id times the table. ids (...) int32 → (..., C).
 */
export function embedding(table: tf.Tensor2D, ids: tf.Tensor): tf.Tensor {
  const fast = fastPath("embedding");
  if (fast) return fast(table, ids);
  const [V, C] = table.shape;
  const oneHot = tf.oneHot(ids.reshape([-1]), V); // (N, V)
  return matMul(oneHot, table).reshape([...ids.shape, C]); // (N, V) @ (V, C) -> (..., C)
}

/** PyTorch `nn.LayerNorm` over the last axis (biased variance). x (..., C), weight and bias (C). */
export function layerNorm(
  x: tf.Tensor,
  weight: tf.Tensor,
  bias: tf.Tensor,
  eps = 1e-5,
): tf.Tensor {
  const fast = fastPath("layerNorm");
  if (fast) return fast(x, weight, bias, eps);
  const mean = x.mean(-1, true); // (..., 1)
  const centered = x.sub(mean); // (..., C)
  const variance = centered.square().mean(-1, true); // (..., 1)
  return centered.mul(variance.add(eps).rsqrt()).mul(weight).add(bias); // (..., C)
}

/** PyTorch `nn.BatchNorm1d`'s defaults. */
export const BATCH_NORM_EPS = 1e-5;
export const BATCH_NORM_MOMENTUM = 0.1;

/**
 * PyTorch `nn.BatchNorm1d` on x (N, C). Training normalises with the
 * batch's biased variance and moves the running statistics (with the
 * unbiased variance, as PyTorch); evaluation uses the running statistics.
 *
 * The running update is an `assign` inside the forward pass. Under
 * `tf.variableGrads` those ops are taped but lie off the loss's path, so
 * they get no gradient and their intermediates are freed with the tape.
 */
export function batchNorm1d(
  x: tf.Tensor2D,
  bn: BatchNormState,
  training: boolean,
  eps = BATCH_NORM_EPS,
  momentum = BATCH_NORM_MOMENTUM,
): tf.Tensor2D {
  const fast = fastPath("batchNorm1d");
  if (fast) return fast(x, bn, training, eps, momentum);
  if (!training) {
    const scale = bn.weight.mul(bn.runningVar.add(eps).rsqrt()); // (C)
    return x.sub(bn.runningMean).mul(scale).add(bn.bias); // (N, C)
  }
  const n = x.shape[0];
  const mean = x.mean(0); // (C)
  const centered = x.sub(mean); // (N, C)
  const variance = centered.square().mean(0); // (C), biased
  bn.runningMean.assign(bn.runningMean.mul(1 - momentum).add(mean.mul(momentum)));
  bn.runningVar.assign(
    bn.runningVar.mul(1 - momentum).add(variance.mul(momentum * n / (n - 1))),
  );
  bn.numBatchesTracked.assign(bn.numBatchesTracked.add(tf.scalar(1, "int32")));
  return centered.mul(variance.add(eps).rsqrt()).mul(bn.weight).add(bn.bias); // (N, C)
}

/**
 * Causal multi-head self-attention with the heads side by side: q, k, v
 * (B, T, C), head h in columns h·hs…(h+1)·hs, and maskBias (T, T), 0 on and
 * below the diagonal and −∞ above → (B, T, C), each head's
 * `softmax(q kᵀ · hs^-½ + maskBias) v`. `weightsDropout`, given in training
 * with dropout, is applied to the attention weights. `seeWeights`, when
 * given, receives the attention weights (B, H, T, T) this call uses (the
 * plain route runs then: a fast kernel keeps them to itself).
 */
export function causalSelfAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  nHead: number,
  maskBias: tf.Tensor,
  weightsDropout?: DropoutSpec,
  seeWeights?: (weights: tf.Tensor) => void,
): tf.Tensor {
  const fast = fastPath("causalSelfAttention");
  if (fast && !seeWeights) return fast(q, k, v, nHead, weightsDropout);
  const [B, T, C] = q.shape as [number, number, number];
  const hs = C / nHead;
  const split = (x: tf.Tensor) => x.reshape([B, T, nHead, hs]).transpose([0, 2, 1, 3]); // (B, H, T, hs)
  const scores = matMul(split(q), split(k), false, true).mul(hs ** -0.5); // (B, H, T, hs) @ (B, H, hs, T) -> (B, H, T, T)
  let weights = tf.softmax(scores.add(maskBias)); // (B, H, T, T)
  seeWeights?.(weights);
  if (weightsDropout) weights = dropout(weights, weightsDropout.p, weightsDropout.rng);
  const heads = matMul(weights, split(v)); // (B, H, T, hs)
  return heads.transpose([0, 2, 1, 3]).reshape([B, T, C]); // torch.cat over heads: (B, T, C)
}

/**
 * {@link causalSelfAttention} of queries, keys and values side by side in
 * one tensor: qkv (B, T, 3C), what one product with every head's query,
 * key and value weights side by side gives (nanoGPT's `c_attn`) → (B, T, C).
 */
export function causalSelfAttentionQKV(
  qkv: tf.Tensor,
  nHead: number,
  maskBias: tf.Tensor,
  weightsDropout?: DropoutSpec,
  seeWeights?: (weights: tf.Tensor) => void,
): tf.Tensor {
  const fast = fastPath("causalSelfAttentionQKV");
  if (fast && !seeWeights) return fast(qkv, nHead, weightsDropout);
  const [q, k, v] = tf.split(qkv, 3, 2); // (B, T, C) each
  return causalSelfAttention(q, k, v, nHead, maskBias, weightsDropout, seeWeights);
}

/**
 * {@link causalSelfAttention} of the last t of S positions: queries q
 * (B, t, C) for positions S−t…S−1, keys and values k, v (B, S, C) for all S
 * (a key/value cache and the new positions'), heads side by side → (B, t, C).
 * Query i sees keys 0…S−t+i: with t = S it is causal self-attention, with
 * t = 1 (one new token) it sees every key. Evaluation only (no dropout).
 */
export function cachedSelfAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  nHead: number,
): tf.Tensor {
  const fast = fastPath("cachedSelfAttention");
  if (fast) return fast(q, k, v, nHead);
  const [B, t, C] = q.shape as [number, number, number];
  const S = k.shape[1]!;
  const hs = C / nHead;
  const split = (x: tf.Tensor, T: number) => x.reshape([B, T, nHead, hs]).transpose([0, 2, 1, 3]); // (B, H, T, hs)
  const scores = matMul(split(q, t), split(k, S), false, true).mul(hs ** -0.5); // (B, H, t, hs) @ (B, H, hs, S) -> (B, H, t, S)
  let weights: tf.Tensor; // (B, H, t, S)
  if (t === 1) {
    weights = tf.softmax(scores); // one new position sees every key
  } else {
    const visible = tf.linalg.bandPart(tf.ones([t, S]), -1, S - t); // (t, S): 1 where key j ≤ S−t+i
    const maskBias = tf.where(visible.equal(0), tf.fill([t, S], -Infinity), tf.zeros([t, S])); // (t, S)
    weights = tf.softmax(scores.add(maskBias));
  }
  const heads = matMul(weights, split(v, S)); // (B, H, t, S) @ (B, H, S, hs) -> (B, H, t, hs)
  return heads.transpose([0, 2, 1, 3]).reshape([B, t, C]); // (B, t, C)
}

/** `torch.cat(parts, dim=1)` of 2-D parts (rows, cols_i) → (rows, Σ cols_i). */
export function concatColumns(parts: tf.Tensor2D[]): tf.Tensor2D {
  const fast = fastPath("concatColumns");
  if (fast) return fast(parts);
  return tf.concat(parts, 1);
}

/**
 * `torch.topk(x, k).indices` along the last axis: x (..., n) → int32
 * (..., k), the positions of the k largest entries, largest first. A choice
 * carries no gradient (PyTorch's indices have none), so nothing flows back
 * through it.
 */
export function topkIndices(x: tf.Tensor, k: number): tf.Tensor {
  const shape = x.shape;
  const choose = tf.customGrad((input) => ({
    value: tf.topk(input as tf.Tensor, k).indices,
    gradFunc: () => tf.zeros(shape),
  }));
  return choose(x);
}

/**
 * A router's choices (the original's `NoisyTopkRouter` after its noise):
 * the k largest scores of each row of `noisy` (N, E), and a softmax over
 * them alone: the top-k scores scattered into a row of −∞, then softmax.
 * → gates (N, E), 0 off the choices; indices (N, k) int32.
 */
export function topkGates(noisy: tf.Tensor2D, k: number): TopkGates {
  const fast = fastPath("topkGates");
  if (fast) return fast(noisy, k);
  const [N, E] = noisy.shape;
  const indices = topkIndices(noisy, k) as tf.Tensor2D; // (N, k)
  const chosen = multiHot(indices, E).cast("bool"); // (N, E)
  const gates = tf.softmax(tf.where(chosen, noisy, tf.fill([N, E], -Infinity))) as tf.Tensor2D;
  return { gates, indices };
}

/**
 * Several one-hot rows summed: indices (N, k) int32 → (N, depth) float32,
 * 1 at each of row n's k (distinct) indices.
 */
export function multiHot(indices: tf.Tensor2D, depth: number): tf.Tensor2D {
  const columns = tf.unstack(indices, 1).map((column) => tf.oneHot(column, depth)); // k × (N, depth)
  return columns.reduce((a, b) => a.add(b)).cast("float32") as tf.Tensor2D;
}

/**
 * x (M, C) · scale (M, 1): each row times its own number (a mixture's
 * entries times their gates). Its gradient: dx = dy · scale, and dscale
 * the sum over each row of dy · x.
 */
export function scaleRows(x: tf.Tensor2D, scale: tf.Tensor2D): tf.Tensor2D {
  const fast = fastPath("scaleRows");
  if (fast) return fast(x, scale);
  return x.mul(scale);
}

/**
 * PyTorch `torch.zeros(n, C).index_add_(0, rows, values)`: values (M, C),
 * rows (M) int32 → (n, C), row `rows[m]` plus `values[m]`; rows named twice
 * add up. Its gradient is the output's gradient at `rows`: the rows
 * {@link embedding} picks (its inverse: `embedding(x, rows)` is PyTorch's
 * `x[rows]`).
 */
export function indexAdd(values: tf.Tensor2D, rows: tf.Tensor1D, n: number): tf.Tensor2D {
  const fast = fastPath("indexAdd");
  if (fast) return fast(values, rows, n);
  const scatter = tf.customGrad((input, picked, save) => {
    const [v, at] = [input as tf.Tensor2D, picked as tf.Tensor1D];
    (save as tf.GradSaveFunc)([at]);
    return {
      value: tf.scatterND(at.reshape([-1, 1]), v, [n, v.shape[1]]),
      gradFunc: (dy, [savedAt]) => [embedding(dy as tf.Tensor2D, savedAt), tf.zeros(at.shape)],
    };
  });
  return scatter(values, rows) as tf.Tensor2D;
}

/**
 * Groups a mixture of experts' choices by expert, as the original's
 * `compute_gating`: `indices` (N, k) int32 sends token n to experts
 * `indices[n, j]`; its N·k slots (slot n·k + j) are sorted by expert, then
 * by slot, so each expert's tokens are one run of rows. The run lengths are
 * read to the host (PyTorch's `expert_size.tolist()`): each expert's rows
 * are then one slice, one product. With `capacity`, an expert keeps only its
 * first `capacity` slots (the Switch Transformer's expert capacity; in slot
 * order, i.e. the earliest tokens of the batch).
 */
export function routeToExperts(
  indices: tf.Tensor2D,
  numExperts: number,
  capacity?: number,
): ExpertGroups {
  const fast = fastPath("routeToExperts");
  if (fast) return fast(indices, numExperts, capacity);
  const [N, k] = indices.shape;
  const slotCount = N * k;
  const experts = indices.reshape([slotCount]); // (Nk)
  // Sort keys expert·Nk + slot, smallest first: by expert, then by slot.
  const keys = experts.mul(tf.scalar(slotCount, "int32")).add(tf.range(0, slotCount, 1, "int32"));
  const order = topkIndices(keys.neg(), slotCount) as tf.Tensor1D; // (Nk) slots, grouped by expert
  const counts = readNow(tf.oneHot(experts, numExperts).sum(0)); // (E), on the host
  let slots = order;
  let sizes = counts;
  if (capacity !== undefined) {
    sizes = counts.map((c) => Math.min(c, capacity));
    let start = 0;
    const kept: tf.Tensor1D[] = [];
    counts.forEach((count, e) => {
      if (sizes[e] > 0) kept.push(order.slice(start, sizes[e]));
      start += count;
    });
    slots = kept.length > 0 ? tf.concat(kept) : tf.zeros([0], "int32");
  }
  return { rows: tf.floorDiv(slots, tf.scalar(k, "int32")) as tf.Tensor1D, slots, sizes };
}

/** A small tensor's values, now (`dataSync`), with an error that says why when the backend cannot. */
function readNow(t: tf.Tensor): number[] {
  try {
    return Array.from(t.dataSync());
  } catch (e) {
    throw new Error(
      `this backend cannot read a tensor in the middle of a step (${
        (e as Error).message
      }); the plain grouping of experts needs to`,
    );
  }
}

/**
 * Inverted dropout (PyTorch `nn.Dropout` in training mode): zero each element
 * with probability `p` and scale the rest by 1/(1-p). The mask is drawn from
 * the run's own stream so a seed fixes it on every backend.
 */
export function dropout(x: tf.Tensor, p: number, rng: Rng): tf.Tensor {
  if (p === 0) return x;
  const fast = fastPath("dropout");
  if (fast) return fast(x, p, rng);
  const keep = 1 / (1 - p);
  const mask = new Float32Array(x.size);
  for (let i = 0; i < mask.length; i++) mask[i] = rng.random() < p ? 0 : keep;
  return x.mul(tf.tensor(mask, x.shape));
}

/**
 * PyTorch `torch.logsumexp(x, -1)`: log Σ exp over the last axis, (..., E)
 * → (...). Its gradient is softmax(x) · dy, as PyTorch computes it; tfjs's
 * own `logSumExp` differentiates through its max shift, a broadcast `Equal`
 * that tfjs-backend-wasm runs ~50× slower than an `Add` of the same size.
 */
export function logSumExp(x: tf.Tensor): tf.Tensor {
  const lse = tf.customGrad((input, save) => {
    (save as tf.GradSaveFunc)([input as tf.Tensor]);
    return {
      value: tf.logSumExp(input as tf.Tensor, -1),
      gradFunc: (dy, [saved]) => tf.softmax(saved).mul((dy as tf.Tensor).expandDims(-1)),
    };
  });
  return lse(x);
}

/**
 * PyTorch `F.cross_entropy(logits, targets)` with mean reduction.
 * logits (N, V), targets (N) int32 → scalar.
 */
export function crossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
  const fast = fastPath("crossEntropy");
  if (fast) return fast(logits, targets);
  const logProbs = tf.logSoftmax(logits); // (N, V)
  const picked = logProbs.mul(tf.oneHot(targets, logits.shape[1])).sum(1); // (N)
  return picked.mean().neg() as tf.Scalar;
}

/** Weights drawn from the run's stream: N(0, std²). */
export function normalInit(shape: number[], std: number, rng: Rng): tf.Tensor {
  return tf.tensor(rng.normals(shape.reduce((a, b) => a * b, 1), std), shape);
}

/** Weights drawn from the run's stream: U(-bound, bound). */
export function uniformInit(shape: number[], bound: number, rng: Rng): tf.Tensor {
  return tf.tensor(rng.uniforms(shape.reduce((a, b) => a * b, 1), bound), shape);
}
