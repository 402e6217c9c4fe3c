/**
 * Every model by name: `--model_name` picks one.
 *
 * @module
 */
import type { Rng } from "../lib/rng.ts";
import { bigramLM } from "./bigramLM.ts";
import { block_wise_scaling_gptLM } from "./block_wise_scaling_gptLM.ts";
import { gptLM } from "./gptLM.ts";
import { mlpLM } from "./mlpLM.ts";
import { moa_moeLM } from "./moa_moeLM.ts";
import { moeLM } from "./moeLM.ts";
import type { LanguageModel, ModelConfig, ModelDefinition, ModelName } from "./model.ts";

/** Each model's module, by name. */
export const MODELS: Record<ModelName, ModelDefinition> = {
  bigramLM,
  mlpLM,
  gptLM,
  block_wise_scaling_gptLM,
  moeLM,
  moa_moeLM,
};

/** A new model with weights drawn from `rng`. */
export function createModel(name: ModelName, config: ModelConfig, rng: Rng): LanguageModel {
  return MODELS[name].create(config, rng);
}
