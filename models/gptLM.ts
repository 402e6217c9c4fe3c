/**
 * gptLM: a decoder-only transformer, as weedge/baby-llm `simpleLM/gptLM.py`.
 * Token and position embeddings → `n_layer` pre-LayerNorm blocks (masked
 * multi-head self-attention, then a ReLU feed-forward net, each around a
 * residual) → final LayerNorm → `lm_head`.
 *
 * The original keeps one `key`/`query`/`value` Linear per head; so do the
 * parameters here, under the same names. The forward pass puts every head's
 * query, key and value weights side by side in one (C, 3C) weight (as
 * nanoGPT's `c_attn`), so one 2-D product gives all heads' queries, keys
 * and values, and runs attention over every (batch, head) at once;
 * autodiff splits the gradient back into the per-head weights.
 *
 * Sampling keeps each block's keys and values (`decoding.ts`): a new token
 * is one position through every block, attending to the cached ones.
 *
 * block_wise_scaling_gptLM is this model with a head count and a
 * feed-forward width of its own in each block: {@link createGPT} takes them
 * as a {@link BlockLayout}.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { UsageError } from "../cli/errors.ts";
import {
  cachedSelfAttention,
  causalSelfAttentionQKV,
  concatColumns,
  crossEntropy,
  dropout,
  embedding,
  layerNorm,
  linear,
  normalInit,
} from "../nn/layers.ts";
import type { Rng } from "../lib/rng.ts";
import { type KVCache, windowDecoder } from "./decoding.ts";
import {
  type LanguageModel,
  type Mode,
  type ModelConfig,
  type ModelDefinition,
  type ModelName,
  type ModelSizes,
  nextTokenBatch,
} from "./model.ts";
import {
  causalMaskBias,
  lastTokenLogits,
  type Matrix,
  ParamList,
  type Vector,
} from "./transformer.ts";

/** Standard deviation of every Linear weight and both embeddings (`_init_weights`). */
const INIT_STD = 0.02;

/** One head's projections, each (C, hs). */
interface HeadParams {
  key: Matrix;
  query: Matrix;
  value: Matrix;
}

/**
 * A block's query, key and value weights for all its h heads side by side,
 * (C, 3·h·hs): every head's query weights, then their keys', then their values'.
 */
type HeadWeights = tf.Tensor2D;

/**
 * How attention gets its keys and values: qkv (B, T, 3·h·hs), the queries,
 * keys and values of a block's positions side by side → every head's
 * output side by side, (B, T or 1, h·hs). Training and evaluation attend
 * within the window; sampling adds the keys and values to a cache and
 * attends to all of it.
 */
type Attend = (qkv: tf.Tensor) => tf.Tensor;

/** One `Block`'s parameters. Linear weights are (in, out); h heads, FFN width F (gptLM: H and 4C). */
interface BlockParams {
  heads: HeadParams[];
  projW: Matrix; // (h·hs, C)
  projB: Vector; // (C)
  fc1W: Matrix; // (C, F)
  fc1B: Vector; // (F)
  fc2W: Matrix; // (F, C)
  fc2B: Vector; // (C)
  ln1W: Vector; // (C)
  ln1B: Vector; // (C)
  ln2W: Vector; // (C)
  ln2B: Vector; // (C)
}

/** Each block's attention heads and feed-forward width. */
export interface BlockLayout {
  heads: number[];
  ffnWidths: number[];
}

/** gptLM's layout: n_head heads and a 4·n_embd-wide feed-forward net in every block. */
function uniformLayout(config: ModelConfig): BlockLayout {
  return {
    heads: Array.from({ length: config.n_layer }, () => config.n_head),
    ffnWidths: Array.from({ length: config.n_layer }, () => 4 * config.n_embd),
  };
}

/** gptLM's `create`. */
function create(config: ModelConfig, rng: Rng): LanguageModel {
  checkConfig(config);
  return createGPT(config, rng, uniformLayout(config), "gptLM");
}

/**
 * Builds a gptLM-like model (heads of size n_embd / n_head, `layout`'s
 * count of them and FFN width per block) with the original's init: N(0,
 * 0.02) for every Linear weight and both embeddings, zero biases, LayerNorm
 * weight 1 and bias 0. Values are drawn from `rng` in PyTorch's module
 * order, each Linear weight in PyTorch's (out, in) layout, so one seed
 * gives one `state_dict`.
 */
export function createGPT(
  config: ModelConfig,
  rng: Rng,
  layout: BlockLayout,
  name: ModelName,
): LanguageModel {
  const { vocab_size: V, block_size: T0, n_embd: C, n_head: H, n_layer: L } = config;
  const hs = C / H;

  const store = new ParamList();
  // nn.Linear's weight drawn (out, in) as PyTorch holds it, stored (in, out).
  const linearWeight = (name: string, inF: number, outF: number) =>
    store.linearWeight(name, normalInit([outF, inF], INIT_STD, rng));

  const tokTable = store.add(
    "token_embedding_table.weight",
    normalInit([V, C], INIT_STD, rng),
  ) as Matrix; // (V, C)
  const posTable = store.add("position_embedding_table.weight", normalInit([T0, C], INIT_STD, rng)); // (T0, C)
  const blocks: BlockParams[] = [];
  let tril: tf.Tensor | null = null;
  for (let i = 0; i < L; i++) {
    const p = `blocks.${i}`;
    const [h, F] = [layout.heads[i], layout.ffnWidths[i]];
    const heads: HeadParams[] = [];
    for (let j = 0; j < h; j++) {
      const q = `${p}.sa.heads.${j}`;
      heads.push({
        key: linearWeight(`${q}.key.weight`, C, hs),
        query: linearWeight(`${q}.query.weight`, C, hs),
        value: linearWeight(`${q}.value.weight`, C, hs),
      });
      tril = store.tril(`${q}.tril`, T0);
    }
    blocks.push({
      heads,
      projW: linearWeight(`${p}.sa.proj.weight`, h * hs, C),
      projB: store.zeros(`${p}.sa.proj.bias`, C),
      fc1W: linearWeight(`${p}.ffwd.net.0.weight`, C, F),
      fc1B: store.zeros(`${p}.ffwd.net.0.bias`, F),
      fc2W: linearWeight(`${p}.ffwd.net.2.weight`, F, C),
      fc2B: store.zeros(`${p}.ffwd.net.2.bias`, C),
      ln1W: store.ones(`${p}.ln1.weight`, C),
      ln1B: store.zeros(`${p}.ln1.bias`, C),
      ln2W: store.ones(`${p}.ln2.weight`, C),
      ln2B: store.zeros(`${p}.ln2.bias`, C),
    });
  }
  const lnfW = store.ones("ln_f.weight", C);
  const lnfB = store.zeros("ln_f.bias", C);
  const lmW = linearWeight("lm_head.weight", C, V); // (C, V)
  const lmB = store.zeros("lm_head.bias", V);

  /** Dropout in training mode, identity in evaluation mode. */
  const drop = (x: tf.Tensor, mode: Mode) =>
    mode.training ? dropout(x, config.dropout, mode.rng) : x;

  /** Receives each layer's attention weights (B, h, T, T), in order, when given to `forward`. */
  type SeeWeights = (weights: tf.Tensor) => void;

  /** A block's per-head (C, hs) projections side by side: one 2-D product serves every head. */
  const headWeights = (blk: BlockParams): HeadWeights =>
    concatColumns([
      ...blk.heads.map((h) => h.query),
      ...blk.heads.map((h) => h.key),
      ...blk.heads.map((h) => h.value),
    ]); // (C, 3·h·hs)

  /**
   * `Block.forward`: x (B, T, C) → (B, T, C), its attention
   * (`MultiHeadAttention` on ln1(x), h·hs wide inside) reading keys and
   * values through `attend`. With `lastOnly`, only the last position's output, (B, 1, C):
   * `attend` gives that position's heads (its query attends to every
   * position's key and value), and the rest of the block runs on that one
   * position (all sampling reads of the last block).
   */
  function block(
    x: tf.Tensor,
    blk: BlockParams,
    w: HeadWeights,
    attend: Attend,
    mode: Mode,
    lastOnly = false,
  ): tf.Tensor {
    const [B, T] = x.shape;
    const rows = (y: tf.Tensor) => lastOnly ? y.slice([0, T - 1, 0], [B, 1, C]) : y; // (B, T or 1, C)
    const xn = layerNorm(x, blk.ln1W, blk.ln1B); // (B, T, C)
    const heads = attend(linear(xn, w)); // (B, T, 3·h·hs) → every head, side by side: (B, T or 1, h·hs)
    const a = rows(x).add(drop(linear(heads, blk.projW, blk.projB), mode)); // (B, T or 1, C)
    const hidden = linear(layerNorm(a, blk.ln2W, blk.ln2B), blk.fc1W, blk.fc1B, "relu"); // (B, T or 1, F)
    return a.add(drop(linear(hidden, blk.fc2W, blk.fc2B), mode)); // (B, T or 1, C)
  }

  /** Logits for ids (B, T) with T ≤ block_size: (B, T, V). */
  function forward(x: tf.Tensor, mode: Mode, seeWeights?: SeeWeights): tf.Tensor {
    const T = x.shape[1]!;
    const pos = posTable.slice([0, 0], [T, C]); // (T, C)
    const maskBias = causalMaskBias(tril!, T); // (T, T)
    const weightsDropout = mode.training && config.dropout > 0
      ? { p: config.dropout, rng: mode.rng }
      : undefined;
    /** A block of `nHead` heads attends within the window. */
    const attend = (nHead: number): Attend => (qkv) =>
      causalSelfAttentionQKV(qkv, nHead, maskBias, weightsDropout, seeWeights);
    let h = embedding(tokTable, x).add(pos); // (B, T, C)
    for (const blk of blocks) h = block(h, blk, headWeights(blk), attend(blk.heads.length), mode);
    return linear(layerNorm(h, lnfW, lnfB), lmW, lmB); // (B, T, V)
  }

  /**
   * The forward pass for sampling (`decoding.ts`'s CachedForward): ids
   * (R, t) at positions start…start+t−1 → the last position's logits
   * (R, V). Each block's attention adds the new keys and values to the
   * block's cache and attends to all of them; the last block runs on the
   * last position alone. `weights` are the blocks' {@link headWeights},
   * made once per decoder.
   */
  function forwardCached(
    ids: tf.Tensor2D,
    start: number,
    caches: KVCache[],
    weights: HeadWeights[],
  ): tf.Tensor2D {
    const [R, t] = ids.shape;
    const pos = posTable.slice([start, 0], [t, C]); // (t, C)
    let h = embedding(tokTable, ids).add(pos); // (R, t, C)
    blocks.forEach((blk, i) => {
      const lastOnly = i === L - 1;
      const attend: Attend = (qkv) => {
        const [q, k, v] = tf.split(qkv, 3, 2); // (R, t, h·hs) each
        const { keys, values } = caches[i].append(k, v); // (R, start + t, h·hs)
        const queries = lastOnly ? q.slice([0, t - 1, 0], [R, 1, -1]) : q; // (R, t or 1, h·hs)
        return cachedSelfAttention(queries, keys, values, blk.heads.length); // (R, t or 1, h·hs)
      };
      h = block(h, blk, weights[i], attend, { training: false }, lastOnly); // (R, t, C); (R, 1, C) after the last
    });
    return linear(layerNorm(h.reshape([R, C]), lnfW, lnfB), lmW, lmB) as tf.Tensor2D; // (R, V)
  }

  return {
    name,
    config,
    params: store.params,
    buffers: store.buffers,
    targetsPerRow: T0,
    startContext: [0],
    bytesPerRow: layoutSizes(config, layout).bytesPerRow,
    makeBatch: (windows, batchSize) => nextTokenBatch(windows, batchSize, T0),
    forward,
    loss(x, y, mode) {
      const logits = forward(x, mode); // (B, T, V)
      return crossEntropy(
        logits.reshape([-1, V]) as tf.Tensor2D,
        y.reshape([-1]) as tf.Tensor1D,
      );
    },
    // generate()'s idx[:, -block_size:]: positions beyond the table do not exist.
    nextTokenLogits: (context) =>
      lastTokenLogits(context, T0, (x) => forward(x, { training: false })),
    decoder(context, rows) {
      // The heads' weights side by side once: they do not change while sampling.
      const weights = blocks.map(headWeights);
      return windowDecoder(
        context,
        rows,
        T0,
        L,
        (ids, start, caches) => forwardCached(ids, start, caches, weights),
        () => tf.dispose(weights),
      );
    },
    tokenEmbeddings: () => tokTable.clone(),
    attentionWeights(ids) {
      return tf.tidy(() => {
        const row = ids.slice(-T0);
        const most = Math.max(...layout.heads);
        const weights: tf.Tensor[] = []; // per layer (1, h, T, T)
        forward(tf.tensor2d(row, [1, row.length], "int32"), { training: false }, (w) => {
          // A block with fewer heads (block_wise_scaling_gptLM) shows empty maps for the rest.
          const missing = most - w.shape[1]!;
          weights.push(missing > 0 ? w.pad([[0, 0], [0, missing], [0, 0], [0, 0]]) : w);
        });
        return tf.concat(weights, 0) as tf.Tensor4D; // (L, H, T, T)
      });
    },
  };
}

/** A gptLM's sizes from its settings (see {@link ModelSizes}). */
function sizes(config: ModelConfig): ModelSizes {
  const { vocab_size: V, block_size: T, n_embd: C, n_head: H, n_layer: L } = config;
  return {
    // Embeddings; per block q, k, v and proj (4C² + C), the feed-forward net
    // (8C² + 5C) and two LayerNorms (4C); ln_f; lm_head.
    params: V * C + T * C + L * (12 * C * C + 10 * C) + 2 * C + C * V + V,
    buffers: L * H * T * T, // one (T, T) mask per head
    tensors: 2 + L * (4 * H + 10) + 4,
    // Per layer and position ~40 C-sized and ~6 (H, T)-sized float32 values
    // (activations, attention maps, masks), ×1.5 for the backward's
    // temporaries: measured ~250 MB at the default config on WASM.
    bytesPerRow: 4 * 1.5 * L * T * (40 * C + 6 * H * T),
    splittable: true,
  };
}

/**
 * The sizes of a gptLM-like model with `layout`'s heads and FFN widths per
 * block: gptLM's {@link sizes} summed block by block, the activations
 * estimated from the widest block.
 */
export function layoutSizes(config: ModelConfig, layout: BlockLayout): ModelSizes {
  const { vocab_size: V, block_size: T, n_embd: C, n_head: H } = config;
  const hs = C / H;
  let blockParams = 0;
  let heads = 0;
  let most = { heads: 0, width: C };
  layout.heads.forEach((h, i) => {
    const F = layout.ffnWidths[i];
    // q, k, v and proj (4·h·hs·C + C), the feed-forward net (2·C·F + F + C), two LayerNorms (4C)
    blockParams += 4 * h * hs * C + C + 2 * C * F + F + C + 4 * C;
    heads += h;
    // Its attention is h·hs wide; its FFN counts as F/4 C-sized values, as gptLM's 4C does.
    most = { heads: Math.max(most.heads, h), width: Math.max(most.width, h * hs, F / 4) };
  });
  const L = layout.heads.length;
  return {
    params: V * C + T * C + blockParams + 2 * C + C * V + V,
    buffers: heads * T * T,
    tensors: 2 + 4 * heads + 10 * L + 4,
    bytesPerRow: 4 * 1.5 * L * T * (40 * most.width + 6 * most.heads * T),
    splittable: true,
  };
}

/** Settings that pass the flag checks but cannot build a gptLM. */
function checkConfig(config: Omit<ModelConfig, "vocab_size">): void {
  const { n_embd: C, n_head: H } = config;
  if (C % H !== 0) {
    throw new UsageError(
      `n_embd (${C}) must be divisible by n_head (${H}): e.g. --n_head=${largestDivisor(C, H)}`,
    );
  }
}

function largestDivisor(n: number, atMost: number): number {
  for (let d = atMost; d > 1; d--) if (n % d === 0) return d;
  return 1;
}

/** gptLM's module. */
export const gptLM: ModelDefinition = {
  create,
  checkConfig,
  runIdFields: (config) => `V-${config.vocab_size}`,
  sizes,
  sizeFlags: ["--n_embd", "--n_layer", "--block_size"],
};
