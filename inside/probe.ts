/**
 * The numbers the pictures show, read from a model exactly as it computes
 * them: next-token probabilities (generate's softmax at temperature 1), the
 * surprise of each character, attention weights, embeddings, the bigram
 * table and expert routing.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { LanguageModel } from "../models/model.ts";
import { softmax } from "../run/sampling.ts";

/** Rows of windows per forward pass when scoring positions past the first block. */
const WINDOWS_PER_PASS = 8;

/**
 * The model's next-token probabilities after each prefix of `ids`: row i is
 * P(· | ids[0..first+i]) over the vocabulary, with the context cut to the
 * last `block_size` ids as `generate` cuts it, in float64 at temperature 1.
 */
export async function nextTokenProbs(
  model: LanguageModel,
  ids: readonly number[],
  first = 0,
): Promise<Float64Array[]> {
  const rows: Float64Array[] = [];
  if (model.targetsPerRow === 1) {
    // One prediction per input: ask for each position as generate does.
    for (let t = first; t < ids.length; t++) {
      const logits = tf.tidy(() => model.nextTokenLogits(ids.slice(0, t + 1)));
      rows.push(softmax(await logits.data()));
      logits.dispose();
    }
    return rows;
  }
  // Models that predict every position: one window gives all the prefixes it starts.
  const T = model.config.block_size;
  const V = model.config.vocab_size;
  const head = Math.min(ids.length, T);
  if (first < head) {
    const logits = tf.tidy(() =>
      model.forward(tf.tensor2d(ids.slice(0, head), [1, head], "int32"), { training: false })
    ); // (1, head, V)
    const values = await logits.data();
    logits.dispose();
    for (let t = first; t < head; t++) rows.push(softmax(values.subarray(t * V, (t + 1) * V)));
  }
  // Past the first block, each position needs its own window of the T ids ending at it.
  for (let t0 = Math.max(first, T); t0 < ids.length; t0 += WINDOWS_PER_PASS) {
    const count = Math.min(WINDOWS_PER_PASS, ids.length - t0);
    const windows = new Int32Array(count * T);
    for (let w = 0; w < count; w++) windows.set(ids.slice(t0 + w - T + 1, t0 + w + 1), w * T);
    const logits = tf.tidy(() =>
      model.forward(tf.tensor2d(windows, [count, T], "int32"), { training: false })
        .slice([0, T - 1, 0], [count, 1, V])
    ); // (count, 1, V)
    const values = await logits.data();
    logits.dispose();
    for (let w = 0; w < count; w++) rows.push(softmax(values.subarray(w * V, (w + 1) * V)));
  }
  return rows;
}

/**
 * The surprise of each character of `ids` after the first `first`: −log2
 * P(ids[t] | ids[..t−1]), in bits (the loss, in bits instead of nats).
 */
export async function surpriseBits(
  model: LanguageModel,
  ids: readonly number[],
  first = 1,
): Promise<number[]> {
  if (first < 1) throw new RangeError("the first character has no context to be predicted from");
  const probs = await nextTokenProbs(model, ids.slice(0, -1), first - 1);
  return probs.map((p, i) => -Math.log2(p[ids[first + i]]));
}

/** Reads a tensor made by `make` as nested arrays, then frees it. */
async function read<T>(make: () => tf.Tensor): Promise<T> {
  const t = tf.tidy(make);
  const values = await t.array();
  t.dispose();
  return values as T;
}

/** Each layer's and head's attention weights for `ids`: [layer][head][query][key]. */
export function attentionMaps(model: LanguageModel, ids: readonly number[]) {
  const weights = model.attentionWeights;
  if (!weights) throw new Error(`${model.name} has no attention`);
  return read<number[][][][]>(() => weights.call(model, ids));
}

/** The model's token embeddings, one row per token id. */
export function tokenEmbeddings(model: LanguageModel): Promise<number[][]> {
  const embeddings = model.tokenEmbeddings;
  if (!embeddings) throw new Error(`${model.name} has no token embeddings`);
  return read<number[][]>(() => embeddings.call(model));
}

/** A bigram model's learned next-token table: row a = P(· | a), each row summing to 1. */
export async function learnedTransitions(model: LanguageModel): Promise<Float64Array[]> {
  const table = model.transitionLogits;
  if (!table) throw new Error(`${model.name} has no transition table`);
  const logits = await read<number[][]>(() => table.call(model));
  return logits.map((row) => softmax(row));
}

/**
 * The next-token table counted from `ids`: row a = how often each token
 * follows a, divided by how often a is followed at all (a row of zeros for a
 * token never followed).
 */
export function countedTransitions(ids: ArrayLike<number>, vocabSize: number): Float64Array[] {
  const counts = Array.from({ length: vocabSize }, () => new Float64Array(vocabSize));
  for (let i = 0; i + 1 < ids.length; i++) counts[ids[i]][ids[i + 1]]++;
  for (const row of counts) {
    const total = row.reduce((s, c) => s + c, 0);
    if (total > 0) { for (let b = 0; b < vocabSize; b++) row[b] /= total; }
  }
  return counts;
}

/** Where a mixture-of-experts model sends each token of `ids`, read out. */
export interface Routing {
  layers: string[];
  experts: number;
  /** [layer][token]: the expert with the highest score. */
  chosen: number[][];
  /** [layer][expert]: share of the tokens' top-k places each expert got (each row sums to 1). */
  load: number[][];
}

/** Reads {@link LanguageModel.expertRouting} into the first choice and load per layer. */
export async function expertRouting(
  model: LanguageModel,
  ids: readonly number[],
): Promise<Routing> {
  const route = model.expertRouting;
  if (!route) throw new Error(`${model.name} has no experts`);
  const routing = route.call(model, ids);
  const scores = await routing.scores.array(); // (R, T, E)
  routing.scores.dispose();
  const experts = scores[0]?.[0]?.length ?? 0;
  const chosen: number[][] = [];
  const load: number[][] = [];
  for (const layer of scores) {
    const counts = new Array<number>(experts).fill(0);
    chosen.push(layer.map((s) => {
      const order = [...s.keys()].sort((a, b) => s[b] - s[a]);
      for (const e of order.slice(0, routing.topK)) counts[e]++;
      return order[0];
    }));
    const total = counts.reduce((a, b) => a + b, 0);
    load.push(counts.map((c) => total > 0 ? c / total : 0));
  }
  return { layers: routing.layers, experts, chosen, load };
}
