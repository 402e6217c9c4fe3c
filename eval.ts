/**
 * Deterministic evaluation of a checkpoint: the mean cross-entropy over
 * fixed windows of a split, not over random batches, so two runs, two
 * backends or PyTorch on the same file can be compared number for number.
 *
 * Windows start at 0, T, 2T, … (T = the checkpoint's block_size) while the
 * window and its target fit. bigramLM/gptLM predict every position of a
 * window; mlpLM predicts the one token after it (no input zeroing).
 *
 *   deno task eval --ckpt=out/<run>.safetensors [--split=val] [--max_windows=N]
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { BACKENDS, initBackend } from "./lib/backend.ts";
import { loadCheckpoint, restoreWeights } from "./lib/checkpoint.ts";
import { loadDataset } from "./lib/data.ts";
import { runMain, UsageError, UserError } from "./lib/errors.ts";
import { type FlagSpecs, parseFlags } from "./lib/flags.ts";
import { Rng } from "./lib/rng.ts";
import { microBatchCount } from "./lib/training.ts";
import type { ModelConfig } from "./models/model.ts";
import { createModel } from "./models/registry.ts";

const FLAGS: FlagSpecs = {
  ckpt: { type: "string", default: "", help: "checkpoint to evaluate (required)" },
  split: { type: "string", default: "val", choices: ["train", "val"], help: "train or val" },
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
  backend: {
    type: "string",
    default: "auto",
    choices: BACKENDS,
    help: "auto, webgpu, wasm or cpu",
  },
};

/** What `eval` prints as one JSON line. */
export interface EvalResult {
  loss: number;
  windows: number;
  tokens: number;
  model_name: string;
}

/** Evaluates as `args` say and prints one JSON line. */
export async function main(args: string[]): Promise<EvalResult> {
  const { values } = parseFlags(args, FLAGS);
  if (!values.ckpt) {
    throw new UsageError("--ckpt=PATH is required (a checkpoint saved by train.ts)");
  }
  const ckpt = await loadCheckpoint(values.ckpt as string);
  const dataset = await loadDataset((ckpt.config.dataset as string) ?? "shakespeare_char");
  if (dataset.vocab.join("") !== ckpt.vocab.join("")) {
    throw new UserError(
      `checkpoint ${ckpt.path}: its vocabulary differs from ${dataset.dir}/meta.json's`,
    );
  }
  const backend = await initBackend(values.backend as string);
  const config = { ...ckpt.config, vocab_size: ckpt.vocab.length } as unknown as ModelConfig;
  const model = createModel(ckpt.modelName, config, new Rng(0));
  restoreWeights(model, ckpt);

  const data = dataset[values.split as "train" | "val"];
  const T = config.block_size;
  let windows = Math.floor((data.length - 1) / T); // start i needs i + T + 1 <= len
  if ((values.max_windows as number) > 0) windows = Math.min(windows, values.max_windows as number);
  if (windows < 1) {
    throw new UserError(`the ${values.split} split is shorter than one window of ${T + 1} tokens`);
  }
  const targetsPerWindow = ckpt.modelName === "mlpLM" ? 1 : T;

  const batchWindows = values.batch_windows as number;
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
    tokens: windows * targetsPerWindow,
    model_name: ckpt.modelName,
  };
  console.log(JSON.stringify(result));
  return result;
}

if (import.meta.main) await runMain(() => main(Deno.args));
