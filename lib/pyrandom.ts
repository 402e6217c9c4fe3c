/**
 * An exact port of the parts of CPython's `random` module (3.11) that the
 * PyTorch reference code uses: the MT19937 generator with CPython's integer
 * seeding, `getrandbits`, `_randbelow`, `randrange`, `randint`, `shuffle`
 * and `random`. Same seed, same calls → same numbers as
 * `random.Random(seed)` in Python.
 *
 * Sources: CPython `Modules/_randommodule.c` (`random_seed`, `random_random`,
 * `_random_Random_getrandbits_impl`) and `Lib/random.py`
 * (`_randbelow_with_getrandbits`, `randrange`, `randint`, `shuffle`).
 *
 * Limitation: `getrandbits(k)` supports only `k <= 32` (CPython's one-word
 * fast path), so `_randbelow`/`randrange`/`randint` accept ranges of at most
 * 2**32 - 1 values. Everything the project needs is far below that.
 *
 * @module
 */

import { Mt19937, MT_N } from "./mt19937.ts";

/**
 * The generator state as a plain JSON-able object: the 624 32-bit words of
 * the Mersenne Twister plus the index of the next word to use (0..624).
 * `[...mt, index]` equals `random.Random().getstate()[1]` in Python.
 */
export interface PyRandomState {
  /** The 624 unsigned 32-bit state words. */
  mt: number[];
  /** Position of the next word to temper, 0..624 (624 = regenerate first). */
  index: number;
}

/** Splits |seed| into 32-bit words, least significant first (CPython's `random_seed`). */
function seedWords(seed: number | bigint): number[] {
  let n: bigint;
  if (typeof seed === "bigint") {
    n = seed;
  } else {
    if (!Number.isSafeInteger(seed)) {
      throw new RangeError(
        `PyRandom seed must be a safe integer or a bigint, got ${seed}`,
      );
    }
    n = BigInt(seed);
  }
  if (n < 0n) n = -n;
  const words: number[] = [];
  while (n > 0n) {
    words.push(Number(n & 0xffffffffn));
    n >>= 32n;
  }
  if (words.length === 0) words.push(0);
  return words;
}

/** Number of bits needed to represent the non-negative integer `n` (Python's `int.bit_length`). */
function bitLength(n: number): number {
  return n === 0 ? 0 : 32 - Math.clz32(n);
}

/**
 * CPython's `random.Random`, seeded with an integer. Produces bit-for-bit the
 * same sequence as Python for the methods it implements.
 *
 * @example
 * ```ts
 * const r = new PyRandom(1234);
 * r.randrange(10); // 7, as random.Random(1234).randrange(10)
 * ```
 */
export class PyRandom {
  #gen = new Mt19937();

  /**
   * Seeds like Python's `random.Random(seed)` for an int seed: MT19937
   * `init_by_array` with the absolute value split into 32-bit words, least
   * significant word first (a single word 0 for seed 0).
   *
   * @param seed a safe integer or a bigint (any size); the sign is ignored.
   */
  constructor(seed: number | bigint) {
    this.#gen.initByArray(seedWords(seed));
  }

  /**
   * Python's `getrandbits(k)`: a uniform integer in [0, 2**k).
   * Only `0 <= k <= 32` is supported (CPython's single-word path:
   * `genrand_uint32() >> (32 - k)`; `k = 0` returns 0 without consuming).
   */
  getrandbits(k: number): number {
    if (!Number.isInteger(k) || k < 0 || k > 32) {
      throw new RangeError(
        `getrandbits: k must be an integer in 0..32, got ${k}`,
      );
    }
    if (k === 0) return 0;
    return this.#gen.nextUint32() >>> (32 - k);
  }

  /**
   * Python's `_randbelow_with_getrandbits(n)`: a uniform integer in [0, n)
   * by rejection sampling on `getrandbits(n.bit_length())`.
   *
   * @param n integer, 1 <= n < 2**32.
   */
  _randbelow(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > 0xffffffff) {
      throw new RangeError(
        `_randbelow: n must be an integer in 1..${0xffffffff}, got ${n}`,
      );
    }
    const k = bitLength(n);
    let r = this.getrandbits(k);
    while (r >= n) r = this.getrandbits(k);
    return r;
  }

  /**
   * Python's `randrange(stop)` or `randrange(start, stop)` (step 1): a
   * uniform integer in [0, stop) or [start, stop).
   * The range must hold between 1 and 2**32 - 1 values.
   */
  randrange(start: number, stop?: number): number {
    if (!Number.isSafeInteger(start)) {
      throw new RangeError(`randrange: non-integer arg 1: ${start}`);
    }
    if (stop === undefined) {
      if (start > 0) return this._randbelow(start);
      throw new RangeError(`randrange: empty range for randrange(${start})`);
    }
    if (!Number.isSafeInteger(stop)) {
      throw new RangeError(`randrange: non-integer stop: ${stop}`);
    }
    const width = stop - start;
    if (width > 0) return start + this._randbelow(width);
    throw new RangeError(
      `randrange: empty range for randrange(${start}, ${stop})`,
    );
  }

  /** Python's `randint(a, b)`: a uniform integer in [a, b], both ends included. */
  randint(a: number, b: number): number {
    return this.randrange(a, b + 1);
  }

  /**
   * Python 3.11's `shuffle(x)`: shuffles `array` in place (Fisher–Yates from
   * the end, `j = _randbelow(i + 1)`) and returns it.
   */
  shuffle<T>(array: T[]): T[] {
    for (let i = array.length - 1; i >= 1; i--) {
      const j = this._randbelow(i + 1);
      const t = array[i];
      array[i] = array[j];
      array[j] = t;
    }
    return array;
  }

  /** Python's `random()`: a float in [0, 1) with 53 random bits. */
  random(): number {
    const a = this.#gen.nextUint32() >>> 5;
    const b = this.#gen.nextUint32() >>> 6;
    return (a * 67108864 + b) * (1 / 9007199254740992);
  }

  /**
   * A copy of the generator state as a plain JSON-able object (see
   * {@link PyRandomState}); pass it to {@link setstate} to continue the same
   * sequence later.
   */
  getstate(): PyRandomState {
    return { mt: Array.from(this.#gen.mt), index: this.#gen.index };
  }

  /**
   * Restores a state from {@link getstate} (e.g. after a JSON round trip).
   * Throws `RangeError` if it is not 624 unsigned 32-bit integers plus an
   * index in 0..624.
   */
  setstate(state: PyRandomState): void {
    const { mt, index } = state ?? {};
    if (!Array.isArray(mt) || mt.length !== MT_N) {
      throw new RangeError(
        `setstate: mt must be an array of ${MT_N} words, got ${
          Array.isArray(mt) ? `length ${mt.length}` : typeof mt
        }`,
      );
    }
    for (let i = 0; i < MT_N; i++) {
      const w = mt[i];
      if (!Number.isInteger(w) || w < 0 || w > 0xffffffff) {
        throw new RangeError(
          `setstate: mt[${i}] must be an unsigned 32-bit integer, got ${w}`,
        );
      }
    }
    if (!Number.isInteger(index) || index < 0 || index > MT_N) {
      throw new RangeError(
        `setstate: index must be an integer in 0..${MT_N}, got ${index}`,
      );
    }
    this.#gen.mt.set(mt);
    this.#gen.index = index;
  }
}
