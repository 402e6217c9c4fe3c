/**
 * Trains one of the models on a prepared dataset, as the PyTorch original's
 * `train.py`: random batches, AdamW, an evaluation every `eval_interval`
 * steps that logs `iter train val` and, when validation improves, prints a
 * sample and saves a checkpoint.
 *
 *   deno task train --model_name=bigramLM --max_iters=2000
 *   deno task train --model_name=gptLM --config=cpu
 *   deno task train --resume=true --ckpt_file=out/<run>.safetensors
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { AdamW } from "./lib/adamw.ts";
import { initBackend } from "./lib/backend.ts";
import {
  loadCheckpoint,
  restoreTrainingState,
  restoreWeights,
  saveCheckpoint,
  type TrainingState,
} from "./lib/checkpoint.ts";
import { decode, loadDataset } from "./lib/data.ts";
import { runMain, UsageError, UserError } from "./lib/errors.ts";
import { Rng } from "./lib/rng.ts";
import { generateTokens, startContext } from "./lib/sampling.ts";
import { parseTrainConfig, runId, type TrainConfig } from "./lib/train_config.ts";
import { estimateLoss, getBatch, microBatchCount, trainStep } from "./lib/training.ts";
import { countParams, disposeModel } from "./models/model.ts";
import { createModel } from "./models/registry.ts";
import { Progress } from "./lib/progress.ts";

/** Settings a resumed run may change; everything else comes from the checkpoint. */
const RESUMABLE_OVERRIDES = [
  "max_iters",
  "eval_interval",
  "eval_iters",
  "backend",
  "out_dir",
  "resume",
  "ckpt_file",
];

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** First `<id>`, `<id>_2`, `<id>_3`, … whose log and checkpoint are both new. */
async function freshRunId(id: string, outDir: string): Promise<string> {
  for (let n = 1;; n++) {
    const candidate = n === 1 ? id : `${id}_${n}`;
    if (
      !(await exists(`loss_${candidate}.txt`)) &&
      !(await exists(`${outDir}/${candidate}.safetensors`))
    ) {
      return candidate;
    }
  }
}

/**
 * Trains as `args` say and returns where the loss log and the best
 * checkpoint were written.
 */
export async function main(args: string[]): Promise<{ logFile: string; checkpointPath: string }> {
  let { config, given } = parseTrainConfig(args);
  const ckpt = config.resume ? await loadCheckpoint(requireCkptFile(config)) : null;
  if (ckpt) {
    config = resumedConfig(
      config,
      given,
      ckpt.config as Partial<TrainConfig>,
      ckpt.path,
    );
  }

  const backend = await initBackend(config.backend);
  console.log(`backend: ${backend.name} (${backend.adapter})`);

  const data = await loadDataset(config.dataset);
  const vocabSize = data.vocab.length;
  console.log(`found vocab_size = ${vocabSize} (inside ${data.dir}/meta.json)`);
  for (const split of ["train", "val"] as const) {
    if (data[split].length <= config.block_size) {
      throw new UsageError(
        `block_size ${config.block_size} does not fit the ${split} split (${
          data[split].length
        } tokens): use a smaller --block_size`,
      );
    }
  }
  if (ckpt && ckpt.vocab.join("") !== data.vocab.join("")) {
    throw new UserError(
      `checkpoint ${ckpt.path}: its vocabulary differs from ${data.dir}/meta.json's`,
    );
  }

  // The model, its optimizer and the run's one random stream.
  const rng = new Rng(config.seed);
  const model = createModel(config.model_name, {
    ...config,
    vocab_size: vocabSize,
  }, rng);
  const paramCount = countParams(model);
  console.log(
    `${(paramCount / 1e6).toFixed(6)} M parameters (${paramCount.toLocaleString("en-US")})`,
  );
  const microBatches = microBatchCount(model, config.batch_size, backend.name);
  if (microBatches > 1) {
    console.log(
      `each batch in ${microBatches} micro-batches of ${
        config.batch_size / microBatches
      } (the whole batch does not fit in WASM memory; same loss and gradient)`,
    );
  }
  const optimizer = new AdamW(model.params.map((p) => p.variable), {
    lr: config.learning_rate,
    weightDecay: config.weight_decay,
  });

  // Where this run writes; an earlier run's files are never overwritten.
  await ensureDir(config.out_dir);
  let state: TrainingState;
  let checkpointPath: string;
  if (ckpt) {
    restoreWeights(model, ckpt);
    state = await restoreTrainingState(model, optimizer, ckpt);
    rng.setState(state.rng);
    checkpointPath = ckpt.path.replace(/\.last\.safetensors$/, ".safetensors");
    console.log(
      `resuming ${ckpt.path} at iteration ${state.iter}, appending to ${state.logFile}`,
    );
  } else {
    const baseId = runId(config, vocabSize, paramCount);
    const id = await freshRunId(baseId, config.out_dir);
    if (id !== baseId) {
      console.log(`an earlier run used ${baseId}: this one is ${id}`);
    }
    checkpointPath = `${config.out_dir}/${id}.safetensors`;
    state = {
      iter: 0,
      evalDone: false,
      bestVal: 10,
      logFile: `loss_${id}.txt`,
      rng: rng.getState(),
    };
    await Deno.writeTextFile(state.logFile, "").catch((e) => {
      throw new UserError(`cannot write ${state.logFile}: ${e.message}`);
    });
  }
  console.log(`logging to ${state.logFile}`);

  let stopSignal: Deno.Signal | null = null;
  const signals = ["SIGINT", "SIGTERM"] as const;
  const onSignal = signals.map((signal) => () => {
    if (stopSignal) Deno.exit(130); // a second Ctrl-C: stop now
    stopSignal = signal;
    console.error(`\n${signal}: finishing this step, then saving…`);
  });
  signals.forEach((signal, i) => Deno.addSignalListener(signal, onSignal[i]));

  const tokensPerStep = config.batch_size *
    (config.model_name === "mlpLM" ? 1 : config.block_size);
  const progress = new Progress(config.max_iters, tokensPerStep);
  const startIter = state.iter;
  const saveInfo = () => ({
    config,
    vocab: data.vocab,
    state: { ...state, rng: rng.getState() },
  });

  for (let iter = startIter; iter < config.max_iters; iter++) {
    const evalDue = iter % config.eval_interval === 0 ||
      iter === config.max_iters - 1;
    if (evalDue && !(iter === startIter && state.evalDone)) {
      const msPerStep = progress.msPerStep(); // training steps only, not this evaluation
      const losses = await estimateLoss(
        model,
        data,
        config.batch_size,
        config.eval_iters,
        rng,
        microBatches,
      );
      const bestSoFar = losses.val < state.bestVal;
      state.bestVal = Math.min(state.bestVal, losses.val);
      progress.clear();
      console.log(
        `>>> step ${iter}: train loss ${losses.train.toFixed(4)}, val loss ${
          losses.val.toFixed(4)
        }, ` +
          `min loss ${state.bestVal.toFixed(4)}, ${msPerStep.toFixed(2)} ms per step`,
      );
      if (!Number.isFinite(losses.train) || !Number.isFinite(losses.val)) {
        throw lossDiverged(iter, checkpointPath);
      }
      if (iter > 0) {
        await Deno.writeTextFile(
          state.logFile,
          `${iter} ${losses.train.toFixed(4)} ${losses.val.toFixed(4)}\n`,
          { append: true },
        );
      }
      if (bestSoFar) {
        const sample = await generateTokens(model, startContext(model), 200, {}, rng);
        console.log(decode(sample, data.vocab).trim());
        state = { ...state, iter, evalDone: true };
        await saveCheckpoint(checkpointPath, model, saveInfo(), optimizer);
        console.log(`saving model ${checkpointPath}`);
      }
      progress.restart(iter);
    }

    const batch = getBatch(model, data.train, config.batch_size, rng);
    const loss = trainStep(model, optimizer, batch, rng, microBatches);
    tf.dispose([batch.x, batch.y]);
    const lossValue = await progress.step(
      iter + 1,
      loss,
      backend.name === "webgpu",
    );
    loss.dispose();
    if (lossValue !== null && !Number.isFinite(lossValue)) {
      throw lossDiverged(iter, checkpointPath);
    }

    if (stopSignal) {
      const lastPath = checkpointPath.replace(
        /\.safetensors$/,
        ".last.safetensors",
      );
      state = { ...state, iter: iter + 1, evalDone: false };
      await saveCheckpoint(lastPath, model, saveInfo(), optimizer);
      progress.clear();
      console.error(
        `stopped by ${stopSignal} after step ${iter}; resume with:\n  deno task train --resume=true --ckpt_file=${lastPath}`,
      );
      Deno.exit(130);
    }
  }
  progress.clear();
  signals.forEach((signal, i) => Deno.removeSignalListener(signal, onSignal[i]));
  optimizer.dispose();
  disposeModel(model);
  console.log(`done: loss log ${state.logFile}, best checkpoint ${checkpointPath}`);
  console.log(
    `next: deno task generate --ckpt=${checkpointPath}   |   ls loss_*.txt | deno task plot`,
  );
  return { logFile: state.logFile, checkpointPath };
}

function requireCkptFile(config: TrainConfig): string {
  if (!config.ckpt_file) {
    throw new UsageError(
      "--resume=true needs --ckpt_file=PATH (a checkpoint saved by train.ts)",
    );
  }
  return config.ckpt_file;
}

/** A resumed run keeps the checkpoint's settings; flags may change only a few. */
function resumedConfig(
  flags: TrainConfig,
  given: Set<string>,
  saved: Partial<TrainConfig>,
  path: string,
): TrainConfig {
  for (const key of given) {
    const savedValue = (saved as Record<string, unknown>)[key];
    const value = (flags as unknown as Record<string, unknown>)[key];
    if (
      !RESUMABLE_OVERRIDES.includes(key) && savedValue !== undefined &&
      savedValue !== value
    ) {
      throw new UsageError(
        `--${key}=${value} differs from ${path}'s ${key}=${savedValue}; a resumed run may change only ${
          RESUMABLE_OVERRIDES.slice(0, 5).map((k) => `--${k}`).join(", ")
        }`,
      );
    }
  }
  const config = { ...flags, ...saved } as TrainConfig;
  // Only what is given again: even the backend stays, as backends differ in the last bits.
  for (const key of RESUMABLE_OVERRIDES.filter((k) => given.has(k))) {
    (config as unknown as Record<string, unknown>)[key] =
      (flags as unknown as Record<string, unknown>)[key];
  }
  return config;
}

function lossDiverged(iter: number, checkpointPath: string): UserError {
  return new UserError(
    `the loss is not finite at step ${iter}: lower --learning_rate; the last good checkpoint (${checkpointPath}, if any) is kept`,
  );
}

async function ensureDir(dir: string): Promise<void> {
  try {
    await Deno.mkdir(dir, { recursive: true });
    const probe = `${dir}/.write-test-${Deno.pid}`;
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
  } catch (e) {
    throw new UserError(
      `cannot write to out_dir '${dir}': ${(e as Error).message}; pick another --out_dir`,
    );
  }
}

if (import.meta.main) await runMain(() => main(Deno.args));
