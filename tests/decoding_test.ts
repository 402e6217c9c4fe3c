import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { main as bench } from "../bench.ts";
import { startBackend } from "../run/start.ts";
import { Rng } from "../lib/rng.ts";
import { generateRows, generateTokens } from "../run/sampling.ts";
import { bigramLM } from "../models/bigramLM.ts";
import { gptLM } from "../models/gptLM.ts";
import { mlpLM } from "../models/mlpLM.ts";
import { disposeModel, type LanguageModel } from "../models/model.ts";
import { decoderVsFullForward, modelConfig, withFastPaths } from "./helpers.ts";

const BACKENDS = ["cpu", "wasm", "webgpu"] as const;

/** V=11, C=8, H=2, L=2, block_size 6: every part of gptLM, small enough for llvmpipe. */
const TINY_GPT = modelConfig({ vocab_size: 11, block_size: 6, n_embd: 8, n_head: 2, n_layer: 2 });
const TINY_MLP = modelConfig({
  vocab_size: 11,
  block_size: 4,
  char_encoding_len: 6,
  max_hidden_nodes: 16,
});

/** `create` with every parameter (LayerNorms and biases too) redrawn N(0, 0.5²): logits far from uniform. */
function seeded(create: typeof gptLM.create, config = TINY_GPT): LanguageModel {
  const model = create(config, new Rng(3));
  const rng = new Rng(5);
  for (const p of model.params) {
    tf.tidy(() =>
      p.variable.assign(tf.tensor(rng.normals(p.variable.size, 0.5), p.variable.shape))
    );
  }
  return model;
}

for (const backend of BACKENDS) {
  Deno.test(`${backend}: gptLM's cached logits equal the full forward's at every step, past block_size too`, async () => {
    await startBackend(backend);
    const model = seeded(gptLM.create);
    const before = tf.memory().numTensors;
    // From one token to twice block_size: the cache grows, then is rebuilt as the window slides.
    for (const on of backend === "webgpu" ? [true] : [true, false]) {
      await withFastPaths(on, () => decoderVsFullForward(model, [4], 12));
    }
    // A prompt longer than block_size starts from its last block_size tokens.
    await decoderVsFullForward(model, [1, 2, 3, 4, 5, 6, 7, 8, 9], 2);
    assert.equal(tf.memory().numTensors, before, "the decoder leaves no tensor behind");
    disposeModel(model);
  });
}

for (const backend of ["cpu", "wasm"] as const) {
  Deno.test(`${backend}: mlpLM's and bigramLM's decoders equal nextTokenLogits at every step`, async () => {
    await startBackend(backend);
    for (const model of [seeded(mlpLM.create, TINY_MLP), seeded(bigramLM.create)]) {
      const before = tf.memory().numTensors;
      await decoderVsFullForward(model, model.name === "mlpLM" ? [] : [0], 7);
      await decoderVsFullForward(model, [5, 1, 8, 2, 9], 2);
      assert.equal(tf.memory().numTensors, before, `${model.name}: no tensor left behind`);
      disposeModel(model);
    }
  });
}

Deno.test("cpu: a model without a decoder is sampled through nextTokenLogits", async () => {
  await startBackend("cpu");
  const model = seeded(gptLM.create);
  const plain: LanguageModel = { ...model, decoder: undefined };
  await decoderVsFullForward(plain, [4], 8);
  const [a, b] = [new Rng(11), new Rng(11)];
  assert.deepEqual(
    await generateTokens(plain, [4], 9, {}, a),
    await generateTokens(model, [4], 9, {}, b),
  );
  disposeModel(model);
});

Deno.test("cpu: rows sampled together draw as if sampled one after another", async () => {
  await startBackend("cpu");
  const model = seeded(gptLM.create);
  const options = { temperature: 0.9, topK: 5 };
  const together = new Rng(21);
  const rows = await generateRows(model, [2, 3], 3, 10, options, together);
  const oneByOne = new Rng(21);
  for (const row of rows) {
    assert.deepEqual(await generateTokens(model, [2, 3], 10, options, oneByOne), row);
  }
  assert.ok(new Set(rows.map((r) => r.join())).size > 1, "the rows differ");
  assert.deepEqual(together.getState(), oneByOne.getState(), "the stream ends where it would have");
  disposeModel(model);
});

Deno.test("cpu: 10,000 bigramLM characters leave no tensor behind", async () => {
  await startBackend("cpu");
  const model = seeded(bigramLM.create);
  const before = tf.memory().numTensors;
  let peak = before;
  const ids = await generateTokens(model, [0], 10_000, {}, new Rng(1), () => {
    peak = Math.max(peak, tf.memory().numTensors);
  });
  assert.equal(ids.length, 10_000);
  assert.equal(tf.memory().numTensors, before);
  assert.ok(
    peak <= before + 1,
    `at most the decoder's logits alive while sampling, saw ${peak - before}`,
  );
  disposeModel(model);
});

Deno.test("bench --sample: one JSON line per model, characters counted, no tensor left behind", async () => {
  const lines: string[] = [];
  const log = console.log;
  console.log = (line: string) => lines.push(line);
  try {
    await bench([
      "--sample=40",
      "--backend=wasm",
      "--json",
      ...["--block_size=8", "--n_embd=16", "--n_head=2", "--n_layer=1", "--max_hidden_nodes=64"],
    ]);
  } finally {
    console.log = log;
  }
  const results = lines.map((line) => JSON.parse(line));
  assert.deepEqual(results.map((r) => r.model_name), [
    "bigramLM",
    "mlpLM",
    "gptLM",
    "block_wise_scaling_gptLM",
    "moeLM",
    "moa_moeLM",
    "gptLM",
  ]);
  for (const r of results) {
    assert.equal(r.chars, 40);
    assert.ok(r.chars_per_s > 0 && r.ms_per_char > 0 && r.first_char_ms >= 0, JSON.stringify(r));
    assert.equal(r.tensors_after, r.tensors_before);
  }
});
