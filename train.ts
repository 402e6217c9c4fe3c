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
import { runMain, UserError } from "./cli/errors.ts";
import { appendText } from "./cli/files.ts";
import { Progress } from "./cli/progress.ts";
import { StopRequest } from "./cli/stop.ts";
import { checkWindowsFit, decode, loadDataset } from "./lib/data.ts";
import { countParams } from "./models/model.ts";
import { checkVocabulary, saveCheckpoint, type TrainingState } from "./run/checkpoint.ts";
import { datasetBlockSize } from "./run/config.ts";
import { buildRun, resumeRunFiles, startRunFiles, trainSettings } from "./run/run.ts";
import { generateTokens } from "./run/sampling.ts";
import { startBackend } from "./run/start.ts";
import { estimateLoss, expertLoadReport } from "./run/training.ts";

/**
 * Trains as `args` say and returns where the loss log and the best
 * checkpoint were written.
 */
export async function main(args: string[]): Promise<{ logFile: string; checkpointPath: string }> {
  const { config, ckpt, given } = await trainSettings(args);

  const backend = await startBackend(config.backend);
  console.log(`backend: ${backend.name} (${backend.adapter})`);

  const data = await loadDataset(config.dataset);
  console.log(`found vocab_size = ${data.vocab.length} (inside ${data.dir}/meta.json)`);
  const blockSize = datasetBlockSize(config, given, data);
  if (blockSize !== config.block_size) {
    console.log(`found block_size = ${blockSize} (inside ${data.dir}/meta.json)`);
    config.block_size = blockSize;
  }
  checkWindowsFit(data, config.block_size);
  if (ckpt) checkVocabulary(ckpt, data);

  // The model, its optimizer and the run's one random stream.
  const run = buildRun(config, data.vocab.length, backend.name);
  const { model, optimizer, rng, microBatches } = run;
  const paramCount = countParams(model);
  console.log(
    `${(paramCount / 1e6).toFixed(6)} M parameters (${paramCount.toLocaleString("en-US")})`,
  );
  for (const line of model.summary ?? []) console.log(line);
  if (microBatches > 1) {
    console.log(
      `each batch in ${microBatches} micro-batches of ${
        config.batch_size / microBatches
      } (the whole batch does not fit in WASM memory; same loss and gradient)`,
    );
  }

  // Where this run writes; an earlier run's files are never overwritten.
  let { state, checkpointPath } = ckpt
    ? await resumeRunFiles(run, ckpt)
    : await startRunFiles(run, data.vocab.length);
  if (ckpt) {
    console.log(`resuming ${ckpt.path} at iteration ${state.iter}, appending to ${state.logFile}`);
  }
  console.log(`logging to ${state.logFile}`);

  // Ctrl-C or SIGTERM: finish the current step, save `.last`, exit 130.
  const stop = new StopRequest();
  const progress = new Progress(config.max_iters, run.tokensPerStep);
  const startIter = state.iter;

  /** Saves a checkpoint pair; a second Ctrl-C meanwhile stops the run once it is on disk. */
  const save = async (path: string, rngState: TrainingState["rng"]) => {
    const info = { config, vocab: data.vocab, state: { ...state, rng: rngState } };
    await stop.whileSaving(() => saveCheckpoint(path, model, info, optimizer));
    if (stop.forced) stopped(path, `after saving ${path}`);
  };
  const stopped = (path: string, when: string): never => {
    progress.clear();
    console.error(
      `stopped by ${stop.signal} ${when}; resume with:\n  deno task train --resume=true --ckpt_file=${path}`,
    );
    Deno.exit(130);
  };
  /** Saves where training stands as `<run>.last.safetensors` and exits 130. */
  const stopAndSave = async (
    nextIter: number,
    rngState: TrainingState["rng"],
    when: string,
  ): Promise<never> => {
    const lastPath = checkpointPath.replace(/\.safetensors$/, ".last.safetensors");
    state = { ...state, iter: nextIter, evalDone: false };
    await save(lastPath, rngState);
    return stopped(lastPath, when);
  };

  try {
    for (let iter = startIter; iter < config.max_iters; iter++) {
      const evalDue = iter % config.eval_interval === 0 ||
        iter === config.max_iters - 1;
      if (evalDue && !(iter === startIter && state.evalDone)) {
        const msPerStep = progress.msPerStep(); // training steps only, not this evaluation
        const rngBefore = rng.getState();
        const losses = await estimateLoss(
          model,
          data,
          config.batch_size,
          config.eval_iters,
          rng,
          microBatches,
          () => stop.requested(),
        );
        // Stopped mid-evaluation: a resumed run evaluates again, from the same random state.
        if (!losses) {
          return await stopAndSave(iter, rngBefore, `during the evaluation at step ${iter}`);
        }
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
        for (const line of await expertLoadReport(model, data.val, config.batch_size)) {
          console.log(line);
        }
        if (iter > 0) {
          await appendText(
            state.logFile,
            `${iter} ${losses.train.toFixed(4)} ${losses.val.toFixed(4)}\n`,
          );
        }
        if (bestSoFar) {
          const sample = await generateTokens(model, model.startContext, 200, {}, rng);
          console.log(decode(sample, data.vocab).trim());
          state = { ...state, iter, evalDone: true };
          await save(checkpointPath, rng.getState());
          console.log(`saving model ${checkpointPath}`);
        }
        progress.restart(iter);
      }

      const loss = run.step(data.train);
      const lossValue = await progress.step(
        iter + 1,
        loss,
        backend.name === "webgpu",
      );
      loss.dispose();
      if (lossValue !== null && !Number.isFinite(lossValue)) {
        throw lossDiverged(iter, checkpointPath);
      }
      if (await stop.requested()) await stopAndSave(iter + 1, rng.getState(), `after step ${iter}`);
    }
  } finally {
    stop.dispose();
  }
  progress.clear();
  run.dispose();
  console.log(`done: loss log ${state.logFile}, best checkpoint ${checkpointPath}`);
  console.log(
    `next: deno task generate --ckpt=${checkpointPath}   |   ls loss_*.txt | deno task plot`,
  );
  return { logFile: state.logFile, checkpointPath };
}

function lossDiverged(iter: number, checkpointPath: string): UserError {
  return new UserError(
    `the loss is not finite at step ${iter}: lower --learning_rate; the last good checkpoint (${checkpointPath}, if any) is kept`,
  );
}

if (import.meta.main) await runMain(() => main(Deno.args));
