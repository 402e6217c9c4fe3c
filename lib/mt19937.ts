/**
 * The Mersenne Twister (MT19937) of Matsumoto and Nishimura, the generator
 * under both CPython's `random` and PyTorch's CPU `torch.Generator`. The two
 * differ only in how a seed fills the state: CPython splits the seed into
 * 32-bit words for `init_by_array`, PyTorch passes its low 32 bits to
 * `init_genrand`.
 *
 * Source: the reference `mt19937ar.c` (`init_genrand`, `init_by_array`,
 * `genrand_int32`), as CPython's `Modules/_randommodule.c` and PyTorch's
 * `aten/src/ATen/core/MT19937RNGEngine.h` carry it.
 *
 * @module
 */

/** Words of state. */
export const MT_N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER_MASK = 0x80000000;
const LOWER_MASK = 0x7fffffff;

/** MT19937: 624 words of state and the position of the next word to temper. */
export class Mt19937 {
  /** The state words. */
  readonly mt = new Uint32Array(MT_N);
  /** Position of the next word to temper, 0..624 (624 = regenerate first). */
  index = MT_N;

  /** The reference `init_genrand(s)`: fills the state from one 32-bit word. */
  initGenrand(s: number): this {
    const mt = this.mt;
    mt[0] = s >>> 0;
    for (let i = 1; i < MT_N; i++) {
      const prev = mt[i - 1];
      mt[i] = (Math.imul(1812433253, prev ^ (prev >>> 30)) + i) >>> 0;
    }
    this.index = MT_N;
    return this;
  }

  /** The reference `init_by_array(key)`: fills the state from any number of 32-bit words. */
  initByArray(key: number[]): this {
    const mt = this.mt;
    this.initGenrand(19650218);
    let i = 1;
    let j = 0;
    for (let k = Math.max(MT_N, key.length); k > 0; k--) {
      const prev = mt[i - 1];
      mt[i] = ((mt[i] ^ Math.imul(prev ^ (prev >>> 30), 1664525)) + key[j] + j) >>> 0;
      i++;
      j++;
      if (i >= MT_N) {
        mt[0] = mt[MT_N - 1];
        i = 1;
      }
      if (j >= key.length) j = 0;
    }
    for (let k = MT_N - 1; k > 0; k--) {
      const prev = mt[i - 1];
      mt[i] = ((mt[i] ^ Math.imul(prev ^ (prev >>> 30), 1566083941)) - i) >>> 0;
      i++;
      if (i >= MT_N) {
        mt[0] = mt[MT_N - 1];
        i = 1;
      }
    }
    mt[0] = 0x80000000;
    return this;
  }

  /** The reference `genrand_int32`: the next tempered 32-bit output. */
  nextUint32(): number {
    const mt = this.mt;
    if (this.index >= MT_N) {
      let kk = 0;
      let y: number;
      for (; kk < MT_N - M; kk++) {
        y = (mt[kk] & UPPER_MASK) | (mt[kk + 1] & LOWER_MASK);
        mt[kk] = mt[kk + M] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      }
      for (; kk < MT_N - 1; kk++) {
        y = (mt[kk] & UPPER_MASK) | (mt[kk + 1] & LOWER_MASK);
        mt[kk] = mt[kk + (M - MT_N)] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      }
      y = (mt[MT_N - 1] & UPPER_MASK) | (mt[0] & LOWER_MASK);
      mt[MT_N - 1] = mt[M - 1] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      this.index = 0;
    }
    let y = mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }
}
