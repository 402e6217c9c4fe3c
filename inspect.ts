/**
 * Pictures of what happens inside a trained model, for people learning how
 * it works: next-character probabilities, the surprise of each character,
 * the bigram table, attention, embeddings, expert routing and how much of a
 * sample it recites from the training text. Writes one SVG per picture and
 * an `index.html` that shows them with a line of explanation each.
 *
 *   deno task inspect --ckpt=out/demo/<run>.safetensors --prompt="ROMEO:"
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { runMain, UsageError, UserError } from "./cli/errors.ts";
import { ensureWritableDir, writeFileAtomic } from "./cli/files.ts";
import { parseFlags } from "./cli/flags.ts";
import { BACKEND_FLAG } from "./lib/backend.ts";
import { loadDataset } from "./lib/data.ts";
import { indexHtml } from "./inside/page.ts";
import {
  availablePictures,
  checkPictures,
  inspectModel,
  PICTURE_NAMES,
} from "./inside/pictures.ts";
import { countParams } from "./models/model.ts";
import {
  checkVocabulary,
  latestCheckpoint,
  loadCheckpoint,
  modelFromCheckpoint,
} from "./run/checkpoint.ts";
import { startBackend } from "./run/start.ts";

/** inspect.ts's flags. */
export const FLAGS = {
  ckpt: { type: "string", default: "", help: "checkpoint; default: the newest under out/" },
  prompt: {
    type: "string",
    default: "",
    help: "text to look at (default: a sample from the model and a validation passage)",
  },
  out_dir: {
    type: "string",
    default: "",
    help: "folder for the pictures (default: inspect/<checkpoint name>)",
  },
  pictures: {
    type: "string",
    default: "",
    help: `comma-separated, some of ${PICTURE_NAMES.join(", ")} (default: all the model has)`,
  },
  max_new_tokens: {
    type: "int",
    default: 48,
    min: 1,
    help:
      "characters to sample: the text without a prompt, and the sample checked against training",
  },
  seed: { type: "int", default: 1337, min: 0, help: "seeds the sampled text" },
  backend: BACKEND_FLAG,
  json: {
    type: "bool",
    default: false,
    help: "stdout: each picture as one JSON object as it is drawn, and the notes; no files",
  },
} as const;

const encoder = new TextEncoder();

/** Draws the pictures `args` ask for; returns the paths written. */
export async function main(args: string[]): Promise<string[]> {
  const started = performance.now();
  const { values, given } = parseFlags(args, FLAGS);
  const path = values.ckpt || await latestCheckpoint("out");
  if (!path) {
    throw new UserError(
      "no checkpoint under out/: train one first (deno task train), or pass --ckpt=PATH",
    );
  }
  const ckpt = await loadCheckpoint(path);
  const dataset = await loadDataset((ckpt.config.dataset as string) ?? "shakespeare_char");
  checkVocabulary(ckpt, dataset);
  const backend = await startBackend(values.backend);
  const model = modelFromCheckpoint(ckpt);
  console.error(
    `backend: ${backend.name} (${backend.adapter}); checkpoint ${path} (${model.name})`,
  );
  const pictures = values.pictures === ""
    ? availablePictures(model)
    : checkPictures(model, values.pictures.split(",").map((p) => p.trim()).filter(Boolean));
  if (pictures.length === 0) throw new UsageError("--pictures= names no picture");

  const request = {
    ckpt,
    model,
    dataset,
    prompt: given.has("prompt") ? values.prompt : null,
    seed: values.seed,
    sampleChars: values.max_new_tokens,
    pictures,
  };
  if (values.json) {
    // For programs (the studio): {name, title, caption, svg} a line as each is drawn, then {note}s.
    const line = (value: unknown) =>
      Deno.stdout.writeSync(encoder.encode(JSON.stringify(value) + "\n"));
    const { notes } = await inspectModel(request, line);
    for (const note of notes) line({ note });
    tf.disposeVariables();
    return [];
  }
  const inspection = await inspectModel(request);

  const name = path.split(/[\\/]/).pop()!.replace(/\.safetensors$/, "");
  const outDir = values.out_dir || `inspect/${name}`;
  await ensureWritableDir(outDir, "out_dir");
  const written: string[] = [];
  for (const picture of inspection.pictures) {
    const file = `${outDir}/${picture.name}.svg`;
    await writeFileAtomic(file, encoder.encode(picture.svg));
    console.log(`wrote ${file}  (${picture.title})`);
    written.push(file);
  }
  const page = `${outDir}/index.html`;
  const about = [
    `${model.name}, ${countParams(model).toLocaleString("en-US")} parameters, step ${ckpt.iter}, ` +
    `validation loss ${ckpt.bestVal.toFixed(4)}`,
    `checkpoint ${path}`,
    given.has("prompt")
      ? `prompt: ${JSON.stringify(values.prompt)}`
      : "no prompt: a sample and a validation passage",
  ];
  await writeFileAtomic(
    page,
    encoder.encode(
      indexHtml({ title: `Inside ${name}`, about }, inspection.pictures, inspection.notes),
    ),
  );
  written.push(page);
  for (const note of inspection.notes) console.log(note);
  console.log(
    `wrote ${page}: open it in a browser (${((performance.now() - started) / 1000).toFixed(1)} s)`,
  );
  tf.disposeVariables();
  return written;
}

if (import.meta.main) await runMain(() => main(Deno.args));
