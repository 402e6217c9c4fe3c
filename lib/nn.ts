/**
 * The layers the three models are built from, each a function of plain
 * tensors. Where tfjs's automatic gradient would take a slow or missing
 * kernel, the layer spells out its backward pass beside its forward pass.
 *
 * Weights of linear layers are stored `[in, out]` (tfjs's natural layout);
 * the checkpoint code transposes them to PyTorch's `[out, in]`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { attentionWasm } from "./attention.ts";
import { fastPaths, hostFastPaths } from "./fast_paths.ts";
import { layerNormWasm, layerNormWasmFits } from "./layer_norm_kernel.ts";
import { columnSums, matMul, matMulAddBias } from "./matmul.ts";
import type { Rng } from "./rng.ts";

/** `y + b` on every row: y (N, out), b (out); the bias gradient by {@link columnSums}. */
const addBias = tf.customGrad((y, b) => ({
  value: (y as tf.Tensor).add(b as tf.Tensor), // (N, out)
  gradFunc: (dy) => [dy as tf.Tensor, columnSums(dy as tf.Tensor)], // dy, (out)
})) as (y: tf.Tensor, b: tf.Tensor) => tf.Tensor;

/** PyTorch `nn.Linear` on the last axis: `x @ w + b`. x (..., in), w (in, out), b (out). */
export function linear(x: tf.Tensor, w: tf.Tensor, b?: tf.Tensor): tf.Tensor {
  const [inFeatures, outFeatures] = w.shape as [number, number];
  const flat = x.reshape([-1, inFeatures]); // (N, in)
  let y: tf.Tensor; // (N, in) @ (in, out) + (out) -> (N, out)
  if (b && fastPaths() && tf.getBackend() === "wasm") {
    y = matMulAddBias(flat, w, b);
  } else {
    y = matMul(flat, w);
    if (b) y = fastPaths() ? addBias(y, b) : y.add(b);
  }
  return y.reshape([...x.shape.slice(0, -1) as number[], outFeatures]); // (..., out)
}

/**
 * Causal multi-head self-attention with the heads side by side: q, k, v
 * (B, T, C), head h in columns h·hs…(h+1)·hs, and maskBias (T, T), 0 on and
 * below the diagonal and −∞ above → (B, T, C), each head's
 * `softmax(q kᵀ · hs^-½ + maskBias) v`. `dropWeights`, given in training
 * with dropout, is applied to the attention weights.
 *
 * On WASM with the fast paths on and no dropout, one kernel per direction
 * (`attention.ts`); otherwise tfjs's composition, heads split by transposes.
 */
export function causalSelfAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  nHead: number,
  maskBias: tf.Tensor,
  dropWeights?: (weights: tf.Tensor) => tf.Tensor,
): tf.Tensor {
  if (tf.getBackend() === "wasm" && fastPaths() && !dropWeights) {
    return attentionWasm(nHead)(q, k, v);
  }
  const [B, T, C] = q.shape as [number, number, number];
  const hs = C / nHead;
  const split = (x: tf.Tensor) => x.reshape([B, T, nHead, hs]).transpose([0, 2, 1, 3]); // (B, H, T, hs)
  const scores = matMul(split(q), split(k), false, true).mul(hs ** -0.5); // (B, H, T, hs) @ (B, H, hs, T) -> (B, H, T, T)
  let weights = tf.softmax(scores.add(maskBias)); // (B, H, T, T)
  if (dropWeights) weights = dropWeights(weights);
  const heads = matMul(weights, split(v)); // (B, H, T, hs)
  return heads.transpose([0, 2, 1, 3]).reshape([B, T, C]); // torch.cat over heads: (B, T, C)
}

/**
 * `tf.concat(parts, 1)` of 2-D parts (rows, cols_i) → (rows, Σ cols_i).
 * tfjs splits the gradient back with `SplitV`, ~0.5 ms for a (128, 128) on
 * WASM; on the CPU-side backends with the fast paths on, a host loop does it.
 */
export function concatColumns(parts: tf.Tensor2D[]): tf.Tensor2D {
  if (!hostFastPaths()) return tf.concat(parts, 1);
  const widths = parts.map((p) => p.shape[1]);
  const op = tf.customGrad((...inputs) => ({
    value: tf.concat(inputs.slice(0, parts.length) as tf.Tensor2D[], 1), // (rows, total)
    gradFunc: (dy) => {
      const [rows, total] = (dy as tf.Tensor2D).shape;
      const d = (dy as tf.Tensor).dataSync() as Float32Array; // (rows, total)
      let first = 0; // the part's first column
      return widths.map((cols) => {
        const grad = new Float32Array(rows * cols); // (rows, cols)
        for (let r = 0; r < rows; r++) {
          grad.set(d.subarray(r * total + first, r * total + first + cols), r * cols);
        }
        first += cols;
        return tf.tensor2d(grad, [rows, cols]);
      });
    },
  }));
  return op(...parts) as tf.Tensor2D;
}

/**
 * PyTorch `nn.Embedding`: rows of `table` (V, C) picked by `ids` (int32).
 *
 * On WebGPU this is `gather`, whose gradient is `UnsortedSegmentSum`. The
 * WASM backend has no `UnsortedSegmentSum` and a slow `gather`, and a one-hot
 * product costs V times the work (and memory: a CJK vocabulary has thousands
 * of characters), so on the CPU-side backends both directions are a plain
 * loop over rows: their tensors already live in CPU memory.
 */
export function embedding(table: tf.Tensor, ids: tf.Tensor): tf.Tensor {
  if (tf.getBackend() === "webgpu") return tf.gather(table, ids);
  if (!fastPaths()) { // the one-hot product: (N, V) @ (V, C)
    const [V, C] = table.shape as [number, number];
    return tf.oneHot(ids.reshape([-1]), V).matMul(table).reshape([...ids.shape, C]);
  }
  const op = tf.customGrad((t, i, save) => {
    const [tt, it] = [t as tf.Tensor2D, i as tf.Tensor];
    (save as tf.GradSaveFunc)([it]);
    const [V, C] = tt.shape;
    const rows = it.dataSync(); // (N)
    const weights = tt.dataSync() as Float32Array; // (V, C)
    const out = new Float32Array(rows.length * C); // (N, C)
    for (let n = 0; n < rows.length; n++) {
      out.set(weights.subarray(rows[n] * C, rows[n] * C + C), n * C);
    }
    return {
      value: tf.tensor(out, [...it.shape, C]), // (..., C)
      gradFunc: (dy, saved) => {
        const savedRows = (saved[0] as tf.Tensor).dataSync(); // (N)
        const dOut = (dy as tf.Tensor).dataSync() as Float32Array; // (N, C)
        const dTable = new Float32Array(V * C); // (V, C): rows summed per id
        for (let n = 0; n < savedRows.length; n++) {
          const row = savedRows[n] * C;
          for (let c = 0; c < C; c++) dTable[row + c] += dOut[n * C + c];
        }
        return [tf.tensor(dTable, [V, C]), tf.zerosLike(it)];
      },
    };
  });
  return op(table, ids);
}

/**
 * Inverted dropout (PyTorch `nn.Dropout` in training mode): zero each element
 * with probability `p` and scale the rest by 1/(1-p). The mask is drawn from
 * the run's own stream so a seed fixes it on every backend.
 */
export function dropout(x: tf.Tensor, p: number, rng: Rng): tf.Tensor {
  if (p === 0) return x;
  const keep = 1 / (1 - p);
  const mask = new Float32Array(x.size);
  for (let i = 0; i < mask.length; i++) mask[i] = rng.random() < p ? 0 : keep;
  return x.mul(tf.tensor(mask, x.shape));
}

/** PyTorch `nn.LayerNorm` over the last axis (biased variance). x (..., C). */
export function layerNorm(
  x: tf.Tensor,
  weight: tf.Tensor,
  bias: tf.Tensor,
  eps = 1e-5,
): tf.Tensor {
  if (hostFastPaths()) {
    const onWasm = tf.getBackend() === "wasm" && layerNormWasmFits(x.shape[x.shape.length - 1]);
    return (onWasm ? layerNormWasm(eps) : hostLayerNorm(eps))(x, weight, bias);
  }
  const mean = x.mean(-1, true); // (..., 1)
  const centered = x.sub(mean); // (..., C)
  const variance = centered.square().mean(-1, true); // (..., 1)
  return centered.mul(variance.add(eps).rsqrt()).mul(weight).add(bias);
}

/**
 * {@link layerNorm} as one loop over rows on the CPU-side backends, whose
 * tensors live in CPU memory: tfjs's composition is ~30 kernels forward and
 * backward, each a pass over the activations. On WASM, rows whose width is
 * a multiple of 4 take the SIMD loops of `layer_norm_kernel.ts` instead;
 * this JavaScript loop serves the rest and cpu. Sums are float64. Per row,
 * with x̂ = (x − mean)·rstd and g = dy·w:
 *
 *   y = x̂·w + b      dx = rstd · (g − mean(g) − x̂·mean(g·x̂))
 *   dw = Σ_rows dy·x̂   db = Σ_rows dy
 */
function hostLayerNorm(eps: number) {
  return tf.customGrad((x, w, b) => {
    const shape = (x as tf.Tensor).shape;
    const C = shape[shape.length - 1];
    const xs = (x as tf.Tensor).dataSync() as Float32Array; // (rows, C)
    const [ws, bs] = [(w as tf.Tensor).dataSync(), (b as tf.Tensor).dataSync()]; // (C)
    const rows = xs.length / C;
    const xHat = new Float32Array(xs.length); // (rows, C), kept for the backward pass
    const rstd = new Float64Array(rows); // (rows)
    const out = new Float32Array(xs.length); // (rows, C)
    for (let r = 0; r < rows; r++) {
      const row = r * C;
      let sum = 0;
      for (let c = 0; c < C; c++) sum += xs[row + c];
      const mean = sum / C;
      let squares = 0;
      for (let c = 0; c < C; c++) squares += (xs[row + c] - mean) ** 2;
      rstd[r] = 1 / Math.sqrt(squares / C + eps);
      for (let c = 0; c < C; c++) {
        xHat[row + c] = (xs[row + c] - mean) * rstd[r];
        out[row + c] = xHat[row + c] * ws[c] + bs[c];
      }
    }
    return {
      value: tf.tensor(out, shape), // (..., C)
      gradFunc: (dy) => {
        const d = (dy as tf.Tensor).dataSync() as Float32Array; // (rows, C)
        const dx = new Float32Array(xs.length); // (rows, C)
        const [dw, db] = [new Float64Array(C), new Float64Array(C)]; // (C)
        for (let r = 0; r < rows; r++) {
          const row = r * C;
          let [gSum, gxSum] = [0, 0];
          for (let c = 0; c < C; c++) {
            const g = d[row + c] * ws[c];
            gSum += g;
            gxSum += g * xHat[row + c];
            dw[c] += d[row + c] * xHat[row + c];
            db[c] += d[row + c];
          }
          const [gMean, gxMean] = [gSum / C, gxSum / C];
          for (let c = 0; c < C; c++) {
            dx[row + c] = rstd[r] * (d[row + c] * ws[c] - gMean - xHat[row + c] * gxMean);
          }
        }
        return [
          tf.tensor(dx, shape),
          tf.tensor(Float32Array.from(dw)),
          tf.tensor(Float32Array.from(db)),
        ];
      },
    };
  }) as (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor;
}

/**
 * PyTorch `F.cross_entropy(logits, targets)` with mean reduction.
 * logits (N, V), targets (N) int32 → scalar.
 */
export function crossEntropy(
  logits: tf.Tensor2D,
  targets: tf.Tensor1D,
): tf.Scalar {
  const logProbs = tf.logSoftmax(logits); // (N, V)
  const picked = logProbs.mul(tf.oneHot(targets, logits.shape[1])).sum(1); // (N)
  return picked.mean().neg() as tf.Scalar;
}

/** Weights drawn from the run's stream: N(0, std²). */
export function normalInit(shape: number[], std: number, rng: Rng): tf.Tensor {
  return tf.tensor(rng.normals(shape.reduce((a, b) => a * b, 1), std), shape);
}

/** Weights drawn from the run's stream: U(-bound, bound). */
export function uniformInit(
  shape: number[],
  bound: number,
  rng: Rng,
): tf.Tensor {
  return tf.tensor(
    rng.uniforms(shape.reduce((a, b) => a * b, 1), bound),
    shape,
  );
}
