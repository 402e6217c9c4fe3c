import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { renderSpec } from "../lib/charts.ts";
import { charClass, visibleChar } from "../lib/chars.ts";
import { longestSharedPiece } from "../lib/longest_match.ts";
import { pca } from "../lib/pca.ts";
import { Rng } from "../lib/rng.ts";
import { bigramLM } from "../models/bigramLM.ts";
import { gptLM } from "../models/gptLM.ts";
import { mlpLM } from "../models/mlpLM.ts";
import { disposeModel, type LanguageModel } from "../models/model.ts";
import { generateTokens, softmax } from "../run/sampling.ts";
import { startBackend } from "../run/start.ts";
import { attentionSpec, expertSpec, nextCharSpec, transitionSpec } from "../inside/charts.ts";
import {
  attentionMaps,
  countedTransitions,
  expertRouting,
  learnedTransitions,
  nextTokenProbs,
  surpriseBits,
} from "../inside/probe.ts";
import { availablePictures, checkPictures } from "../inside/pictures.ts";
import { UsageError } from "../cli/errors.ts";
import { probsLine } from "../generate.ts";
import { createModel } from "../models/registry.ts";
import { saveCheckpoint } from "../run/checkpoint.ts";
import { parseTrainConfig } from "../run/config.ts";
import {
  modelConfig,
  preparedWorkdir,
  runScript,
  shakespeareData,
  withFastPaths,
} from "./helpers.ts";

/** gptLM with V=11, C=8, H=2, L=2, T=6 and every parameter N(0, 0.5²): attention far from uniform. */
function tinyGpt(): LanguageModel {
  const model = gptLM.create(
    modelConfig({ vocab_size: 11, block_size: 6, n_embd: 8, n_head: 2, n_layer: 2, dropout: 0 }),
    new Rng(3),
  );
  const rng = new Rng(5);
  for (const p of model.params) {
    tf.tidy(() =>
      p.variable.assign(tf.tensor(rng.normals(p.variable.size, 0.5), p.variable.shape))
    );
  }
  return model;
}

function tinyBigram(): LanguageModel {
  return bigramLM.create(modelConfig({ vocab_size: 11, block_size: 6 }), new Rng(4));
}

function tinyMlp(): LanguageModel {
  return mlpLM.create(
    modelConfig({ vocab_size: 11, block_size: 4, char_encoding_len: 6, max_hidden_nodes: 16 }),
    new Rng(6),
  );
}

/** The values of a model parameter by name, as nested arrays. */
function paramValues(model: LanguageModel, name: string) {
  return model.params.find((p) => p.name === name)!.variable.arraySync() as number[][];
}

// --- the numbers -----------------------------------------------------------

for (
  const [name, make] of [["gptLM", tinyGpt], ["bigramLM", tinyBigram], ["mlpLM", tinyMlp]] as const
) {
  Deno.test(`inspect: ${name}'s next-character probabilities are generate's softmax`, async () => {
    await startBackend("cpu");
    const model = make();
    const start = [...model.startContext];
    const drawn: Float64Array[] = [];
    const ids = await generateTokens(model, start, 12, {}, new Rng(7), (_, logits) => {
      drawn.push(softmax(logits));
    });
    // Row t: after start + ids[0..t) — past block_size (6), so the windows are used too.
    const text = [...start, ...ids];
    const first = start.length - 1;
    const rows = await nextTokenProbs(model, text.slice(0, -1), Math.max(first, 0));
    const expected = first < 0 ? drawn.slice(1) : drawn; // mlpLM: the first draw had no context at all
    assert.equal(rows.length, expected.length);
    for (let t = 0; t < rows.length; t++) {
      assert.ok(Math.abs(rows[t].reduce((a, b) => a + b, 0) - 1) < 1e-5, `row ${t} sum`);
      for (let v = 0; v < 11; v++) {
        assert.ok(Math.abs(rows[t][v] - expected[t][v]) < 1e-5, `row ${t}, token ${v}`);
      }
    }
    const bits = await surpriseBits(model, text, Math.max(first, 0) + 1);
    bits.forEach((b, i) =>
      assert.ok(Math.abs(b + Math.log2(rows[i][text[i + Math.max(first, 0) + 1]])) < 1e-9)
    );
    disposeModel(model);
  });
}

Deno.test("inspect: gptLM's attention weights are the forward pass's, hand-computed for layer 1", async () => {
  await startBackend("cpu");
  const model = tinyGpt();
  const ids = [3, 6, 2, 7, 0];
  const maps = await attentionMaps(model, ids);
  assert.equal(maps.length, 2); // layers
  assert.equal(maps[0].length, 2); // heads
  // Layer 1 by hand: x = tok + pos, LayerNorm, q and k per head, softmax over the keys so far.
  const tok = paramValues(model, "token_embedding_table.weight");
  const pos = paramValues(model, "position_embedding_table.weight");
  const lnW = paramValues(model, "blocks.0.ln1.weight") as unknown as number[];
  const lnB = paramValues(model, "blocks.0.ln1.bias") as unknown as number[];
  const C = 8, hs = 4;
  const ln = ids.map((id, t) => {
    const x = tok[id].map((v, c) => v + pos[t][c]);
    const mean = x.reduce((a, b) => a + b) / C;
    const variance = x.reduce((a, b) => a + (b - mean) ** 2, 0) / C;
    return x.map((v, c) => (v - mean) / Math.sqrt(variance + 1e-5) * lnW[c] + lnB[c]);
  });
  const project = (x: number[], w: number[][]) =>
    Array.from({ length: hs }, (_, j) => x.reduce((s, v, c) => s + v * w[c][j], 0));
  for (let h = 0; h < 2; h++) {
    const wq = paramValues(model, `blocks.0.sa.heads.${h}.query.weight`);
    const wk = paramValues(model, `blocks.0.sa.heads.${h}.key.weight`);
    const q = ln.map((x) => project(x, wq));
    const k = ln.map((x) => project(x, wk));
    for (let i = 0; i < ids.length; i++) {
      const scores = k.slice(0, i + 1).map((kj) =>
        kj.reduce((s, v, d) => s + v * q[i][d], 0) / Math.sqrt(hs)
      );
      const top = Math.max(...scores);
      const exps = scores.map((s) => Math.exp(s - top));
      const total = exps.reduce((a, b) => a + b);
      for (let j = 0; j < ids.length; j++) {
        const want = j <= i ? exps[j] / total : 0;
        assert.ok(Math.abs(maps[0][h][i][j] - want) < 1e-5, `head ${h} [${i}][${j}]`);
      }
    }
  }
  for (const layer of maps) {
    for (const head of layer) {
      head.forEach((row, i) => {
        assert.ok(Math.abs(row.reduce((a, b) => a + b) - 1) < 1e-5);
        row.forEach((w, j) => j > i && assert.equal(w, 0));
      });
    }
  }
  // The same weights on WASM, where the forward pass otherwise runs its own attention kernel.
  await startBackend("wasm");
  const onWasm = tinyGpt();
  const wasmMaps = await withFastPaths(true, () => attentionMaps(onWasm, ids));
  assert.ok(
    wasmMaps.flat(3).every((w, i) => Math.abs(w - maps.flat(3)[i]) < 1e-5),
    "wasm differs from cpu",
  );
  disposeModel(onWasm);
  await startBackend("cpu");
  disposeModel(model);
});

Deno.test("inspect: bigram tables: learned rows are softmax rows, counted rows are frequencies", async () => {
  await startBackend("cpu");
  const model = tinyBigram();
  const learned = await learnedTransitions(model);
  assert.equal(learned.length, 11);
  for (const row of learned) assert.ok(Math.abs(row.reduce((a, b) => a + b) - 1) < 1e-5);
  const logits = tf.tidy(() => model.nextTokenLogits([4]).arraySync());
  assert.ok(softmax(logits).every((p, v) => Math.abs(p - learned[4][v]) < 1e-9));
  const counted = countedTransitions([0, 1, 0, 1, 0, 2, 3], 4);
  assert.deepEqual([...counted[0]], [0, 2 / 3, 1 / 3, 0]);
  assert.deepEqual([...counted[1]], [1, 0, 0, 0]);
  assert.deepEqual([...counted[3]], [0, 0, 0, 0]); // never followed
  disposeModel(model);
});

Deno.test("inspect: PCA of a known embedding gives its known coordinates up to sign", () => {
  // Points (±3, 0) and (0, ±1), turned into 5-D by an orthonormal pair and moved.
  const u = [0.6, 0.8, 0, 0, 0], v = [0, 0, 0.6, 0, 0.8], offset = [1, -2, 3, 0.5, 7];
  const plane = [[3, 0], [-3, 0], [0, 1], [0, -1]];
  const rows = plane.map(([a, b]) => offset.map((o, d) => o + a * u[d] + b * v[d]));
  const { coords, explained } = pca(rows);
  for (const j of [0, 1]) {
    const sign = Math.sign(coords.find((c) => Math.abs(c[j]) > 0.5)![j]) *
      Math.sign(plane.find((p) => Math.abs(p[j]) > 0.5)![j]);
    coords.forEach((c, i) => assert.ok(Math.abs(c[j] - sign * plane[i][j]) < 1e-9, `${i}, ${j}`));
  }
  assert.ok(Math.abs(explained[0] - 0.9) < 1e-9 && Math.abs(explained[1] - 0.1) < 1e-9);
  // More points than dimensions (the covariance route): a line along (1, 2, 2)/3 at 0, ±3, ±6.
  const line = [0, 3, -3, 6, -6].map((a) => [a / 3, 2 * a / 3, 2 * a / 3]);
  const onLine = pca(line);
  [0, 3, 3, 6, 6].forEach((want, i) =>
    assert.ok(Math.abs(Math.abs(onLine.coords[i][0]) - want) < 1e-9)
  );
  assert.ok(onLine.coords.every((c) => Math.abs(c[1]) < 1e-9));
  assert.ok(Math.abs(onLine.explained[0] - 1) < 1e-9);
});

Deno.test("inspect: longestSharedPiece agrees with brute force", () => {
  const rng = new Rng(11);
  for (let trial = 0; trial < 20; trial++) {
    const text = Array.from({ length: 400 }, () => rng.below(4));
    const sample = Array.from({ length: 40 }, () => rng.below(4));
    const found = longestSharedPiece(sample, text);
    const key = (a: number[]) => a.join(",");
    let best = 0;
    for (let i = 0; i < sample.length; i++) {
      for (let j = i + 1; j <= sample.length; j++) {
        if (j - i > best && `,${key(text)},`.includes(`,${key(sample.slice(i, j))},`)) best = j - i;
      }
    }
    assert.equal(found.length, best);
    assert.deepEqual(
      sample.slice(found.sampleStart, found.sampleStart + best),
      text.slice(found.textStart, found.textStart + best),
    );
  }
  assert.deepEqual(longestSharedPiece([5, 6], [1, 2, 3]), {
    sampleStart: 0,
    textStart: 0,
    length: 0,
  });
});

Deno.test("inspect: characters are shown visibly and classed", () => {
  assert.deepEqual([" ", "\n", "\t", "a"].map(visibleChar), ["␣", "↵", "⇥", "a"]);
  assert.deepEqual(
    ["a", "Q", "7", ";", " ", "\n", "é", "日"].map(charClass),
    ["lower", "upper", "digit", "punctuation", "whitespace", "whitespace", "lower", "lower"],
  );
});

// --- the pictures ----------------------------------------------------------

/** The number of marks Vega drew in the mark groups whose class contains `name`. */
function markCount(svg: string, name: string): number {
  let n = 0;
  for (
    const group of svg.matchAll(new RegExp(`<g class="[^"]*${name}[^"]*"[^>]*>(.*?)</g>`, "gs"))
  ) {
    n += group[1].split("<path").length - 1;
  }
  return n;
}

const HEADING = { title: "T", subtitle: ["about"] };

Deno.test("inspect: the attention picture has a square per layer and head, lower triangle coloured", async () => {
  await startBackend("cpu");
  const model = tinyGpt();
  const chars = ["R", "O", " ", "\n", "e"];
  const maps = await attentionMaps(model, [1, 2, 3, 4, 5]);
  const svg = await renderSpec(attentionSpec(maps, chars, HEADING));
  for (const label of ["layer 1", "layer 2", "head 1", "head 2", "␣", "↵"]) {
    assert.ok(svg.includes(`>${label}<`), label);
  }
  assert.equal(markCount(svg, "child_layer_0_marks"), 2 * 2 * 25); // every cell, grey
  assert.equal(markCount(svg, "child_layer_1_marks"), 2 * 2 * 15); // the causal triangle
  disposeModel(model);
});

Deno.test("inspect: the next-character and bigram pictures have one cell per probability", async () => {
  const rows = [
    {
      context: "ab",
      actual: "c",
      actualProb: 0.5,
      actualRank: 1,
      top: [..."cdefg"].map((c) => ({ char: c, prob: 0.1 })),
    },
    {
      context: "abc",
      actual: null,
      actualProb: 0,
      actualRank: 0,
      top: [..."hijkl"].map((c) => ({ char: c, prob: 0.1 })),
    },
  ];
  const next = await renderSpec(nextCharSpec(rows, HEADING));
  assert.equal(markCount(next, "layer_0_marks"), 5 + 1 + 5); // the last row has no next character
  assert.equal(markCount(next, "layer_1_marks"), 1); // the actual next character among the top 5
  const vocab = ["\n", " ", "a"];
  const table = [[0.5, 0.5, 0], [0, 0, 1], [0.2, 0.3, 0.5]];
  const bigram = await renderSpec(
    transitionSpec(vocab, [{ label: "L", rows: table }, { label: "R", rows: table }], HEADING),
  );
  assert.equal(markCount(bigram, "concat_0_marks") + markCount(bigram, "concat_1_marks"), 2 * 6);
  assert.ok(bigram.includes(">↵<") && bigram.includes(">␣<"));
});

Deno.test("inspect: expert routing is read from any model that has it, and drawn", async () => {
  await startBackend("cpu");
  const model = tinyBigram();
  assert.deepEqual(availablePictures(model), [
    "next",
    "surprise",
    "bigram",
    "embeddings",
    "memorised",
  ]);
  const routed: LanguageModel = {
    ...model,
    // Two routed layers, three experts, top-2, four tokens.
    expertRouting: () => ({
      layers: ["block 1", "block 2"],
      topK: 2,
      scores: tf.tensor3d([
        [[3, 2, 1], [1, 3, 2], [2, 1, 3], [3, 1, 2]],
        [[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]],
      ]),
    }),
  };
  assert.ok(availablePictures(routed).includes("experts"));
  const routing = await expertRouting(routed, [0, 1, 2, 3]);
  assert.deepEqual(routing.chosen, [[0, 1, 2, 0], [2, 2, 2, 2]]);
  assert.deepEqual(routing.load, [[3 / 8, 2 / 8, 3 / 8], [0, 0.5, 0.5]]);
  const svg = await renderSpec(expertSpec(routing, ["a", "b", " ", "d"], HEADING));
  assert.ok(svg.includes(">expert 3<") && svg.includes(">block 2<"));
  assert.throws(
    () => checkPictures(model, ["attention"]),
    (e) =>
      e instanceof UsageError && /bigramLM cannot show it \(it has no attention\)/.test(e.message),
  );
  assert.throws(() => checkPictures(model, ["x"]), UsageError);
  disposeModel(model);
});

Deno.test("generate --show_probs: the sampled character, its probability, the likeliest others", () => {
  const logits = new Float32Array([0, Math.log(2), 0, Math.log(0.5), -1, -2]); // probs ∝ 1, 2, 1, 0.5, …
  const line = probsLine(3, logits, 1, ["a", " ", "\n", "d", "e", "f"]);
  const p = softmax(logits);
  const f = (i: number) => p[i].toFixed(3);
  assert.equal(line, `d ${f(3)} | ␣ ${f(1)}  a ${f(0)}  ↵ ${f(2)}  e ${f(4)}`);
});

// --- the command line --------------------------------------------------------

/** A checkpoint of an untrained model with `args`' settings, written where `train` would. */
async function checkpointIn(dir: string, args: string[]): Promise<string> {
  await startBackend("cpu");
  const { config } = parseTrainConfig(args);
  const data = await shakespeareData();
  const model = createModel(
    config.model_name,
    { ...config, vocab_size: data.vocab.length },
    new Rng(1),
  );
  const path = `${dir}/out/${config.model_name}.safetensors`;
  await Deno.mkdir(`${dir}/out`, { recursive: true });
  await saveCheckpoint(path, model, {
    config,
    vocab: data.vocab,
    state: { iter: 7, evalDone: true, bestVal: 4.1, logFile: "", rng: new Rng(1).getState() },
  });
  disposeModel(model);
  return path;
}

const TINY_GPT = [
  "--model_name=gptLM",
  "--block_size=16",
  "--n_embd=8",
  "--n_head=2",
  "--n_layer=2",
];

Deno.test("cli: inspect writes every picture of a gptLM and a page showing them", async () => {
  const dir = await preparedWorkdir();
  const ckpt = await checkpointIn(dir, TINY_GPT);
  const prompt = "ROMEO:\nBut soft, what light through yonder window breaks?";
  const r = await runScript("inspect.ts", [
    `--ckpt=${ckpt}`,
    `--prompt=${prompt}`,
    "--max_new_tokens=20",
    "--backend=cpu",
  ], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  const out = `inspect/gptLM`;
  for (const name of ["next", "surprise", "attention", "embeddings", "memorised"]) {
    assert.match(r.stdout, new RegExp(`^wrote ${out}/${name}\\.svg`, "m"));
    const svg = await Deno.readTextFile(`${dir}/${out}/${name}.svg`);
    assert.ok(svg.startsWith("<svg") && svg.trimEnd().endsWith("</svg>"), name);
    assert.ok(svg.includes("gptLM.safetensors · gptLM"), `${name} names its checkpoint`);
  }
  assert.match(
    r.stdout,
    /the prompt has 57 characters, more than block_size 16: using its last 16/,
  );
  assert.match(r.stdout, /^surprise: \d\.\d{3} bits per character on the prompt/m);
  const page = await Deno.readTextFile(`${dir}/${out}/index.html`);
  assert.equal(page.match(/<img src="[a-z]+\.svg"/g)?.length, 5);
  assert.ok(!/https?:/.test(page), "the page loads nothing from the network");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("cli: inspect refuses bad input in one line, writing nothing", async () => {
  const dir = await preparedWorkdir();
  const bigram = await checkpointIn(dir, ["--model_name=bigramLM"]);
  const gpt = await checkpointIn(dir, TINY_GPT);
  const cases: [string[], RegExp][] = [
    [[`--ckpt=${gpt}`, "--prompt=café €"], /characters not in the vocabulary: "é", "€"/],
    [
      [`--ckpt=${bigram}`, "--pictures=attention"],
      /bigramLM cannot show it \(it has no attention\)/,
    ],
    [[`--ckpt=${gpt}`, "--prompt="], /--prompt is empty/],
  ];
  for (const [args, message] of cases) {
    const r = await runScript("inspect.ts", [...args, "--backend=cpu"], { cwd: dir });
    assert.equal(r.code, 2, r.stderr);
    const lines = r.stderr.trimEnd().split("\n").filter((l) => !l.startsWith("backend:"));
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /^error: /);
    assert.match(lines[0], message);
  }
  await assert.rejects(() => Deno.stat(`${dir}/inspect`), Deno.errors.NotFound);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("cli: generate --show_probs lists each character's probability on stderr, same sample on stdout", async () => {
  const dir = await preparedWorkdir();
  const ckpt = await checkpointIn(dir, ["--model_name=bigramLM"]);
  const args = [`--ckpt=${ckpt}`, "--max_new_tokens=25", "--seed=3", "--backend=cpu"];
  const plain = await runScript("generate.ts", args, { cwd: dir });
  const shown = await runScript("generate.ts", [...args, "--show_probs"], { cwd: dir });
  assert.equal(shown.code, 0, shown.stderr);
  assert.equal(shown.stdout, plain.stdout);
  const lines = shown.stderr.split("\n").filter((l) => / \| /.test(l) && !l.startsWith("each"));
  const sample = [...plain.stdout.slice(0, -1)];
  assert.equal(lines.length, sample.length);
  lines.forEach((line, i) => {
    assert.match(line, /^\S 0\.\d{3} \| (\S 0\.\d{3} {2}){3}\S 0\.\d{3}$/, line);
    assert.equal([...line][0], visibleChar(sample[i]));
  });
  await Deno.remove(dir, { recursive: true });
});
