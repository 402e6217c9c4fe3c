/**
 * The WebGPU fast paths: WGSL kernels for tfjs-backend-webgpu, each with
 * its gradient, under the names and signatures of the fast-path registry.
 * Importing this module registers their tfjs kernels for the `webgpu`
 * backend; {@link webgpuFastPaths} is what the registry takes.
 *
 * @module
 */
import { adamwUpdate } from "./adamw.ts";
import { causalSelfAttention } from "./attention.ts";
import { batchNorm1d } from "./batch_norm.ts";
import { bigramLoss } from "./bigram_loss.ts";
import { crossEntropy } from "./cross_entropy.ts";
import { embedding } from "./embedding.ts";
import { layerNorm } from "./layer_norm.ts";
import { linear, linearOutIn } from "./linear.ts";

export {
  adamwUpdate,
  batchNorm1d,
  bigramLoss,
  causalSelfAttention,
  crossEntropy,
  embedding,
  layerNorm,
  linear,
  linearOutIn,
};
export type { AdamWStepConstants } from "./adamw.ts";

/** The fast paths implemented for WebGPU, by registry name. */
export const webgpuFastPaths = {
  adamwUpdate,
  batchNorm1d,
  bigramLoss,
  causalSelfAttention,
  crossEntropy,
  embedding,
  layerNorm,
  linear,
  linearOutIn,
};
