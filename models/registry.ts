/**
 * Every model by name: `--model_name` picks one.
 *
 * @module
 */
import type { Rng } from "../lib/rng.ts";
import { bigramLM } from "./bigramLM.ts";
import { gptLM } from "./gptLM.ts";
import { mlpLM } from "./mlpLM.ts";
import type { LanguageModel, ModelConfig, ModelDefinition, ModelName } from "./model.ts";

/** Each model's module, by name. */
export const MODELS: Record<ModelName, ModelDefinition> = { bigramLM, mlpLM, gptLM };

/** A new model with weights drawn from `rng`. */
export function createModel(name: ModelName, config: ModelConfig, rng: Rng): LanguageModel {
  return MODELS[name].create(config, rng);
}
