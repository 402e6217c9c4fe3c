/**
 * The original's `adder_int` dataset (`datasets/adder_int/prepare.py`, after
 * karpathy/minGPT's adder project): every n-digit addition a + b as
 * `%0nd a`, `%0nd b` and the sum's n+1 digits reversed (the order the
 * carries come in), one digit per token, problems back to back.
 * For n = 2, 85 + 50 = 135 is "8550531".
 *
 * @module
 */
import { torchRandperm } from "./torch_random.ts";

/** The digits are the vocabulary: token id d is the character d. */
export const ADDER_VOCAB: readonly string[] = [..."0123456789"];

/** What the original's prepare.py writes for n-digit problems. */
export interface AdderData {
  ndigit: number;
  /** Tokens per problem: 3n + 1. */
  width: number;
  /** The context a model needs: every token of a problem but the last, 3n. */
  blockSize: number;
  train: Uint16Array;
  val: Uint16Array;
}

/**
 * Problems `p` (a = p div 10ⁿ, b = p mod 10ⁿ) encoded one after the other:
 * the original's `encode_adder`.
 */
export function encodeAdder(problems: ArrayLike<number>, ndigit: number): Uint16Array {
  const width = 3 * ndigit + 1;
  const base = 10 ** ndigit;
  const out = new Uint16Array(problems.length * width);
  for (let p = 0; p < problems.length; p++) {
    const a = Math.floor(problems[p] / base);
    const b = problems[p] % base;
    const sum = [...String(a + b).padStart(ndigit + 1, "0")].reverse().join("");
    const text = String(a).padStart(ndigit, "0") + String(b).padStart(ndigit, "0") + sum;
    for (let i = 0; i < width; i++) out[p * width + i] = text.charCodeAt(i) - 48;
  }
  return out;
}

/**
 * The original's split: all (10ⁿ)² problems in the order of
 * `torch.randperm` seeded 1337; the first min(20%, 500) are val, the rest
 * train. n = 2 gives 9,500 train and 500 val problems.
 */
export function adderData(ndigit = 2): AdderData {
  const count = (10 ** ndigit) ** 2;
  const order = torchRandperm(count, 1337);
  const numTest = Math.min(Math.floor(count * 0.2), 500);
  const width = 3 * ndigit + 1;
  return {
    ndigit,
    width,
    blockSize: width - 1,
    train: encodeAdder(order.subarray(numTest), ndigit),
    val: encodeAdder(order.subarray(0, numTest), ndigit),
  };
}

/** One problem split the way the accuracy test asks it: the 2n prompt digits and the n+1 answer digits. */
export interface AdderProblem {
  prompt: number[];
  answer: number[];
}

/**
 * The problems of an adder split (tokens back to back, 3n+1 each): the
 * first 2n tokens of each are the question, the rest its reversed sum.
 */
export function adderProblems(tokens: Uint16Array, ndigit: number): AdderProblem[] {
  const width = 3 * ndigit + 1;
  const problems: AdderProblem[] = [];
  for (let start = 0; start + width <= tokens.length; start += width) {
    const problem = Array.from(tokens.subarray(start, start + width));
    problems.push({ prompt: problem.slice(0, 2 * ndigit), answer: problem.slice(2 * ndigit) });
  }
  return problems;
}
