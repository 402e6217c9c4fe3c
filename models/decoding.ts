/**
 * Decoders (`model.ts`'s {@link Decoder}): sampling a token at the cost of
 * one position instead of a whole window.
 *
 * A transformer's keys and values at a position depend only on the tokens
 * up to it, so each attention layer keeps those of the positions seen so
 * far ({@link KVCache}) and a new token runs through every layer as one
 * position that attends to the cache. A transformer model gets its decoder
 * from {@link windowDecoder} by writing its forward pass for "new
 * positions after the cached ones" ({@link CachedForward}).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { Decoder } from "./model.ts";

/** One attention layer's keys and values of the positions seen so far, (R, S, C) each. */
export class KVCache {
  #keys: tf.Tensor | null = null;
  #values: tf.Tensor | null = null;

  /** Positions held (S). */
  get length(): number {
    return this.#keys?.shape[1] ?? 0;
  }

  /**
   * Appends the keys and values of new positions, k and v (R, t, C), and
   * returns those of every position so far, (R, S + t, C). They outlive
   * the caller's `tf.tidy`; the cache frees them when it grows or clears.
   */
  append(k: tf.Tensor, v: tf.Tensor): { keys: tf.Tensor; values: tf.Tensor } {
    const join = (old: tf.Tensor | null, added: tf.Tensor) => {
      const all = tf.keep(old ? tf.concat([old, added], 1) : added); // (R, S + t, C)
      old?.dispose();
      return all;
    };
    this.#keys = join(this.#keys, k);
    this.#values = join(this.#values, v);
    return { keys: this.#keys, values: this.#values };
  }

  /** Forgets every position. */
  clear(): void {
    this.#keys?.dispose();
    this.#values?.dispose();
    this.#keys = this.#values = null;
  }
}

/**
 * A transformer's forward pass for sampling, in evaluation mode: ids (R, t)
 * at positions `start`…`start + t − 1`, after the `start` positions whose
 * keys and values each attention layer's cache holds → the logits (R, V) of
 * the last position. Each layer appends the new positions' keys and values
 * to its cache (`caches[i]` for layer i).
 */
export type CachedForward = (ids: tf.Tensor2D, start: number, caches: KVCache[]) => tf.Tensor2D;

/**
 * The decoder of a transformer with learned absolute positions that reads
 * at most `blockSize` tokens, cropping its context as the original's
 * `generate` does (`idx[:, -block_size:]`).
 *
 * Until the context is `blockSize` tokens long, each new token is one
 * position through every layer. After that the window slides: each token
 * moves to the position before, and since a position's embedding is added
 * to its token's at the input, every key and value of the window changes.
 * So past `blockSize` the cache is rebuilt from the window at every step:
 * one whole-window forward per token, what the original computes. The
 * logits are the original's at every step. `release` frees what the model
 * prepared for this decoder.
 */
export function windowDecoder(
  context: readonly number[],
  rows: number,
  blockSize: number,
  layers: number,
  forward: CachedForward,
  release?: () => void,
): Decoder {
  if (context.length === 0) throw new RangeError("a transformer needs at least one context token");
  const caches = Array.from({ length: layers }, () => new KVCache());
  const windows = Array.from({ length: rows }, () => context.slice(-blockSize)); // (R, ≤ blockSize)
  const run = (ids: number[][], start: number) =>
    tf.tidy(() => {
      const x = tf.tensor2d(Int32Array.from(ids.flat()), [rows, ids[0].length], "int32"); // (R, t)
      return forward(x, start, caches); // (R, V)
    });
  let logits = run(windows, 0);
  return {
    get logits() {
      return logits;
    },
    push(ids) {
      windows.forEach((w, r) => w.push(ids[r]));
      let next: tf.Tensor2D;
      if (windows[0].length <= blockSize) {
        next = run(windows.map((w) => w.slice(-1)), windows[0].length - 1); // one new position
      } else {
        windows.forEach((w) => w.shift()); // the window slides: every position changes
        caches.forEach((c) => c.clear());
        next = run(windows, 0);
      }
      logits.dispose();
      logits = next;
    },
    dispose() {
      logits.dispose();
      caches.forEach((c) => c.clear());
      release?.();
    },
  };
}

/**
 * The decoder of a model whose logits depend only on each row's last
 * `window` tokens and cost no more than one forward over them (bigramLM
 * reads a table row, mlpLM one input vector): every step recomputes them
 * with `logitsOf`, which gets each row's last tokens (at most `window`)
 * and returns (R, V).
 */
export function recomputingDecoder(
  context: readonly number[],
  rows: number,
  window: number,
  logitsOf: (windows: number[][]) => tf.Tensor2D,
): Decoder {
  const windows = Array.from({ length: rows }, () => context.slice(-window)); // (R, ≤ window)
  const run = () => tf.tidy(() => logitsOf(windows));
  let logits = run();
  return {
    get logits() {
      return logits;
    },
    push(ids) {
      windows.forEach((w, r) => {
        w.push(ids[r]);
        if (w.length > window) w.shift();
      });
      logits.dispose();
      logits = run();
    },
    dispose() {
      logits.dispose();
    },
  };
}
