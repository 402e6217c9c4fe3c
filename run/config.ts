/**
 * Training settings: the PyTorch original's names and defaults, our
 * additions, the `--config=cpu` preset, and the checks that catch a
 * configuration which cannot work before any compute starts.
 *
 * @module
 */
import { shown, UsageError, UserError } from "../cli/errors.ts";
import { type FlagValues, parseFlags, valueProblem } from "../cli/flags.ts";
import { BACKEND_FLAG } from "../lib/backend.ts";
import { type Dataset, DATASET_FLAG } from "../lib/data.ts";
import { ACTIVATION_NAMES } from "../models/mlpLM.ts";
import { MODEL_NAMES } from "../models/model.ts";
import { NN_INITS, ORIGINAL_BUGS } from "../models/moe.ts";
import { MODELS } from "../models/registry.ts";

/** Named presets for `--config`. Explicit flags win over a preset. */
export const PRESETS: Record<string, Partial<Record<string, number>>> = {
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
export const TRAIN_FLAGS = {
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
    choices: ACTIVATION_NAMES,
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
  num_experts: { type: "int", default: 8, min: 1, help: "moeLM, moa_moeLM: experts per layer" },
  top_k: { type: "int", default: 2, min: 1, help: "moeLM, moa_moeLM: experts per token" },
  nn_init: {
    type: "string",
    default: "kaiming_normal",
    choices: NN_INITS,
    help: "moeLM, moa_moeLM: Linear weight init, kaiming_normal or xavier_normal",
  },
  capacity_factor: {
    type: "float",
    default: 0.0,
    min: 0,
    help: "moeLM, moa_moeLM: expert capacity factor (>= 1 turns capacity on)",
  },
  aux_loss_coef: {
    type: "float",
    default: 0.01,
    min: 0,
    help: "moa_moeLM: weight of the load-balancing loss",
  },
  qkv_multiplier_min: {
    type: "float",
    default: 0.5,
    min: 0,
    exclusiveMin: true,
    help: "block_wise_scaling_gptLM: first layer's share of n_head",
  },
  qkv_multiplier_max: {
    type: "float",
    default: 1.0,
    min: 0,
    exclusiveMin: true,
    help: "block_wise_scaling_gptLM: last layer's share of n_head",
  },
  ffn_multiplier_min: {
    type: "float",
    default: 0.5,
    min: 0,
    exclusiveMin: true,
    help: "block_wise_scaling_gptLM: first layer's FFN width / n_embd",
  },
  ffn_multiplier_max: {
    type: "float",
    default: 4.0,
    min: 0,
    exclusiveMin: true,
    help: "block_wise_scaling_gptLM: last layer's FFN width / n_embd",
  },
  ffn_intermediate_divisor: {
    type: "int",
    default: 256,
    min: 1,
    help: "block_wise_scaling_gptLM: FFN widths are multiples of this",
  },
  model_name: {
    type: "string",
    default: "gptLM",
    choices: MODEL_NAMES,
    help: MODEL_NAMES.join(", "),
  },
  dataset: DATASET_FLAG,
  resume: { type: "bool", default: false, help: "continue from --ckpt_file" },
  ckpt_file: { type: "string", default: "", help: "checkpoint to resume from" },
  // Additions to the original.
  config: {
    type: "string",
    default: "default",
    choices: Object.keys(PRESETS),
    help: "preset: default, or cpu (nanoGPT's CPU setting)",
  },
  backend: BACKEND_FLAG,
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
  original_bugs: {
    type: "string",
    default: "",
    help: `MoE models: the original's bugs to reproduce, comma-separated: ${
      ORIGINAL_BUGS.join(", ")
    } or all`,
  },
} as const;

/** Parsed training settings. */
export type TrainConfig = FlagValues<typeof TRAIN_FLAGS>;

/** A training flag's name. */
export type TrainFlag = keyof typeof TRAIN_FLAGS;

/** Parses `train.ts` arguments: preset first, then explicit flags; then the model's checks. */
export function parseTrainConfig(args: string[]): { config: TrainConfig; given: Set<TrainFlag> } {
  const { values: config, given } = parseFlags(args, TRAIN_FLAGS);
  for (const [key, value] of Object.entries(PRESETS[config.config])) {
    if (!given.has(key as TrainFlag)) (config as Record<string, unknown>)[key] = value;
  }
  checkTrainConfig(config);
  return { config, given };
}

/**
 * The rules that join several settings: the model's own
 * (`ModelDefinition.checkConfig`), and AdamW's decoupled weight decay,
 * which multiplies every weight by `1 - lr·wd` each step: at 1 or more the
 * weights are zeroed or flip sign every step, and the loss diverges.
 *
 * @throws {UsageError} naming the settings and a fix.
 */
export function checkTrainConfig(config: TrainConfig): void {
  MODELS[config.model_name].checkConfig(config);
  const decay = config.learning_rate * config.weight_decay;
  if (decay >= 1) {
    throw new UsageError(
      `--weight_decay=${config.weight_decay} with --learning_rate=${config.learning_rate}: ` +
        `each step multiplies the weights by 1 - lr·wd = ${1 - decay}, not a decay; ` +
        `use a --weight_decay below ${1 / config.learning_rate}`,
    );
  }
}

/**
 * The context length a run uses on `data`. A dataset whose meta.json names
 * one (adder_int: a problem but its last digit) sets it, as the original's
 * `block_size = meta["block_size"]` means to (its code reads
 * `meta[block_size]` and crashes); an explicit `--block_size` must agree.
 *
 * @throws {UsageError} when `--block_size` was given and differs.
 */
export function datasetBlockSize(
  config: TrainConfig,
  given: Set<TrainFlag>,
  data: Pick<Dataset, "dir" | "meta">,
): number {
  const fixed = data.meta.block_size;
  if (fixed === undefined) return config.block_size;
  if (given.has("block_size") && config.block_size !== fixed) {
    throw new UsageError(
      `--block_size=${config.block_size} differs from ${data.dir}/meta.json's block_size ${fixed}, the length the dataset is made for: drop --block_size`,
    );
  }
  return fixed;
}

/**
 * The original's flags: every checkpoint's config has them. Flags added
 * since may be missing from an older checkpoint's and take their defaults.
 */
const ORIGINAL_FLAGS: readonly TrainFlag[] = [
  "batch_size",
  "block_size",
  "max_iters",
  "eval_interval",
  "learning_rate",
  "eval_iters",
  "dropout",
  "char_encoding_len",
  "use_batch_norm",
  "max_hidden_nodes",
  "active_fn",
  "n_embd",
  "n_head",
  "n_layer",
  "model_name",
  "dataset",
  "resume",
  "ckpt_file",
];

/**
 * Settings read from a file (a checkpoint's config), checked as the command
 * line's are: each value's type, range and choices, then
 * {@link checkTrainConfig}. Keys that are not training flags are dropped.
 *
 * @param where prefixes every message, e.g. `checkpoint out/x.safetensors: config`.
 * @throws {UserError} naming the key and what is wrong with it.
 */
export function savedTrainConfig(saved: unknown, where: string): TrainConfig {
  if (typeof saved !== "object" || saved === null || Array.isArray(saved)) {
    throw new UserError(`${where} is not an object of settings`);
  }
  const config: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(TRAIN_FLAGS)) {
    if (!Object.hasOwn(saved, key)) {
      if (ORIGINAL_FLAGS.includes(key as TrainFlag)) {
        throw new UserError(`${where} lacks ${key}`);
      }
      config[key] = spec.default;
      continue;
    }
    const value = (saved as Record<string, unknown>)[key];
    const problem = valueProblem(value, spec);
    if (problem) {
      throw new UserError(`${where} ${key}=${shown(value)}: ${problem}`);
    }
    config[key] = value;
  }
  try {
    checkTrainConfig(config as TrainConfig);
  } catch (e) {
    if (e instanceof UsageError) throw new UserError(`${where}: ${e.message}`);
    throw e;
  }
  return config as TrainConfig;
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
export function runId(config: TrainConfig, vocabSize: number, paramCount: number): string {
  const par = (paramCount / 1e6).toFixed(2);
  const fields = MODELS[config.model_name].runIdFields({ ...config, vocab_size: vocabSize });
  return `${config.model_name}_BA-${config.batch_size}_BL-${config.block_size}_PAR-${par}_${fields}_` +
    `LR-${pyFloat(config.learning_rate)}_DR-${pyFloat(config.dropout)}_${config.dataset}`;
}
