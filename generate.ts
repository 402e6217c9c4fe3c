/**
 * Samples text from a trained checkpoint, streaming it as it comes. With no
 * options it does what the original does after training: plain multinomial
 * sampling from the start context (token 0, `"\n"` in tinyshakespeare; an
 * all-zero input for mlpLM).
 *
 *   deno task generate
 *   deno task generate --ckpt=out/<run>.safetensors --prompt="ROMEO:" --temperature=0.8 --top_k=10
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { BACKENDS, initBackend } from "./lib/backend.ts";
import { latestCheckpoint, loadCheckpoint, restoreWeights } from "./lib/checkpoint.ts";
import { encode, stoiOf } from "./lib/data.ts";
import { runMain, UsageError, UserError } from "./lib/errors.ts";
import { type FlagSpecs, parseFlags } from "./lib/flags.ts";
import { Rng } from "./lib/rng.ts";
import { generateTokens, startContext } from "./lib/sampling.ts";
import type { ModelConfig } from "./models/model.ts";
import { createModel } from "./models/registry.ts";

const FLAGS: FlagSpecs = {
  ckpt: { type: "string", default: "", help: "checkpoint; default: the newest under out/" },
  prompt: { type: "string", default: "", help: "text to continue" },
  max_new_tokens: { type: "int", default: 500, min: 1, help: "characters to sample" },
  temperature: {
    type: "float",
    default: 1.0,
    min: 0,
    exclusiveMin: true,
    help: "softmax temperature",
  },
  top_k: { type: "int", default: 0, min: 1, help: "sample among the k likeliest (default: all)" },
  top_p: {
    type: "float",
    default: 1.0,
    min: 0,
    exclusiveMin: true,
    max: 1,
    help: "nucleus sampling mass",
  },
  num_samples: { type: "int", default: 1, min: 1, help: "independent samples" },
  seed: {
    type: "int",
    default: -1,
    min: 0,
    help: "fixes the samples (default: a new seed each run)",
  },
  backend: {
    type: "string",
    default: "auto",
    choices: BACKENDS,
    help: "auto, webgpu, wasm or cpu",
  },
};

const encoder = new TextEncoder();

export async function main(args: string[]) {
  const { values } = parseFlags(args, FLAGS);
  const path = (values.ckpt as string) || await latestCheckpoint("out");
  if (!path) {
    throw new UserError(
      "no checkpoint under out/: train one first (deno task train), or pass --ckpt=PATH",
    );
  }

  const ckpt = await loadCheckpoint(path);
  const stoi = stoiOf(ckpt.vocab);
  let prompt: number[];
  try {
    prompt = encode(values.prompt as string, stoi);
  } catch (e) {
    throw new UsageError(
      `--prompt: ${(e as Error).message}; the model knows only its training characters`,
    );
  }
  const backend = await initBackend(values.backend as string);
  console.error(
    `backend: ${backend.name} (${backend.adapter}); checkpoint ${path} (${ckpt.modelName})`,
  );

  const config = { ...ckpt.config, vocab_size: ckpt.vocab.length } as unknown as ModelConfig;
  const seed = values.seed === -1 ? Math.floor(Math.random() * 2 ** 31) : values.seed as number;
  const rng = new Rng(seed);
  const model = createModel(ckpt.modelName, config, new Rng(0));
  restoreWeights(model, ckpt);
  if (values.seed === -1) console.error(`seed ${seed} (pass --seed=${seed} to repeat)`);

  const context = prompt.length > 0 ? prompt : startContext(model);
  const options = {
    temperature: values.temperature as number,
    topK: values.top_k as number,
    topP: values.top_p as number,
  };
  for (let s = 0; s < (values.num_samples as number); s++) {
    if (s > 0) await Deno.stdout.write(encoder.encode("\n---------------\n"));
    await Deno.stdout.write(encoder.encode(values.prompt as string));
    await generateTokens(model, context, values.max_new_tokens as number, options, rng, (id) => {
      Deno.stdout.writeSync(encoder.encode(ckpt.vocab[id]));
    });
  }
  await Deno.stdout.write(encoder.encode("\n"));
  tf.disposeVariables();
}

if (import.meta.main) await runMain(() => main(Deno.args));
