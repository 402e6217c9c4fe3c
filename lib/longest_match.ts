/**
 * The longest piece of a short sequence that also occurs in a long one —
 * "was this sample seen in training?" — on a megabyte of text in well under
 * a second: binary search on the length, each length checked by one pass of
 * a rolling hash over the long text.
 *
 * @module
 */

/** Where the longest shared piece lies in both sequences. */
export interface SharedPiece {
  /** Its first index in the short sequence. */
  sampleStart: number;
  /** Its first occurrence in the long sequence. */
  textStart: number;
  length: number;
}

const BASE = 65599;
const FILTER_BITS = 20;

/**
 * The first place in `text` where some `length`-long piece of `sample`
 * occurs, or null. The rolling hash is a polynomial modulo 2³² (int32
 * arithmetic); hash hits are compared element by element, so a collision
 * never gives a wrong answer.
 */
function findPiece(sample: Int32Array, text: Int32Array, length: number): SharedPiece | null {
  if (length === 0) return { sampleStart: 0, textStart: 0, length: 0 };
  if (length > sample.length || length > text.length) return null;
  let power = 1; // BASE^(length-1) mod 2³²
  for (let i = 1; i < length; i++) power = Math.imul(power, BASE);
  const filter = new Uint8Array(1 << (FILTER_BITS - 3)); // a one-hash Bloom filter in front of the map
  const mask = (1 << FILTER_BITS) - 1;
  const starts = new Map<number, number[]>();
  let h = 0;
  for (let i = 0; i < sample.length; i++) {
    if (i >= length) h = (h - Math.imul(sample[i - length], power)) | 0;
    h = (Math.imul(h, BASE) + sample[i]) | 0;
    if (i < length - 1) continue;
    filter[(h & mask) >> 3] |= 1 << (h & 7);
    const list = starts.get(h);
    if (list) list.push(i - length + 1);
    else starts.set(h, [i - length + 1]);
  }
  h = 0;
  for (let i = 0; i < text.length; i++) {
    if (i >= length) h = (h - Math.imul(text[i - length], power)) | 0;
    h = (Math.imul(h, BASE) + text[i]) | 0;
    if (i < length - 1 || (filter[(h & mask) >> 3] & (1 << (h & 7))) === 0) continue;
    const textStart = i - length + 1;
    for (const sampleStart of starts.get(h) ?? []) {
      let k = 0;
      while (k < length && sample[sampleStart + k] === text[textStart + k]) k++;
      if (k === length) return { sampleStart, textStart, length };
    }
  }
  return null;
}

/**
 * The longest contiguous piece of `sample` that also occurs in `text`, with
 * its first position in each (length 0 when they share nothing).
 */
export function longestSharedPiece(
  sample: ArrayLike<number>,
  text: ArrayLike<number>,
): SharedPiece {
  const s = Int32Array.from(sample), t = Int32Array.from(text);
  // If a piece of length L occurs, so does one of every shorter length.
  let best = findPiece(s, t, 0)!;
  let lo = 0, hi = Math.min(sample.length, text.length); // lo: found; hi: largest possible
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    const found = findPiece(s, t, mid);
    if (found) {
      best = found;
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return best;
}
