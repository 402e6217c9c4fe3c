/**
 * Prepares a character-level dataset, as the original's
 * `datasets/shakespeare_char/prepare.py`: text → sorted character
 * vocabulary → ids, first 90% train, last 10% val, written as
 * `datas/<dataset>/{train.bin,val.bin,meta.json}`. `--dataset=adder_int`
 * builds the original's 2-digit addition problems instead (no input).
 *
 *   deno task prepare
 *   deno task prepare --input=mybook.txt --dataset=mybook_char
 *   deno task prepare --dataset=adder_int
 *
 * @module
 */
import {
  DATASET_FLAG,
  datasetDir,
  decodeText,
  metaJson,
  tokenize,
  uint16Bytes,
} from "./lib/data.ts";
import { ADDER_VOCAB, adderData } from "./lib/adder.ts";
import { runMain, UsageError, UserError } from "./cli/errors.ts";
import { parseFlags } from "./cli/flags.ts";
import { insideProject, readProjectFile, writeFileAtomic, writeFilesAtomic } from "./cli/files.ts";

/** Where the original downloads tinyshakespeare from when the file is missing. */
const DATA_URL =
  "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";
const DEFAULT_INPUT = "datas/tinyshakespeare.txt";

const FLAGS = {
  input: { type: "string", default: DEFAULT_INPUT, help: "UTF-8 text file" },
  dataset: DATASET_FLAG,
} as const;

async function readInput(path: string): Promise<Uint8Array> {
  try {
    return await readProjectFile(path, "--input");
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (path !== DEFAULT_INPUT) {
    throw new UserError(`input file ${path} not found`);
  }
  console.log(`${path} not found: downloading ${DATA_URL}`);
  try {
    const response = await fetch(DATA_URL, {
      signal: AbortSignal.timeout(30_000),
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    await writeFileAtomic(path, bytes);
    return bytes;
  } catch (e) {
    throw new UserError(
      `${path} is missing and the download failed (${
        (e as Error).message
      }): copy tinyshakespeare's input.txt to ${path}`,
    );
  }
}

/** The dataset `prepare` generates rather than reads. */
const ADDER_DATASET = "adder_int";

/**
 * The original's `datasets/adder_int/prepare.py`: 2-digit additions,
 * byte-identical files; meta.json adds `ndigit` and `block_size`.
 */
async function prepareAdder(dir: string): Promise<void> {
  const data = adderData(2);
  console.log(`vocab size: ${ADDER_VOCAB.length}`);
  console.log(`train has ${data.train.length.toLocaleString("en-US")} tokens`);
  console.log(`val has ${data.val.length.toLocaleString("en-US")} tokens`);
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw new UserError(`cannot create ${dir}: ${(e as Error).message}`);
  }
  const meta = metaJson([...ADDER_VOCAB], data, {
    ndigit: data.ndigit,
    block_size: data.blockSize,
  });
  await writeFilesAtomic([
    [`${dir}/train.bin`, uint16Bytes(data.train)],
    [`${dir}/val.bin`, uint16Bytes(data.val)],
    [`${dir}/meta.json`, new TextEncoder().encode(meta)],
  ]);
  console.log(`wrote ${dir}/train.bin, ${dir}/val.bin and ${dir}/meta.json`);
}

export async function main(args: string[]) {
  const { values, given } = parseFlags(args, FLAGS);
  const input = values.input;
  const dir = datasetDir(values.dataset);
  await insideProject(dir, "--dataset");
  if (values.dataset === ADDER_DATASET) {
    if (given.has("input")) {
      throw new UsageError(`--dataset=${ADDER_DATASET} is generated, not read: drop --input`);
    }
    return await prepareAdder(dir);
  }

  const text = decodeText(await readInput(input), input);
  if (text.length === 0) {
    throw new UserError(`${input} is empty: give a text with some characters`);
  }
  const data = tokenize(text);
  console.log(
    `length of dataset in characters: ${data.length.toLocaleString("en-US")}`,
  );
  console.log(`all the unique characters: ${data.vocab.join("")}`);
  console.log(`vocab size: ${data.vocab.length.toLocaleString("en-US")}`);
  console.log(`train has ${data.train.length.toLocaleString("en-US")} tokens`);
  console.log(`val has ${data.val.length.toLocaleString("en-US")} tokens`);

  // All three files or none: a full disk while writing val.bin must not
  // leave the new train.bin beside the old val.bin and meta.json.
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw new UserError(`cannot create ${dir}: ${(e as Error).message}`);
  }
  await writeFilesAtomic([
    [`${dir}/train.bin`, uint16Bytes(data.train)],
    [`${dir}/val.bin`, uint16Bytes(data.val)],
    [`${dir}/meta.json`, new TextEncoder().encode(metaJson(data.vocab, data))],
  ]);
  console.log(`wrote ${dir}/train.bin, ${dir}/val.bin and ${dir}/meta.json`);
}

if (import.meta.main) await runMain(() => main(Deno.args));
