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
import { UsageError, UserError } from "../cli/errors.ts";

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
  if (vocab.length > 65536) {
    throw new UserError(
      `the text has ${vocab.length} distinct characters; uint16 token ids can index at most 65536`,
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

/** `meta.json`: the pickle's keys, with JSON's string keys for `itos`. */
export function metaJson(vocab: Vocab): string {
  const itos = Object.fromEntries(vocab.map((ch, i) => [String(i), ch]));
  const stoi = Object.fromEntries(vocab.map((ch, i) => [ch, i]));
  return JSON.stringify({ vocab_size: vocab.length, itos, stoi }, null, 1) +
    "\n";
}

/** A loaded dataset folder. */
export interface Dataset {
  name: string;
  dir: string;
  vocab: Vocab;
  train: Uint16Array;
  val: Uint16Array;
}

/** The folder a dataset is prepared into. */
export function datasetDir(dataset: string): string {
  return `datas/${dataset}`;
}

async function readOrExplain(
  path: string,
  dataset: string,
): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(
        `${path} not found: run \`deno task prepare --dataset=${dataset}\` first`,
      );
    }
    throw new UserError(`cannot read ${path}: ${(e as Error).message}`);
  }
}

function parseMeta(bytes: Uint8Array, path: string): Vocab {
  let meta: unknown;
  try {
    meta = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new UserError(
      `${path} is not valid JSON: run \`deno task prepare\` again`,
    );
  }
  const m = meta as { vocab_size?: unknown; itos?: unknown };
  const size = m.vocab_size;
  const itos = m.itos as Record<string, unknown> | undefined;
  if (
    typeof size !== "number" || !Number.isInteger(size) || size < 1 ||
    typeof itos !== "object" || itos === null
  ) {
    throw new UserError(
      `${path} lacks vocab_size or itos: run \`deno task prepare\` again`,
    );
  }
  const vocab: Vocab = [];
  for (let i = 0; i < size; i++) {
    const ch = itos[String(i)];
    if (typeof ch !== "string" || [...ch].length !== 1) {
      throw new UserError(
        `${path}: itos[${i}] is not a single character: run \`deno task prepare\` again`,
      );
    }
    vocab.push(ch);
  }
  if (new Set(vocab).size !== vocab.length) {
    throw new UserError(
      `${path}: itos repeats a character: run \`deno task prepare\` again`,
    );
  }
  return vocab;
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

/** Loads and checks `datas/<dataset>/{meta.json,train.bin,val.bin}`. */
export async function loadDataset(dataset: string): Promise<Dataset> {
  const dir = datasetDir(dataset);
  const metaPath = `${dir}/meta.json`;
  const vocab = parseMeta(await readOrExplain(metaPath, dataset), metaPath);
  const train = parseIds(
    await readOrExplain(`${dir}/train.bin`, dataset),
    `${dir}/train.bin`,
    vocab.length,
  );
  const val = parseIds(
    await readOrExplain(`${dir}/val.bin`, dataset),
    `${dir}/val.bin`,
    vocab.length,
  );
  return { name: dataset, dir, vocab, train, val };
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
