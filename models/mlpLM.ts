/**
 * mlpLM: the next character from the previous `block_size`, each given as
 * its permutation code (`char_encoding_len` bits, half of them set), through
 * a funnel of five fully connected layers — weedge/baby-llm
 * `simpleLM/mlpLM.py` with its batches from `train.py`'s `get_mlp_batch`.
 *
 *   fc1 (T·E → H) → fc2 (→ H/2) → fc3 (→ H/2) → fc4 (→ H/4) → fc5 (→ V)
 *
 * with BatchNorm1d, the activation and dropout after each of fc1–fc4.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { UsageError } from "../cli/errors.ts";
import type { BatchNormState } from "../nn/fast_paths.ts";
import {
  batchNorm1d,
  crossEntropy,
  dropout,
  linearOutIn,
  matMul,
  uniformInit,
} from "../nn/layers.ts";
import type { Rng } from "../lib/rng.ts";
import { recomputingDecoder } from "./decoding.ts";
import { genCodingPatterns, patternsToFloat32 } from "./mlp_patterns.ts";
import type {
  Batch,
  Buffer,
  LanguageModel,
  Mode,
  ModelConfig,
  ModelDefinition,
  ModelSizes,
  Param,
} from "./model.ts";

type Activation = (x: tf.Tensor) => tf.Tensor;

const silu: Activation = (x) => x.mul(tf.sigmoid(x));

/** The original's `use_active_fn` choices; its "swiglu" is plain silu. */
export const ACTIVATION_NAMES = ["relu", "sigmoid", "silu", "swiglu"] as const;

const ACTIVATIONS: Record<typeof ACTIVATION_NAMES[number], Activation> = {
  relu: tf.relu,
  sigmoid: tf.sigmoid,
  silu,
  swiglu: silu,
};

/** One `nn.Linear` (weight [out, in], as PyTorch) and the BatchNorm after it, if any. */
interface Layer {
  weight: tf.Variable<tf.Rank.R2>;
  bias: tf.Variable<tf.Rank.R1>;
  bn: BatchNormState | null;
}

/**
 * Builds an mlpLM. Weights follow PyTorch's defaults, drawn from `rng`:
 * linear weights and biases U(±1/√fan_in), BatchNorm weight 1 and bias 0.
 *
 * @throws {UsageError} for an unknown `active_fn` or a `char_encoding_len`
 *   that cannot code `vocab_size` characters.
 */
function create(config: ModelConfig, rng: Rng): LanguageModel {
  const { vocab_size: V, block_size: T, char_encoding_len: E } = config;
  checkConfig(config);
  const activation = ACTIVATIONS[config.active_fn as typeof ACTIVATION_NAMES[number]];
  const codes = patternsToFloat32(genCodingPatterns(E, V)); // (V, E) row-major
  const widths = layerWidths(config);

  const params: Param[] = [];
  const buffers: Buffer[] = [];
  const layers: Layer[] = [];
  for (let i = 0; i < 5; i++) {
    const [fanIn, fanOut] = [widths[i], widths[i + 1]];
    const bound = 1 / Math.sqrt(fanIn);
    const weight = tf.variable(uniformInit([fanOut, fanIn], bound, rng)) as tf.Variable<tf.Rank.R2>; // (out, in)
    const bias = tf.variable(uniformInit([fanOut], bound, rng)) as tf.Variable<tf.Rank.R1>;
    params.push(
      { name: `fc${i + 1}.weight`, variable: weight, transposed: false },
      { name: `fc${i + 1}.bias`, variable: bias, transposed: false },
    );
    let bn: BatchNormState | null = null;
    if (config.use_batch_norm && i < 4) {
      bn = {
        weight: tf.variable(tf.ones([fanOut])),
        bias: tf.variable(tf.zeros([fanOut])),
        runningMean: tf.variable(tf.zeros([fanOut]), false),
        runningVar: tf.variable(tf.ones([fanOut]), false),
        numBatchesTracked: tf.variable(tf.scalar(0, "int32"), false),
      };
      const prefix = `bn${i + 1}`;
      params.push(
        { name: `${prefix}.weight`, variable: bn.weight, transposed: false },
        { name: `${prefix}.bias`, variable: bn.bias, transposed: false },
      );
      buffers.push(
        { name: `${prefix}.running_mean`, tensor: bn.runningMean, dtype: "F32" },
        { name: `${prefix}.running_var`, tensor: bn.runningVar, dtype: "F32" },
        { name: `${prefix}.num_batches_tracked`, tensor: bn.numBatchesTracked, dtype: "I64" },
      );
    }
    layers.push({ weight, bias, bn });
  }

  /** Writes the codes of `ids` into `out` from feature `offset` on. */
  const encodeInto = (out: Float32Array, offset: number, ids: ArrayLike<number>) => {
    for (let t = 0; t < ids.length; t++) {
      const id = ids[t];
      if (!(id >= 0 && id < V)) {
        throw new RangeError(`token id ${id} is outside the vocabulary (size ${V})`);
      }
      out.set(codes.subarray(id * E, (id + 1) * E), offset + t * E);
    }
  };

  /**
   * The input for each row's last (at most T) ids, (R, T*E): as the
   * original starts from all-zero features and shifts each new token's code
   * in from the right, missing positions stay zero.
   */
  const windowInput = (windows: number[][]): tf.Tensor2D => {
    const x = new Float32Array(windows.length * T * E); // (R, T*E)
    windows.forEach((ids, r) => encodeInto(x, (r * T + T - ids.length) * E, ids));
    return tf.tensor2d(x, [windows.length, T * E]);
  };

  const forward = (x: tf.Tensor, mode: Mode): tf.Tensor => {
    if (mode.training && config.use_batch_norm && x.shape[0] < 2) {
      // PyTorch refuses too: a batch of one has no variance to normalise by.
      throw new UsageError(
        "mlpLM's BatchNorm needs at least 2 rows per training batch: use --batch_size=2 or more, or --use_batch_norm=false",
      );
    }
    let h = x as tf.Tensor2D; // (B, T*E)
    for (const [i, layer] of layers.entries()) {
      h = linearOutIn(h, layer.weight, layer.bias, i === 0); // (B, widths[i+1])
      if (i === layers.length - 1) break; // fc5: the logits, (B, V)
      if (layer.bn) h = batchNorm1d(h, layer.bn, mode.training);
      h = activation(h) as tf.Tensor2D;
      if (mode.training) h = dropout(h, config.dropout, mode.rng) as tf.Tensor2D;
    }
    return h;
  };

  return {
    name: "mlpLM",
    config,
    params,
    buffers,
    targetsPerRow: 1,
    // The original starts from all-zero features: no token at all.
    startContext: [],
    makeBatch(windows: Int32Array, batchSize: number, rng?: Rng): Batch {
      const x = new Float32Array(batchSize * T * E); // (B, T*E)
      const y = new Int32Array(batchSize); // (B)
      for (let r = 0; r < batchSize; r++) {
        const w = windows.subarray(r * (T + 1), (r + 1) * (T + 1));
        encodeInto(x, r * T * E, w.subarray(0, T));
        y[r] = w[T];
      }
      // The original's prompt dropout: in the first quarter of the rows, zero
      // the first N features (not characters), N uniform in [1, T], so the
      // model learns to start from an incomplete prompt. Exact batches (eval.ts) have none.
      for (let r = 0; rng && r < Math.floor(batchSize / 4); r++) {
        const n = 1 + rng.below(T);
        x.fill(0, r * T * E, r * T * E + n);
      }
      return { x: tf.tensor2d(x, [batchSize, T * E]), y: tf.tensor1d(y, "int32") };
    },
    forward,
    loss(x, y, mode) {
      return crossEntropy(forward(x, mode) as tf.Tensor2D, y as tf.Tensor1D);
    },
    nextTokenLogits(context) {
      return tf.tidy(() =>
        forward(windowInput([context.slice(-T)]), { training: false }).reshape([V]) as tf.Tensor1D
      );
    },
    decoder: (context, rows) =>
      recomputingDecoder(
        context,
        rows,
        T,
        (windows) => forward(windowInput(windows), { training: false }) as tf.Tensor2D, // (R, V)
      ),
    tokenEmbeddings() {
      // fc1's columns that read the last input position, applied to each code.
      return tf.tidy(() => {
        const w = layers[0].weight.slice([0, (T - 1) * E], [widths[1], E]); // (H, E)
        return matMul(tf.tensor2d(codes, [V, E]), w, false, true) as tf.Tensor2D; // (V, E) @ (E, H) -> (V, H)
      });
    },
  };
}

/** fc1's input and each layer's output: T·E → H → H/2 → H/2 → H/4 → V. */
function layerWidths(config: ModelConfig): number[] {
  const { vocab_size: V, block_size: T, char_encoding_len: E, max_hidden_nodes: H } = config;
  return [T * E, H, Math.floor(H / 2), Math.floor(H / 2), Math.floor(H / 4), V];
}

/** An mlpLM's sizes from its settings (see {@link ModelSizes}). */
function sizes(config: ModelConfig): ModelSizes {
  const w = layerWidths(config);
  const hidden = w[1] + w[2] + w[3] + w[4];
  const bn = config.use_batch_norm;
  let params = 0;
  for (let i = 0; i < 5; i++) params += w[i] * w[i + 1] + w[i + 1];
  return {
    params: params + (bn ? 2 * hidden : 0),
    buffers: bn ? 2 * hidden + 4 : 0, // running mean and variance, and a count, per BatchNorm
    tensors: 10 + (bn ? 4 * 5 : 0),
    // The input codes twice (batch and fc1's operand), ~10 values per hidden
    // unit (linear, BatchNorm, activation, dropout and their gradients), the logits thrice.
    bytesPerRow: 4 * (2 * w[0] + 10 * hidden + 3 * w[5]),
    splittable: false,
  };
}

/** Settings that pass the flag checks but cannot build an mlpLM. */
function checkConfig(config: Omit<ModelConfig, "vocab_size">): void {
  if (!(ACTIVATION_NAMES as readonly string[]).includes(config.active_fn)) {
    throw new UsageError(
      `unknown active_fn '${config.active_fn}': use one of ${ACTIVATION_NAMES.join(", ")}`,
    );
  }
}

/** mlpLM's module. Its run ids carry its coding and layer settings, as the original's. */
export const mlpLM: ModelDefinition = {
  create,
  checkConfig,
  runIdFields: (config) =>
    `E-${config.char_encoding_len}_V-${config.vocab_size}_AF-${config.active_fn}_BN-${
      config.use_batch_norm ? "True" : "False"
    }`,
  sizes,
  sizeFlags: ["--max_hidden_nodes", "--char_encoding_len", "--block_size"],
};
