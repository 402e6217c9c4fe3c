/**
 * gptLM: a decoder-only transformer, as weedge/baby-llm `simpleLM/gptLM.py`.
 * Token and position embeddings → `n_layer` pre-LayerNorm blocks (masked
 * multi-head self-attention, then a ReLU feed-forward net, each around a
 * residual) → final LayerNorm → `lm_head`.
 *
 * The original keeps one `key`/`query`/`value` Linear per head; so do the
 * parameters here, under the same names. The forward pass concatenates the
 * heads' queries (and keys, and values) into one (C, C) weight, so all heads
 * share one 2-D product, and runs attention over every (batch, head) at
 * once; autodiff splits the gradient back into the per-head weights.
 *
 * Sampling keeps each block's keys and values (`decoding.ts`): a new token
 * is one position through every block, attending to the cached ones.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { UsageError } from "../cli/errors.ts";
import {
  cachedSelfAttention,
  causalSelfAttention,
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
  type Buffer,
  type LanguageModel,
  type Mode,
  type ModelConfig,
  type ModelDefinition,
  type ModelSizes,
  nextTokenBatch,
  type Param,
} from "./model.ts";

/** Standard deviation of every Linear weight and both embeddings (`_init_weights`). */
const INIT_STD = 0.02;

type Matrix = tf.Variable<tf.Rank.R2>;
type Vector = tf.Variable<tf.Rank.R1>;

/** One head's projections, each (C, hs). */
interface HeadParams {
  key: Matrix;
  query: Matrix;
  value: Matrix;
}

/** A block's query, key and value weights for all heads, (C, C) each. */
interface HeadWeights {
  query: tf.Tensor2D;
  key: tf.Tensor2D;
  value: tf.Tensor2D;
}

/**
 * How attention gets its keys and values: q, k, v (B, T, C) of a block's
 * positions → every head's output side by side, (B, T, C). Training and
 * evaluation attend within the window; sampling adds k and v to a cache
 * and attends to all of it.
 */
type Attend = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.Tensor;

/** One `Block`'s parameters. Linear weights are (in, out). */
interface BlockParams {
  heads: HeadParams[];
  projW: Matrix; // (C, C)
  projB: Vector; // (C)
  fc1W: Matrix; // (C, 4C)
  fc1B: Vector; // (4C)
  fc2W: Matrix; // (4C, C)
  fc2B: Vector; // (C)
  ln1W: Vector; // (C)
  ln1B: Vector; // (C)
  ln2W: Vector; // (C)
  ln2B: Vector; // (C)
}

/**
 * Builds a gptLM with the original's init: N(0, 0.02) for every Linear
 * weight and both embeddings, zero biases, LayerNorm weight 1 and bias 0.
 * Values are drawn from `rng` in PyTorch's module order, each Linear weight
 * in PyTorch's (out, in) layout, so one seed gives one `state_dict`.
 */
function create(config: ModelConfig, rng: Rng): LanguageModel {
  checkConfig(config);
  const { vocab_size: V, block_size: T0, n_embd: C, n_head: H, n_layer: L } = config;
  const hs = C / H;

  const params: Param[] = [];
  const buffers: Buffer[] = [];
  const param = (name: string, value: tf.Tensor, transposed = false): tf.Variable => {
    const variable = tf.variable(value, true);
    value.dispose();
    params.push({ name, variable, transposed });
    return variable;
  };
  // nn.Linear's weight drawn (out, in) as PyTorch holds it, stored (in, out).
  const linearWeight = (name: string, inF: number, outF: number) =>
    param(name, tf.tidy(() => normalInit([outF, inF], INIT_STD, rng).transpose()), true) as Matrix;
  const ones = (name: string, n: number) => param(name, tf.ones([n])) as Vector;
  const zeros = (name: string, n: number) => param(name, tf.zeros([n])) as Vector;

  const tokTable = param(
    "token_embedding_table.weight",
    normalInit([V, C], INIT_STD, rng),
  ) as Matrix; // (V, C)
  const posTable = param("position_embedding_table.weight", normalInit([T0, C], INIT_STD, rng)); // (T0, C)
  // torch.tril(torch.ones(T0, T0)): ones on and below the diagonal, (T0, T0).
  const lowerTriangle = new Float32Array(T0 * T0);
  for (let t = 0; t < T0; t++) lowerTriangle.fill(1, t * T0, t * T0 + t + 1);
  const blocks: BlockParams[] = [];
  for (let i = 0; i < L; i++) {
    const p = `blocks.${i}`;
    const heads: HeadParams[] = [];
    for (let h = 0; h < H; h++) {
      const q = `${p}.sa.heads.${h}`;
      heads.push({
        key: linearWeight(`${q}.key.weight`, C, hs),
        query: linearWeight(`${q}.query.weight`, C, hs),
        value: linearWeight(`${q}.value.weight`, C, hs),
      });
      buffers.push({
        name: `${q}.tril`,
        tensor: tf.tensor2d(lowerTriangle, [T0, T0]),
        dtype: "F32",
      });
    }
    blocks.push({
      heads,
      projW: linearWeight(`${p}.sa.proj.weight`, C, C),
      projB: zeros(`${p}.sa.proj.bias`, C),
      fc1W: linearWeight(`${p}.ffwd.net.0.weight`, C, 4 * C),
      fc1B: zeros(`${p}.ffwd.net.0.bias`, 4 * C),
      fc2W: linearWeight(`${p}.ffwd.net.2.weight`, 4 * C, C),
      fc2B: zeros(`${p}.ffwd.net.2.bias`, C),
      ln1W: ones(`${p}.ln1.weight`, C),
      ln1B: zeros(`${p}.ln1.bias`, C),
      ln2W: ones(`${p}.ln2.weight`, C),
      ln2B: zeros(`${p}.ln2.bias`, C),
    });
  }
  const lnfW = ones("ln_f.weight", C);
  const lnfB = zeros("ln_f.bias", C);
  const lmW = linearWeight("lm_head.weight", C, V); // (C, V)
  const lmB = zeros("lm_head.bias", V);
  // Every head's mask is the same constant: the first one serves all.
  const tril = buffers[0].tensor;

  /** Dropout in training mode, identity in evaluation mode. */
  const drop = (x: tf.Tensor, mode: Mode) =>
    mode.training ? dropout(x, config.dropout, mode.rng) : x;

  /** Receives each layer's attention weights (B, H, T, T), in order, when given to `forward`. */
  type SeeWeights = (weights: tf.Tensor) => void;

  /**
   * A block's per-head (C, hs) projections side by side, (C, C) each: one
   * 2-D product serves every head. (One fused (C, 3C) product would need a
   * split, a slow kernel on WASM.)
   */
  const headWeights = (blk: BlockParams): HeadWeights => ({
    query: concatColumns(blk.heads.map((h) => h.query)),
    key: concatColumns(blk.heads.map((h) => h.key)),
    value: concatColumns(blk.heads.map((h) => h.value)),
  });

  /**
   * `Block.forward`: x (B, T, C) → (B, T, C), its attention
   * (`MultiHeadAttention` on ln1(x)) reading keys and values through
   * `attend`. With `lastOnly`, only the last position's output, (B, 1, C):
   * its query attends to every position's key and value, and the rest of
   * the block runs on that one position (all sampling reads of the last block).
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
    const heads = attend(linear(rows(xn), w.query), linear(xn, w.key), linear(xn, w.value)); // every head, side by side: (B, T or 1, C)
    const a = rows(x).add(drop(linear(heads, blk.projW, blk.projB), mode)); // (B, T or 1, C)
    const hidden = linear(layerNorm(a, blk.ln2W, blk.ln2B), blk.fc1W, blk.fc1B, "relu"); // (B, T or 1, 4C)
    return a.add(drop(linear(hidden, blk.fc2W, blk.fc2B), mode)); // (B, T or 1, C)
  }

  /** Logits for ids (B, T) with T ≤ block_size: (B, T, V). */
  function forward(x: tf.Tensor, mode: Mode, seeWeights?: SeeWeights): tf.Tensor {
    const T = x.shape[1]!;
    const pos = posTable.slice([0, 0], [T, C]); // (T, C)
    // masked_fill(tril[:T, :T] == 0, -inf) as a bias added to the scores: a query never sees a later key.
    const future = tril.slice([0, 0], [T, T]).equal(0); // (T, T)
    const maskBias = tf.where(future, tf.fill([T, T], -Infinity), tf.zeros([T, T])); // (T, T)
    const weightsDropout = mode.training && config.dropout > 0
      ? { p: config.dropout, rng: mode.rng }
      : undefined;
    const attend: Attend = (q, k, v) =>
      causalSelfAttention(q, k, v, H, maskBias, weightsDropout, seeWeights);
    let h = embedding(tokTable, x).add(pos); // (B, T, C)
    for (const blk of blocks) h = block(h, blk, headWeights(blk), attend, mode);
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
      const attend: Attend = (q, k, v) => {
        const { keys, values } = caches[i].append(k, v); // (R, start + t, C)
        return cachedSelfAttention(q, keys, values, H); // (R, t or 1, C)
      };
      h = block(h, blk, weights[i], attend, { training: false }, i === L - 1); // (R, t, C); (R, 1, C) after the last
    });
    return linear(layerNorm(h.reshape([R, C]), lnfW, lnfB), lmW, lmB) as tf.Tensor2D; // (R, V)
  }

  return {
    name: "gptLM",
    config,
    params,
    buffers,
    targetsPerRow: T0,
    startContext: [0],
    bytesPerRow: sizes(config).bytesPerRow,
    makeBatch: (windows, batchSize) => nextTokenBatch(windows, batchSize, T0),
    forward,
    loss(x, y, mode) {
      const logits = forward(x, mode); // (B, T, V)
      return crossEntropy(
        logits.reshape([-1, V]) as tf.Tensor2D,
        y.reshape([-1]) as tf.Tensor1D,
      );
    },
    nextTokenLogits(context) {
      if (context.length === 0) throw new RangeError("gptLM needs at least one context token");
      // generate()'s idx[:, -block_size:]: positions beyond the table do not exist.
      const ids = context.slice(-T0);
      const x = tf.tensor2d(ids, [1, ids.length], "int32"); // (1, T)
      const logits = forward(x, { training: false }); // (1, T, V)
      return logits.slice([0, ids.length - 1, 0], [1, 1, V]).reshape([V]) as tf.Tensor1D;
    },
    decoder(context, rows) {
      // The heads' weights side by side once: they do not change while sampling.
      const weights = blocks.map(headWeights);
      return windowDecoder(
        context,
        rows,
        T0,
        L,
        (ids, start, caches) => forwardCached(ids, start, caches, weights),
        () => weights.forEach((w) => tf.dispose([w.query, w.key, w.value])),
      );
    },
    tokenEmbeddings: () => tokTable.clone(),
    attentionWeights(ids) {
      return tf.tidy(() => {
        const row = ids.slice(-T0);
        const weights: tf.Tensor[] = []; // per layer (1, H, T, T)
        forward(tf.tensor2d(row, [1, row.length], "int32"), { training: false }, (w) => {
          weights.push(w);
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
