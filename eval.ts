/**
 * Deterministic evaluation of a checkpoint: the mean cross-entropy over
 * fixed windows of a split, not over random batches, so two runs, two
 * backends or PyTorch on the same file can be compared number for number.
 *
 * Windows start at 0, T, 2T, … (T = the checkpoint's block_size) while the
 * window and its target fit. bigramLM/gptLM predict every position of a
 * window; mlpLM predicts the one token after it (no input zeroing).
 *
 * On an adder dataset, `--metric=add_accuracy` asks the model each
 * problem's 2n digits instead and counts the problems whose n+1 greedily
 * chosen digits are the (reversed) sum.
 *
 *   deno task eval --ckpt=out/<run>.safetensors [--split=val] [--max_windows=N]
 *   deno task eval --ckpt=out/<adder run>.safetensors --metric=add_accuracy
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { runMain, UsageError, UserError } from "./cli/errors.ts";
import { parseFlags } from "./cli/flags.ts";
import { BACKEND_FLAG } from "./lib/backend.ts";
import { adderProblems } from "./lib/adder.ts";
import { loadDataset } from "./lib/data.ts";
import type { LanguageModel } from "./models/model.ts";
import { checkVocabulary, loadCheckpoint, modelFromCheckpoint } from "./run/checkpoint.ts";
import { startBackend } from "./run/start.ts";
import { microBatchCount } from "./run/training.ts";

const FLAGS = {
  ckpt: { type: "string", default: "", help: "checkpoint to evaluate (required)" },
  split: { type: "string", default: "val", choices: ["train", "val"], help: "train or val" },
  metric: {
    type: "string",
    default: "loss",
    choices: ["loss", "add_accuracy"],
    help: "loss, or add_accuracy (adder datasets: exact greedy sums)",
  },
  max_windows: {
    type: "int",
    default: 0,
    min: 1,
    help: "evaluate at most this many windows (default: all)",
  },
  batch_windows: {
    type: "int",
    default: 64,
    min: 1,
    help: "windows per forward pass (memory, not result)",
  },
  backend: BACKEND_FLAG,
} as const;

/** What `eval` prints as one JSON line. */
export interface EvalResult {
  loss: number;
  windows: number;
  tokens: number;
  model_name: string;
}

/** What `eval --metric=add_accuracy` prints as one JSON line. */
export interface AddAccuracyResult {
  add_accuracy: number;
  correct: number;
  problems: number;
  model_name: string;
}

/**
 * Exact-match accuracy on addition problems: each prompt's answer digits
 * chosen one at a time by argmax (greedy), all of them right to count.
 */
export async function addAccuracy(
  model: Pick<LanguageModel, "nextTokenLogits">,
  problems: { prompt: number[]; answer: number[] }[],
): Promise<number> {
  let correct = 0;
  for (const { prompt, answer } of problems) {
    const ids = [...prompt];
    for (let i = 0; i < answer.length; i++) {
      const next = tf.tidy(() => model.nextTokenLogits(ids).argMax());
      ids.push((await next.data())[0]);
      next.dispose();
    }
    if (answer.every((digit, i) => ids[prompt.length + i] === digit)) correct++;
  }
  return correct;
}

/** Evaluates as `args` say and prints one JSON line. */
export async function main(args: string[]): Promise<EvalResult | AddAccuracyResult> {
  const { values } = parseFlags(args, FLAGS);
  if (!values.ckpt) {
    throw new UsageError("--ckpt=PATH is required (a checkpoint saved by train.ts)");
  }
  const ckpt = await loadCheckpoint(values.ckpt);
  const dataset = await loadDataset(ckpt.config.dataset);
  checkVocabulary(ckpt, dataset);
  const backend = await startBackend(values.backend);
  const model = modelFromCheckpoint(ckpt);

  const data = dataset[values.split];
  if (values.metric === "add_accuracy") {
    const ndigit = dataset.meta.ndigit;
    if (ndigit === undefined) {
      throw new UsageError(
        `--metric=add_accuracy needs an adder dataset (ndigit in meta.json); ${ckpt.path} was trained on ${dataset.name}`,
      );
    }
    const problems = adderProblems(data, ndigit);
    const correct = await addAccuracy(model, problems);
    const result: AddAccuracyResult = {
      add_accuracy: correct / problems.length,
      correct,
      problems: problems.length,
      model_name: ckpt.modelName,
    };
    console.log(JSON.stringify(result));
    return result;
  }
  const T = model.config.block_size;
  let windows = Math.floor((data.length - 1) / T); // start i needs i + T + 1 <= len
  if (values.max_windows > 0) windows = Math.min(windows, values.max_windows);
  if (windows < 1) {
    throw new UserError(`the ${values.split} split is shorter than one window of ${T + 1} tokens`);
  }
  const batchWindows = values.batch_windows;
  const perPass = batchWindows / microBatchCount(model, batchWindows, backend.name);
  let lossSum = 0; // float64 across chunks, so the order of chunks does not matter
  for (let first = 0; first < windows; first += perPass) {
    const count = Math.min(perPass, windows - first);
    const ids = new Int32Array(count * (T + 1));
    for (let w = 0; w < count; w++) {
      ids.set(data.subarray((first + w) * T, (first + w) * T + T + 1), w * (T + 1));
    }
    const batch = model.makeBatch(ids, count);
    const loss = tf.tidy(() => model.loss(batch.x, batch.y, { training: false }));
    lossSum += (await loss.data())[0] * count;
    tf.dispose([loss, batch.x, batch.y]);
  }
  const result: EvalResult = {
    loss: lossSum / windows,
    windows,
    tokens: windows * model.targetsPerRow,
    model_name: ckpt.modelName,
  };
  console.log(JSON.stringify(result));
  return result;
}

if (import.meta.main) await runMain(() => main(Deno.args));
