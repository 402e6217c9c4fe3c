/**
 * Sampling the next token from a model's logits: the original's plain
 * `torch.multinomial(softmax(logits))`, plus temperature, top-k and top-p.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { recomputingDecoder } from "../models/decoding.ts";
import type { Decoder, LanguageModel } from "../models/model.ts";
import type { Rng } from "../lib/rng.ts";

/** How to turn logits into a choice. The defaults reproduce the original. */
export interface SamplingOptions {
  /** Divides the logits; < 1 sharpens, > 1 flattens. Default 1. */
  temperature?: number;
  /** Keep only the k most likely tokens (0: all). */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p (1: all). */
  topP?: number;
}

/** `softmax(logits / temperature)` (V), in float64: the probabilities sampling draws from. */
export function softmax(logits: ArrayLike<number>, temperature = 1): Float64Array {
  const V = logits.length;
  let max = -Infinity;
  for (let i = 0; i < V; i++) max = Math.max(max, logits[i]);
  const probs = new Float64Array(V);
  let total = 0;
  for (let i = 0; i < V; i++) {
    // (l - max) / T, not l / T - max / T: never Infinity - Infinity, so a
    // temperature too small to divide by gives its limit, greedy decoding.
    total += probs[i] = Math.exp((logits[i] - max) / temperature);
  }
  for (let i = 0; i < V; i++) probs[i] /= total;
  return probs;
}

/** Draws one token id from `logits` (V), with one number from `rng`. */
export function sampleFromLogits(
  logits: Float32Array,
  options: SamplingOptions,
  rng: Pick<Rng, "random">,
): number {
  const V = logits.length;
  const order = Array.from({ length: V }, (_, i) => i);
  const probs = softmax(logits, options.temperature ?? 1);

  const topK = options.topK ?? 0;
  const topP = options.topP ?? 1;
  let kept = V;
  if (topK > 0 || topP < 1) {
    order.sort((a, b) => probs[b] - probs[a]);
    if (topK > 0) kept = Math.min(kept, topK);
    if (topP < 1) {
      let mass = 0;
      for (let r = 0; r < kept; r++) {
        mass += probs[order[r]];
        if (mass >= topP) {
          kept = r + 1;
          break;
        }
      }
    }
  }
  let keptMass = 0;
  for (let r = 0; r < kept; r++) keptMass += probs[order[r]];
  let u = rng.random() * keptMass;
  for (let r = 0; r < kept; r++) {
    u -= probs[order[r]];
    if (u < 0) return order[r];
  }
  return order[kept - 1];
}

/**
 * The model's decoder for `rows` rows starting from `context` (its cheap
 * step), or, for a model without one, one that recomputes each row's
 * `nextTokenLogits` at every step.
 */
export function startDecoding(
  model: LanguageModel,
  context: readonly number[],
  rows: number,
): Decoder {
  return model.decoder?.(context, rows) ??
    recomputingDecoder(
      context,
      rows,
      Infinity,
      (contexts) => tf.stack(contexts.map((c) => model.nextTokenLogits(c))) as tf.Tensor2D,
    );
}

/**
 * Samples `count` tokens after `context` in each of `rows` rows at once
 * (one forward for all rows per step), calling `onToken` with each row's
 * tokens as they come and the logits each was drawn from. Returns the rows'
 * new ids.
 *
 * Row r draws its random numbers as if the rows were sampled one after
 * another: the same stream gives the same text in any number of rows, and
 * the stream ends where it would have.
 */
export async function generateRows(
  model: LanguageModel,
  context: readonly number[],
  rows: number,
  count: number,
  options: SamplingOptions,
  rng: Rng,
  onToken?: (row: number, id: number, logits: Float32Array) => void,
): Promise<number[][]> {
  const uniforms = new Float64Array(rows * count); // (rows, count): one draw per token
  for (let i = 0; i < uniforms.length; i++) uniforms[i] = rng.random();
  const out = Array.from({ length: rows }, () => [] as number[]);
  if (count === 0) return out;
  const decoder = startDecoding(model, context, rows);
  try {
    const next = new Int32Array(rows);
    for (let i = 0; i < count; i++) {
      const logits = await decoder.logits.data() as Float32Array; // (rows, V): one read per step
      const V = logits.length / rows;
      for (let r = 0; r < rows; r++) {
        const drawn = { random: () => uniforms[r * count + i] };
        const rowLogits = logits.subarray(r * V, (r + 1) * V); // (V)
        next[r] = sampleFromLogits(rowLogits, options, drawn);
        out[r].push(next[r]);
        onToken?.(r, next[r], rowLogits);
      }
      if (i < count - 1) decoder.push(next); // the last token's successor is never needed
    }
  } finally {
    decoder.dispose();
  }
  return out;
}

/**
 * Samples `count` tokens after `context`, calling `onToken` with each as it
 * comes (so text can stream) and the logits it was drawn from. Returns the
 * new ids.
 */
export async function generateTokens(
  model: LanguageModel,
  context: readonly number[],
  count: number,
  options: SamplingOptions,
  rng: Rng,
  onToken?: (id: number, logits: Float32Array) => void,
): Promise<number[]> {
  const [ids] = await generateRows(
    model,
    context,
    1,
    count,
    options,
    rng,
    onToken && ((_, id, logits) => onToken(id, logits)),
  );
  return ids;
}
