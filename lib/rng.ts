/**
 * The one seeded random stream of a run: weight init, batch positions,
 * dropout masks and sampling all draw from it, so a seed fixes a run and its
 * saved state resumes one exactly.
 *
 * sfc32 (Chris Doty-Humphrey's small fast counting generator): 128 bits of
 * state, passes PractRand, and is fast enough in JavaScript to fill dropout
 * masks.
 *
 * @module
 */

/** Serialisable generator state: four unsigned 32-bit words. */
export type RngState = [number, number, number, number];

/** A seeded pseudo-random generator with save/restore. */
export class Rng {
  #a = 0;
  #b = 0;
  #c = 0;
  #d = 0;
  #spareNormal: number | null = null;

  /** Seeds the stream; the same seed always gives the same numbers. */
  constructor(seed: number) {
    this.#a = 0x9e3779b9;
    this.#b = 0x243f6a88;
    this.#c = 0xb7e15162;
    this.#d = seed >>> 0;
    // Mix in the high bits of seeds above 2^32 too.
    this.#c ^= Math.floor(seed / 0x100000000) >>> 0;
    for (let i = 0; i < 15; i++) this.nextUint32();
  }

  /** The next unsigned 32-bit integer. */
  nextUint32(): number {
    const t = (((this.#a + this.#b) | 0) + this.#d) | 0;
    this.#d = (this.#d + 1) | 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) | 0;
    this.#c = (this.#c << 21) | (this.#c >>> 11);
    this.#c = (this.#c + t) | 0;
    return t >>> 0;
  }

  /** Uniform in [0, 1), 32 bits of resolution. */
  random(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Uniform integer in [0, n), without modulo bias. */
  below(n: number): number {
    if (!(n >= 1 && n <= 4294967296 && Number.isInteger(n))) {
      throw new RangeError(`below(${n}): n must be an integer in [1, 2^32]`);
    }
    const limit = 4294967296 - (4294967296 % n);
    let x = this.nextUint32();
    while (x >= limit) x = this.nextUint32();
    return x % n;
  }

  /** Standard normal sample (Box–Muller, both values used). */
  normal(): number {
    if (this.#spareNormal !== null) {
      const z = this.#spareNormal;
      this.#spareNormal = null;
      return z;
    }
    const u = 1 - this.random(); // (0, 1]: log(0) never happens
    const v = this.random();
    const r = Math.sqrt(-2 * Math.log(u));
    this.#spareNormal = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /** `n` samples of N(0, std²). */
  normals(n: number, std: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.normal() * std;
    return out;
  }

  /** `n` samples of U(-bound, bound). */
  uniforms(n: number, bound: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (this.random() * 2 - 1) * bound;
    return out;
  }

  /** The state, to save beside a checkpoint. */
  getState(): { words: RngState; spareNormal: number | null } {
    return {
      words: [this.#a, this.#b, this.#c, this.#d],
      spareNormal: this.#spareNormal,
    };
  }

  /** Restores a state from {@link getState}. */
  setState(state: { words: RngState; spareNormal: number | null }): void {
    [this.#a, this.#b, this.#c, this.#d] = state.words.map((w) => w | 0);
    this.#spareNormal = state.spareNormal;
  }
}
