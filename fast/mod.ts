/**
 * Everything that exists only for speed, registered as the fast paths of
 * the layers (`nn/fast_paths.ts`) per backend. Each computes what the plain
 * layer computes, by another route; tests hold each to its plain version.
 *
 * - WASM: our WebAssembly SIMD kernels on both cores (`wasm/`) for the
 *   products, attention, LayerNorm and AdamW, and loops over tfjs's memory
 *   (`host.ts`) where tfjs would run many small kernels or lacks one.
 * - cpu: the same loops over memory.
 * - WebGPU: our WGSL kernels (`webgpu/`), one tfjs kernel each way for
 *   each layer (a dispatch or a few) where tfjs's composition runs tens:
 *   AdamW of every parameter, LayerNorm, attention (with dropout too),
 *   cross-entropy, linear layers around tfjs's fused product, the
 *   embedding, BatchNorm, bigramLM's counted loss, the join of gptLM's
 *   per-head weights, dropout.
 *   Also mixture-of-experts groups that need no host read (WebGPU cannot
 *   read a tensor synchronously under Deno).
 *
 * Nothing outside `run/` imports this folder: the layers and models read
 * complete without it.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type AdamWStep, type FastPaths, registerFastPaths } from "../nn/fast_paths.ts";
import { bigramLossHost } from "./bigram_loss.ts";
import { routeToAllExperts } from "./expert_groups.ts";
import {
  adamwUpdateCpu,
  chosenGatesHost,
  concatColumnsHost,
  embeddingHost,
  layerNormHost,
  loadBalancingLossHost,
  topkGatesHost,
} from "./host.ts";
import { adamwUpdateWasm } from "./wasm/adamw_kernel.ts";
import { attentionWasm, packedAttentionWasm } from "./wasm/attention.ts";
import { cachedAttentionWasm } from "./wasm/cached_attention.ts";
import { dropoutWasmMask } from "./wasm/dropout_kernel.ts";
import { gemmAlonePeak, multiplyAddPeak } from "./wasm/gemm_kernel.ts";
import { readInPlaceOnWasm } from "./wasm/in_place.ts";
import { layerNormWasm, layerNormWasmFits } from "./wasm/layer_norm_kernel.ts";
import { linearOutInWasm, linearWasm } from "./wasm/linear.ts";
import { matMulWasm, sharedPool } from "./wasm/matmul.ts";
import {
  concatColumnsWasm,
  embeddingWasm,
  indexAddWasm,
  scaleRowsWasm,
} from "./wasm/rows_kernel.ts";
import { webgpuFastPaths } from "./webgpu/mod.ts";

let installed = false;
let wasmKernelsReplaced = false;

/**
 * Registers every backend's fast paths (once), and the kernels of `backend`,
 * the one just started (tfjs loads a backend's own kernels only when it
 * starts, and ours replace one of them).
 */
export function installFastPaths(backend: string): void {
  if (backend === "wasm" && !wasmKernelsReplaced) {
    wasmKernelsReplaced = true;
    readInPlaceOnWasm();
  }
  if (installed) return;
  installed = true;
  registerFastPaths("wasm", {
    matMul: matMulWasm,
    linear: linearWasm,
    linearOutIn: linearOutInWasm,
    embedding: embeddingWasm,
    indexAdd: indexAddWasm,
    scaleRows: scaleRowsWasm,
    layerNorm: (x, w, b, eps) =>
      layerNormWasmFits(x.shape[x.shape.length - 1])
        ? layerNormWasm(eps)(x, w, b)
        : layerNormHost(x, w, b, eps),
    causalSelfAttention: (q, k, v, nHead, weightsDropout) =>
      attentionWasm(nHead, weightsDropout)(q, k, v),
    causalSelfAttentionQKV: (qkv, nHead, weightsDropout) =>
      packedAttentionWasm(nHead, weightsDropout)(qkv),
    cachedSelfAttention: (q, k, v, nHead) =>
      q.shape[1] === k.shape[1]
        ? attentionWasm(nHead)(q, k, v) // the whole window: causal self-attention
        : cachedAttentionWasm(q, k, v, nHead),
    dropout: dropoutWasmMask,
    bigramLoss: bigramLossHost,
    concatColumns: concatColumnsWasm,
    topkGates: topkGatesHost,
    chosenGates: chosenGatesHost,
    loadBalancingLoss: loadBalancingLossHost,
    adamwUpdate: eachParameter(adamwUpdateWasm),
  });
  registerFastPaths("cpu", {
    embedding: embeddingHost,
    layerNorm: layerNormHost,
    bigramLoss: bigramLossHost,
    concatColumns: concatColumnsHost,
    topkGates: topkGatesHost,
    chosenGates: chosenGatesHost,
    loadBalancingLoss: loadBalancingLossHost,
    adamwUpdate: eachParameter(adamwUpdateCpu),
    dropout: dropoutWasmMask,
  });
  registerFastPaths("webgpu", { ...webgpuFastPaths, routeToExperts: routeToAllExperts });
}

/** An AdamW update of one parameter's tensors as one of every parameter's, in turn. */
function eachParameter(
  update: (tensors: tf.Tensor[], step: AdamWStep) => void,
): FastPaths["adamwUpdate"] {
  return (updates, step) => {
    for (const tensors of updates) update(tensors, step);
  };
}

/**
 * The rate (GFLOP/s) at which one thread here does WebAssembly f32x4
 * multiply-adds with no memory traffic, how many threads our products use
 * (the ceiling of the products on WASM), and the rate one thread reaches
 * with our product kernel alone on hot data.
 */
export function wasmProductCeiling(): {
  gflopsPerThread: number;
  threads: number;
  kernelGflopsPerThread: number;
} {
  return {
    gflopsPerThread: multiplyAddPeak(),
    threads: sharedPool().threads,
    kernelGflopsPerThread: gemmAlonePeak(),
  };
}
