/**
 * bigramLM: each token reads the logits of the next one from a table row,
 * `nn.Embedding(vocab_size, vocab_size)` — P(t_i | t_{i-1}) — as
 * weedge/baby-llm `simpleLM/bigramLM.py`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { fastPath } from "../nn/fast_paths.ts";
import { crossEntropy, embedding, normalInit } from "../nn/layers.ts";
import type { Rng } from "../lib/rng.ts";
import { recomputingDecoder } from "./decoding.ts";
import {
  type LanguageModel,
  type ModelConfig,
  type ModelDefinition,
  nextTokenBatch,
} from "./model.ts";

/** Builds a bigram model; the table starts N(0, 1) like `nn.Embedding`. */
function create(config: ModelConfig, rng: Rng): LanguageModel {
  const V = config.vocab_size;
  const table = tf.variable(normalInit([V, V], 1, rng)) as tf.Variable<tf.Rank.R2>; // (V, V)

  const forward = (x: tf.Tensor) => embedding(table, x); // (B, T) -> (B, T, V)

  return {
    name: "bigramLM",
    config,
    params: [{ name: "logits.weight", variable: table, transposed: false }],
    buffers: [],
    targetsPerRow: config.block_size,
    startContext: [0],
    makeBatch: (windows, batchSize) => nextTokenBatch(windows, batchSize, config.block_size),
    forward,
    loss(x, y) {
      const fast = fastPath("bigramLoss"); // the same loss from pair counts: V² work instead of B·T·V
      if (fast) return fast(table, x, y);
      const logits = forward(x); // (B, T, V)
      return crossEntropy(logits.reshape([-1, V]) as tf.Tensor2D, y.reshape([-1]) as tf.Tensor1D);
    },
    nextTokenLogits(context) {
      // Only the last token matters to a bigram model.
      const last = tf.tensor1d([context[context.length - 1]], "int32");
      return forward(last).reshape([V]) as tf.Tensor1D;
    },
    tokenEmbeddings: () => table.clone(),
    transitionLogits: () => table.clone(),
    decoder: (context, rows) =>
      recomputingDecoder(context, rows, 1, (lastTokens) => {
        const last = tf.tensor1d(lastTokens.map((w) => w[0]), "int32"); // (R)
        return forward(last) as tf.Tensor2D; // (R, V)
      }),
  };
}

/** bigramLM's module: builds it; every setting fits it. */
export const bigramLM: ModelDefinition = {
  create,
  checkConfig() {},
  runIdFields: (config) => `V-${config.vocab_size}`,
  sizes: ({ vocab_size: V, block_size: T }) => ({
    params: V * V,
    buffers: 0,
    tensors: 1,
    // The ids, and the plain path's logits, probabilities and their gradient (T, V).
    bytesPerRow: 4 * (2 * (T + 1) + 3 * T * V),
    splittable: false,
  }),
  sizeFlags: [], // its one table is the vocabulary squared
};
