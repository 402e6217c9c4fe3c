/**
 * The character tokenizer and the prepared dataset files.
 *
 * A dataset folder `datas/<dataset>/` holds what the original's `prepare.py`
 * writes: `train.bin` and `val.bin` (token ids, little-endian uint16, the
 * bytes numpy's `tofile` writes) and the vocabulary, here as `meta.json`
 * instead of a pickle.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { UsageError, UserError } from "../cli/errors.ts";
import { insideProject, readProjectFile } from "../cli/files.ts";

/** Token id → character. Characters are whole Unicode code points. */
export type Vocab = string[];

/**
 * Reads UTF-8 as Python's `open(path, "r").read()` does: invalid UTF-8 is an
 * error, a BOM is kept as a character, and `\r\n` / `\r` become `\n`
 * (universal newlines), so the ids match the original's byte for byte.
 */
export function decodeText(bytes: Uint8Array, name: string): string {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(
      bytes,
    );
  } catch {
    throw new UserError(
      `${name} is not valid UTF-8 text: convert it to UTF-8 first`,
    );
  }
  return text.replace(/\r\n?/g, "\n");
}

/** The text's distinct characters sorted by code point: Python's `sorted(set(text))`. */
export function buildVocab(text: string): Vocab {
  // Iterating a string yields code points, so emoji stay one character;
  // comparing code points (not UTF-16 units) gives Python's order.
  return [...new Set(text)].sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!);
}

/** Most characters a vocabulary may have: token ids are stored as uint16. */
export const MAX_VOCAB = 65536;

/**
 * What is wrong with a vocabulary read from a file, or null: it must be a
 * non-empty list of at most {@link MAX_VOCAB} distinct strings of exactly
 * one character (code point) each.
 */
export function vocabProblem(vocab: unknown): string | null {
  if (!Array.isArray(vocab)) return "is not a list of characters";
  if (vocab.length === 0) return "is empty";
  if (vocab.length > MAX_VOCAB) return `has ${vocab.length} entries, more than ${MAX_VOCAB}`;
  const seen = new Set<string>();
  for (const [i, ch] of vocab.entries()) {
    if (typeof ch !== "string" || [...ch].length !== 1) {
      return `entry ${i} is not a single character`;
    }
    if (seen.has(ch)) return `repeats the character ${JSON.stringify(ch)} (entry ${i})`;
    seen.add(ch);
  }
  return null;
}

/** Character → id lookup for a vocabulary. */
export function stoiOf(vocab: Vocab): Map<string, number> {
  return new Map(vocab.map((ch, i) => [ch, i]));
}

/** Encodes text to ids; a character outside the vocabulary is an error naming it. */
export function encode(text: string, stoi: Map<string, number>): number[] {
  const ids: number[] = [];
  const unknown = new Set<string>();
  for (const ch of text) {
    const id = stoi.get(ch);
    if (id === undefined) unknown.add(ch);
    else ids.push(id);
  }
  if (unknown.size > 0) {
    const shown = [...unknown].map((c) => JSON.stringify(c)).join(", ");
    throw new UserError(`characters not in the vocabulary: ${shown}`);
  }
  return ids;
}

/** Decodes ids to text. */
export function decode(ids: ArrayLike<number>, vocab: Vocab): string {
  let s = "";
  for (let i = 0; i < ids.length; i++) s += vocab[ids[i]];
  return s;
}

/** What `prepare` writes: the split token ids and the vocabulary. */
export interface PreparedData {
  vocab: Vocab;
  train: Uint16Array;
  val: Uint16Array;
  /** Length of the text in characters (code points). */
  length: number;
}

/** Tokenizes `text` and splits it 90/10 as the original: `data[:int(n*0.9)]`. */
export function tokenize(text: string): PreparedData {
  const chars = [...text];
  const vocab = buildVocab(text);
  if (vocab.length > MAX_VOCAB) {
    throw new UserError(
      `the text has ${vocab.length} distinct characters; uint16 token ids can index at most ${MAX_VOCAB}`,
    );
  }
  const stoi = stoiOf(vocab);
  const ids = Uint16Array.from(chars, (ch) => stoi.get(ch)!);
  const n = Math.floor(chars.length * 0.9);
  return {
    vocab,
    train: ids.slice(0, n),
    val: ids.slice(n),
    length: chars.length,
  };
}

/** The bytes numpy's `np.array(ids, dtype=np.uint16).tofile()` writes. */
export function uint16Bytes(ids: Uint16Array): Uint8Array {
  const bytes = new Uint8Array(ids.length * 2);
  const view = new DataView(bytes.buffer);
  ids.forEach((id, i) => view.setUint16(2 * i, id, true));
  return bytes;
}

/** SHA-256 of bytes, in hex: ties a `.bin` file to the `meta.json` written with it. */
function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** What a dataset's meta.json may say besides its vocabulary and splits. */
export interface DatasetMeta {
  /** The context length the dataset is made for (adder_int: one problem but its last digit). */
  block_size?: number;
  /** adder_int: digits per operand. */
  ndigit?: number;
}

/**
 * `meta.json`: the pickle's keys, with JSON's string keys for `itos`, and
 * any of a dataset's own (adder_int's `ndigit` and `block_size`). With the
 * splits, also what ties the `.bin` files to it: each split's token count
 * (`train_tokens`, `val_tokens`) and the SHA-256 of its bytes
 * (`train_sha256`, `val_sha256`).
 */
export function metaJson(
  vocab: Vocab,
  splits?: { train: Uint16Array; val: Uint16Array },
  extra: DatasetMeta = {},
): string {
  const itos = Object.fromEntries(vocab.map((ch, i) => [String(i), ch]));
  const stoi = Object.fromEntries(vocab.map((ch, i) => [ch, i]));
  const files = splits
    ? {
      train_tokens: splits.train.length,
      val_tokens: splits.val.length,
      train_sha256: sha256(uint16Bytes(splits.train)),
      val_sha256: sha256(uint16Bytes(splits.val)),
    }
    : {};
  return JSON.stringify({ vocab_size: vocab.length, ...extra, itos, stoi, ...files }, null, 1) +
    "\n";
}

/** A loaded dataset folder. */
export interface Dataset {
  name: string;
  dir: string;
  vocab: Vocab;
  train: Uint16Array;
  val: Uint16Array;
  /** meta.json's other keys. */
  meta: DatasetMeta;
}

/** A dataset's name: one folder under `datas/`, never a path. */
const DATASET_NAME = /^[\p{L}\p{N}_][\p{L}\p{N}_.-]*$/u;

/** The `--dataset` flag of every script that takes one: one rule for the names. */
export const DATASET_FLAG = {
  type: "string",
  default: "shakespeare_char",
  pattern: DATASET_NAME,
  patternHelp:
    "one folder name under datas/: letters, digits, '_', '.' or '-', not starting with '.'",
  help: "folder under datas/ written by prepare",
} as const;

/**
 * The folder a dataset is prepared into.
 *
 * @throws {UsageError} for a name that is not one folder under `datas/` (`..`, `a/b`, empty).
 */
export function datasetDir(dataset: string): string {
  if (!DATASET_NAME.test(dataset)) {
    throw new UsageError(`--dataset=${dataset}: expected ${DATASET_FLAG.patternHelp}`);
  }
  return `datas/${dataset}`;
}

async function readOrExplain(
  path: string,
  dataset: string,
): Promise<Uint8Array> {
  try {
    return await readProjectFile(path, "dataset file");
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(
        `${path} not found: run \`deno task prepare --dataset=${dataset}\` first`,
      );
    }
    throw e;
  }
}

/** What `meta.json` says: the vocabulary and, when prepare recorded them, what the splits hold. */
interface Meta {
  vocab: Vocab;
  splits: Partial<Record<"train" | "val", { tokens: number; sha256: string }>>;
  extra: DatasetMeta;
}

function parseMeta(bytes: Uint8Array, path: string): Meta {
  let meta: unknown;
  try {
    meta = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new UserError(
      `${path} is not valid JSON: run \`deno task prepare\` again`,
    );
  }
  const m = (typeof meta === "object" && meta !== null ? meta : {}) as Record<string, unknown>;
  const size = m.vocab_size;
  const itos = m.itos;
  if (
    typeof size !== "number" || !Number.isInteger(size) || size < 1 || size > MAX_VOCAB ||
    typeof itos !== "object" || itos === null
  ) {
    throw new UserError(
      `${path} lacks vocab_size or itos: run \`deno task prepare\` again`,
    );
  }
  const vocab = Array.from(
    { length: size },
    (_, i) =>
      Object.hasOwn(itos, String(i)) ? (itos as Record<string, unknown>)[String(i)] : undefined,
  );
  const problem = vocabProblem(vocab);
  if (problem) {
    throw new UserError(`${path}: itos ${problem}: run \`deno task prepare\` again`);
  }
  const splits: Meta["splits"] = {};
  for (const split of ["train", "val"] as const) {
    const tokens = m[`${split}_tokens`];
    const hash = m[`${split}_sha256`];
    if (tokens === undefined && hash === undefined) continue; // written before these were recorded
    if (!Number.isSafeInteger(tokens) || typeof hash !== "string") {
      throw new UserError(
        `${path}: ${split}_tokens or ${split}_sha256 is damaged: run \`deno task prepare\` again`,
      );
    }
    splits[split] = { tokens: tokens as number, sha256: hash };
  }
  const extra: DatasetMeta = {};
  for (const key of ["block_size", "ndigit"] as const) {
    const value = m[key];
    if (value === undefined) continue;
    if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
      throw new UserError(
        `${path}: ${key} is not a positive integer: run \`deno task prepare\` again`,
      );
    }
    extra[key] = value;
  }
  return { vocab: vocab as Vocab, splits, extra };
}

function parseIds(
  bytes: Uint8Array,
  path: string,
  vocabSize: number,
): Uint16Array {
  if (bytes.length % 2 !== 0) {
    throw new UserError(
      `${path} has an odd byte count (${bytes.length}): it is truncated; run \`deno task prepare\` again`,
    );
  }
  const ids = new Uint16Array(bytes.length / 2);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < ids.length; i++) {
    const id = view.getUint16(2 * i, true);
    if (id >= vocabSize) {
      throw new UserError(
        `${path} holds token id ${id} at position ${i}, but meta.json's vocab_size is ${vocabSize}: run \`deno task prepare\` again`,
      );
    }
    ids[i] = id;
  }
  return ids;
}

/**
 * Loads and checks `datas/<dataset>/{meta.json,train.bin,val.bin}`: every id
 * inside the vocabulary and, when `meta.json` records them, each `.bin`
 * file the one prepared with it (token count and SHA-256), so a folder that
 * mixes two preparations is refused.
 */
export async function loadDataset(dataset: string): Promise<Dataset> {
  const dir = datasetDir(dataset);
  await insideProject(dir, "dataset folder");
  const metaPath = `${dir}/meta.json`;
  const meta = parseMeta(await readOrExplain(metaPath, dataset), metaPath);
  const vocab = meta.vocab;
  const splits: Record<"train" | "val", Uint16Array> = {
    train: new Uint16Array(),
    val: new Uint16Array(),
  };
  for (const split of ["train", "val"] as const) {
    const path = `${dir}/${split}.bin`;
    const bytes = await readOrExplain(path, dataset);
    const recorded = meta.splits[split];
    if (
      bytes.length % 2 === 0 && recorded &&
      (bytes.length !== 2 * recorded.tokens || sha256(bytes) !== recorded.sha256)
    ) {
      const differs = bytes.length === 2 * recorded.tokens
        ? "other tokens than"
        : `${bytes.length / 2} tokens, not the ${recorded.tokens} recorded in`;
      throw new UserError(
        `${path} holds ${differs} ${metaPath} (the folder mixes two preparations): run \`deno task prepare --dataset=${dataset}\` again`,
      );
    }
    splits[split] = parseIds(bytes, path, vocab.length);
  }
  return { name: dataset, dir, vocab, ...splits, meta: meta.extra };
}

/**
 * Refuses a `blockSize` that leaves no window of `blockSize + 1` tokens in
 * one of the splits.
 */
export function checkWindowsFit(data: Dataset, blockSize: number): void {
  for (const split of ["train", "val"] as const) {
    if (data[split].length <= blockSize) {
      throw new UsageError(
        `block_size ${blockSize} does not fit the ${split} split (${
          data[split].length
        } tokens): use a smaller --block_size`,
      );
    }
  }
}

/**
 * `batchSize` random windows of `blockSize + 1` tokens, row-major, as the
 * original's `torch.randint(len(data) - block_size, (batch_size,))`.
 */
export function sampleWindows(
  data: Uint16Array,
  blockSize: number,
  batchSize: number,
  below: (n: number) => number,
): Int32Array {
  const span = blockSize + 1;
  const out = new Int32Array(batchSize * span);
  for (let b = 0; b < batchSize; b++) {
    const start = below(data.length - blockSize);
    out.set(data.subarray(start, start + span), b * span);
  }
  return out;
}
