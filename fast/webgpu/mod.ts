/**
 * The WebGPU fast paths: WGSL kernels for tfjs-backend-webgpu, each with
 * its gradient, under the names and signatures of the fast-path registry.
 * Importing this module registers their tfjs kernels for the `webgpu`
 * backend; {@link webgpuFastPaths} is what the registry takes.
 *
 * @module
 */
import type { FastPaths } from "../../nn/fast_paths.ts";
import { adamwUpdate } from "./adamw.ts";
import { causalSelfAttention } from "./attention.ts";
import { batchNorm1d } from "./batch_norm.ts";
import { bigramLoss } from "./bigram_loss.ts";
import { concatColumns } from "./concat.ts";
import { crossEntropy } from "./cross_entropy.ts";
import { dropout } from "./dropout.ts";
import { embedding } from "./embedding.ts";
import { layerNorm } from "./layer_norm.ts";
import { linear, linearOutIn } from "./linear.ts";

export {
  adamwUpdate,
  batchNorm1d,
  bigramLoss,
  causalSelfAttention,
  concatColumns,
  crossEntropy,
  dropout,
  embedding,
  layerNorm,
  linear,
  linearOutIn,
};

/** The fast paths implemented for WebGPU, by registry name. */
export const webgpuFastPaths: Partial<FastPaths> = {
  adamwUpdate,
  batchNorm1d,
  bigramLoss,
  causalSelfAttention,
  concatColumns,
  crossEntropy,
  dropout,
  embedding,
  layerNorm,
  linear,
  linearOutIn,
};
