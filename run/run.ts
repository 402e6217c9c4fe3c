/**
 * One training run's parts, built in one place so `train.ts`, `bench.ts`
 * and the tests run exactly the same thing: the model, its optimizer, the
 * run's random stream and how a batch is split to fit the backend; and
 * the files a run writes, fresh or resumed.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import { UserError } from "../cli/errors.ts";
import { ensureWritableDir, exists } from "../cli/files.ts";
import type { BackendInfo } from "../lib/backend.ts";
import { Rng } from "../lib/rng.ts";
import { countParams, disposeModel, type LanguageModel } from "../models/model.ts";
import { createModel } from "../models/registry.ts";
import { AdamW } from "../nn/adamw.ts";
import {
  type LoadedCheckpoint,
  restoreTrainingState,
  restoreWeights,
  type TrainingState,
} from "./checkpoint.ts";
import { runId, type TrainConfig } from "./config.ts";
import { getBatch, microBatchCount, trainStep } from "./training.ts";

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
  const state: TrainingState = {
    iter: 0,
    evalDone: false,
    bestVal: 10,
    logFile: `loss_${id}.txt`,
    rng: run.rng.getState(),
  };
  await Deno.writeTextFile(state.logFile, "").catch((e) => {
    throw new UserError(`cannot write ${state.logFile}: ${e.message}`);
  });
  return { checkpointPath: `${config.out_dir}/${id}.safetensors`, state };
}

/** A resumed run's files: weights, optimizer state and random stream restored from `ckpt`. */
export async function resumeRunFiles(run: Run, ckpt: LoadedCheckpoint): Promise<RunFiles> {
  await ensureWritableDir(run.config.out_dir, "out_dir");
  restoreWeights(run.model, ckpt);
  const state = await restoreTrainingState(run.model, run.optimizer, ckpt);
  run.rng.setState(state.rng);
  return { checkpointPath: ckpt.path.replace(/\.last\.safetensors$/, ".safetensors"), state };
}
