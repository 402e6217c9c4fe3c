/**
 * The one switch between the plain layers and their fast paths.
 *
 * Every layer in `layers.ts` (and the AdamW update) is written as the plain
 * tfjs composition, the reference. Code that exists only for speed lives in
 * `fast/` and registers, per backend, functions that compute the same
 * numbers by another route (a WebAssembly kernel, a loop over CPU memory, a
 * WGSL shader). A layer asks {@link fastPath} for one and, when the current
 * backend has it, hands the work over. With the fast paths off, every layer
 * runs its plain version: what the fast paths are tested against (to 1e-4),
 * and the "before" of `deno task bench --plain`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { Rng } from "../lib/rng.ts";

/** AdamW's per-step constants, the same for every parameter. */
export interface AdamWStep {
  beta1: number;
  beta2: number;
  eps: number;
  /** 1 − lr·weight_decay. */
  decay: number;
  /** lr / (1 − β1ᵗ). */
  stepSize: number;
  /** √(1 − β2ᵗ). */
  bc2Sqrt: number;
}

/** One parameter's tensors in an AdamW update: [param, grad, expAvg, expAvgSq]. */
export type AdamWTensors = [tf.Variable, tf.Tensor, tf.Variable, tf.Variable];

/** Dropout in training mode: its probability and the stream its masks are drawn from. */
export interface DropoutSpec {
  p: number;
  rng: Rng;
}

/** What `nn.BatchNorm1d` holds: affine parameters and running statistics. */
export interface BatchNormState {
  weight: tf.Variable;
  bias: tf.Variable;
  runningMean: tf.Variable;
  runningVar: tf.Variable;
  numBatchesTracked: tf.Variable;
}

/** A router's choices: each row's k largest scores and a softmax over them alone. */
export interface TopkGates {
  /** (N, E): the softmax over the row's chosen scores, 0 elsewhere. */
  gates: tf.Tensor2D;
  /** (N, k) int32: the chosen columns, largest score first. */
  indices: tf.Tensor2D;
}

/**
 * A mixture of experts' choices grouped by expert (`layers.ts`
 * `routeToExperts`): M entries, expert by expert, each a (token, slot) pair.
 */
export interface ExpertGroups {
  /** (M) int32: the token (row of the layer's input) of each entry. */
  rows: tf.Tensor1D;
  /** (M) int32: the slot n·k + j (token n's j-th choice) of each entry. */
  slots: tf.Tensor1D;
  /** Entries per expert, in expert order (Σ = M). */
  sizes: number[];
  /**
   * (M): 1 for an entry that is a real choice, 0 for one that only fills
   * the group; absent when every entry is real.
   */
  weights?: tf.Tensor1D;
}

/**
 * Everything a backend may compute by a faster route, by layer name. Each
 * has the signature of the plain function of the same name.
 */
export interface FastPaths {
  /** `op(a) @ op(b)`, batched over leading axes: see `layers.ts` `matMul`. */
  matMul(a: tf.Tensor, b: tf.Tensor, transposeA: boolean, transposeB: boolean): tf.Tensor;
  /** x (..., in) @ w (in, out) + b, then ReLU when asked: see `linear`. */
  linear(x: tf.Tensor, w: tf.Tensor2D, b?: tf.Tensor1D, activation?: "relu"): tf.Tensor;
  /** x (N, in) @ wᵀ + b with w (out, in): see `linearOutIn`. */
  linearOutIn(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D, inputIsData: boolean): tf.Tensor2D;
  /** Rows of `table` (V, C) picked by `ids`: see `embedding`. */
  embedding(table: tf.Tensor2D, ids: tf.Tensor): tf.Tensor;
  /** Rows of `values` (M, C) added into n rows at `rows`: see `indexAdd`. */
  indexAdd(values: tf.Tensor2D, rows: tf.Tensor1D, n: number): tf.Tensor2D;
  /** Each row of x (M, C) times its own number, scale (M, 1): see `scaleRows`. */
  scaleRows(x: tf.Tensor2D, scale: tf.Tensor2D): tf.Tensor2D;
  /** LayerNorm over the last axis: see `layerNorm`. */
  layerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor;
  /** Causal attention of every head, dropout on its weights if given: see `causalSelfAttention`. */
  causalSelfAttention(
    q: tf.Tensor,
    k: tf.Tensor,
    v: tf.Tensor,
    nHead: number,
    weightsDropout?: DropoutSpec,
  ): tf.Tensor;
  /** The same of q, k, v side by side in one tensor (B, T, 3C): see `causalSelfAttentionQKV`. */
  causalSelfAttentionQKV(qkv: tf.Tensor, nHead: number, weightsDropout?: DropoutSpec): tf.Tensor;
  /** Inverted dropout, the mask drawn from `rng`: see `dropout`. */
  dropout(x: tf.Tensor, p: number, rng: Rng): tf.Tensor;
  /** Attention of the last positions to cached keys and values: see `cachedSelfAttention`. */
  cachedSelfAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, nHead: number): tf.Tensor;
  /** Mean cross-entropy: see `crossEntropy`. */
  crossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar;
  /** bigramLM's loss straight from its table: see `models/bigramLM.ts`. */
  bigramLoss(table: tf.Tensor2D, x: tf.Tensor, y: tf.Tensor): tf.Scalar;
  /** BatchNorm1d: see `batchNorm1d`. */
  batchNorm1d(
    x: tf.Tensor2D,
    bn: BatchNormState,
    training: boolean,
    eps: number,
    momentum: number,
  ): tf.Tensor2D;
  /** `tf.concat(parts, 1)` of 2-D parts: see `concatColumns`. */
  concatColumns(parts: tf.Tensor2D[]): tf.Tensor2D;
  /** A mixture of experts' choices grouped by expert: see `routeToExperts`. */
  routeToExperts(indices: tf.Tensor2D, numExperts: number, capacity?: number): ExpertGroups;
  /** A router's top-k choices and their gates: see `topkGates`. */
  topkGates(noisy: tf.Tensor2D, k: number): TopkGates;
  /** `gates[n, indices[n, j]]`: see `chosenGates` in `models/moe.ts`. */
  chosenGates(gates: tf.Tensor2D, indices: tf.Tensor2D): tf.Tensor2D;
  /** A router's load-balancing loss: see `loadBalancingLoss` in `models/moe.ts`. */
  loadBalancingLoss(noisy: tf.Tensor2D, indices: tf.Tensor2D): tf.Scalar;
  /** One AdamW update of every [param, grad, expAvg, expAvgSq], in place: see `nn/adamw.ts`. */
  adamwUpdate(updates: AdamWTensors[], step: AdamWStep): void;
}

const registered = new Map<string, Partial<FastPaths>>();
let enabled = true;

/**
 * The fast version of `name` for the current backend, or undefined when
 * there is none or the fast paths are off: then the plain version runs.
 */
export function fastPath<K extends keyof FastPaths>(name: K): FastPaths[K] | undefined {
  return enabled ? registered.get(tf.getBackend())?.[name] : undefined;
}

/** Adds (or replaces) fast paths for one tfjs backend (`wasm`, `cpu`, `webgpu`). */
export function registerFastPaths(backend: string, paths: Partial<FastPaths>): void {
  registered.set(backend, { ...registered.get(backend), ...paths });
}

/** Whether the fast paths are on (the default). */
export function fastPaths(): boolean {
  return enabled;
}

/** Turns every fast path on or off. */
export function setFastPaths(on: boolean): void {
  enabled = on;
}
