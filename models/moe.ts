/**
 * The mixture-of-experts parts moeLM and moa_moeLM share, as the original's
 * `moeLM.py` and `moa_moeLM.py` define them: the noisy top-k router, the
 * sparse mixture of feed-forward experts, the load-balancing loss, the
 * weight init, and the original's bugs a run may reproduce.
 *
 * A sparse mixture runs as the original's `compute_gating` lays it out:
 * the tokens' choices sorted by expert, the chosen tokens gathered, one
 * product per expert over its run of rows, and the outputs, times their
 * gates, added back onto their tokens (`nn/layers.ts` `routeToExperts`,
 * `gatherRows`, `indexAdd`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { UsageError } from "../cli/errors.ts";
import type { Rng } from "../lib/rng.ts";
import {
  embedding,
  indexAdd,
  linear,
  logSumExp,
  multiHot,
  normalInit,
  routeToExperts,
  scaleRows,
  topkGates,
  uniformInit,
} from "../nn/layers.ts";
import { fastPath } from "../nn/fast_paths.ts";
import type { ExpertLoad, ExpertRouting, Mode, ModelConfig } from "./model.ts";
import type { Matrix, ParamList, Vector } from "./transformer.ts";

/** `--nn_init`'s values: the Linear weight init of the MoE models. */
export const NN_INITS = ["kaiming_normal", "xavier_normal"] as const;

/**
 * The original's mistakes `--original_bugs` can bring back (each is fixed
 * by default; README "Differences" shows each):
 * - `combine`: a token's experts are combined with `masked_scatter_`, so
 *   only its highest-numbered expert's gated output survives, not the sum;
 * - `eval_noise`: the routers add their noise in evaluation and sampling too;
 * - `moa_gates`: moa_moeLM's attention experts are weighted by the router's
 *   full (N, E) output read as if it were the (N, k) top-k gates;
 * - `moa_aux`: moa_moeLM's load-balancing loss counts choices from that same
 *   (N, E) output, and its feed-forward routers' loss sums over the batch
 *   axis only of a (B, T, E) tensor.
 */
export const ORIGINAL_BUGS = ["combine", "eval_noise", "moa_gates", "moa_aux"] as const;
/** One of {@link ORIGINAL_BUGS}. */
export type OriginalBug = typeof ORIGINAL_BUGS[number];

/** `--original_bugs`'s text → the bugs it names (`all`: every one; empty: none). */
export function parseOriginalBugs(text: string): Set<OriginalBug> {
  const names = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (names.includes("all")) return new Set(ORIGINAL_BUGS);
  for (const name of names) {
    if (!(ORIGINAL_BUGS as readonly string[]).includes(name)) {
      throw new UsageError(
        `--original_bugs: unknown bug '${name}'; name some of ${ORIGINAL_BUGS.join(", ")}, or all`,
      );
    }
  }
  return new Set(names as OriginalBug[]);
}

/** Checks moeLM's and moa_moeLM's shared settings. */
export function checkMoEConfig(config: Omit<ModelConfig, "vocab_size">): void {
  const { n_embd: C, n_head: H, num_experts: E, top_k: k } = config;
  if (C % H !== 0) {
    throw new UsageError(`n_embd (${C}) must be divisible by n_head (${H})`);
  }
  if (k > E) {
    throw new UsageError(
      `top_k (${k}) must not exceed num_experts (${E}): each token picks top_k different experts`,
    );
  }
  parseOriginalBugs(config.original_bugs);
}

/**
 * The MoE models' init (`init_weights`): every `nn.Linear` weight
 * Kaiming-normal (std √(2/fan_in), PyTorch's `kaiming_normal_` defaults) or
 * Xavier-normal (std √(2/(fan_in + fan_out))); the biases keep PyTorch's
 * default U(±1/√fan_in). Values drawn in PyTorch's (out, in) layout.
 */
export function linearInit(nnInit: string, rng: Rng) {
  return {
    weight(inF: number, outF: number): tf.Tensor {
      const std = nnInit === "kaiming_normal" ? Math.sqrt(2 / inF) : Math.sqrt(2 / (inF + outF));
      return normalInit([outF, inF], std, rng); // (out, in)
    },
    bias(inF: number, outF: number): tf.Tensor {
      return uniformInit([outF], 1 / Math.sqrt(inF), rng);
    },
  };
}

/** What a model's Linear layers are drawn from. */
export type LinearInit = ReturnType<typeof linearInit>;

/** A `NoisyTopkRouter`'s two Linears, weights (C, E). */
export interface RouterParams {
  routeW: Matrix;
  routeB: Vector;
  noiseW: Matrix;
  noiseB: Vector;
}

/** Adds a `NoisyTopkRouter`'s parameters under `prefix` (e.g. `blocks.0.smoe.router`). */
export function createRouter(
  store: ParamList,
  prefix: string,
  C: number,
  E: number,
  init: LinearInit,
): RouterParams {
  return {
    routeW: store.linearWeight(`${prefix}.topkroute_linear.weight`, init.weight(C, E)),
    routeB: store.add(`${prefix}.topkroute_linear.bias`, init.bias(C, E)) as Vector,
    noiseW: store.linearWeight(`${prefix}.noise_linear.weight`, init.weight(C, E)),
    noiseB: store.add(`${prefix}.noise_linear.bias`, init.bias(C, E)) as Vector,
  };
}

/** A router's decision for N tokens. */
export interface Routing {
  /** (N, E): the router logits plus noise, if any. */
  noisy: tf.Tensor2D;
  /** (N, E): softmax over each token's top_k noisy logits, 0 for the other experts. */
  gates: tf.Tensor2D;
  /** (N, top_k) int32: each token's experts, best first. */
  indices: tf.Tensor2D;
}

/**
 * `NoisyTopkRouter.forward` on u (N, C): logits plus N(0, 1) noise scaled by
 * softplus of a second Linear (when `noise` is given), the top_k of them,
 * and a softmax over those alone. Noise values are drawn row-major (token
 * by token, expert by expert) from `noise`.
 */
export function noisyTopkRouter(
  u: tf.Tensor2D,
  p: RouterParams,
  topK: number,
  noise: Rng | null,
): Routing {
  const [N] = u.shape;
  const E = p.routeW.shape[1];
  const logits = linear(u, p.routeW, p.routeB) as tf.Tensor2D; // (N, E)
  let noisy = logits;
  if (noise) {
    const scale = tf.softplus(linear(u, p.noiseW, p.noiseB)); // (N, E)
    noisy = logits.add(tf.tensor2d(noise.normals(N * E, 1), [N, E]).mul(scale));
  }
  const { gates, indices } = topkGates(noisy, topK); // (N, E) softmax over the top-k, (N, k)
  return { noisy, gates, indices };
}

/** `gates[n, indices[n, j]]`: gates (N, E), indices (N, k) → (N, k), each choice's gate. */
export function chosenGates(gates: tf.Tensor2D, indices: tf.Tensor2D): tf.Tensor2D {
  const fast = fastPath("chosenGates"); // a gather of k values a row
  if (fast) return fast(gates, indices);
  const E = gates.shape[1];
  const choices = tf.oneHot(indices, E).cast("float32"); // (N, k, E)
  return gates.expandDims(1).mul(choices).sum(2) as tf.Tensor2D; // (N, k)
}

/**
 * The noise a router adds in `mode`: the run's stream in training; in
 * evaluation none, unless the original's `eval_noise` bug is on (then the
 * mode's stream, or the model's own).
 */
export function routerNoise(mode: Mode, evalNoise: boolean, own: Rng): Rng | null {
  if (mode.training) return mode.rng;
  return evalNoise ? mode.rng ?? own : null;
}

/** One feed-forward `Expert`: net.0 Linear(C, 4C), ReLU, net.2 Linear(4C, C), Dropout. */
export interface ExpertParams {
  fc1W: Matrix; // (C, 4C)
  fc1B: Vector; // (4C)
  fc2W: Matrix; // (4C, C)
  fc2B: Vector; // (C)
}

/** Adds E experts' parameters under `prefix` (e.g. `blocks.0.smoe`): `experts.e.net.{0,2}`. */
export function createExperts(
  store: ParamList,
  prefix: string,
  C: number,
  E: number,
  init: LinearInit,
): ExpertParams[] {
  return Array.from({ length: E }, (_, e) => {
    const q = `${prefix}.experts.${e}.net`;
    return {
      fc1W: store.linearWeight(`${q}.0.weight`, init.weight(C, 4 * C)),
      fc1B: store.add(`${q}.0.bias`, init.bias(C, 4 * C)) as Vector,
      fc2W: store.linearWeight(`${q}.2.weight`, init.weight(4 * C, C)),
      fc2B: store.add(`${q}.2.bias`, init.bias(4 * C, C)) as Vector,
    };
  });
}

/** How a `SparseMoE` runs. */
export interface SparseMoEOptions {
  /** Expert capacity (SparseMoEWithCapacity), or none. */
  capacity?: number;
  /** The original's `masked_scatter_` combine: only the highest-numbered expert's output. */
  overwrite: boolean;
  /** The experts' output Dropout, in training with dropout > 0. */
  drop?: (x: tf.Tensor) => tf.Tensor;
}

/**
 * `SparseMoE.forward` on u (N, C) routed by `routing`: each token's output
 * is the sum over its experts of gate × Expert(u). Tokens are grouped by
 * expert and each expert runs once, on its rows.
 */
export function sparseMoE(
  u: tf.Tensor2D,
  routing: Routing,
  experts: ExpertParams[],
  options: SparseMoEOptions,
): tf.Tensor2D {
  const [N, C] = u.shape;
  const { indices } = routing;
  const k = indices.shape[1];
  let gates = chosenGates(routing.gates, indices); // (N, k)
  if (options.overwrite) gates = gates.mul(isHighestChoice(indices, experts.length));
  const groups = routeToExperts(indices, experts.length, options.capacity);
  const picked = embedding(u, groups.rows) as tf.Tensor2D; // (M, C): u[rows], expert by expert
  const used = experts.flatMap((expert, e) => groups.sizes[e] > 0 ? [expert] : []);
  if (used.length === 0) return tf.zerosLike(u); // every token over capacity
  const parts = tf.split(picked, groups.sizes.filter((size) => size > 0)); // each (size, C)
  const outputs = parts.map((rows, i) => {
    const hidden = linear(rows, used[i].fc1W, used[i].fc1B, "relu"); // (size, 4C)
    return linear(hidden, used[i].fc2W, used[i].fc2B); // (size, C)
  });
  let entryGates = embedding(gates.reshape([N * k, 1]) as tf.Tensor2D, groups.slots); // (M, 1)
  if (groups.weights) entryGates = entryGates.mul(groups.weights.reshape([-1, 1]));
  let weighted = scaleRows(tf.concat(outputs) as tf.Tensor2D, entryGates as tf.Tensor2D); // (M, C)
  if (options.drop) {
    // Each (token, chosen expert) its own Dropout mask, drawn in slot order whatever the grouping.
    const slotMasks = options.drop(tf.ones([N * k, C])) as tf.Tensor2D; // (N·k, C)
    weighted = weighted.mul(embedding(slotMasks, groups.slots));
  }
  return indexAdd(weighted, groups.rows, N); // (N, C)
}

/**
 * (N, k): 1 where `indices[n, j]` is token n's highest-numbered expert.
 * `masked_scatter_` runs the experts in order, each overwriting the rows of
 * its tokens, so that expert's output is the one a token keeps.
 */
function isHighestChoice(indices: tf.Tensor2D, E: number): tf.Tensor2D {
  const highest = tf.oneHot(indices.max(1), E).cast("float32"); // (N, E)
  return chosenGates(highest as tf.Tensor2D, indices);
}

/**
 * `expert_capacity` of `SparseMoEWithCapacity`, used at `capacity_factor`
 * ≥ 1: tokens × top_k / experts × factor, rounded down.
 */
export function expertCapacity(config: ModelConfig, tokens: number): number | undefined {
  const factor = config.capacity_factor;
  if (factor < 1) return undefined;
  return Math.floor((tokens * config.top_k / config.num_experts) * factor);
}

/**
 * The load-balancing loss `compute_aux_loss` means (Switch Transformer's,
 * plus 0.1 × the router z-loss), of a router's noisy logits (N, E) and
 * choices (N, k): E · Σₑ (share of probability)ₑ · (share of choices)ₑ
 * + 0.1 · mean over tokens of logsumexp(logits)².
 */
export function loadBalancingLoss(noisy: tf.Tensor2D, indices: tf.Tensor2D): tf.Scalar {
  const fast = fastPath("loadBalancingLoss"); // one pass over the rows instead of ~120 small kernels
  if (fast) return fast(noisy, indices);
  const E = noisy.shape[1];
  const probability = tf.softmax(noisy).sum(0); // (E)
  const choices = multiHot(indices, E).sum(0); // (E)
  const switchLoss = probability.div(probability.sum()).mul(choices.div(choices.sum())).sum()
    .mul(E);
  const zLoss = logSumExp(noisy).square().mean();
  return switchLoss.add(zLoss.mul(0.1)) as tf.Scalar;
}

/**
 * The original's `compute_aux_loss` as moa_moeLM calls it (`moa_aux` bug):
 * the router's whole output `gates` (..., E) passed where its (..., k) top-k
 * gates belong, so a choice counts when `gates[..., j] > 0` for j < k (its
 * j-th expert, not its j-th choice, was picked). For the feed-forward
 * routers the tensors are (B, T, E): the sums run over the batch axis only,
 * the shares are normalised over T, and the z-loss is divided by B.
 */
export function originalAuxLoss(
  noisy: tf.Tensor,
  gates: tf.Tensor,
  indices: tf.Tensor,
): tf.Scalar {
  const E = noisy.shape[noisy.rank - 1]!;
  const k = indices.shape[indices.rank - 1]!;
  const lead = noisy.shape.slice(0, -1);
  const picked = gates.slice(lead.map(() => 0).concat(0), [...lead, k]).step(); // (..., k): gates[..., j] > 0
  const choices = tf.oneHot(indices, E).cast("float32").mul(picked.expandDims(-1)).sum(-2); // (..., E)
  const probability = tf.softmax(noisy).sum(0); // (E) or (T, E)
  const counted = choices.sum(0);
  const normalise = (x: tf.Tensor) => x.div(tf.maximum(x.sum(0), 1e-12));
  const switchLoss = normalise(probability).mul(normalise(counted)).sum().mul(E);
  const count = noisy.shape[0]!;
  const zLoss = logSumExp(noisy).square().sum().div(count);
  return switchLoss.add(zLoss.mul(0.1)) as tf.Scalar;
}

/** What one router call leaves for the expert-load report and the aux loss. */
export interface RouterRecord {
  /** e.g. `blocks.0.smoe`. */
  name: string;
  indices: tf.Tensor2D;
  /** (N, E): the router's noisy logits, higher = preferred. */
  scores: tf.Tensor2D;
  /** This router's load-balancing loss as the model computes it. */
  auxLoss: () => tf.Scalar;
}

/**
 * `expertLoad` for a model whose forward pass fills `records`: each
 * router's share of tokens per expert, and the sum of their losses.
 */
export async function expertLoadOf(
  run: (records: RouterRecord[]) => void,
  numExperts: number,
  trained: boolean,
): Promise<ExpertLoad> {
  const names: string[] = [];
  const [shares, aux] = tf.tidy(() => {
    const records: RouterRecord[] = [];
    run(records);
    names.push(...records.map((r) => r.name));
    const share = records.map((r) => multiHot(r.indices, numExperts).mean(0));
    return [tf.stack(share), records.map((r) => r.auxLoss()).reduce((a, b) => a.add(b))];
  });
  const values = await shares.data();
  const auxLoss = (await aux.data())[0];
  tf.dispose([shares, aux]);
  return {
    routers: names.map((name, i) => ({
      name,
      share: Array.from(values.subarray(i * numExperts, (i + 1) * numExperts)),
    })),
    auxLoss,
    trained,
  };
}

/** Parameters of one `NoisyTopkRouter` (two Linear(C, E)). */
export function routerParamCount(C: number, E: number): number {
  return 2 * (C * E + E);
}

/** Parameters of E feed-forward experts (Linear(C, 4C), Linear(4C, C)). */
export function expertParamCount(C: number, E: number): number {
  return E * (8 * C * C + 5 * C);
}

/**
 * Rough bytes one batch row holds through an MoE model's training step:
 * gptLM's estimate (~40 C-sized and ~6 (H, T)-sized values per layer and
 * position, ×1.5) plus each token's top_k experts' 4C-wide activations.
 */
export function moeBytesPerRow(config: ModelConfig): number {
  const { block_size: T, n_embd: C, n_head: H, n_layer: L, top_k: k } = config;
  return 4 * 1.5 * L * T * (40 * C + 6 * H * T + 8 * k * C);
}

/** What a forward pass can hand out besides the logits (the expert-load report, inspect). */
export interface Probe {
  /** Each router call's record, in forward order. */
  records?: RouterRecord[];
  /** Each layer's attention weights (B, H, T, T), in order. */
  seeWeights?: (weights: tf.Tensor) => void;
}

/**
 * `LanguageModel.expertRouting` for a model whose forward pass fills a
 * probe's records: each router's scores for the last `blockSize` ids.
 * Layers are named `block 1`, … (`block 1 attention`, `block 1 ffn` where a
 * block has two routers).
 */
export function expertRoutingOf(
  ids: readonly number[],
  blockSize: number,
  topK: number,
  forward: (x: tf.Tensor, probe: Probe) => void,
): ExpertRouting {
  const row = ids.slice(-blockSize);
  const names: string[] = [];
  const scores = tf.tidy(() => {
    const records: RouterRecord[] = [];
    forward(tf.tensor2d(row, [1, row.length], "int32"), { records });
    const perBlock = new Map<string, number>();
    for (const r of records) {
      const block = Number(r.name.split(".")[1]) + 1;
      perBlock.set(String(block), (perBlock.get(String(block)) ?? 0) + 1);
    }
    for (const r of records) {
      const block = Number(r.name.split(".")[1]) + 1;
      const part = r.name.endsWith(".sa") ? "attention" : "ffn";
      names.push(perBlock.get(String(block))! > 1 ? `block ${block} ${part}` : `block ${block}`);
    }
    return tf.stack(records.map((r) => r.scores)) as tf.Tensor3D; // (R, T, E)
  });
  return { layers: names, topK, scores };
}

/** `LanguageModel.attentionWeights` from a forward pass that shows them: (L, H, T, T) for the last `blockSize` ids. */
export function attentionWeightsOf(
  ids: readonly number[],
  blockSize: number,
  forward: (x: tf.Tensor, probe: Probe) => void,
): tf.Tensor4D {
  return tf.tidy(() => {
    const row = ids.slice(-blockSize);
    const weights: tf.Tensor[] = []; // per layer (1, H, T, T)
    forward(tf.tensor2d(row, [1, row.length], "int32"), { seeWeights: (w) => weights.push(w) });
    return tf.concat(weights, 0) as tf.Tensor4D;
  });
}
