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
import { basename } from "node:path";
import type { AdamW } from "../nn/adamw.ts";
import { shown, UsageError, UserError } from "../cli/errors.ts";
import type { RngState } from "../lib/rng.ts";
import {
  allFinite,
  encodeSafetensors,
  entryToFloat32,
  entryToNumbers,
  f32Entry,
  i64Entry,
  readSafetensorsFile,
  type SafetensorsContents,
  type TensorEntry,
} from "../lib/safetensors.ts";
import { insideProject, writeFilesAtomic } from "../cli/files.ts";
import { disposeModel, type LanguageModel, type ModelName } from "../models/model.ts";
import { MODEL_NAMES } from "../models/model.ts";
import { createModel, MODELS } from "../models/registry.ts";
import { type Dataset, type Vocab, vocabProblem } from "../lib/data.ts";
import { Rng } from "../lib/rng.ts";
import { savedTrainConfig, type TrainConfig } from "./config.ts";
import { checkFits } from "./memory.ts";

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

/**
 * The loss log of a checkpoint's run, `loss_<run id>.txt` in this folder,
 * named from the checkpoint's file name (`<run id>.safetensors` or
 * `<run id>.last.safetensors`): never a path read from a file.
 */
export function lossLogFor(checkpointPath: string): string {
  return `loss_${basename(checkpointPath).replace(/(\.last)?\.safetensors$/, "")}.txt`;
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
 * resume). Both files are complete on disk before either replaces its old
 * version, the optimizer file first, so a full disk or a crash while
 * writing leaves the previous pair as it was.
 */
export async function saveCheckpoint(
  path: string,
  model: LanguageModel,
  info: { config: object; vocab: Vocab; state: TrainingState },
  optimizer?: AdamW,
): Promise<void> {
  const saveId = crypto.randomUUID();
  const files: [string, Uint8Array][] = [];
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
    files.push([
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
    ]);
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
  files.push([
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
  ]);
  await writeFilesAtomic(files);
}

/** A checkpoint read from disk and checked. */
export interface LoadedCheckpoint {
  path: string;
  modelName: ModelName;
  /** The training settings it was made with, checked as flags are. */
  config: TrainConfig;
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

/** A metadata field that must hold a whole number >= 0 (a step, an iteration). */
function metaCount(contents: SafetensorsContents, key: string, path: string): number {
  const text = metaField(contents, key, path);
  const value = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value)) {
    throw new UserError(
      `checkpoint ${path}: metadata '${key}' is ${
        shown(text)
      }, not a whole number (damaged or edited?)`,
    );
  }
  return value;
}

/** A metadata field that must hold a finite number (a loss). */
function metaNumber(contents: SafetensorsContents, key: string, path: string): number {
  const text = metaField(contents, key, path);
  const value = text.trim() === "" ? NaN : Number(text);
  if (!Number.isFinite(value)) {
    throw new UserError(
      `checkpoint ${path}: metadata '${key}' is ${
        shown(text)
      }, not a finite number (damaged or edited?)`,
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

/**
 * Reads a checkpoint inside this folder and checks everything in it that
 * could mislead or hang what builds on it, before anything is built: its
 * config as the command line's flags are checked (types, ranges, choices,
 * the model's rules), its vocabulary (distinct single characters), its
 * numbers, and that the config describes the tensors the file holds.
 * Tensor names, shapes and values are checked on restore.
 */
export async function loadCheckpoint(path: string): Promise<LoadedCheckpoint> {
  await insideProject(path, "checkpoint");
  const contents = await readSafetensorsFile(path);
  const format = metaField(contents, "format", path);
  if (format !== FORMAT) {
    throw new UserError(
      `checkpoint ${path}: format ${shown(format)} is not '${FORMAT}'`,
    );
  }
  const modelName = metaField(contents, "model_name", path) as ModelName;
  if (!MODEL_NAMES.includes(modelName)) {
    throw new UserError(
      `checkpoint ${path}: unknown model_name ${shown(modelName)}`,
    );
  }
  const config = savedTrainConfig(
    parseJsonField(metaField(contents, "config", path), "config", path),
    `checkpoint ${path}: config`,
  );
  if (config.model_name !== modelName) {
    throw new UserError(
      `checkpoint ${path}: config model_name ${config.model_name} differs from the file's ${modelName}`,
    );
  }
  const vocab = parseJsonField<unknown>(metaField(contents, "itos", path), "itos", path);
  const problem = vocabProblem(vocab);
  if (problem) throw new UserError(`checkpoint ${path}: metadata 'itos' ${problem}`);
  const ckpt: LoadedCheckpoint = {
    path,
    modelName,
    config,
    vocab: vocab as Vocab,
    iter: metaCount(contents, "iter", path),
    bestVal: metaNumber(contents, "best_val", path),
    saveId: metaField(contents, "save_id", path),
    contents,
  };
  // A config that describes another model than the file holds (n_layer
  // 10^7 beside two layers' tensors) is refused before it is built.
  const sizes = MODELS[modelName].sizes(modelConfigOf(ckpt));
  let held = 0;
  for (const entry of contents.tensors.values()) held += entry.shape.reduce((n, d) => n * d, 1);
  if (held !== sizes.params + sizes.buffers) {
    throw new UserError(
      `checkpoint ${path}: its config describes a ${modelName} of ${
        (sizes.params + sizes.buffers).toLocaleString("en-US")
      } values, the file holds ${held.toLocaleString("en-US")} (damaged or edited?)`,
    );
  }
  checkFinite(contents, path);
  return ckpt;
}

/** The model settings of a checkpoint: its config and its vocabulary's size. */
function modelConfigOf(ckpt: LoadedCheckpoint) {
  return { ...ckpt.config, vocab_size: ckpt.vocab.length };
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

/** Refuses a file whose float tensors hold NaN or infinite values: the run had diverged, or the file is damaged. */
function checkFinite(contents: SafetensorsContents, path: string): void {
  for (const [name, entry] of contents.tensors) {
    if (entry.dtype !== "F32") continue;
    if (!allFinite(entry, `checkpoint ${path}: ${name}`)) {
      throw new UserError(
        `checkpoint ${path}: tensor ${
          shown(name)
        } holds NaN or infinite values (saved after the loss diverged, or damaged)`,
      );
    }
  }
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

/**
 * The checkpoint's model: built from its config and vocabulary, with its
 * weights, once it is known to fit the backend in use.
 */
export function modelFromCheckpoint(ckpt: LoadedCheckpoint): LanguageModel {
  const config = modelConfigOf(ckpt);
  checkFits(ckpt.modelName, config, 1, tf.getBackend(), false);
  let model: LanguageModel;
  try {
    model = createModel(ckpt.modelName, config, new NoDraws(0));
  } catch (e) {
    if (e instanceof UsageError) throw new UserError(`checkpoint ${ckpt.path}: ${e.message}`);
    throw e;
  }
  try {
    restoreWeights(model, ckpt);
  } catch (e) {
    disposeModel(model);
    throw e;
  }
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

/** Restores the optimizer and returns where training stands; the loss log is {@link lossLogFor}'s. */
export async function restoreTrainingState(
  model: LanguageModel,
  optimizer: AdamW,
  ckpt: LoadedCheckpoint,
): Promise<TrainingState> {
  const path = optimizerPath(ckpt.path);
  let contents: SafetensorsContents;
  try {
    await insideProject(path, "optimizer state");
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
  const state: TrainingState = {
    iter: metaCount(contents, "iter", path),
    evalDone: metaChoice(contents, "eval_done", path, ["true", "false"]) === "true",
    bestVal: metaNumber(contents, "best_val", path),
    logFile: lossLogFor(ckpt.path),
    rng: rngState(parseJsonField(metaField(contents, "rng", path), "rng", path), path),
  };
  const step = metaCount(contents, "step", path);
  checkFinite(contents, path);
  for (const p of model.params) {
    const moments = optimizer.moments.get(p.variable)!;
    const shape = torchShape(p.variable, p.transposed);
    const m = expectEntry(contents, `${p.name}.exp_avg`, shape, path);
    const v = expectEntry(contents, `${p.name}.exp_avg_sq`, shape, path);
    assignTorch(moments.expAvg, entryToFloat32(m, path), p.transposed);
    assignTorch(moments.expAvgSq, entryToFloat32(v, path), p.transposed);
  }
  optimizer.step = step;
  return state;
}

function metaChoice(
  contents: SafetensorsContents,
  key: string,
  path: string,
  choices: string[],
): string {
  const text = metaField(contents, key, path);
  if (!choices.includes(text)) {
    throw new UserError(
      `checkpoint ${path}: metadata '${key}' is ${shown(text)}, not ${choices.join(" or ")}`,
    );
  }
  return text;
}

/** The saved random stream: four 32-bit words and a spare normal sample (or null). */
function rngState(value: unknown, path: string): TrainingState["rng"] {
  const v = value as { words?: unknown; spareNormal?: unknown } | null;
  const words = v?.words;
  const spare = v?.spareNormal;
  if (
    !Array.isArray(words) || words.length !== 4 ||
    !words.every((w) => Number.isInteger(w) && w >= -(2 ** 31) && w < 2 ** 32) ||
    !(spare === null || Number.isFinite(spare))
  ) {
    throw new UserError(`checkpoint ${path}: metadata 'rng' is not a saved random stream`);
  }
  return { words: words as RngState, spareNormal: spare as number | null };
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
  await insideProject(dir, "checkpoint folder");
  try {
    await visit(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  return (best as { path: string } | null)?.path ?? null;
}
