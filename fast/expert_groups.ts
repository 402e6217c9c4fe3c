/**
 * Expert groups without a host read, for WebGPU: under Deno a WebGPU tensor
 * cannot be read back synchronously, and the plain `routeToExperts` needs
 * its group sizes in the middle of the forward pass. Here every expert's
 * group is all N tokens in order, and an entry that is not one of the
 * token's choices has weight 0: the mixture's numbers are the same, its
 * expert products E/k times larger.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { ExpertGroups } from "../nn/fast_paths.ts";

/** `routeToExperts` with every (token, expert) pair an entry: indices (N, k) → N·E entries. */
export function routeToAllExperts(
  indices: tf.Tensor2D,
  numExperts: number,
  capacity?: number,
): ExpertGroups {
  const [N, k] = indices.shape;
  const E = numExperts;
  const choices = tf.unstack(indices, 1).map((experts) => tf.oneHot(experts, E).cast("float32")); // k × (N, E)
  const chosen = choices.reduce((a, b) => a.add(b)); // (N, E): 1 where e is one of token n's choices
  // Token n's slot for expert e: n·k + j where indices[n, j] = e.
  const choiceOf = choices.map((choice, j) => choice.mul(j)).reduce((a, b) => a.add(b)); // (N, E)
  const slotOf = choiceOf.add(tf.range(0, N * k, k).reshape([N, 1])); // (N, E)
  let weight = chosen;
  if (capacity !== undefined) {
    // An expert keeps its first `capacity` tokens: those with fewer than `capacity` before them.
    const before = tf.cumsum(chosen.transpose(), 1, true).transpose(); // (N, E)
    weight = chosen.mul(before.neg().add(capacity - 0.5).step());
  }
  return {
    rows: tf.tile(tf.range(0, N, 1, "int32"), [E]) as tf.Tensor1D, // expert by expert, token by token
    slots: slotOf.transpose().reshape([E * N]).cast("int32") as tf.Tensor1D,
    sizes: Array.from({ length: E }, () => N),
    weights: weight.transpose().reshape([E * N]) as tf.Tensor1D,
  };
}
