/**
 * bigramLM: each token reads the logits of the next one from a table row,
 * `nn.Embedding(vocab_size, vocab_size)` — P(t_i | t_{i-1}).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { fastPaths, hostFastPaths } from "../lib/fast_paths.ts";
import { crossEntropy, embedding, normalInit } from "../lib/nn.ts";
import type { Rng } from "../lib/rng.ts";
import type { Batch, Buffer, LanguageModel, ModelConfig, Param } from "./model.ts";

/** Builds a bigram model; the table starts N(0, 1) like `nn.Embedding`. */
export function createBigramLM(config: ModelConfig, rng: Rng): LanguageModel {
  const V = config.vocab_size;
  const table = tf.variable(normalInit([V, V], 1, rng));
  const params: Param[] = [{
    name: "logits.weight",
    variable: table,
    transposed: false,
  }];
  const buffers: Buffer[] = [];

  const forward = (x: tf.Tensor) => embedding(table, x); // (B, T) -> (B, T, V)

  /**
   * The batch's mean cross-entropy from pair counts. A bigram's logits
   * depend only on the current id a, so with count(a, b) the positions that
   * read a and predict b, and n_a = Σ_b count(a, b):
   *
   *   loss = (1/N) Σ_a [ n_a · logsumexp(W[a]) − Σ_b count(a, b) · W[a, b] ]
   *
   * V² work instead of N·V (V = 65, N = B·T = 16384 at the defaults). Its
   * gradient, by autodiff, is (n_a · softmax(W[a]) − count(a, ·)) / N: the
   * plain gradient, summed row by row. Where tensors live in CPU memory
   * the pairs are counted by a loop; on WebGPU by `bincount` (the plain
   * loss there takes ~1 s a step on llvmpipe: its transposes, reductions
   * and UnsortedSegmentSum over (N, V) are slow in a software rasteriser).
   */
  const countedLoss = (x: tf.Tensor, y: tf.Tensor): tf.Scalar => {
    const pairCounts = hostFastPaths() ? hostPairCounts(x, y) : tf.tidy(() => {
      const pairs = x.mul(tf.scalar(V, "int32")).add(y).reshape([-1]) as tf.Tensor1D; // (N): a·V + b
      return tf.bincount(pairs, tf.tensor1d([], "float32"), V * V).reshape([V, V]); // (V, V)
    });
    const rowCounts = pairCounts.sum(1); // (V)
    return tf.logSumExp(table, 1).mul(rowCounts).sum() // Σ_a n_a · logsumexp(W[a])
      .sub(pairCounts.mul(table).sum()) // Σ_ab count(a, b) · W[a, b]
      .div(x.size) as tf.Scalar;
  };

  /** count(a, b) for ids x and targets y (B, T) in CPU memory: (V, V). */
  const hostPairCounts = (x: tf.Tensor, y: tf.Tensor): tf.Tensor => {
    const [ids, targets] = [x.dataSync(), y.dataSync()];
    const counts = new Float32Array(V * V); // (V, V)
    for (let i = 0; i < ids.length; i++) counts[ids[i] * V + targets[i]]++;
    return tf.tensor2d(counts, [V, V]);
  };

  return {
    name: "bigramLM",
    config,
    params,
    buffers,
    makeBatch(windows: Int32Array, batchSize: number): Batch {
      return splitWindows(windows, batchSize, config.block_size);
    },
    forward,
    loss(x, y) {
      if (fastPaths()) return countedLoss(x, y);
      const logits = forward(x); // (B, T, V)
      return crossEntropy(
        logits.reshape([-1, V]) as tf.Tensor2D,
        y.reshape([-1]) as tf.Tensor1D,
      );
    },
    nextTokenLogits(context) {
      // Only the last token matters to a bigram model.
      const last = tf.tensor1d([context[context.length - 1]], "int32");
      return tf.gather(table, last).reshape([V]) as tf.Tensor1D;
    },
  };
}

/**
 * Windows of T+1 ids → inputs `data[i:i+T]` and targets `data[i+1:i+T+1]`,
 * both (B, T) int32: the batches of bigramLM and gptLM.
 */
export function splitWindows(
  windows: Int32Array,
  batchSize: number,
  blockSize: number,
): Batch {
  return tf.tidy(() => {
    const w = tf.tensor2d(windows, [batchSize, blockSize + 1], "int32"); // (B, T+1)
    return {
      x: w.slice([0, 0], [batchSize, blockSize]), // (B, T)
      y: w.slice([0, 1], [batchSize, blockSize]), // (B, T)
    };
  });
}
