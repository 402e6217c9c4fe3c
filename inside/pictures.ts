/**
 * The pictures of one checkpoint and prompt, as SVG strings with a title and
 * a line of explanation each: what `inspect.ts` writes to files, and what a
 * page can show directly.
 *
 * @module
 */
import type { TopLevelSpec } from "vega-lite";
import { UsageError } from "../cli/errors.ts";
import { renderSpec } from "../lib/charts.ts";
import { visibleText } from "../lib/chars.ts";
import { type Dataset, decode, encode, stoiOf } from "../lib/data.ts";
import { longestSharedPiece } from "../lib/longest_match.ts";
import { pca } from "../lib/pca.ts";
import { Rng } from "../lib/rng.ts";
import { countParams, type LanguageModel } from "../models/model.ts";
import type { LoadedCheckpoint } from "../run/checkpoint.ts";
import { generateTokens } from "../run/sampling.ts";
import {
  attentionSpec,
  embeddingSpec,
  expertSpec,
  type GridChar,
  type Heading,
  markedTextSpec,
  type NextCharRow,
  nextCharSpec,
  surpriseSpec,
  transitionSpec,
} from "./charts.ts";
import {
  attentionMaps,
  countedTransitions,
  expertRouting,
  learnedTransitions,
  nextTokenProbs,
  surpriseBits,
  tokenEmbeddings,
} from "./probe.ts";

/** The pictures, in the order a page shows them. */
export const PICTURE_NAMES = [
  "next",
  "surprise",
  "bigram",
  "attention",
  "embeddings",
  "experts",
  "memorised",
] as const;
/** One of {@link PICTURE_NAMES}. */
export type PictureName = typeof PICTURE_NAMES[number];

/** One rendered picture. */
export interface Picture {
  name: PictureName;
  /** What it shows, in a few words. */
  title: string;
  /** One line of explanation for a reader. */
  caption: string;
  svg: string;
}

/** What to draw. */
export interface InspectRequest {
  ckpt: LoadedCheckpoint;
  model: LanguageModel;
  /** The checkpoint's dataset: the training text and the validation passage. */
  dataset: Dataset;
  /** The text to look at; null: a text the model samples. */
  prompt: string | null;
  /** Seeds the sampled text. */
  seed: number;
  /**
   * Characters to sample: the text to look at when there is no prompt, and
   * the sample checked against the training text. Default 48 (a forward pass each).
   */
  sampleChars?: number;
  /** Which pictures; default: all the model has. */
  pictures?: readonly PictureName[];
}

/** The pictures and what a reader should be told about them. */
export interface Inspection {
  pictures: Picture[];
  /** Things done to the input (cropping) and facts worth printing. */
  notes: string[];
  /** Mean surprise of the surprise picture's text, in bits per character. */
  bitsPerChar?: number;
}

/** Positions the next-character table shows (the last ones of the text). */
const NEXT_ROWS = 48;
/** Characters the attention and routing pictures show (the last ones of the text). */
const ATTENTION_CHARS = 24;
/** Characters of the validation passage whose surprise is shown. */
const PASSAGE_CHARS = 256;
/** Characters of training text shown on each side of the shared piece. */
const TRAINING_CONTEXT = 48;

/** The pictures `model` can have: those whose numbers it provides. */
export function availablePictures(model: LanguageModel): PictureName[] {
  return PICTURE_NAMES.filter((name) => {
    switch (name) {
      case "bigram":
        return model.transitionLogits !== undefined;
      case "attention":
        return model.attentionWeights !== undefined;
      case "embeddings":
        return model.tokenEmbeddings !== undefined;
      case "experts":
        return model.expertRouting !== undefined;
      default:
        return true;
    }
  });
}

const WHY_MISSING: Partial<Record<PictureName, string>> = {
  bigram: "its next character depends on more than the last one",
  attention: "it has no attention",
  embeddings: "it has no token embeddings",
  experts: "it has no mixture-of-experts layers",
};

/** Checks that `model` can draw `wanted`, naming the first it cannot. */
export function checkPictures(model: LanguageModel, wanted: readonly string[]): PictureName[] {
  const available = availablePictures(model);
  for (const name of wanted) {
    if (!(PICTURE_NAMES as readonly string[]).includes(name)) {
      throw new UsageError(
        `--pictures: unknown picture '${name}'; use some of ${PICTURE_NAMES.join(", ")}`,
      );
    }
    if (!available.includes(name as PictureName)) {
      throw new UsageError(
        `--pictures=${name}: ${model.name} cannot show it (${
          WHY_MISSING[name as PictureName]
        }); its pictures: ${available.join(", ")}`,
      );
    }
  }
  return wanted as PictureName[];
}

/**
 * The last `count` ids of `text`, or fewer so that they start at a word:
 * after the first space or newline among their first quarter, if any.
 */
function lastWords(text: number[], count: number, vocab: string[]): number[] {
  const end = text.slice(-count);
  if (end.length === text.length) return end;
  for (let i = 0; i < count / 4; i++) {
    if (/\s/.test(vocab[end[i]])) return end.slice(i + 1);
  }
  return end;
}

/** The checkpoint's file name without folders. */
function fileName(path: string): string {
  return path.split(/[\\/]/).pop() ?? path;
}

/** Draws the pictures `request` asks for, rendering each to SVG; `onPicture` hears of each as it is done. */
export async function inspectModel(
  request: InspectRequest,
  onPicture?: (picture: Picture) => void,
): Promise<Inspection> {
  const { ckpt, model, dataset } = request;
  const vocab = ckpt.vocab;
  const wanted = new Set(request.pictures ?? availablePictures(model));
  const T = model.config.block_size;
  const notes: string[] = [];
  const pictures: Picture[] = [];
  const add = async (name: PictureName, title: string, caption: string, spec: TopLevelSpec) => {
    const picture = { name, title, caption, svg: await renderSpec(spec) };
    pictures.push(picture);
    onPicture?.(picture);
  };
  const about = `${fileName(ckpt.path)} · ${model.name}, ${
    countParams(model).toLocaleString("en-US")
  } parameters, step ${ckpt.iter}, val loss ${ckpt.bestVal.toFixed(4)}`;
  const heading = (title: string, ...details: string[]): Heading => ({
    title,
    subtitle: [about, ...details],
  });

  // The text: the prompt (its last block_size characters), or a sample.
  let promptIds: number[] | null = null;
  if (request.prompt !== null) {
    if (request.prompt === "") {
      throw new UsageError(
        "--prompt is empty: give some text, or leave --prompt out to look at a sample",
      );
    }
    try {
      promptIds = encode(request.prompt, stoiOf(vocab));
    } catch (e) {
      throw new UsageError(
        `--prompt: ${(e as Error).message}; the model knows only its training characters`,
      );
    }
    if (promptIds.length > T) {
      notes.push(
        `the prompt has ${promptIds.length} characters, more than block_size ${T}: using its last ${T}`,
      );
      promptIds = promptIds.slice(-T);
    }
    if (promptIds.length < 2 && wanted.has("surprise")) {
      throw new UsageError(
        "--prompt needs at least 2 characters for the surprise picture (the first has no context)",
      );
    }
  }
  // A sample from the start, as generate's without a prompt. It costs a
  // forward pass per character: drawn only when a picture needs it.
  const sampleChars = request.sampleChars ?? 48;
  const needsSample = wanted.has("memorised") ||
    (promptIds === null &&
      ["next", "attention", "experts"].some((p) => wanted.has(p as PictureName)));
  const sample = needsSample
    ? await generateTokens(model, model.startContext, sampleChars, {}, new Rng(request.seed))
    : [];
  const sampleAbout = `a sample of ${sampleChars} characters (seed ${request.seed}, temperature 1)`;
  // The text the next-character, attention and routing pictures look at.
  const text = promptIds ?? [...model.startContext, ...sample].slice(0, NEXT_ROWS + 1);
  const textAbout = promptIds ? "the prompt" : `the start of ${sampleAbout}`;

  if (wanted.has("next")) {
    // After a prompt, its last position too: what the model expects to come next.
    const rowsEnd = promptIds ? text.length : text.length - 1;
    const first = Math.max(0, rowsEnd - NEXT_ROWS);
    const probs = await nextTokenProbs(model, text.slice(0, rowsEnd), first);
    const rows: NextCharRow[] = probs.map((p, i) => {
      const t = first + i;
      const order = [...p.keys()].sort((a, b) => p[b] - p[a]);
      const actual = t + 1 < text.length ? text[t + 1] : null;
      return {
        context: decode(text.slice(0, t + 1), vocab),
        actual: actual === null ? null : vocab[actual],
        actualProb: actual === null ? 0 : p[actual],
        actualRank: actual === null ? 0 : order.indexOf(actual) + 1,
        top: order.slice(0, 5).map((id) => ({ char: vocab[id], prob: p[id] })),
      };
    });
    await add(
      "next",
      "Next-character probabilities",
      "For each position, the five characters the model finds likeliest next and their probabilities " +
        "(the numbers generate samples from at temperature 1); the character that actually came next is outlined in red.",
      nextCharSpec(
        rows,
        heading(
          "Next-character probabilities: what the model expects after each position",
          `text: ${textAbout}${first > 0 ? `, its last ${NEXT_ROWS} positions` : ""}`,
        ),
        first,
      ),
    );
  }

  let bitsPerChar: number | undefined;
  if (wanted.has("surprise")) {
    let ids: number[];
    let where: string;
    if (promptIds) {
      ids = promptIds;
      where = "the prompt";
    } else {
      const val = dataset.val;
      let start = 0; // the start of a speech: just after a blank line
      for (let i = 2; i < val.length; i++) {
        if (vocab[val[i - 1]] === "\n" && vocab[val[i - 2]] === "\n") {
          start = i;
          break;
        }
      }
      ids = Array.from(val.subarray(start, start + PASSAGE_CHARS));
      where = `the validation text from its character ${start.toLocaleString("en-US")}`;
    }
    const bits = await surpriseBits(model, ids, 1);
    const mean = bits.reduce((a, b) => a + b, 0) / bits.length;
    const chars: GridChar[] = ids.map((id, i) => ({
      char: vocab[id],
      value: i === 0 ? null : bits[i - 1],
    }));
    notes.push(
      `surprise: ${mean.toFixed(3)} bits per character on ${where} (${
        (mean * Math.LN2).toFixed(3)
      } nats)`,
    );
    await add(
      "surprise",
      "Surprise",
      "Each character coloured by how surprised the model was to see it: −log2 of the probability it gave it, " +
        "in bits (the training loss, in bits instead of nats). Dark: unexpected; pale: expected.",
      surpriseSpec(
        chars,
        heading(
          `Surprise of each character: mean ${mean.toFixed(2)} bits per character (${
            (mean * Math.LN2).toFixed(2)
          } nats, the loss's unit)`,
          `text: ${where}; each character predicted from those before it (at most ${T}); grey: the first, with no context`,
        ),
      ),
    );
    bitsPerChar = mean;
  }

  if (wanted.has("bigram")) {
    const learned = await learnedTransitions(model);
    const counted = countedTransitions(dataset.train, vocab.length);
    await add(
      "bigram",
      "The bigram table",
      "bigramLM's whole model is this table: the probability of each next character (across) after each " +
        "character (down). Left, what it learned; right, the same table counted from the training text.",
      transitionSpec(
        vocab,
        [
          { label: "learned by the model", rows: learned },
          {
            label: `counted in the training text (${
              dataset.train.length.toLocaleString("en-US")
            } characters)`,
            rows: counted,
          },
        ],
        heading("Next-character probabilities after each character: learned and counted"),
      ),
    );
  }

  if (wanted.has("attention")) {
    const shown = lastWords(text, ATTENTION_CHARS, vocab);
    if (shown.length < text.length) {
      notes.push(`attention: the last ${shown.length} characters of the text, on their own`);
    }
    const maps = await attentionMaps(model, shown);
    const chars = shown.map((id) => vocab[id]);
    await add(
      "attention",
      "Attention",
      "Each layer's heads (one square each): how much each character (row) draws on each earlier one (column) " +
        "when the model builds its prediction. Rows sum to 100%; grey cells are later characters, which it may not see.",
      attentionSpec(
        maps,
        chars,
        heading(
          `Attention weights: ${maps.length} layers × ${
            maps[0].length
          } heads, query (row) × key (column)`,
          `text: "${visibleText(decode(shown, vocab))}" (${textAbout}${
            shown.length < text.length ? `, its last ${shown.length} characters` : ""
          })`,
        ),
      ),
    );
  }

  if (wanted.has("embeddings")) {
    const { coords, explained } = pca(await tokenEmbeddings(model));
    await add(
      "embeddings",
      "Embeddings",
      "Each character's vector as the model first reads it, flattened to the two directions in which the " +
        "vectors differ most (PCA). Characters the model treats alike end up close together.",
      embeddingSpec(
        vocab,
        coords,
        explained,
        heading(
          "Token embeddings projected on their first two principal components",
          `${
            explained.length > 1 ? ((explained[0] + explained[1]) * 100).toFixed(0) : 100
          }% of their variance shown`,
        ),
      ),
    );
  }

  if (wanted.has("experts")) {
    const shown = lastWords(text, ATTENTION_CHARS, vocab);
    const routing = await expertRouting(model, shown);
    await add(
      "experts",
      "Experts",
      "In each mixture-of-experts layer, a router sends every character to a few experts: how the load is " +
        "shared, and the expert each character went to first.",
      expertSpec(
        routing,
        shown.map((id) => vocab[id]),
        heading(
          "Mixture of experts: expert load and routing",
          `text: "${visibleText(decode(shown, vocab))}"`,
        ),
      ),
    );
  }

  if (wanted.has("memorised")) {
    const piece = longestSharedPiece(sample, dataset.train);
    let line = 1;
    for (let i = 0; i < piece.textStart; i++) if (vocab[dataset.train[i]] === "\n") line++;
    const name = "also in the training text";
    const mark = (ids: ArrayLike<number>, from: number, to: number, offset: number): GridChar[] =>
      Array.from(ids, (id, i) => ({
        char: vocab[id],
        value: i + offset >= from && i + offset < to ? name : null,
      }));
    // Whole lines of training text around the piece, at most TRAINING_CONTEXT characters more each side.
    const isNewline = (i: number) => vocab[dataset.train[i]] === "\n";
    const end = piece.textStart + piece.length;
    let before = Math.max(0, piece.textStart - TRAINING_CONTEXT);
    for (let i = before; i < piece.textStart; i++) {
      if (isNewline(i)) {
        before = i + 1;
        break;
      }
    }
    let after = Math.min(dataset.train.length, end + TRAINING_CONTEXT);
    for (let i = after - 1; i >= end; i--) {
      if (isNewline(i)) {
        after = i + 1;
        break;
      }
    }
    const where = `character ${
      piece.textStart.toLocaleString("en-US")
    } of the training text (line ${line.toLocaleString("en-US")})`;
    notes.push(
      `memorised: the sample's longest piece also in the training text has ${piece.length} characters, at ${where}`,
    );
    await add(
      "memorised",
      "Seen in training?",
      "A sample from the model, with its longest piece that also occurs somewhere in the training text: " +
        "short pieces mean the model writes new text; long ones, that it recites what it read.",
      markedTextSpec(
        [
          {
            label: sampleAbout,
            chars: mark(sample, piece.sampleStart, piece.sampleStart + piece.length, 0),
          },
          {
            label: `the training text around ${where}`,
            chars: mark(
              dataset.train.subarray(before, after),
              piece.textStart,
              piece.textStart + piece.length,
              before,
            ),
          },
        ],
        [{ name, color: "#fdd835" }],
        heading(`Longest piece of a sample also in the training text: ${piece.length} characters`),
      ),
    );
  }
  return { pictures, notes, bitsPerChar };
}
