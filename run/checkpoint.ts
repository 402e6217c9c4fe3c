/**
 * Checkpoints as safetensors files that PyTorch can read.
 *
 * `<run>.safetensors` holds exactly the original model's `state_dict`
 * (names, shapes, `[out, in]` layouts), so in Python
 * `model.load_state_dict(tensors, strict=True)` takes it; its metadata has
 * the config and the vocabulary. The optimizer state, iteration and random
 * stream needed to resume exactly go beside it in `<run>.optim.safetensors`;
 * a shared `save_id` ties the two together.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { AdamW } from "../nn/adamw.ts";
import { UserError } from "../cli/errors.ts";
import type { RngState } from "../lib/rng.ts";
import {
  encodeSafetensors,
  entryToFloat32,
  entryToNumbers,
  f32Entry,
  i64Entry,
  readSafetensorsFile,
  type SafetensorsContents,
  type TensorEntry,
} from "../lib/safetensors.ts";
import { writeFileAtomic } from "../cli/files.ts";
import type { LanguageModel, ModelConfig, ModelName } from "../models/model.ts";
import { MODEL_NAMES } from "../models/model.ts";
import { createModel } from "../models/registry.ts";
import type { Dataset, Vocab } from "../lib/data.ts";
import { Rng } from "../lib/rng.ts";

/** Bumped when the metadata's meaning changes. */
export const FORMAT = "simplelm-safetensors/1";

/** Where training stands, saved with the optimizer state. */
export interface TrainingState {
  /** The next iteration to run. */
  iter: number;
  /** True when the evaluation at `iter` has already run (a save at evaluation). */
  evalDone: boolean;
  /** Best validation loss so far (the original's `minloss`). */
  bestVal: number;
  /** The loss log this run appends to. */
  logFile: string;
  rng: { words: RngState; spareNormal: number | null };
}

/** The optimizer file that goes with a checkpoint. */
export function optimizerPath(checkpointPath: string): string {
  return checkpointPath.replace(/\.safetensors$/, "") + ".optim.safetensors";
}

/** Converts a tensor to PyTorch's layout and reads its values. */
async function torchValues(
  t: tf.Tensor,
  transposed: boolean,
): Promise<{ shape: number[]; values: Float32Array }> {
  if (!transposed) {
    return { shape: t.shape, values: await t.data() as Float32Array };
  }
  const tt = t.transpose();
  const values = await tt.data() as Float32Array;
  const shape = tt.shape;
  tt.dispose();
  return { shape, values };
}

/**
 * Saves the model (and, when `optimizer` is given, everything needed to
 * resume). Each file is written atomically; the optimizer file first, so a
 * crash in between leaves a model file that still loads on its own.
 */
export async function saveCheckpoint(
  path: string,
  model: LanguageModel,
  info: { config: object; vocab: Vocab; state: TrainingState },
  optimizer?: AdamW,
): Promise<void> {
  const saveId = crypto.randomUUID();
  if (optimizer) {
    const tensors = new Map<string, TensorEntry>();
    for (const p of model.params) {
      const moments = optimizer.moments.get(p.variable)!;
      const m = await torchValues(moments.expAvg, p.transposed);
      const v = await torchValues(moments.expAvgSq, p.transposed);
      tensors.set(`${p.name}.exp_avg`, f32Entry(m.shape, m.values));
      tensors.set(`${p.name}.exp_avg_sq`, f32Entry(v.shape, v.values));
    }
    const { state } = info;
    await writeFileAtomic(
      optimizerPath(path),
      encodeSafetensors(tensors, {
        format: FORMAT,
        save_id: saveId,
        step: String(optimizer.step),
        iter: String(state.iter),
        eval_done: String(state.evalDone),
        best_val: String(state.bestVal),
        log_file: state.logFile,
        rng: JSON.stringify(state.rng),
      }),
    );
  }
  const tensors = new Map<string, TensorEntry>();
  for (const p of model.params) {
    const { shape, values } = await torchValues(p.variable, p.transposed);
    tensors.set(p.name, f32Entry(shape, values));
  }
  for (const b of model.buffers) {
    const values = await b.tensor.data();
    tensors.set(
      b.name,
      b.dtype === "I64"
        ? i64Entry(b.tensor.shape, Array.from(values))
        : f32Entry(b.tensor.shape, values as Float32Array),
    );
  }
  await writeFileAtomic(
    path,
    encodeSafetensors(tensors, {
      format: FORMAT,
      save_id: saveId,
      model_name: model.name,
      config: JSON.stringify(info.config),
      itos: JSON.stringify(info.vocab),
      iter: String(info.state.iter),
      best_val: String(info.state.bestVal),
    }),
  );
}

/** A checkpoint read from disk and checked. */
export interface LoadedCheckpoint {
  path: string;
  modelName: ModelName;
  /** The training config it was made with (train flags by name). */
  config: Record<string, unknown>;
  vocab: Vocab;
  iter: number;
  bestVal: number;
  saveId: string;
  contents: SafetensorsContents;
}

function metaField(
  contents: SafetensorsContents,
  key: string,
  path: string,
): string {
  const value = contents.metadata[key];
  if (value === undefined) {
    throw new UserError(
      `checkpoint ${path}: metadata lacks '${key}' (not a simpleLM checkpoint?)`,
    );
  }
  return value;
}

function parseJsonField<T>(text: string, key: string, path: string): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new UserError(
      `checkpoint ${path}: metadata '${key}' is not valid JSON`,
    );
  }
}

/** Reads a checkpoint and checks its metadata (tensors are checked on restore). */
export async function loadCheckpoint(path: string): Promise<LoadedCheckpoint> {
  const contents = await readSafetensorsFile(path);
  const format = metaField(contents, "format", path);
  if (format !== FORMAT) {
    throw new UserError(
      `checkpoint ${path}: format '${format}' is not '${FORMAT}'`,
    );
  }
  const modelName = metaField(contents, "model_name", path) as ModelName;
  if (!MODEL_NAMES.includes(modelName)) {
    throw new UserError(
      `checkpoint ${path}: unknown model_name '${modelName}'`,
    );
  }
  const config = parseJsonField<Record<string, unknown>>(
    metaField(contents, "config", path),
    "config",
    path,
  );
  const vocab = parseJsonField<unknown>(
    metaField(contents, "itos", path),
    "itos",
    path,
  );
  if (!Array.isArray(vocab) || vocab.some((c) => typeof c !== "string")) {
    throw new UserError(
      `checkpoint ${path}: metadata 'itos' is not a list of characters`,
    );
  }
  return {
    path,
    modelName,
    config,
    vocab: vocab as Vocab,
    iter: Number(metaField(contents, "iter", path)),
    bestVal: Number(metaField(contents, "best_val", path)),
    saveId: metaField(contents, "save_id", path),
    contents,
  };
}

function expectEntry(
  contents: SafetensorsContents,
  name: string,
  shape: number[],
  path: string,
): TensorEntry {
  const entry = contents.tensors.get(name);
  if (!entry) {
    throw new UserError(`checkpoint ${path}: tensor '${name}' is missing`);
  }
  if (entry.shape.join(",") !== shape.join(",")) {
    throw new UserError(
      `checkpoint ${path}: tensor '${name}' has shape [${entry.shape}], the model needs [${shape}]`,
    );
  }
  return entry;
}

function torchShape(t: tf.Tensor, transposed: boolean): number[] {
  return transposed ? [...t.shape].reverse() : t.shape;
}

function assignTorch(
  target: tf.Variable,
  values: Float32Array,
  transposed: boolean,
): void {
  tf.tidy(() => {
    const t = tf.tensor(values, torchShape(target, transposed));
    target.assign(transposed ? t.transpose() : t);
  });
}

/** Loads weights and buffers into `model`; names and shapes must match exactly. */
export function restoreWeights(
  model: LanguageModel,
  ckpt: LoadedCheckpoint,
): void {
  const { contents, path } = ckpt;
  const expected = new Set([
    ...model.params.map((p) => p.name),
    ...model.buffers.map((b) => b.name),
  ]);
  const extra = [...contents.tensors.keys()].filter((k) => !expected.has(k));
  if (extra.length > 0) {
    throw new UserError(
      `checkpoint ${path}: unexpected tensor '${extra[0]}' for ${model.name}`,
    );
  }
  for (const p of model.params) {
    const entry = expectEntry(
      contents,
      p.name,
      torchShape(p.variable, p.transposed),
      path,
    );
    assignTorch(
      p.variable,
      entryToFloat32(entry, `checkpoint ${path}: ${p.name}`),
      p.transposed,
    );
  }
  for (const b of model.buffers) {
    const entry = expectEntry(contents, b.name, b.tensor.shape, path);
    if (!(b.tensor instanceof tf.Variable)) continue; // constant buffers (attention masks) are rebuilt
    const values = b.dtype === "I64"
      ? entryToNumbers(entry, `checkpoint ${path}: ${b.name}`)
      : entryToFloat32(entry, `checkpoint ${path}: ${b.name}`);
    tf.tidy(() =>
      (b.tensor as tf.Variable).assign(
        tf.tensor(values, b.tensor.shape, b.tensor.dtype),
      )
    );
  }
}

/**
 * The stream a checkpoint's model is built from: every weight is then
 * overwritten, so its init draws nothing and leaves zeros.
 */
class NoDraws extends Rng {
  override normals(n: number): Float32Array {
    return new Float32Array(n);
  }
  override uniforms(n: number): Float32Array {
    return new Float32Array(n);
  }
}

/** The checkpoint's model: built from its config and vocabulary, with its weights. */
export function modelFromCheckpoint(ckpt: LoadedCheckpoint): LanguageModel {
  const config = { ...ckpt.config, vocab_size: ckpt.vocab.length } as unknown as ModelConfig;
  const model = createModel(ckpt.modelName, config, new NoDraws(0));
  restoreWeights(model, ckpt);
  return model;
}

/** Refuses a dataset whose vocabulary is not the checkpoint's: its ids would mean other characters. */
export function checkVocabulary(ckpt: LoadedCheckpoint, data: Dataset): void {
  if (ckpt.vocab.join("") !== data.vocab.join("")) {
    throw new UserError(
      `checkpoint ${ckpt.path}: its vocabulary differs from ${data.dir}/meta.json's`,
    );
  }
}

/** Restores the optimizer and returns where training stands. */
export async function restoreTrainingState(
  model: LanguageModel,
  optimizer: AdamW,
  ckpt: LoadedCheckpoint,
): Promise<TrainingState> {
  const path = optimizerPath(ckpt.path);
  let contents: SafetensorsContents;
  try {
    contents = await readSafetensorsFile(path);
  } catch (e) {
    throw new UserError(
      `cannot resume: ${(e as Error).message} (the optimizer state saved beside ${ckpt.path})`,
    );
  }
  if (metaField(contents, "save_id", path) !== ckpt.saveId) {
    throw new UserError(
      `cannot resume: ${path} does not belong to ${ckpt.path} (saved at different times)`,
    );
  }
  for (const p of model.params) {
    const moments = optimizer.moments.get(p.variable)!;
    const shape = torchShape(p.variable, p.transposed);
    const m = expectEntry(contents, `${p.name}.exp_avg`, shape, path);
    const v = expectEntry(contents, `${p.name}.exp_avg_sq`, shape, path);
    assignTorch(moments.expAvg, entryToFloat32(m, path), p.transposed);
    assignTorch(moments.expAvgSq, entryToFloat32(v, path), p.transposed);
  }
  optimizer.step = Number(metaField(contents, "step", path));
  return {
    iter: Number(metaField(contents, "iter", path)),
    evalDone: metaField(contents, "eval_done", path) === "true",
    bestVal: Number(metaField(contents, "best_val", path)),
    logFile: metaField(contents, "log_file", path),
    rng: parseJsonField(metaField(contents, "rng", path), "rng", path),
  };
}

/**
 * The most recently written model checkpoint in `dir` or its subfolders
 * (the demo writes to `out/demo/`), or null.
 */
export async function latestCheckpoint(dir: string): Promise<string | null> {
  let best: { path: string; mtime: number } | null = null;
  const visit = async (folder: string) => {
    for await (const entry of Deno.readDir(folder)) {
      const path = `${folder}/${entry.name}`;
      if (entry.isDirectory) await visit(path);
      if (
        !entry.isFile || !entry.name.endsWith(".safetensors") ||
        entry.name.endsWith(".optim.safetensors")
      ) {
        continue;
      }
      const mtime = (await Deno.stat(path)).mtime?.getTime() ?? 0;
      if (!best || mtime > best.mtime) best = { path, mtime };
    }
  };
  try {
    await visit(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  return (best as { path: string } | null)?.path ?? null;
}
