/**
 * Training settings: the PyTorch original's names and defaults, our
 * additions, the `--config=cpu` preset, and the checks that catch a
 * configuration which cannot work before any compute starts.
 *
 * @module
 */
import { BACKENDS } from "./backend.ts";
import { UsageError } from "./errors.ts";
import { type FlagSpecs, parseFlags } from "./flags.ts";
import { MODEL_NAMES, type ModelConfig, type ModelName } from "../models/model.ts";

/** The activations mlpLM takes (`swiglu` is silu, as in the original). */
export const ACTIVATIONS = ["relu", "sigmoid", "silu", "swiglu"] as const;

/** Named presets for `--config`. Explicit flags win over a preset. */
export const PRESETS: Record<string, Record<string, number>> = {
  default: {},
  // nanoGPT's shakespeare_char setting for a laptop CPU.
  cpu: {
    n_layer: 4,
    n_head: 4,
    n_embd: 128,
    block_size: 64,
    batch_size: 12,
    dropout: 0,
  },
};

/** Every `train.ts` flag. The first block is the original's, unchanged. */
export const TRAIN_FLAGS: FlagSpecs = {
  batch_size: {
    type: "int",
    default: 64,
    min: 1,
    help: "independent sequences per step",
  },
  block_size: {
    type: "int",
    default: 256,
    min: 1,
    help: "context length in characters",
  },
  max_iters: { type: "int", default: 5000, min: 1, help: "training steps" },
  eval_interval: {
    type: "int",
    default: 500,
    min: 1,
    help: "steps between evaluations",
  },
  learning_rate: {
    type: "float",
    default: 3e-4,
    min: 0,
    exclusiveMin: true,
    help: "AdamW learning rate",
  },
  eval_iters: {
    type: "int",
    default: 200,
    min: 1,
    help: "batches per split in an evaluation",
  },
  dropout: {
    type: "float",
    default: 0.2,
    min: 0,
    max: 1,
    exclusiveMax: true,
    help: "dropout probability",
  },
  char_encoding_len: {
    type: "int",
    default: 12,
    min: 2,
    help: "mlpLM: bits per character (even)",
  },
  use_batch_norm: {
    type: "bool",
    default: true,
    help: "mlpLM: BatchNorm after each hidden layer",
  },
  max_hidden_nodes: {
    type: "int",
    default: 2048,
    min: 4,
    help: "mlpLM: width of the first hidden layer",
  },
  active_fn: {
    type: "string",
    default: "relu",
    choices: ACTIVATIONS,
    help: "mlpLM: relu, sigmoid, silu or swiglu (= silu)",
  },
  n_embd: { type: "int", default: 384, min: 1, help: "gptLM: embedding width" },
  n_head: { type: "int", default: 6, min: 1, help: "gptLM: attention heads" },
  n_layer: {
    type: "int",
    default: 6,
    min: 1,
    help: "gptLM: transformer blocks",
  },
  model_name: {
    type: "string",
    default: "gptLM",
    choices: MODEL_NAMES,
    help: "bigramLM, mlpLM or gptLM",
  },
  dataset: {
    type: "string",
    default: "shakespeare_char",
    help: "folder under datas/ written by prepare",
  },
  resume: { type: "bool", default: false, help: "continue from --ckpt_file" },
  ckpt_file: { type: "string", default: "", help: "checkpoint to resume from" },
  // Additions to the original.
  config: {
    type: "string",
    default: "default",
    choices: Object.keys(PRESETS),
    help: "preset: default, or cpu (nanoGPT's CPU setting)",
  },
  backend: {
    type: "string",
    default: "auto",
    choices: BACKENDS,
    help: "auto, webgpu, wasm or cpu",
  },
  seed: {
    type: "int",
    default: 1337,
    min: 0,
    help: "seeds init, batches, dropout and samples",
  },
  weight_decay: {
    type: "float",
    default: 0.01,
    min: 0,
    help: "AdamW decoupled weight decay",
  },
  out_dir: { type: "string", default: "out", help: "where checkpoints go" },
};

/** Parsed training settings. */
export interface TrainConfig extends Omit<ModelConfig, "vocab_size"> {
  batch_size: number;
  max_iters: number;
  eval_interval: number;
  learning_rate: number;
  eval_iters: number;
  model_name: ModelName;
  dataset: string;
  resume: boolean;
  ckpt_file: string;
  config: string;
  backend: string;
  seed: number;
  weight_decay: number;
  out_dir: string;
}

/** Parses `train.ts` arguments: preset first, then explicit flags; then checks. */
export function parseTrainConfig(
  args: string[],
): { config: TrainConfig; given: Set<string> } {
  const { values, given } = parseFlags(args, TRAIN_FLAGS);
  for (const [key, value] of Object.entries(PRESETS[values.config as string])) {
    if (!given.has(key)) values[key] = value;
  }
  const config = values as unknown as TrainConfig;
  checkModelConfig(config);
  return { config, given };
}

/** Model settings that pass the flag checks but cannot build the model. */
export function checkModelConfig(
  config: Omit<ModelConfig, "vocab_size"> & { model_name: ModelName },
): void {
  if (config.model_name === "gptLM" && config.n_embd % config.n_head !== 0) {
    throw new UsageError(
      `n_embd (${config.n_embd}) must be divisible by n_head (${config.n_head}): e.g. --n_head=${
        largestDivisor(config.n_embd, config.n_head)
      }`,
    );
  }
}

function largestDivisor(n: number, atMost: number): number {
  for (let d = atMost; d > 1; d--) if (n % d === 0) return d;
  return 1;
}

/** Python's `str(float)`: `0.0003`, `1e-05`, `0.0`, so run ids match the original's. */
export function pyFloat(x: number): string {
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return x.toFixed(1);
  const exponent = Math.floor(Math.log10(Math.abs(x)));
  if (exponent < -4 || exponent >= 16) {
    return x.toExponential().replace(/e([+-])(\d)$/, "e$10$2");
  }
  return String(x);
}

/**
 * The original's run id without `loss_` and with `-` for `:` (invalid in
 * Windows file names), e.g. `gptLM_BA-64_BL-256_PAR-10.79_V-65_LR-0.0003_DR-0.2_shakespeare_char`.
 */
export function runId(
  config: TrainConfig,
  vocabSize: number,
  paramCount: number,
): string {
  const par = (paramCount / 1e6).toFixed(2);
  const base = `${config.model_name}_BA-${config.batch_size}_BL-${config.block_size}_PAR-${par}`;
  const rest = `LR-${pyFloat(config.learning_rate)}_DR-${
    pyFloat(config.dropout)
  }_${config.dataset}`;
  if (config.model_name === "mlpLM") {
    const bn = config.use_batch_norm ? "True" : "False";
    return `${base}_E-${config.char_encoding_len}_V-${vocabSize}_AF-${config.active_fn}_BN-${bn}_${rest}`;
  }
  return `${base}_V-${vocabSize}_${rest}`;
}
