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
import { runMain, UsageError, UserError } from "./cli/errors.ts";
import { parseFlags } from "./cli/flags.ts";
import { BACKEND_FLAG } from "./lib/backend.ts";
import { decode, encode, stoiOf } from "./lib/data.ts";
import { Rng } from "./lib/rng.ts";
import { latestCheckpoint, loadCheckpoint, modelFromCheckpoint } from "./run/checkpoint.ts";
import { generateRows } from "./run/sampling.ts";
import { startBackend } from "./run/start.ts";

const FLAGS = {
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
  backend: BACKEND_FLAG,
} as const;

const encoder = new TextEncoder();

export async function main(args: string[]) {
  const { values } = parseFlags(args, FLAGS);
  const path = values.ckpt || await latestCheckpoint("out");
  if (!path) {
    throw new UserError(
      "no checkpoint under out/: train one first (deno task train), or pass --ckpt=PATH",
    );
  }

  const ckpt = await loadCheckpoint(path);
  const stoi = stoiOf(ckpt.vocab);
  let prompt: number[];
  try {
    prompt = encode(values.prompt, stoi);
  } catch (e) {
    throw new UsageError(
      `--prompt: ${(e as Error).message}; the model knows only its training characters`,
    );
  }
  const backend = await startBackend(values.backend);
  console.error(
    `backend: ${backend.name} (${backend.adapter}); checkpoint ${path} (${ckpt.modelName})`,
  );

  const seed = values.seed === -1 ? Math.floor(Math.random() * 2 ** 31) : values.seed;
  const rng = new Rng(seed);
  const model = modelFromCheckpoint(ckpt);
  if (values.seed === -1) console.error(`seed ${seed} (pass --seed=${seed} to repeat)`);

  const context = prompt.length > 0 ? prompt : model.startContext;
  const options = {
    temperature: values.temperature,
    topK: values.top_k,
    topP: values.top_p,
  };
  // All samples are computed together; the first streams as it comes, the others follow it.
  const start = performance.now();
  await Deno.stdout.write(encoder.encode(values.prompt));
  const samples = await generateRows(
    model,
    context,
    values.num_samples,
    values.max_new_tokens,
    options,
    rng,
    (row, id) => {
      if (row === 0) Deno.stdout.writeSync(encoder.encode(ckpt.vocab[id]));
    },
  );
  const seconds = (performance.now() - start) / 1000;
  for (const ids of samples.slice(1)) {
    await Deno.stdout.write(
      encoder.encode(`\n---------------\n${values.prompt}${decode(ids, ckpt.vocab)}`),
    );
  }
  await Deno.stdout.write(encoder.encode("\n"));
  const chars = values.num_samples * values.max_new_tokens;
  console.error(
    `${chars} characters in ${seconds.toFixed(2)} s: ${Math.round(chars / seconds)} characters/s`,
  );
  tf.disposeVariables();
}

if (import.meta.main) await runMain(() => main(Deno.args));
