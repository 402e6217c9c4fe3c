/**
 * What the transformer models share: their parameters gathered in
 * PyTorch's `state_dict` order as they are created, the causal mask, and
 * the last position's logits for sampling.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { Buffer, Param } from "./model.ts";

/** A Linear weight, stored (in, out). */
export type Matrix = tf.Variable<tf.Rank.R2>;
/** A bias or LayerNorm vector. */
export type Vector = tf.Variable<tf.Rank.R1>;

/**
 * A model's parameters and buffers, each added under its PyTorch name in
 * the order PyTorch's `state_dict` lists them.
 */
export class ParamList {
  readonly params: Param[] = [];
  readonly buffers: Buffer[] = [];

  /** A trainable tensor named `name`; `value` becomes the variable (and is freed). */
  add(name: string, value: tf.Tensor, transposed = false): tf.Variable {
    const variable = tf.variable(value, true);
    value.dispose();
    this.params.push({ name, variable, transposed });
    return variable;
  }

  /**
   * An `nn.Linear` weight: `drawn` is (out, in) as PyTorch holds it (so one
   * seed gives one `state_dict`); it is stored (in, out), and `drawn` freed.
   */
  linearWeight(name: string, drawn: tf.Tensor): Matrix {
    const stored = drawn.transpose();
    drawn.dispose();
    return this.add(name, stored, true) as Matrix;
  }

  /** A vector of ones (LayerNorm weights). */
  ones(name: string, n: number): Vector {
    return this.add(name, tf.ones([n])) as Vector;
  }

  /** A vector of zeros. */
  zeros(name: string, n: number): Vector {
    return this.add(name, tf.zeros([n])) as Vector;
  }

  /** The buffer `tril` of an attention module: (T, T), ones on and below the diagonal. */
  tril(name: string, blockSize: number): tf.Tensor {
    const tensor = tf.tidy(() => tf.linalg.bandPart(tf.ones([blockSize, blockSize]), -1, 0));
    this.buffers.push({ name, tensor, dtype: "F32" });
    return tensor;
  }
}

/**
 * `masked_fill(tril[:T, :T] == 0, -inf)` as a bias added to the attention
 * scores: (T, T), 0 on and below the diagonal, −∞ above (a query never
 * sees a later key).
 */
export function causalMaskBias(tril: tf.Tensor, T: number): tf.Tensor {
  const future = tril.slice([0, 0], [T, T]).equal(0); // (T, T)
  return tf.where(future, tf.fill([T, T], -Infinity), tf.zeros([T, T]));
}

/**
 * `generate()`'s step: the logits after the last `blockSize` ids of
 * `context` (positions beyond the table do not exist), from a forward pass
 * `forward` (1, T) → (1, T, V).
 */
export function lastTokenLogits(
  context: number[],
  blockSize: number,
  forward: (x: tf.Tensor) => tf.Tensor,
): tf.Tensor1D {
  if (context.length === 0) throw new RangeError("a transformer needs at least one context token");
  const ids = context.slice(-blockSize);
  const logits = forward(tf.tensor2d(ids, [1, ids.length], "int32")); // (1, T, V)
  const V = logits.shape[2]!;
  return logits.slice([0, ids.length - 1, 0], [1, 1, V]).reshape([V]) as tf.Tensor1D;
}
