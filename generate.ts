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
import { visibleChar } from "./lib/chars.ts";
import { decode, encode, stoiOf, type Vocab } from "./lib/data.ts";
import { Rng } from "./lib/rng.ts";
import { latestCheckpoint, loadCheckpoint, modelFromCheckpoint } from "./run/checkpoint.ts";
import { generateRows, softmax } from "./run/sampling.ts";
import { startBackend } from "./run/start.ts";

/** generate.ts's flags. */
export const FLAGS = {
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
  show_probs: {
    type: "bool",
    default: false,
    help: "on stderr: each sampled character's probability and the likeliest others",
  },
  json: {
    type: "bool",
    default: false,
    help: "stdout: one JSON object a character (its probability, the likeliest others)",
  },
  seed: {
    type: "int",
    default: -1,
    min: 0,
    help: "fixes the samples (default: a new seed each run)",
  },
  backend: BACKEND_FLAG,
} as const;

const encoder = new TextEncoder();

/** How many of the likeliest other characters `--show_probs` and `--json` list. */
const ALTERNATIVES = 4;

/** The probabilities at `temperature` (before top-k/top-p) and the likeliest ids other than `id`. */
function likeliestOthers(
  id: number,
  logits: Float32Array,
  temperature: number,
): { probs: Float64Array; others: number[] } {
  const probs = softmax(logits, temperature);
  const others = [...probs.keys()].filter((i) => i !== id)
    .sort((a, b) => probs[b] - probs[a])
    .slice(0, ALTERNATIVES);
  return { probs, others };
}

/**
 * One `--show_probs` line: the sampled character and its probability at
 * `temperature` (before top-k/top-p), then the likeliest others, e.g.
 * `t 0.621 | e 0.102  h 0.051  o 0.030  ␣ 0.021`.
 */
export function probsLine(
  id: number,
  logits: Float32Array,
  temperature: number,
  vocab: Vocab,
): string {
  const { probs, others } = likeliestOthers(id, logits, temperature);
  const show = (i: number) => `${visibleChar(vocab[i])} ${probs[i].toFixed(3)}`;
  return `${show(id)} | ${others.map(show).join("  ")}`;
}

/**
 * One `--json` line, for programs (the studio): the sample's row, the
 * character (and its visible label), its probability and the likeliest
 * others, e.g. `{"row":0,"text":" ","label":"␣","p":0.62,"top":[{"text":"e","label":"e","p":0.1},…]}`.
 */
export function jsonLine(
  row: number,
  id: number,
  logits: Float32Array,
  temperature: number,
  vocab: Vocab,
): string {
  const { probs, others } = likeliestOthers(id, logits, temperature);
  const char = (i: number) => ({ text: vocab[i], label: visibleChar(vocab[i]), p: probs[i] });
  return JSON.stringify({ row, ...char(id), top: others.map(char) });
}

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
  if (values.show_probs) {
    console.error(
      `each sampled character, its probability at temperature ${values.temperature} | the ${ALTERNATIVES} likeliest others`,
    );
  }
  // All samples are computed together; the first streams as it comes, the others follow it.
  const rows = values.num_samples;
  const laterProbs: string[][] = Array.from({ length: rows }, () => []); // --show_probs of rows 1…
  const start = performance.now();
  if (!values.json) await Deno.stdout.write(encoder.encode(values.prompt));
  const samples = await generateRows(
    model,
    context,
    rows,
    values.max_new_tokens,
    options,
    rng,
    (row, id, logits) => {
      if (values.json) {
        const line = jsonLine(row, id, logits, values.temperature, ckpt.vocab);
        Deno.stdout.writeSync(encoder.encode(line + "\n"));
        return;
      }
      if (row === 0) Deno.stdout.writeSync(encoder.encode(ckpt.vocab[id]));
      if (!values.show_probs) return;
      const line = probsLine(id, logits, values.temperature, ckpt.vocab);
      if (row === 0) console.error(line);
      else laterProbs[row].push(line);
    },
  );
  const seconds = (performance.now() - start) / 1000;
  if (!values.json) {
    for (let r = 1; r < rows; r++) {
      await Deno.stdout.write(
        encoder.encode(`\n---------------\n${values.prompt}${decode(samples[r], ckpt.vocab)}`),
      );
      if (values.show_probs) console.error(["---------------", ...laterProbs[r]].join("\n"));
    }
    await Deno.stdout.write(encoder.encode("\n"));
  }
  const chars = rows * values.max_new_tokens;
  console.error(
    `${chars} characters in ${seconds.toFixed(2)} s: ${Math.round(chars / seconds)} characters/s`,
  );
  tf.disposeVariables();
}

if (import.meta.main) await runMain(() => main(Deno.args));
