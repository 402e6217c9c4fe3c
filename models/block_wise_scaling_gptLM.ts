/**
 * block_wise_scaling_gptLM: gptLM with layer-wise (block-wise) scaling, as
 * weedge/baby-llm `simpleLM/block_wise_scaling_gptLM.py`
 * (`DelightGPTLanguageModel`, after DeLighT and Apple's OpenELM). Heads keep
 * gptLM's size, n_embd / n_head, but block i has its own number of them and
 * its own feed-forward width, both growing linearly from the first block to
 * the last:
 *
 *   qkv multiplier mᵢ = linspace(qkv_multiplier_min, qkv_multiplier_max)ᵢ,
 *     rounded to 2 decimals; heads = make_divisible(n_embd·mᵢ, head size) / head size
 *   ffn multiplier fᵢ = linspace(ffn_multiplier_min, ffn_multiplier_max)ᵢ,
 *     rounded; width = make_divisible(n_embd·fᵢ, ffn_intermediate_divisor)
 *
 * Everything else (names, init, forward) is gptLM's.
 *
 * @module
 */
import { UsageError } from "../cli/errors.ts";
import type { Rng } from "../lib/rng.ts";
import { type BlockLayout, createGPT, gptLM, layoutSizes } from "./gptLM.ts";
import type { LanguageModel, ModelConfig, ModelDefinition } from "./model.ts";

/** numpy's `np.linspace(start, stop, n)`: start + i·step, the last value exactly `stop`. */
export function linspace(start: number, stop: number, n: number): number[] {
  if (n === 1) return [start];
  const step = (stop - start) / (n - 1);
  return Array.from({ length: n }, (_, i) => (i === n - 1 ? stop : i * step + start));
}

/**
 * `round(v, 2)` of the numpy float64 that `np.linspace` returns: numpy
 * rounds v·100 to the nearest integer, halves to even (0.625 → 0.62, where
 * Python's float `round` and JavaScript's `toFixed` give 0.63 or 0.62 by
 * the binary value instead).
 */
export function roundNumpy2(v: number): number {
  const scaled = v * 100;
  let rounded = Math.round(scaled); // halves up
  if (rounded - scaled === 0.5 && rounded % 2 !== 0) rounded -= 1; // a half: to even
  return rounded / 100;
}

/**
 * The original's `make_divisible` (from TensorFlow's MobileNet): `v` to the
 * nearest multiple of `divisor`, at least `divisor`, and never more than
 * 10% below `v`.
 */
export function makeDivisible(v: number, divisor: number): number {
  let rounded = Math.max(divisor, Math.floor(Math.trunc(v + divisor / 2) / divisor) * divisor);
  if (rounded < 0.9 * v) rounded += divisor;
  return rounded;
}

/** Each block's multipliers, head count and feed-forward width. */
export interface ScaledLayout extends BlockLayout {
  qkvMultipliers: number[];
  ffnMultipliers: number[];
}

/** The per-block sizes of `_init_block_wise_scaling_attention` and `_init_block_wise_scaling_ffn`. */
export function blockWiseLayout(config: Omit<ModelConfig, "vocab_size">): ScaledLayout {
  const { n_embd: C, n_head: H, n_layer: L } = config;
  const headSize = C / H;
  const qkvMultipliers = linspace(config.qkv_multiplier_min, config.qkv_multiplier_max, L)
    .map(roundNumpy2);
  const ffnMultipliers = linspace(config.ffn_multiplier_min, config.ffn_multiplier_max, L)
    .map(roundNumpy2);
  return {
    qkvMultipliers,
    ffnMultipliers,
    heads: qkvMultipliers.map((m) => makeDivisible(C * m, headSize) / headSize),
    ffnWidths: ffnMultipliers.map((m) => makeDivisible(C * m, config.ffn_intermediate_divisor)),
  };
}

/** A list as Python prints it: `[0.5, 1.0]`. */
function pyList(values: number[]): string {
  return `[${values.map((v) => (Number.isInteger(v) ? v.toFixed(1) : String(v))).join(", ")}]`;
}

function create(config: ModelConfig, rng: Rng): LanguageModel {
  checkConfig(config);
  const layout = blockWiseLayout(config);
  const model = createGPT(config, rng, layout, "block_wise_scaling_gptLM");
  return {
    ...model,
    summary: [
      `qkv multipliers ${pyList(layout.qkvMultipliers)} -> heads per block [${
        layout.heads.join(", ")
      }]`,
      `ffn multipliers ${pyList(layout.ffnMultipliers)} -> FFN widths [${
        layout.ffnWidths.join(", ")
      }]`,
    ],
  };
}

/**
 * Settings that cannot build a block_wise_scaling_gptLM: gptLM's, and
 * multipliers whose minimum exceeds their maximum (the original takes them
 * and shrinks the blocks instead of growing them).
 */
function checkConfig(config: Omit<ModelConfig, "vocab_size">): void {
  gptLM.checkConfig(config);
  for (const kind of ["qkv", "ffn"] as const) {
    const [min, max] = [config[`${kind}_multiplier_min`], config[`${kind}_multiplier_max`]];
    if (min > max) {
      throw new UsageError(
        `${kind}_multiplier_min (${min}) must not exceed ${kind}_multiplier_max (${max}): sizes grow from the first block to the last`,
      );
    }
  }
}

/** block_wise_scaling_gptLM's module. */
export const block_wise_scaling_gptLM: ModelDefinition = {
  create,
  checkConfig,
  runIdFields: (config) => `V-${config.vocab_size}`,
  sizes: (config) => layoutSizes(config, blockWiseLayout(config)),
  sizeFlags: ["--n_embd", "--n_layer", "--block_size", "--ffn_multiplier_max"],
};
