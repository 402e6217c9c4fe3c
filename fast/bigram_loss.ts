/**
 * bigramLM's loss straight from its table and pair counts. A bigram's
 * logits depend only on the current id a, so with count(a, b) the
 * positions that read a and predict b, and n_a = Σ_b count(a, b):
 *
 *   loss = (1/N) Σ_a [ n_a · logsumexp(W[a]) − Σ_b count(a, b) · W[a, b] ]
 *
 * V² work instead of N·V (V = 65, N = B·T = 16384 at the defaults). Its
 * gradient, by autodiff, is (n_a · softmax(W[a]) − count(a, ·)) / N: the
 * plain gradient, summed row by row. It is also closer to the exact value
 * than the plain float32 mean over N positions.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { pairCountsHost } from "./host.ts";

/** The counted loss, with the pairs counted by a loop over CPU memory (WASM, cpu). */
export function bigramLossHost(table: tf.Tensor2D, x: tf.Tensor, y: tf.Tensor): tf.Scalar {
  const V = table.shape[0];
  const pairCounts = pairCountsHost(x, y, V); // (V, V)
  const rowCounts = pairCounts.sum(1); // (V): n_a
  return tf.logSumExp(table, 1).mul(rowCounts).sum() // Σ_a n_a · logsumexp(W[a])
    .sub(pairCounts.mul(table).sum()) // Σ_ab count(a, b) · W[a, b]
    .div(x.size) as tf.Scalar;
}
