/**
 * One training step and the loss estimate, shared by `train.ts` and
 * `bench.ts` so the benchmark times exactly what training runs.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { AdamW } from "./adamw.ts";
import { sampleWindows } from "./data.ts";
import type { Rng } from "./rng.ts";
import type { Batch, LanguageModel } from "../models/model.ts";

/** A random batch of `batchSize` windows from one split, as the original's `get_batch`. */
export function getBatch(
  model: LanguageModel,
  data: Uint16Array,
  batchSize: number,
  rng: Rng,
): Batch {
  const windows = sampleWindows(
    data,
    model.config.block_size,
    batchSize,
    (n) => rng.below(n),
  );
  return model.makeBatch(windows, batchSize, rng);
}

/**
 * forward → backward → AdamW update on one batch. Returns the batch's loss
 * as a tensor: reading it costs a GPU→CPU sync, so callers read it rarely.
 */
export function trainStep(
  model: LanguageModel,
  optimizer: AdamW,
  batch: Batch,
  rng: Rng,
): tf.Scalar {
  const variables = model.params.map((p) => p.variable);
  const { value, grads } = tf.variableGrads(
    () => model.loss(batch.x, batch.y, { training: true, rng }),
    variables,
  );
  optimizer.applyGradients(grads);
  tf.dispose(grads);
  return value;
}

/** The original's `estimate_loss`: mean loss of `evalIters` random batches per split, in eval mode. */
export async function estimateLoss(
  model: LanguageModel,
  splits: { train: Uint16Array; val: Uint16Array },
  batchSize: number,
  evalIters: number,
  rng: Rng,
): Promise<{ train: number; val: number }> {
  const out = { train: 0, val: 0 };
  for (const split of ["train", "val"] as const) {
    let sum = tf.scalar(0);
    for (let k = 0; k < evalIters; k++) {
      const batch = getBatch(model, splits[split], batchSize, rng);
      const next = tf.tidy(() => sum.add(model.loss(batch.x, batch.y, { training: false })));
      tf.dispose([sum, batch.x, batch.y]);
      sum = next as tf.Scalar;
    }
    out[split] = (await sum.data())[0] / evalIters;
    sum.dispose();
  }
  return out;
}
