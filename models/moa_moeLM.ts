/**
 * moa_moeLM: mixtures of experts in attention and in the feed-forward net,
 * as weedge/baby-llm `simpleLM/moa_moeLM.py` (`SparseMoAMoELanguageModel`,
 * after ModuleFormer and JetMoE). Each block's attention is a mixture of
 * attention experts: a noisy top-k router picks `top_k` experts per token;
 * expert e maps the token to its own queries (`input_linear`, part of the
 * heads each), all experts share the keys and values (`k_proj`, `v_proj`),
 * and expert e maps its heads' output back (`output_linear`), weighted by
 * its gate. The feed-forward net is moeLM's sparse mixture. Training adds
 * `aux_loss_coef` × the routers' load-balancing losses to the loss.
 *
 * Heads: n_head = top_k × (n_head / top_k); slot j of a token fills heads
 * j·n_head/top_k …, and head h reads key/value head h mod (n_head / top_k).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { UsageError } from "../cli/errors.ts";
import { Rng } from "../lib/rng.ts";
import {
  cachedSelfAttention,
  causalSelfAttention,
  concatColumns,
  crossEntropy,
  dropout,
  embedding,
  indexAdd,
  layerNorm,
  linear,
  matMul,
  normalInit,
  routeToExperts,
  scaleRows,
  uniformInit,
} from "../nn/layers.ts";
import type { LanguageModel, Mode, ModelConfig, ModelDefinition, ModelSizes } from "./model.ts";
import { nextTokenBatch } from "./model.ts";
import { type KVCache, windowDecoder } from "./decoding.ts";
import {
  attentionWeightsOf,
  checkMoEConfig,
  chosenGates,
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
  originalAuxLoss,
  parseOriginalBugs,
  type Probe,
  routerNoise,
  routerParamCount,
  type RouterParams,
  type RouterRecord,
  type Routing,
  sparseMoE,
} from "./moe.ts";
import {
  causalMaskBias,
  lastTokenLogits,
  type Matrix,
  ParamList,
  type Vector,
} from "./transformer.ts";

/**
 * How attention gets its keys and values: queries (B, T, H·hs), keys and
 * values (B, S, kvp) before they are repeated for the slots → every head's
 * output side by side, (B, T, H·hs). Training and evaluation attend within
 * the window; sampling adds k and v to a cache and attends to all of it.
 */
type Attend = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.Tensor;

/** One `Block`'s parameters. */
interface BlockParams {
  reduceBias: Vector; // (C): p_reduce_bias
  inputLinear: tf.Variable<tf.Rank.R3>; // (E, kvp, C): PyTorch's ParallelExperts layout
  outputLinear: tf.Variable<tf.Rank.R3>; // (E, C, kvp)
  attnRouter: RouterParams;
  kProj: Matrix; // (C, kvp)
  vProj: Matrix; // (C, kvp)
  ffnRouter: RouterParams;
  experts: ExpertParams[];
  ln1W: Vector;
  ln1B: Vector;
  ln2W: Vector;
  ln2B: Vector;
}

/**
 * Builds a moa_moeLM with the original's init, drawn from `rng` in
 * PyTorch's `state_dict` order: embeddings N(0, 1), Linear weights by
 * `nn_init`, Linear biases U(±1/√fan_in), the `ParallelExperts` weights
 * U(±1/output size), `p_reduce_bias` 0, LayerNorm weight 1 and bias 0.
 */
function create(config: ModelConfig, rng: Rng): LanguageModel {
  checkConfig(config);
  const { vocab_size: V, block_size: T0, n_embd: C, n_head: H, n_layer: L } = config;
  const { num_experts: E, top_k: K } = config;
  const hs = C / H;
  const kvp = (H / K) * hs; // kv_proj_size: one slot's heads
  const bugs = parseOriginalBugs(config.original_bugs);
  const init = linearInit(config.nn_init, rng);

  const store = new ParamList();
  const tokTable = store.add("token_embedding_table.weight", normalInit([V, C], 1, rng)) as Matrix;
  const posTable = store.add("position_embedding_table.weight", normalInit([T0, C], 1, rng));
  const blocks: BlockParams[] = [];
  let tril: tf.Tensor | null = null;
  for (let i = 0; i < L; i++) {
    const p = `blocks.${i}`;
    const reduceBias = store.zeros(`${p}.sa.p_reduce_bias`, C);
    tril = store.tril(`${p}.sa.tril`, T0);
    blocks.push({
      reduceBias,
      inputLinear: store.add(
        `${p}.sa.input_linear.weight`,
        uniformInit([E, kvp, C], 1 / kvp, rng),
      ) as tf.Variable<tf.Rank.R3>,
      outputLinear: store.add(
        `${p}.sa.output_linear.weight`,
        uniformInit([E, C, kvp], 1 / C, rng),
      ) as tf.Variable<tf.Rank.R3>,
      attnRouter: createRouter(store, `${p}.sa.router`, C, E, init),
      kProj: store.linearWeight(`${p}.sa.k_proj.weight`, init.weight(C, kvp)),
      vProj: store.linearWeight(`${p}.sa.v_proj.weight`, init.weight(C, kvp)),
      ffnRouter: createRouter(store, `${p}.smoe.router`, C, E, init),
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

  /** A router's load-balancing loss as this model computes it; `shape` is the (B, T) it came from. */
  const auxOf = (routing: Routing, shape: number[] | null) => () =>
    bugs.has("moa_aux")
      ? originalAuxLoss(
        shape ? routing.noisy.reshape([...shape, E]) : routing.noisy,
        shape ? routing.gates.reshape([...shape, E]) : routing.gates,
        shape ? routing.indices.reshape([...shape, K]) : routing.indices,
      )
      : loadBalancingLoss(routing.noisy, routing.indices);

  /**
   * `SparseMoEMultiHeadAttention` on ln1(x): x (B, T, C) → (B, T, C).
   * `map` (each chosen expert's queries) → attention of all heads, its keys
   * and values through `attend` (the window's, or sampling's cache) →
   * `reduce` (each expert's output projection, gated, summed).
   */
  function attention(
    x: tf.Tensor,
    blk: BlockParams,
    attend: Attend,
    mode: Mode,
    name: string,
    probe: Probe,
  ): tf.Tensor {
    const [B, T] = x.shape as [number, number, number];
    const N = B * T;
    const flat = x.reshape([N, C]) as tf.Tensor2D; // (N, C)
    const noise = routerNoise(mode, bugs.has("eval_noise"), ownNoise);
    const routing = noisyTopkRouter(flat, blk.attnRouter, K, noise);
    probe.records?.push({
      name,
      indices: routing.indices,
      scores: routing.noisy,
      auxLoss: auxOf(routing, null),
    });
    const groups = routeToExperts(routing.indices, E);
    const weights = groups.weights?.reshape([-1, 1]);
    /** Each expert's `ParallelExperts` slice applied to its run of rows: (M, in) → (M, out). */
    const perExpert = (rows: tf.Tensor2D, experts: tf.Tensor3D) => {
      const byExpert = tf.unstack(experts); // E × (out, in)
      const used = groups.sizes.flatMap((size, e) => size > 0 ? [e] : []);
      const parts = tf.split(rows, used.map((e) => groups.sizes[e])); // inputs.split(expert_size)
      // F.linear: (size, in) @ (in, out) for each expert's rows
      const outputs = parts.map((part, i) => matMul(part, byExpert[used[i]], false, true));
      const out = tf.concat(outputs) as tf.Tensor2D; // (M, out)
      return weights ? out.mul(weights) as tf.Tensor2D : out;
    };

    // map: slot n·k + j holds token n's queries from its j-th expert.
    const queries = perExpert(embedding(flat, groups.rows) as tf.Tensor2D, blk.inputLinear); // (M, kvp)
    const q = indexAdd(queries, groups.slots, N * K).reshape([B, T, K * kvp]); // (B, T, H·hs)
    const k = linear(x, blk.kProj); // (B, T, kvp)
    const v = linear(x, blk.vProj); // (B, T, kvp)
    const heads = attend(q, k, v); // (B, T, H·hs)

    // reduce: each slot's heads through its expert's output projection, times its gate.
    const slotOutputs = heads.reshape([N * K, kvp]) as tf.Tensor2D; // (N·k, kvp)
    const projected = perExpert(
      embedding(slotOutputs, groups.slots) as tf.Tensor2D,
      blk.outputLinear,
    ); // (M, C)
    const gates = bugs.has("moa_gates")
      // compute_gating gets the (N, E) router output and reads its first N·k values as the gates
      ? routing.gates.reshape([N * E]).slice(0, N * K)
      : chosenGates(routing.gates, routing.indices).reshape([N * K]);
    const entryGates = embedding(gates.reshape([N * K, 1]) as tf.Tensor2D, groups.slots); // (M, 1): each entry's gate
    const y = indexAdd(scaleRows(projected, entryGates as tf.Tensor2D), groups.rows, N); // (N, C)
    return drop(y.add(blk.reduceBias).reshape([B, T, C]), mode);
  }

  /** moeLM's `SparseMoE` on ln2(x): x (B, T, C) → (B, T, C). */
  function mixture(
    x: tf.Tensor,
    blk: BlockParams,
    mode: Mode,
    name: string,
    probe: Probe,
  ): tf.Tensor {
    const [B, T] = x.shape as [number, number, number];
    const u = x.reshape([B * T, C]) as tf.Tensor2D; // (N, C)
    const noise = routerNoise(mode, bugs.has("eval_noise"), ownNoise);
    const routing = noisyTopkRouter(u, blk.ffnRouter, K, noise);
    probe.records?.push({
      name,
      indices: routing.indices,
      scores: routing.noisy,
      auxLoss: auxOf(routing, [B, T]),
    });
    const out = sparseMoE(u, routing, blk.experts, {
      capacity: expertCapacity(config, B * T),
      overwrite: bugs.has("combine"),
      drop: mode.training && config.dropout > 0 ? (y) => drop(y, mode) : undefined,
    });
    return out.reshape([B, T, C]);
  }

  /**
   * Every slot's heads read the same keys and values: k or v (B, S, kvp),
   * kv head i, repeated for the top_k slots → (B, S, H·hs), head h reading
   * kv head h mod (n_head / top_k) (the original's `repeat(1, top_k, 1, 1)`).
   */
  const repeatHeads = (kv: tf.Tensor) => {
    const [B, S] = kv.shape as [number, number, number];
    const rows = kv.reshape([B * S, kvp]) as tf.Tensor2D; // (B·S, kvp)
    return concatColumns(Array.from({ length: K }, () => rows)).reshape([B, S, K * kvp]);
  };

  /** `Block.forward`: x (B, T, C) → (B, T, C). */
  function block(x: tf.Tensor, i: number, attend: Attend, mode: Mode, probe: Probe): tf.Tensor {
    const blk = blocks[i];
    const ln1 = layerNorm(x, blk.ln1W, blk.ln1B);
    const a = x.add(attention(ln1, blk, attend, mode, `blocks.${i}.sa`, probe));
    const ln2 = layerNorm(a, blk.ln2W, blk.ln2B);
    return a.add(mixture(ln2, blk, mode, `blocks.${i}.smoe`, probe));
  }

  /** Logits for ids (B, T) with T ≤ block_size: (B, T, V); each router's record in the probe's `records`. */
  function forward(x: tf.Tensor, mode: Mode, probe: Probe = {}): tf.Tensor {
    const T = x.shape[1]!;
    const pos = posTable.slice([0, 0], [T, C]); // (T, C)
    const maskBias = causalMaskBias(tril!, T); // (T, T)
    const weightsDropout = mode.training && config.dropout > 0
      ? { p: config.dropout, rng: mode.rng }
      : undefined;
    const attend: Attend = (q, k, v) =>
      causalSelfAttention(
        q,
        repeatHeads(k),
        repeatHeads(v),
        H,
        maskBias,
        weightsDropout,
        probe.seeWeights,
      );
    let h = embedding(tokTable, x).add(pos); // (B, T, C)
    blocks.forEach((_, i) => {
      h = block(h, i, attend, mode, probe);
    });
    return linear(layerNorm(h, lnfW, lnfB), lmW, lmB); // (B, T, V)
  }

  /**
   * The forward pass for sampling (`decoding.ts`'s CachedForward): ids
   * (R, t) at positions start…start+t−1 → the last position's logits
   * (R, V). Each block's cache keeps the keys and values (kvp wide, before
   * they are repeated for the slots); the routers and experts see the new
   * positions only.
   */
  function forwardCached(ids: tf.Tensor2D, start: number, caches: KVCache[]): tf.Tensor2D {
    const [R, t] = ids.shape;
    const pos = posTable.slice([start, 0], [t, C]); // (t, C)
    let h = embedding(tokTable, ids).add(pos); // (R, t, C)
    blocks.forEach((_, i) => {
      const attend: Attend = (q, k, v) => {
        const { keys, values } = caches[i].append(k, v); // (R, start + t, kvp)
        return cachedSelfAttention(q, repeatHeads(keys), repeatHeads(values), H); // (R, t, H·hs)
      };
      h = block(h, i, attend, { training: false }, {});
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
    name: "moa_moeLM",
    config,
    params: store.params,
    buffers: store.buffers,
    targetsPerRow: T0,
    startContext: [0],
    // No bytesPerRow: the load-balancing loss is over the whole batch, so rows are not independent.
    makeBatch: (windows, batchSize) => nextTokenBatch(windows, batchSize, T0),
    forward: (x, mode) => forward(x, mode),
    loss(x, y, mode) {
      const records: RouterRecord[] = [];
      const logits = forward(x, mode, { records }); // (B, T, V)
      const loss = crossEntropy(
        logits.reshape([-1, V]) as tf.Tensor2D,
        y.reshape([-1]) as tf.Tensor1D,
      );
      if (!mode.training) return loss;
      // Training only, as the original: cross-entropy + aux_loss_coef × Σ routers' losses.
      const aux = records.map((r) => r.auxLoss()).reduce((a, b) => a.add(b));
      return loss.add(aux.mul(config.aux_loss_coef)) as tf.Scalar;
    },
    nextTokenLogits: (context) =>
      lastTokenLogits(context, T0, (x) => forward(x, { training: false })),
    decoder: cacheable
      ? (context, rows) => windowDecoder(context, rows, T0, L, forwardCached)
      : undefined,
    expertLoad: (x) =>
      expertLoadOf((records) => forward(x, { training: false }, { records }), E, true),
    tokenEmbeddings: () => tokTable.clone(),
    attentionWeights: (ids) =>
      attentionWeightsOf(ids, T0, (x, probe) => forward(x, { training: false }, probe)),
    expertRouting: (ids) =>
      expertRoutingOf(ids, T0, K, (x, probe) => forward(x, { training: false }, probe)),
  };
}

/** A moa_moeLM's sizes from its settings (see {@link ModelSizes}). */
function sizes(config: ModelConfig): ModelSizes {
  const { vocab_size: V, block_size: T, n_embd: C, n_head: H, n_layer: L } = config;
  const { num_experts: E, top_k: K } = config;
  const kvp = (H / K) * (C / H);
  // Per block: p_reduce_bias, the experts' input and output projections
  // (2·E·kvp·C), the attention router, k_proj and v_proj (2·kvp·C), the
  // feed-forward router and experts, two LayerNorms.
  const block = C + 2 * E * kvp * C + routerParamCount(C, E) + 2 * kvp * C +
    routerParamCount(C, E) + expertParamCount(C, E) + 4 * C;
  return {
    params: V * C + T * C + L * block + 2 * C + C * V + V,
    buffers: L * T * T, // one (T, T) mask per block
    tensors: 2 + L * (4 * E + 18) + 4,
    bytesPerRow: moeBytesPerRow(config),
    // The load-balancing loss is over the whole batch: its rows are not independent.
    splittable: false,
  };
}

/** Settings that pass the flag checks but cannot build a moa_moeLM. */
function checkConfig(config: Omit<ModelConfig, "vocab_size">): void {
  checkMoEConfig(config);
  const { n_head: H, top_k: K } = config;
  if (H % K !== 0) {
    throw new UsageError(
      `moa_moeLM needs n_head (${H}) divisible by top_k (${K}): each chosen expert fills n_head/top_k heads`,
    );
  }
}

/** moa_moeLM's module. */
export const moa_moeLM: ModelDefinition = {
  create,
  checkConfig,
  runIdFields: (config) => `V-${config.vocab_size}`,
  sizes,
  sizeFlags: ["--n_embd", "--n_layer", "--num_experts", "--block_size"],
};
