/**
 * The permutation coding table of weedge/baby-llm `simpleLM/mlpLM.py`
 * (`gen_coding_patterns`): each token id gets a distinct string of
 * `char_encoding_len` bits with exactly half of them set, drawn by repeated
 * Python `random.shuffle` with seed 1234. Reproduced exactly via
 * {@link PyRandom}.
 *
 * @module
 */

import { UsageError } from "../cli/errors.ts";
import { PyRandom } from "../lib/pyrandom.ts";

/** C(n, n/2) for even n, saturating at Infinity once past 2**53 (only compared with vocab sizes). */
function centralBinomial(n: number): number {
  const half = n / 2;
  let c = 1;
  for (let i = 0; i < half; i++) {
    c = (c * (n - i)) / (i + 1);
    if (c > Number.MAX_SAFE_INTEGER) return Infinity;
  }
  return c;
}

/** Smallest even n >= 2 with C(n, n/2) >= vocabSize. */
function minEncodingLen(vocabSize: number): number {
  let n = 2;
  while (centralBinomial(n) < vocabSize) n += 2;
  return n;
}

/**
 * Builds the coding table exactly as the original `gen_coding_patterns`:
 * starting from `"01" * (n/2)`, shuffle the previous pattern with a
 * `random.Random(1234)` until `vocabSize` distinct patterns are seen; row
 * `i` (token id `i`) is the `i`-th distinct pattern in order of first
 * appearance.
 *
 * @param charEncodingLen bits per token (`char_encoding_len`): even, >= 2,
 *   with C(n, n/2) >= vocabSize.
 * @param vocabSize number of tokens (rows), a positive integer.
 * @returns `vocabSize` rows of `charEncodingLen` numbers, each 0 or 1.
 * @throws {UsageError} if `charEncodingLen` is not an even integer >= 2,
 *   `vocabSize` is not a positive integer, or there are too few patterns.
 */
export function genCodingPatterns(
  charEncodingLen: number,
  vocabSize: number,
): number[][] {
  if (
    !Number.isInteger(charEncodingLen) || charEncodingLen < 2 ||
    charEncodingLen % 2 !== 0
  ) {
    // Suggest the even neighbours that fit the vocabulary, else the smallest that does.
    const least = Number.isInteger(vocabSize) && vocabSize >= 1 ? minEncodingLen(vocabSize) : 2;
    const near = Number.isInteger(charEncodingLen) && charEncodingLen >= 2
      ? [charEncodingLen - 1, charEncodingLen + 1].filter((n) => n >= least)
      : [];
    const hint = near.length > 0
      ? `use ${near.join(" or ")}`
      : `use an even integer such as ${least}`;
    throw new UsageError(
      `char_encoding_len must be an even integer >= 2, got ${charEncodingLen}; ${hint}`,
    );
  }
  if (!Number.isInteger(vocabSize) || vocabSize < 1) {
    throw new UsageError(
      `vocabulary size must be a positive integer, got ${vocabSize}`,
    );
  }
  const permutations = centralBinomial(charEncodingLen);
  if (permutations < vocabSize) {
    throw new UsageError(
      `char_encoding_len ${charEncodingLen} gives only ${permutations} patterns ` +
        `(C(${charEncodingLen}, ${
          charEncodingLen / 2
        })), fewer than the vocabulary size ${vocabSize}; ` +
        `use char_encoding_len ${minEncodingLen(vocabSize)} or more`,
    );
  }
  const r = new PyRandom(1234);
  const pattern: string[] = "01".repeat(charEncodingLen / 2).split("");
  const seen = new Set<string>();
  while (seen.size !== vocabSize) {
    r.shuffle(pattern);
    seen.add(pattern.join(""));
  }
  return Array.from(seen, (s) => Array.from(s, (ch) => (ch === "1" ? 1 : 0)));
}

/**
 * Flattens a coding table into a row-major `vocab × n` Float32Array (e.g. for
 * a tensor of shape `[vocab, n]`).
 *
 * @throws {RangeError} if the rows do not all have the same length.
 */
export function patternsToFloat32(patterns: number[][]): Float32Array {
  const width = patterns.length > 0 ? patterns[0].length : 0;
  const out = new Float32Array(patterns.length * width);
  patterns.forEach((row, i) => {
    if (row.length !== width) {
      throw new RangeError(
        `patternsToFloat32: row ${i} has ${row.length} values, expected ${width}`,
      );
    }
    out.set(row, i * width);
  });
  return out;
}
