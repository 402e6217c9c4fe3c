/**
 * The small interface every model in `models/` shares, and the settings
 * they are built from.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { Rng } from "../lib/rng.ts";

/** The model names `--model_name` takes. */
export const MODEL_NAMES = [
  "bigramLM",
  "mlpLM",
  "gptLM",
  "block_wise_scaling_gptLM",
  "moeLM",
  "moa_moeLM",
] as const;
/** One of {@link MODEL_NAMES}. */
export type ModelName = typeof MODEL_NAMES[number];

/** Everything a model's shape and behaviour depend on (the original's names). */
export interface ModelConfig {
  vocab_size: number;
  block_size: number;
  dropout: number;
  // mlpLM
  char_encoding_len: number;
  use_batch_norm: boolean;
  max_hidden_nodes: number;
  active_fn: string;
  // gptLM and the models built like it
  n_embd: number;
  n_head: number;
  n_layer: number;
  // moeLM, moa_moeLM
  num_experts: number;
  top_k: number;
  nn_init: string;
  capacity_factor: number;
  aux_loss_coef: number;
  /** The original's bugs to reproduce, comma-separated (see `models/moe.ts`). */
  original_bugs: string;
  // block_wise_scaling_gptLM
  qkv_multiplier_min: number;
  qkv_multiplier_max: number;
  ffn_multiplier_min: number;
  ffn_multiplier_max: number;
  ffn_intermediate_divisor: number;
}

/**
 * A trainable tensor under its PyTorch `state_dict` name. Linear weights are
 * kept `[in, out]` here and `[out, in]` in PyTorch: `transposed` says so.
 */
export interface Param {
  name: string;
  variable: tf.Variable;
  transposed: boolean;
}

/** Saved, non-trained state (BatchNorm running statistics, attention masks). */
export interface Buffer {
  name: string;
  tensor: tf.Tensor;
  dtype: "F32" | "I64";
}

/**
 * Training mode draws dropout (and MoE router noise) from `rng`; evaluation
 * mode has no dropout. An `rng` in evaluation mode feeds only noise a
 * model adds there (the original's MoE routers, under `--original_bugs`).
 */
export type Mode = { training: true; rng: Rng } | { training: false; rng?: Rng };

/** Model inputs and next-token targets for one batch. */
export interface Batch {
  x: tf.Tensor;
  y: tf.Tensor;
}

/** What `train.ts`, `generate.ts` and `eval.ts` need from a model. */
export interface LanguageModel {
  readonly name: ModelName;
  readonly config: ModelConfig;
  /** Next-token targets each batch row predicts: every position, or only the one after the window. */
  readonly targetsPerRow: number;
  /** The context sampling starts from when there is no prompt (the original's). */
  readonly startContext: readonly number[];
  /** Trainable parameters in PyTorch's `parameters()` order. */
  readonly params: Param[];
  /** Non-trainable state, in PyTorch's `state_dict` order. */
  readonly buffers: Buffer[];
  /**
   * Inputs and targets from `batchSize` windows of `block_size + 1` ids
   * (row-major). With `rng`, adds the input noise the original's batches
   * have (mlpLM's prompt zeroing); without it, the batch is exact (eval.ts).
   */
  makeBatch(windows: Int32Array, batchSize: number, rng?: Rng): Batch;
  /** Logits for a batch's inputs: (B, T, V), or (B, V) for one target per row. */
  forward(x: tf.Tensor, mode: Mode): tf.Tensor;
  /** Mean cross-entropy of a batch. Training mode may update running statistics. */
  loss(x: tf.Tensor, y: tf.Tensor, mode: Mode): tf.Scalar;
  /** Next-token logits (V) after `context` ids, in evaluation mode. */
  nextTokenLogits(context: number[]): tf.Tensor1D;
  /**
   * Sampling's cheap step: a {@link Decoder} for `rows` rows that all start
   * from `context` and grow by one token each per step, whose logits equal
   * `nextTokenLogits` of each row's whole context. A transformer keeps each
   * layer's keys and values (`decoding.ts`'s `KVCache` and
   * `windowDecoder`), so a token costs one position's forward; a model that
   * reads a fixed window keeps the window (`recomputingDecoder`). A model
   * without one is sampled through `nextTokenLogits`, one row at a time.
   */
  decoder?(context: readonly number[], rows: number): Decoder;
  /**
   * Rough bytes one batch row holds through a training step, set only by
   * models whose rows are independent (no BatchNorm): their batches may be
   * split into micro-batches with the same mean loss and gradient.
   */
  readonly bytesPerRow?: number;
  /** Lines `train.ts` prints about the model at start (block_wise_scaling_gptLM: its per-block sizes). */
  readonly summary?: string[];
  /**
   * Mixture-of-experts models: how their routers spread the tokens of `x`
   * over the experts, in evaluation mode (printed at each evaluation).
   */
  expertLoad?(x: tf.Tensor): Promise<ExpertLoad>;

  // What `inspect.ts` draws. Each method is optional: a model has it when the
  // picture means something for it, and only then is the picture drawn.

  /**
   * The vector each token id stands for where the model first reads it, one
   * row per id: (V, D). gptLM: its token embedding table; bigramLM: its
   * table's rows; mlpLM: its first layer applied to the character's code
   * in the last input position.
   */
  tokenEmbeddings?(): tf.Tensor2D;
  /**
   * For models that read only the last token (bigramLM): the logits of the
   * next token after each token, (V, V), row = previous token.
   */
  transitionLogits?(): tf.Tensor2D;
  /**
   * For models with self-attention (gptLM and every transformer after it):
   * the attention weights of each layer and head for one row of ids
   * (the last `block_size` of them), in evaluation mode, computed by the
   * same layer code the forward pass runs: (L, H, T, T), row = query,
   * column = key; each row sums to 1 and is 0 right of the diagonal.
   */
  attentionWeights?(ids: readonly number[]): tf.Tensor4D;
  /**
   * For mixture-of-experts models: where each of the ids (the last
   * `block_size`) is routed, in evaluation mode.
   */
  expertRouting?(ids: readonly number[]): ExpertRouting;
}

/** How a mixture-of-experts model's routers spread one batch's tokens. */
export interface ExpertLoad {
  /**
   * One entry per router, e.g. `blocks.0.smoe`: the share of tokens each
   * expert gets. Each token goes to top_k experts, so a row sums to top_k.
   */
  routers: { name: string; share: number[] }[];
  /** The load-balancing loss on this batch, summed over the routers. */
  auxLoss: number;
  /** Whether training adds it to the loss (moa_moeLM) or it is shown only (moeLM). */
  trained: boolean;
}

/** Where a mixture-of-experts model routes each token, layer by routed layer. */
export interface ExpertRouting {
  /** One short name per routed layer, in forward order, e.g. `block 1`. */
  layers: string[];
  /** How many experts each token is sent to. */
  topK: number;
  /**
   * (R, T, E): each routed layer's router scores for each token, higher =
   * preferred (probabilities or logits: only their order is used).
   */
  scores: tf.Tensor3D;
}

/** What a model's settings cost, known before anything is built. */
export interface ModelSizes {
  /** Trainable values: {@link countParams} of the built model. */
  params: number;
  /** Values of its buffers (BatchNorm statistics, attention masks). */
  buffers: number;
  /** Tensors its parameters and buffers make. */
  tensors: number;
  /** Rough bytes one batch row holds through a training step: its input, activations and their gradients. */
  bytesPerRow: number;
  /** Whether its batches may be split into micro-batches ({@link LanguageModel.bytesPerRow} is set). */
  splittable: boolean;
}

/**
 * Rows being sampled together, one token per row per step, in evaluation
 * mode. The decoder owns its tensors (caches, weights prepared for
 * sampling, the logits): free them with `dispose`.
 */
export interface Decoder {
  /** The next token's logits for every row, (rows, V): valid until the next `push`. */
  readonly logits: tf.Tensor2D;
  /** Appends `ids[r]` to row r and computes the next logits. */
  push(ids: ArrayLike<number>): void;
  dispose(): void;
}

/** What each model module exports: how to build the model and what it knows about its settings. */
export interface ModelDefinition {
  /** A new model with weights drawn from `rng`. */
  create(config: ModelConfig, rng: Rng): LanguageModel;
  /**
   * Throws a `UsageError` naming the problem and a fix for settings that
   * pass the flag checks but cannot build this model.
   */
  checkConfig(config: Omit<ModelConfig, "vocab_size">): void;
  /**
   * The run id's fields between the parameter count and the learning rate,
   * as the original names its loss logs, e.g. `V-65`.
   */
  runIdFields(config: ModelConfig): string;
  /** Its sizes from the settings alone, so that what cannot fit is refused before it is built. */
  sizes(config: ModelConfig): ModelSizes;
  /** The flags that set its size, named when it is too large, e.g. `["--n_embd", "--n_layer"]`. */
  sizeFlags: readonly string[];
}

/**
 * Windows of T+1 ids → inputs `data[i:i+T]` and targets `data[i+1:i+T+1]`,
 * both (B, T) int32: the batches of the models that predict every position.
 */
export function nextTokenBatch(windows: Int32Array, batchSize: number, blockSize: number): Batch {
  return tf.tidy(() => {
    const w = tf.tensor2d(windows, [batchSize, blockSize + 1], "int32"); // (B, T+1)
    return {
      x: w.slice([0, 0], [batchSize, blockSize]), // (B, T)
      y: w.slice([0, 1], [batchSize, blockSize]), // (B, T)
    };
  });
}

/** Total number of trainable values, as the original prints it. */
export function countParams(model: LanguageModel): number {
  return model.params.reduce((n, p) => n + p.variable.size, 0);
}

/** Frees a model's tensors. */
export function disposeModel(model: LanguageModel): void {
  for (const p of model.params) p.variable.dispose();
  for (const b of model.buffers) b.tensor.dispose();
}
