/**
 * Everything that exists only for speed, registered as the fast paths of
 * the layers (`nn/fast_paths.ts`) per backend. Each computes what the plain
 * layer computes, by another route; tests hold each to its plain version.
 *
 * - WASM: our WebAssembly SIMD kernels on both cores (`wasm/`) for the
 *   products, attention, LayerNorm and AdamW, and loops over tfjs's memory
 *   (`host.ts`) where tfjs would run many small kernels or lacks one.
 * - cpu: the same loops over memory.
 * - WebGPU: `gather` for embeddings (its gradient exists there) and
 *   bigramLM's loss from pair counts.
 *
 * Nothing outside `run/` imports this folder: the layers and models read
 * complete without it.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { registerFastPaths } from "../nn/fast_paths.ts";
import { bigramLossBincount, bigramLossHost } from "./bigram_loss.ts";
import { adamwUpdateCpu, concatColumnsHost, embeddingHost, layerNormHost } from "./host.ts";
import { adamwUpdateWasm } from "./wasm/adamw_kernel.ts";
import { attentionWasm } from "./wasm/attention.ts";
import { dropoutWasmMask } from "./wasm/dropout_kernel.ts";
import { multiplyAddPeak } from "./wasm/gemm_kernel.ts";
import { shareIdentityOnWasm } from "./wasm/identity.ts";
import { layerNormWasm, layerNormWasmFits } from "./wasm/layer_norm_kernel.ts";
import { linearOutInWasm, linearWasm } from "./wasm/linear.ts";
import { matMulWasm, sharedPool } from "./wasm/matmul.ts";

let installed = false;

/** Registers every backend's fast paths (once). */
export function installFastPaths(): void {
  if (installed) return;
  installed = true;
  shareIdentityOnWasm();
  registerFastPaths("wasm", {
    matMul: matMulWasm,
    linear: linearWasm,
    linearOutIn: linearOutInWasm,
    embedding: embeddingHost,
    layerNorm: (x, w, b, eps) =>
      layerNormWasmFits(x.shape[x.shape.length - 1])
        ? layerNormWasm(eps)(x, w, b)
        : layerNormHost(x, w, b, eps),
    causalSelfAttention: (q, k, v, nHead, weightsDropout) =>
      attentionWasm(nHead, weightsDropout)(q, k, v),
    dropout: dropoutWasmMask,
    bigramLoss: bigramLossHost,
    concatColumns: concatColumnsHost,
    adamwUpdate: adamwUpdateWasm,
  });
  registerFastPaths("cpu", {
    embedding: embeddingHost,
    layerNorm: layerNormHost,
    bigramLoss: bigramLossHost,
    concatColumns: concatColumnsHost,
    adamwUpdate: adamwUpdateCpu,
    dropout: dropoutWasmMask,
  });
  registerFastPaths("webgpu", {
    embedding: (table, ids) => tf.gather(table, ids),
    dropout: dropoutWasmMask,
    bigramLoss: bigramLossBincount,
  });
}

/**
 * The rate (GFLOP/s) at which one thread here does WebAssembly f32x4
 * multiply-adds with no memory traffic, and how many threads our products
 * use: the ceiling of the products on WASM.
 */
export function wasmProductCeiling(): { gflopsPerThread: number; threads: number } {
  return { gflopsPerThread: multiplyAddPeak(), threads: sharedPool().threads };
}
