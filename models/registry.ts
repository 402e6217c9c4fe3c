/**
 * Builds a model by name.
 *
 * @module
 */
import type { Rng } from "../lib/rng.ts";
import { createBigramLM } from "./bigramLM.ts";
import { createGptLM } from "./gptLM.ts";
import { createMlpLM } from "./mlpLM.ts";
import type { LanguageModel, ModelConfig, ModelName } from "./model.ts";

/** A new model with weights drawn from `rng`. */
export function createModel(
  name: ModelName,
  config: ModelConfig,
  rng: Rng,
): LanguageModel {
  switch (name) {
    case "bigramLM":
      return createBigramLM(config, rng);
    case "mlpLM":
      return createMlpLM(config, rng);
    case "gptLM":
      return createGptLM(config, rng);
  }
}
