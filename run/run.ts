/**
 * One training run's parts, built in one place so `train.ts`, `bench.ts`
 * and the tests run exactly the same thing: its settings (from the command
 * line, or a checkpoint's when resumed), the model, its optimizer, the
 * run's random stream and how a batch is split to fit the backend; and
 * the files a run writes, fresh or resumed.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import { basename, dirname, join } from "node:path";
import { UsageError, UserError } from "../cli/errors.ts";
import { causeOf, ensureWritableDir, exists, insideProject } from "../cli/files.ts";
import type { BackendInfo } from "../lib/backend.ts";
import { Rng } from "../lib/rng.ts";
import { countParams, disposeModel, type LanguageModel } from "../models/model.ts";
import { createModel } from "../models/registry.ts";
import { AdamW } from "../nn/adamw.ts";
import {
  loadCheckpoint,
  type LoadedCheckpoint,
  lossLogFor,
  restoreTrainingState,
  restoreWeights,
  type TrainingState,
} from "./checkpoint.ts";
import { parseTrainConfig, runId, type TrainConfig, type TrainFlag } from "./config.ts";
import { checkFits } from "./memory.ts";
import { getBatch, microBatchCount, trainStep } from "./training.ts";

/**
 * The settings of a training run from its command line: flags and preset,
 * or, with `--resume=true`, the checkpoint's settings with the few a
 * resumed run may change; the checkpoint to resume from; and the flags
 * given on the command line.
 */
export async function trainSettings(
  args: string[],
): Promise<{ config: TrainConfig; ckpt: LoadedCheckpoint | null; given: Set<TrainFlag> }> {
  const { config, given } = parseTrainConfig(args);
  if (!config.resume) {
    if (given.has("ckpt_file")) {
      throw new UsageError(
        `--ckpt_file=${config.ckpt_file} is read only with --resume=true: add --resume=true to continue that run, or drop --ckpt_file to start a new one`,
      );
    }
    return { config, ckpt: null, given };
  }
  if (!config.ckpt_file) {
    throw new UsageError("--resume=true needs --ckpt_file=PATH (a checkpoint saved by train.ts)");
  }
  const ckpt = await loadCheckpoint(config.ckpt_file);
  return { config: resumedConfig(config, given, ckpt.config, ckpt.path), ckpt, given };
}

/** Settings a resumed run may change; everything else comes from the checkpoint. */
const RESUMABLE: readonly TrainFlag[] = [
  "max_iters",
  "eval_interval",
  "eval_iters",
  "backend",
  "out_dir",
  "resume",
  "ckpt_file",
];

/**
 * A resumed run's settings: the checkpoint's (`saved`), with only the
 * resumable flags taken from the command line, and only where given again
 * (even the backend stays: backends differ in the last bits). It writes
 * to `--out_dir` when given, else beside the checkpoint at `path`.
 *
 * @throws {UsageError} when a flag given differs from the checkpoint's value
 *   and may not change.
 */
export function resumedConfig(
  flags: TrainConfig,
  given: Set<TrainFlag>,
  saved: TrainConfig,
  path: string,
): TrainConfig {
  for (const key of given) {
    if (!RESUMABLE.includes(key) && saved[key] !== flags[key]) {
      throw new UsageError(
        `--${key}=${flags[key]} differs from ${path}'s ${key}=${
          saved[key]
        }; a resumed run may change only ${RESUMABLE.slice(0, 5).map((k) => `--${k}`).join(", ")}`,
      );
    }
  }
  const config: TrainConfig = { ...saved, out_dir: dirname(path) };
  for (const key of RESUMABLE.filter((k) => given.has(k))) {
    (config as Record<string, unknown>)[key] = flags[key];
  }
  return config;
}

/** A model ready to train, with everything a training step needs. */
export interface Run {
  config: TrainConfig;
  model: LanguageModel;
  optimizer: AdamW;
  /** The run's one random stream: init, batches, dropout and samples. */
  rng: Rng;
  /** Equal parts a batch is split into to fit the backend's memory (1: none). */
  microBatches: number;
  /** Targets predicted per step, for tokens/s. */
  tokensPerStep: number;
  /** One training step on a random batch of `trainData`; returns its loss (read it rarely). */
  step(trainData: Uint16Array): tf.Scalar;
  /** Frees the model and the optimizer state. */
  dispose(): void;
}

/** Builds a run: the model drawn from `config.seed`'s stream, AdamW over its parameters. */
export function buildRun(
  config: TrainConfig,
  vocabSize: number,
  backend: BackendInfo["name"],
): Run {
  checkFits(
    config.model_name,
    { ...config, vocab_size: vocabSize },
    config.batch_size,
    backend,
    true,
  );
  const rng = new Rng(config.seed);
  const model = createModel(config.model_name, { ...config, vocab_size: vocabSize }, rng);
  const optimizer = new AdamW(model.params.map((p) => p.variable), {
    lr: config.learning_rate,
    weightDecay: config.weight_decay,
  });
  const microBatches = microBatchCount(model, config.batch_size, backend);
  return {
    config,
    model,
    optimizer,
    rng,
    microBatches,
    tokensPerStep: config.batch_size * model.targetsPerRow,
    step(trainData) {
      const batch = getBatch(model, trainData, config.batch_size, rng);
      const loss = trainStep(model, optimizer, batch, rng, microBatches);
      batch.x.dispose();
      batch.y.dispose();
      return loss;
    },
    dispose() {
      optimizer.dispose();
      disposeModel(model);
    },
  };
}

/** Where a run writes, and where it stands. */
export interface RunFiles {
  /** The best checkpoint's path (`<out_dir>/<run id>.safetensors`). */
  checkpointPath: string;
  state: TrainingState;
}

/**
 * A new run's files: the original's run id, made unique with `_2`, `_3`, …
 * so no earlier run's log or checkpoint is overwritten, and an empty loss log.
 */
export async function startRunFiles(run: Run, vocabSize: number): Promise<RunFiles> {
  const { config } = run;
  await ensureWritableDir(config.out_dir, "out_dir");
  const baseId = runId(config, vocabSize, countParams(run.model));
  let id = baseId;
  for (
    let n = 2;
    await exists(`loss_${id}.txt`) || await exists(`${config.out_dir}/${id}.safetensors`);
    n++
  ) {
    id = `${baseId}_${n}`;
  }
  if (id !== baseId) console.log(`an earlier run used ${baseId}: this one is ${id}`);
  const checkpointPath = `${config.out_dir}/${id}.safetensors`;
  const state: TrainingState = {
    iter: 0,
    evalDone: false,
    bestVal: 10,
    logFile: lossLogFor(checkpointPath),
    rng: run.rng.getState(),
  };
  // createNew: never truncate a file, or write through a link, that appeared meanwhile.
  await Deno.writeTextFile(state.logFile, "", { createNew: true }).catch((e) => {
    throw new UserError(`cannot write ${state.logFile}: ${causeOf(e)}`);
  });
  return { checkpointPath, state };
}

/**
 * A resumed run's files: weights, optimizer state and random stream restored
 * from `ckpt`; its checkpoints go to `config.out_dir` under the checkpoint's
 * run id, and its losses to that run's log, {@link lossLogFor}.
 */
export async function resumeRunFiles(run: Run, ckpt: LoadedCheckpoint): Promise<RunFiles> {
  await ensureWritableDir(run.config.out_dir, "out_dir");
  restoreWeights(run.model, ckpt);
  const state = await restoreTrainingState(run.model, run.optimizer, ckpt);
  await insideProject(state.logFile, "loss log");
  run.rng.setState(state.rng);
  const name = basename(ckpt.path).replace(/\.last\.safetensors$/, ".safetensors");
  return { checkpointPath: join(run.config.out_dir, name), state };
}
