/**
 * One training step and the loss estimate, shared by `train.ts` and
 * `bench.ts` so the benchmark times exactly what training runs.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { AdamW } from "../nn/adamw.ts";
import { sampleWindows } from "../lib/data.ts";
import type { Rng } from "../lib/rng.ts";
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
 * Bytes a step may hold on WASM: its memory stops at 4 GB, and tfjs's heap
 * never shrinks, so a step is kept well below that.
 */
const WASM_STEP_BUDGET = 2 * 2 ** 30;

/**
 * How many equal micro-batches a batch of `batchSize` rows is split into so
 * one step fits the backend's memory: 1 unless the backend is WASM and the
 * model's rows are independent ({@link LanguageModel.bytesPerRow}) and too
 * many. The mean loss and gradient are those of the whole batch.
 */
export function microBatchCount(model: LanguageModel, batchSize: number, backend: string): number {
  return microBatchesFor(model.bytesPerRow, batchSize, backend);
}

/**
 * {@link microBatchCount} before the model is built: `perRow` is its
 * bytes per row when its rows are independent, else undefined.
 */
export function microBatchesFor(
  perRow: number | undefined,
  batchSize: number,
  backend: string,
): number {
  if (backend !== "wasm" || perRow === undefined) return 1;
  for (let count = 1; count < batchSize; count++) {
    if (batchSize % count === 0 && (batchSize / count) * perRow <= WASM_STEP_BUDGET) return count;
  }
  return batchSize;
}

/** Rows `i·n … (i+1)·n` of a batch. */
function microBatch(batch: Batch, i: number, n: number): Batch {
  return { x: batch.x.slice(i * n, n), y: batch.y.slice(i * n, n) };
}

/**
 * forward → backward → AdamW update on one batch, in `microBatches` equal
 * parts whose gradients are summed (each part's loss weighted 1/parts).
 * Returns the batch's loss as a tensor: reading it costs a GPU→CPU sync, so
 * callers read it rarely.
 */
export function trainStep(
  model: LanguageModel,
  optimizer: AdamW,
  batch: Batch,
  rng: Rng,
  microBatches = 1,
): tf.Scalar {
  const variables = model.params.map((p) => p.variable);
  if (microBatches === 1) {
    const { value, grads } = tf.variableGrads(
      () => model.loss(batch.x, batch.y, { training: true, rng }),
      variables,
    );
    optimizer.applyGradients(grads);
    tf.dispose(grads);
    return value;
  }
  const rows = batch.x.shape[0] / microBatches;
  let loss = tf.scalar(0);
  let sum: Record<string, tf.Tensor> = {};
  for (let i = 0; i < microBatches; i++) {
    const part = microBatch(batch, i, rows);
    const { value, grads } = tf.variableGrads(
      () => model.loss(part.x, part.y, { training: true, rng }).div(microBatches),
      variables,
    );
    const next = tf.tidy(() => ({
      loss: loss.add(value),
      grads: i === 0 ? grads : Object.fromEntries(
        Object.entries(grads).map(([name, g]) => [name, sum[name].add(g)]),
      ),
    }));
    if (i > 0) tf.dispose([sum, grads]);
    tf.dispose([loss, value, part.x, part.y]);
    loss = next.loss as tf.Scalar;
    sum = next.grads;
  }
  optimizer.applyGradients(sum);
  tf.dispose(sum);
  return loss;
}

/** Mean evaluation-mode loss of a batch, taken in `microBatches` equal parts. */
function evalLoss(model: LanguageModel, batch: Batch, microBatches: number): tf.Scalar {
  if (microBatches === 1) {
    return tf.tidy(() => model.loss(batch.x, batch.y, { training: false }));
  }
  const rows = batch.x.shape[0] / microBatches;
  let loss = tf.scalar(0);
  for (let i = 0; i < microBatches; i++) {
    const part = microBatch(batch, i, rows);
    const next = tf.tidy(() =>
      loss.add(model.loss(part.x, part.y, { training: false }).div(microBatches))
    );
    tf.dispose([loss, part.x, part.y]);
    loss = next as tf.Scalar;
  }
  return loss;
}

/**
 * The original's `estimate_loss`: mean loss of `evalIters` random batches
 * per split, in eval mode. With `interrupted`, asked after each batch,
 * returns null as soon as it says true (a stop requested mid-evaluation).
 */
export function estimateLoss(
  model: LanguageModel,
  splits: { train: Uint16Array; val: Uint16Array },
  batchSize: number,
  evalIters: number,
  rng: Rng,
  microBatches?: number,
): Promise<{ train: number; val: number }>;
export function estimateLoss(
  model: LanguageModel,
  splits: { train: Uint16Array; val: Uint16Array },
  batchSize: number,
  evalIters: number,
  rng: Rng,
  microBatches: number,
  interrupted: () => Promise<boolean>,
): Promise<{ train: number; val: number } | null>;
export async function estimateLoss(
  model: LanguageModel,
  splits: { train: Uint16Array; val: Uint16Array },
  batchSize: number,
  evalIters: number,
  rng: Rng,
  microBatches = 1,
  interrupted?: () => Promise<boolean>,
): Promise<{ train: number; val: number } | null> {
  const out = { train: 0, val: 0 };
  for (const split of ["train", "val"] as const) {
    let sum = tf.scalar(0);
    for (let k = 0; k < evalIters; k++) {
      const batch = getBatch(model, splits[split], batchSize, rng);
      const loss = evalLoss(model, batch, microBatches);
      const next = sum.add(loss);
      tf.dispose([sum, loss, batch.x, batch.y]);
      sum = next as tf.Scalar;
      if (interrupted && await interrupted()) {
        sum.dispose();
        return null;
      }
    }
    out[split] = (await sum.data())[0] / evalIters;
    sum.dispose();
  }
  return out;
}

/**
 * A mixture-of-experts model's routing, as lines to print at an
 * evaluation: each router's share of tokens per expert and the
 * load-balancing loss, on the first `batchSize` windows of `data` (the same
 * windows every time, so evaluations compare). Empty for other models.
 */
export async function expertLoadReport(
  model: LanguageModel,
  data: Uint16Array,
  batchSize: number,
): Promise<string[]> {
  if (!model.expertLoad) return [];
  const T = model.config.block_size;
  const count = Math.max(1, Math.min(batchSize, Math.floor((data.length - 1) / T)));
  const windows = new Int32Array(count * (T + 1));
  for (let w = 0; w < count; w++) windows.set(data.subarray(w * T, w * T + T + 1), w * (T + 1));
  const batch = model.makeBatch(windows, count);
  const load = await model.expertLoad(batch.x);
  tf.dispose([batch.x, batch.y]);
  const { num_experts: E, top_k: k } = model.config;
  const width = Math.max(...load.routers.map((r) => r.name.length));
  return [
    `expert load on ${count} val windows (share of tokens per expert; ${k} of ${E} each, ${
      (k / E).toFixed(2)
    } when even):`,
    ...load.routers.map((r) =>
      `  ${r.name.padEnd(width)}  ${r.share.map((s) => s.toFixed(2)).join(" ")}`
    ),
    `load-balancing loss ${load.auxLoss.toFixed(4)}${
      load.trained ? " (training adds aux_loss_coef times it)" : " (shown only: not trained on)"
    }`,
  ];
}
