/**
 * Loops over tensors in CPU memory, for the backends that keep them there
 * (WASM and cpu): where a layer's tfjs composition is many small kernels,
 * or a kernel the backend lacks, one pass over the values does the same.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { AdamWStep, TopkGates } from "../nn/fast_paths.ts";

/**
 * `nn.Embedding` as row copies: the WASM backend has no `UnsortedSegmentSum`
 * (the gradient of `gather`) and a slow `gather`, and the one-hot product
 * costs V times the work and memory (a CJK vocabulary has thousands of
 * characters). Forward copies rows; backward adds each row's gradient to
 * its id's row. (The MoE models gather token rows with it too.)
 */
export function embeddingHost(table: tf.Tensor2D, ids: tf.Tensor): tf.Tensor {
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
        return [tf.tensor(dTable, [V, C]), tf.zeros(it.shape)]; // ids: no gradient
      },
    };
  });
  return op(table, ids);
}

/**
 * `nn.LayerNorm` as one loop over rows, forward and backward, instead of
 * ~30 kernels, each a pass over the activations. Sums are float64. Per
 * row, with x̂ = (x − mean)·rstd and g = dy·w:
 *
 *   y = x̂·w + b      dx = rstd · (g − mean(g) − x̂·mean(g·x̂))
 *   dw = Σ_rows dy·x̂   db = Σ_rows dy
 */
export function layerNormHost(
  x: tf.Tensor,
  weight: tf.Tensor,
  bias: tf.Tensor,
  eps: number,
): tf.Tensor {
  const op = tf.customGrad((x, w, b) => {
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
  return op(x, weight, bias);
}

/**
 * `tf.concat(parts, 1)` whose gradient is split back by row copies: tfjs
 * does it with `SplitV`, a slow kernel on WASM.
 */
export function concatColumnsHost(parts: tf.Tensor2D[]): tf.Tensor2D {
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

/** count(a, b) for ids x and targets y (B, T) in CPU memory: (V, V). */
export function pairCountsHost(x: tf.Tensor, y: tf.Tensor, V: number): tf.Tensor2D {
  const [ids, targets] = [x.dataSync(), y.dataSync()];
  const counts = new Float32Array(V * V); // (V, V)
  for (let i = 0; i < ids.length; i++) counts[ids[i] * V + targets[i]]++;
  return tf.tensor2d(counts, [V, V]);
}

/** AdamW's update of [param, grad, expAvg, expAvgSq] on the cpu backend: one float64 loop, in place. */
export function adamwUpdateCpu(tensors: tf.Tensor[], step: AdamWStep): void {
  const backend = tf.backend() as unknown as {
    data: { get(id: object): { values: Float32Array } };
  };
  const [p, g, m, v] = tensors.map((t) => backend.data.get(t.dataId).values);
  const { beta1, beta2, eps, decay, stepSize, bc2Sqrt } = step;
  for (let i = 0; i < p.length; i++) {
    const gi = g[i];
    const mi = m[i] = beta1 * m[i] + (1 - beta1) * gi;
    const vi = v[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
    p[i] = p[i] * decay - (stepSize * mi) / (Math.sqrt(vi) / bc2Sqrt + eps);
  }
}

/**
 * `topkGates` as one pass over each row: its k largest scores (ties: the
 * lower column first, as tfjs's top-k) and a softmax over them; the
 * gradient is that softmax's, on the chosen columns only.
 */
export function topkGatesHost(noisy: tf.Tensor2D, k: number): TopkGates {
  const [N, E] = noisy.shape;
  const scores = noisy.dataSync() as Float32Array; // (N, E)
  const chosen = new Int32Array(N * k); // (N, k)
  const gates = new Float32Array(N * E); // (N, E)
  const taken = new Uint8Array(E);
  for (let n = 0; n < N; n++) {
    const row = n * E;
    taken.fill(0);
    for (let j = 0; j < k; j++) {
      let best = -1;
      for (let e = 0; e < E; e++) {
        if (!taken[e] && (best < 0 || scores[row + e] > scores[row + best])) best = e;
      }
      taken[best] = 1;
      chosen[n * k + j] = best;
    }
    const top = scores[row + chosen[n * k]];
    let sum = 0;
    for (let j = 0; j < k; j++) sum += Math.exp(scores[row + chosen[n * k + j]] - top);
    for (let j = 0; j < k; j++) {
      const e = chosen[n * k + j];
      gates[row + e] = Math.exp(scores[row + e] - top) / sum;
    }
  }
  const softmaxOfChosen = tf.customGrad((_input) => ({
    value: tf.tensor2d(gates, [N, E]),
    gradFunc: (dy) => {
      const dGates = (dy as tf.Tensor).dataSync() as Float32Array; // (N, E)
      const dScores = new Float32Array(N * E); // 0 off the choices
      for (let n = 0; n < N; n++) {
        const row = n * E;
        let dot = 0;
        for (let j = 0; j < k; j++) {
          const e = chosen[n * k + j];
          dot += gates[row + e] * dGates[row + e];
        }
        for (let j = 0; j < k; j++) {
          const e = chosen[n * k + j];
          dScores[row + e] = gates[row + e] * (dGates[row + e] - dot);
        }
      }
      return tf.tensor2d(dScores, [N, E]);
    },
  }));
  return {
    gates: softmaxOfChosen(noisy) as tf.Tensor2D,
    indices: tf.tensor2d(chosen, [N, k], "int32"),
  };
}

/**
 * `loadBalancingLoss` (Switch Transformer's loss plus 0.1 × the router
 * z-loss) as one pass over the rows of `noisy` (N, E), in float64: with p
 * each row's softmax, P its column sums, c the choices per expert, it is
 * E·Σₑ (Pₑ/ΣP)(cₑ/Σc) + 0.1·mean(lse²); the gradient by the same pass.
 */
export function loadBalancingLossHost(noisy: tf.Tensor2D, indices: tf.Tensor2D): tf.Scalar {
  const [N, E] = noisy.shape;
  const scores = noisy.dataSync() as Float32Array; // (N, E)
  const picked = indices.dataSync(); // (N, k)
  const p = new Float64Array(N * E); // each row's softmax
  const lse = new Float64Array(N);
  const P = new Float64Array(E); // Σₙ p[n, e]
  for (let n = 0; n < N; n++) {
    const row = n * E;
    let max = -Infinity;
    for (let e = 0; e < E; e++) max = Math.max(max, scores[row + e]);
    let sum = 0;
    for (let e = 0; e < E; e++) sum += p[row + e] = Math.exp(scores[row + e] - max);
    lse[n] = max + Math.log(sum);
    for (let e = 0; e < E; e++) P[e] += p[row + e] /= sum;
  }
  const share = new Float64Array(E); // E·cₑ/Σc
  for (const e of picked) share[e] += E / picked.length;
  const total = P.reduce((a, b) => a + b, 0);
  let switchLoss = 0;
  for (let e = 0; e < E; e++) switchLoss += share[e] * P[e] / total;
  const zLoss = lse.reduce((a, l) => a + l * l, 0) / N;
  const loss = tf.customGrad((_input) => ({
    value: tf.scalar(switchLoss + 0.1 * zLoss),
    gradFunc: (dy) => {
      const g = (dy as tf.Tensor).dataSync()[0];
      const w = share.map((s) => (s - switchLoss) / total); // ∂switch/∂Pₑ
      const dScores = new Float32Array(N * E);
      for (let n = 0; n < N; n++) {
        const row = n * E;
        let mean = 0; // Σₑ wₑ p[n, e]
        for (let e = 0; e < E; e++) mean += w[e] * p[row + e];
        const z = 0.1 * 2 * lse[n] / N; // ∂(0.1·z)/∂lse[n]
        for (let e = 0; e < E; e++) dScores[row + e] = g * p[row + e] * (w[e] - mean + z);
      }
      return tf.tensor2d(dScores, [N, E]);
    },
  }));
  return loss(noisy) as tf.Scalar;
}

/**
 * `chosenGates` as a gather: out[n, j] = gates[n, indices[n, j]]; its
 * gradient adds dy[n, j] back at (n, indices[n, j]).
 */
export function chosenGatesHost(gates: tf.Tensor2D, indices: tf.Tensor2D): tf.Tensor2D {
  const [N, E] = gates.shape;
  const k = indices.shape[1];
  const columns = indices.dataSync(); // (N, k)
  const gather = tf.customGrad((input) => {
    const values = (input as tf.Tensor).dataSync() as Float32Array; // (N, E)
    const out = new Float32Array(N * k);
    for (let i = 0; i < N * k; i++) out[i] = values[Math.floor(i / k) * E + columns[i]];
    return {
      value: tf.tensor2d(out, [N, k]),
      gradFunc: (dy) => {
        const dOut = (dy as tf.Tensor).dataSync() as Float32Array; // (N, k)
        const dGates = new Float32Array(N * E);
        for (let i = 0; i < N * k; i++) dGates[Math.floor(i / k) * E + columns[i]] += dOut[i];
        return tf.tensor2d(dGates, [N, E]);
      },
    };
  });
  return gather(gates) as tf.Tensor2D;
}
