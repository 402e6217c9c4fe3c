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
import { Progress } from "./cli/progress.ts";
import { checkWindowsFit, decode, loadDataset } from "./lib/data.ts";
import { countParams } from "./models/model.ts";
import { checkVocabulary, saveCheckpoint } from "./run/checkpoint.ts";
import { trainSettings } from "./run/config.ts";
import { buildRun, resumeRunFiles, startRunFiles } from "./run/run.ts";
import { generateTokens } from "./run/sampling.ts";
import { startBackend } from "./run/start.ts";
import { estimateLoss } from "./run/training.ts";

/**
 * Trains as `args` say and returns where the loss log and the best
 * checkpoint were written.
 */
export async function main(args: string[]): Promise<{ logFile: string; checkpointPath: string }> {
  const { config, ckpt } = await trainSettings(args);

  const backend = await startBackend(config.backend);
  console.log(`backend: ${backend.name} (${backend.adapter})`);

  const data = await loadDataset(config.dataset);
  console.log(`found vocab_size = ${data.vocab.length} (inside ${data.dir}/meta.json)`);
  checkWindowsFit(data, config.block_size);
  if (ckpt) checkVocabulary(ckpt, data);

  // The model, its optimizer and the run's one random stream.
  const run = buildRun(config, data.vocab.length, backend.name);
  const { model, optimizer, rng, microBatches } = run;
  const paramCount = countParams(model);
  console.log(
    `${(paramCount / 1e6).toFixed(6)} M parameters (${paramCount.toLocaleString("en-US")})`,
  );
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

  let stopSignal: Deno.Signal | null = null;
  const signals = ["SIGINT", "SIGTERM"] as const;
  const onSignal = signals.map((signal) => () => {
    if (stopSignal) Deno.exit(130); // a second Ctrl-C: stop now
    stopSignal = signal;
    console.error(`\n${signal}: finishing this step, then saving…`);
  });
  signals.forEach((signal, i) => Deno.addSignalListener(signal, onSignal[i]));

  const progress = new Progress(config.max_iters, run.tokensPerStep);
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
        const sample = await generateTokens(model, model.startContext, 200, {}, rng);
        console.log(decode(sample, data.vocab).trim());
        state = { ...state, iter, evalDone: true };
        await saveCheckpoint(checkpointPath, model, saveInfo(), optimizer);
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
