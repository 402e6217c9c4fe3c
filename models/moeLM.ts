/**
 * moeLM: a sparse mixture-of-experts transformer, as weedge/baby-llm
 * `simpleLM/moeLM.py` (`SparseMoELanguageModel`, after makeMoE). gptLM's
 * layout with each block's feed-forward net replaced by `num_experts`
 * feed-forward experts, of which a noisy top-k router picks `top_k` per
 * token; a token's output is the gate-weighted sum of its experts' outputs.
 *
 * Two things differ from gptLM besides the experts, as in the original:
 * the attention scores are scaled by n_embd^-½ (its `Head` uses C = n_embd,
 * not the head size), and each head registers query, key, value in that
 * order. Every Linear weight is Kaiming- or Xavier-normal (`--nn_init`);
 * biases and embeddings keep PyTorch's defaults. moeLM has no
 * load-balancing loss of its own: the one printed at each evaluation is
 * only shown.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Rng } from "../lib/rng.ts";
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
import type { LanguageModel, Mode, ModelConfig, ModelDefinition, ModelSizes } from "./model.ts";
import { nextTokenBatch } from "./model.ts";
import { type KVCache, windowDecoder } from "./decoding.ts";
import {
  attentionWeightsOf,
  checkMoEConfig,
  createExperts,
  createRouter,
  expertCapacity,
  expertLoadOf,
  expertParamCount,
  type ExpertParams,
  expertRoutingOf,
  linearInit,
  loadBalancingLoss,
  moeBytesPerRow,
  noisyTopkRouter,
  parseOriginalBugs,
  type Probe,
  routerNoise,
  routerParamCount,
  type RouterParams,
  sparseMoE,
} from "./moe.ts";
import {
  causalMaskBias,
  lastTokenLogits,
  type Matrix,
  ParamList,
  type Vector,
} from "./transformer.ts";

/** One head's projections, each (C, hs). */
interface HeadParams {
  query: Matrix;
  key: Matrix;
  value: Matrix;
}

/** A block's query, key and value weights for all heads, (C, C) each. */
interface HeadWeights {
  query: tf.Tensor2D;
  key: tf.Tensor2D;
  value: tf.Tensor2D;
}

/** How attention gets its keys and values: q, k, v (B, T, C) → every head's output, (B, T, C). */
type Attend = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.Tensor;

/** One `Block`'s parameters. Linear weights are (in, out). */
interface BlockParams {
  heads: HeadParams[];
  projW: Matrix; // (C, C)
  projB: Vector; // (C)
  router: RouterParams;
  experts: ExpertParams[];
  ln1W: Vector;
  ln1B: Vector;
  ln2W: Vector;
  ln2B: Vector;
}

/**
 * Builds a moeLM with the original's init, drawn from `rng` in PyTorch's
 * `state_dict` order: embeddings N(0, 1), Linear weights by `nn_init`,
 * Linear biases U(±1/√fan_in), LayerNorm weight 1 and bias 0.
 */
function create(config: ModelConfig, rng: Rng): LanguageModel {
  checkConfig(config);
  const { vocab_size: V, block_size: T0, n_embd: C, n_head: H, n_layer: L } = config;
  const { num_experts: E, top_k: K } = config;
  const hs = C / H;
  const bugs = parseOriginalBugs(config.original_bugs);
  const init = linearInit(config.nn_init, rng);

  const store = new ParamList();
  const tokTable = store.add("token_embedding_table.weight", normalInit([V, C], 1, rng)) as Matrix;
  const posTable = store.add("position_embedding_table.weight", normalInit([T0, C], 1, rng));
  const blocks: BlockParams[] = [];
  let tril: tf.Tensor | null = null;
  for (let i = 0; i < L; i++) {
    const p = `blocks.${i}`;
    const heads: HeadParams[] = [];
    for (let h = 0; h < H; h++) {
      const q = `${p}.sa.heads.${h}`;
      tril = store.tril(`${q}.tril`, T0);
      heads.push({
        query: store.linearWeight(`${q}.query.weight`, init.weight(C, hs)),
        key: store.linearWeight(`${q}.key.weight`, init.weight(C, hs)),
        value: store.linearWeight(`${q}.value.weight`, init.weight(C, hs)),
      });
    }
    blocks.push({
      heads,
      projW: store.linearWeight(`${p}.sa.proj.weight`, init.weight(C, C)),
      projB: store.add(`${p}.sa.proj.bias`, init.bias(C, C)) as Vector,
      router: createRouter(store, `${p}.smoe.router`, C, E, init),
      experts: createExperts(store, `${p}.smoe`, C, E, init),
      ln1W: store.ones(`${p}.ln1.weight`, C),
      ln1B: store.zeros(`${p}.ln1.bias`, C),
      ln2W: store.ones(`${p}.ln2.weight`, C),
      ln2B: store.zeros(`${p}.ln2.bias`, C),
    });
  }
  const lnfW = store.ones("ln_f.weight", C);
  const lnfB = store.zeros("ln_f.bias", C);
  const lmW = store.linearWeight("lm_head.weight", init.weight(C, V)); // (C, V)
  const lmB = store.add("lm_head.bias", init.bias(C, V)) as Vector;
  // The original's noise in evaluation (`eval_noise`) draws from here when the mode brings no stream.
  const ownNoise = new Rng(rng.nextUint32());

  /** Dropout in training mode, identity in evaluation mode. */
  const drop = (x: tf.Tensor, mode: Mode) =>
    mode.training ? dropout(x, config.dropout, mode.rng) : x;

  /** A block's per-head projections side by side, (C, C) each: one product serves every head. */
  const headWeights = (blk: BlockParams): HeadWeights => ({
    query: concatColumns(blk.heads.map((h) => h.query)),
    key: concatColumns(blk.heads.map((h) => h.key)),
    value: concatColumns(blk.heads.map((h) => h.value)),
  });

  /**
   * `MultiHeadAttention` on ln1(x): x (B, T, C) → (B, T, C), reading keys
   * and values through `attend` (the window's, or sampling's cache).
   */
  function attention(
    x: tf.Tensor,
    blk: BlockParams,
    w: HeadWeights,
    attend: Attend,
    mode: Mode,
  ): tf.Tensor {
    // Scores q·k · C^-½ with C = n_embd: attention scales by hs^-½, so the
    // queries come in scaled by √(hs/C).
    const q = linear(x, w.query).mul(Math.sqrt(hs / C)); // (B, T, C)
    const heads = attend(q, linear(x, w.key), linear(x, w.value)); // (B, T, C)
    return drop(linear(heads, blk.projW, blk.projB), mode); // (B, T, C)
  }

  /** `SparseMoE` on ln2(x): x (B, T, C) → (B, T, C). */
  function mixture(
    x: tf.Tensor,
    blk: BlockParams,
    name: string,
    mode: Mode,
    probe: Probe,
  ): tf.Tensor {
    const [B, T] = x.shape;
    const u = x.reshape([B! * T!, C]) as tf.Tensor2D; // (N, C)
    const noise = routerNoise(mode, bugs.has("eval_noise"), ownNoise);
    const routing = noisyTopkRouter(u, blk.router, K, noise);
    probe.records?.push({
      name,
      indices: routing.indices,
      scores: routing.noisy,
      auxLoss: () => loadBalancingLoss(routing.noisy, routing.indices),
    });
    const out = sparseMoE(u, routing, blk.experts, {
      capacity: expertCapacity(config, B! * T!),
      overwrite: bugs.has("combine"),
      drop: mode.training && config.dropout > 0 ? (y) => drop(y, mode) : undefined,
    });
    return out.reshape([B!, T!, C]);
  }

  /** `Block.forward`: x (B, T, C) → (B, T, C). */
  function block(
    x: tf.Tensor,
    i: number,
    w: HeadWeights,
    attend: Attend,
    mode: Mode,
    probe: Probe,
  ): tf.Tensor {
    const blk = blocks[i];
    const a = x.add(attention(layerNorm(x, blk.ln1W, blk.ln1B), blk, w, attend, mode));
    return a.add(mixture(layerNorm(a, blk.ln2W, blk.ln2B), blk, `blocks.${i}.smoe`, mode, probe));
  }

  /** Logits for ids (B, T) with T ≤ block_size: (B, T, V). */
  function forward(x: tf.Tensor, mode: Mode, probe: Probe = {}): tf.Tensor {
    const T = x.shape[1]!;
    const pos = posTable.slice([0, 0], [T, C]); // (T, C)
    const maskBias = causalMaskBias(tril!, T); // (T, T)
    const weightsDropout = mode.training && config.dropout > 0
      ? { p: config.dropout, rng: mode.rng }
      : undefined;
    const attend: Attend = (q, k, v) =>
      causalSelfAttention(q, k, v, H, maskBias, weightsDropout, probe.seeWeights);
    let h = embedding(tokTable, x).add(pos); // (B, T, C)
    blocks.forEach((blk, i) => {
      h = block(h, i, headWeights(blk), attend, mode, probe);
    });
    return linear(layerNorm(h, lnfW, lnfB), lmW, lmB); // (B, T, V)
  }

  /**
   * The forward pass for sampling (`decoding.ts`'s CachedForward): ids
   * (R, t) at positions start…start+t−1 → the last position's logits
   * (R, V). Each block's attention adds the new keys and values to the
   * block's cache and attends to all of them; its experts see the new
   * positions only. `weights` are the blocks' {@link headWeights}.
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
    blocks.forEach((_, i) => {
      const attend: Attend = (q, k, v) => {
        const { keys, values } = caches[i].append(k, v); // (R, start + t, C)
        return cachedSelfAttention(q, keys, values, H); // (R, t, C)
      };
      h = block(h, i, weights[i], attend, { training: false }, {});
    });
    const last = h.slice([0, t - 1, 0], [R, 1, C]).reshape([R, C]); // (R, C)
    return linear(layerNorm(last, lnfW, lnfB), lmW, lmB) as tf.Tensor2D; // (R, V)
  }

  // A cached step computes each position once, when it is new. Expert capacity
  // (which tokens an expert drops depends on the whole window) and the original's
  // noise in evaluation (fresh for every position at every step) need the
  // whole window each time: sampling then runs full forwards.
  const cacheable = expertCapacity(config, T0) === undefined && !bugs.has("eval_noise");

  return {
    name: "moeLM",
    config,
    params: store.params,
    buffers: store.buffers,
    targetsPerRow: T0,
    startContext: [0],
    bytesPerRow: sizes(config).splittable ? sizes(config).bytesPerRow : undefined,
    makeBatch: (windows, batchSize) => nextTokenBatch(windows, batchSize, T0),
    forward: (x, mode) => forward(x, mode),
    loss(x, y, mode) {
      const logits = forward(x, mode); // (B, T, V)
      return crossEntropy(
        logits.reshape([-1, V]) as tf.Tensor2D,
        y.reshape([-1]) as tf.Tensor1D,
      );
    },
    nextTokenLogits: (context) =>
      lastTokenLogits(context, T0, (x) => forward(x, { training: false })),
    decoder: cacheable
      ? (context, rows) => {
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
      }
      : undefined,
    expertLoad: (x) =>
      expertLoadOf((records) => forward(x, { training: false }, { records }), E, false),
    tokenEmbeddings: () => tokTable.clone(),
    attentionWeights: (ids) =>
      attentionWeightsOf(ids, T0, (x, probe) => forward(x, { training: false }, probe)),
    expertRouting: (ids) =>
      expertRoutingOf(ids, T0, K, (x, probe) => forward(x, { training: false }, probe)),
  };
}

/** A moeLM's sizes from its settings (see {@link ModelSizes}). */
function sizes(config: ModelConfig): ModelSizes {
  const { vocab_size: V, block_size: T, n_embd: C, n_head: H, n_layer: L, num_experts: E } = config;
  return {
    // Embeddings; per block the heads' q, k, v (3C²), proj (C² + C), the
    // router, the experts and two LayerNorms (4C); ln_f; lm_head.
    params: V * C + T * C +
      L * (4 * C * C + C + routerParamCount(C, E) + expertParamCount(C, E) + 4 * C) + 2 * C +
      C * V + V,
    buffers: L * H * T * T, // one (T, T) mask per head
    tensors: 2 + L * (4 * H + 4 * E + 10) + 4,
    bytesPerRow: moeBytesPerRow(config),
    // With expert capacity, which tokens an expert drops depends on the whole batch.
    splittable: config.capacity_factor < 1,
  };
}

/** Settings that pass the flag checks but cannot build a moeLM. */
function checkConfig(config: Omit<ModelConfig, "vocab_size">): void {
  checkMoEConfig(config);
}

/** moeLM's module. */
export const moeLM: ModelDefinition = {
  create,
  checkConfig,
  runIdFields: (config) => `V-${config.vocab_size}`,
  sizes,
  sizeFlags: ["--n_embd", "--n_layer", "--num_experts", "--block_size"],
};
