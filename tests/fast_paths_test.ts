import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { startBackend } from "../run/start.ts";
import { Rng } from "../lib/rng.ts";
import { getBatch } from "../run/training.ts";
import { buildRun } from "../run/run.ts";
import { parseTrainConfig } from "../run/config.ts";
import { disposeModel } from "../models/model.ts";
import { createModel } from "../models/registry.ts";
import { main as bench } from "../bench.ts";
import { shakespeareData, withFastPaths } from "./helpers.ts";

/** Each model at a size where 50 plain-path steps stay quick. */
const MODELS: string[][] = [
  ["--model_name=bigramLM", "--batch_size=16", "--block_size=64"],
  ["--model_name=mlpLM", "--block_size=16", "--batch_size=32", "--max_hidden_nodes=256"],
  [
    "--model_name=gptLM",
    "--block_size=32",
    "--batch_size=8",
    "--n_embd=64",
    "--n_head=4",
    "--n_layer=2",
    "--dropout=0.1",
  ],
];

/** The losses of `steps` seeded training steps, as train.ts takes them. */
async function trainLosses(flags: string[], steps: number): Promise<number[]> {
  const { config } = parseTrainConfig(flags);
  const data = await shakespeareData();
  const run = buildRun(config, data.vocab.length, tf.getBackend() as "wasm" | "cpu" | "webgpu");
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) {
    const loss = run.step(data.train);
    losses.push((await loss.data())[0]);
    loss.dispose();
  }
  run.dispose();
  return losses;
}

for (const backend of ["wasm", "cpu", "webgpu"]) {
  for (const flags of MODELS) {
    const name = flags[0].split("=")[1];
    Deno.test(`${backend}: 50 seeded ${name} steps give the same losses on the fast and the plain paths`, async () => {
      await startBackend(backend);
      // cpu and WebGPU (llvmpipe) are slower: smaller batches keep the test
      // short, and a narrower gptLM. (Not for mlpLM: BatchNorm over 4 rows
      // turns float rounding into visible loss changes on any two paths; it
      // is quick at 32 anyway.)
      let run = backend !== "wasm" && name !== "mlpLM" ? [...flags, "--batch_size=4"] : flags;
      if (backend !== "wasm" && name === "gptLM") {
        run = [...run, "--block_size=16", "--n_embd=32", "--n_layer=1"];
      }
      const fast = await withFastPaths(true, () => trainLosses(run, 50));
      const plain = await withFastPaths(false, () => trainLosses(run, 50));
      // Relative: the plain loss is a float32 mean of B·T values, itself off
      // in the last digits (see the float64 test below).
      for (let i = 0; i < 50; i++) {
        const what = `step ${i}: fast ${fast[i]}, plain ${plain[i]}`;
        assert.ok(Math.abs(fast[i] - plain[i]) < 1e-4 * Math.max(1, plain[i]), what);
      }
      assert.ok(fast[49] < fast[0], `${name} learns: ${fast[0]} → ${fast[49]}`);
    });
  }
}

for (const backend of ["wasm", "cpu", "webgpu"]) {
  Deno.test(`${backend}: bigramLM's counted loss equals a float64 reference to 1e-5`, async () => {
    await startBackend(backend);
    const { config } = parseTrainConfig(["--model_name=bigramLM"]);
    const data = await shakespeareData();
    const rng = new Rng(7);
    const V = data.vocab.length;
    const model = createModel("bigramLM", { ...config, vocab_size: V }, rng);
    const batch = getBatch(model, data.train, config.batch_size, rng);
    const table = await model.params[0].variable.data() as Float32Array; // (V, V)
    const [ids, targets] = [await batch.x.data(), await batch.y.data()]; // (B·T)
    let sum = 0; // Σ over positions of logsumexp(W[id]) − W[id, target], in float64
    for (let i = 0; i < ids.length; i++) {
      const row = table.subarray(ids[i] * V, ids[i] * V + V);
      const max = Math.max(...row);
      let exps = 0;
      for (const w of row) exps += Math.exp(w - max);
      sum += Math.log(exps) + max - row[targets[i]];
    }
    const loss = model.loss(batch.x, batch.y, { training: false });
    assert.ok(Math.abs((await loss.data())[0] - sum / ids.length) < 1e-5);
    tf.dispose([loss, batch.x, batch.y]);
    disposeModel(model);
  });
}

Deno.test("bench: one JSON line per run, with the issue's fields, and no tensor left behind", async () => {
  const lines: string[] = [];
  const log = console.log;
  console.log = (line: string) => lines.push(line);
  const args = ["--model_name=bigramLM", "--backend=wasm", "--steps=3", "--warmup=1", "--json"];
  try {
    await withFastPaths(true, () => bench(args));
    await withFastPaths(true, () => bench([...args, "--plain"]));
  } finally {
    console.log = log;
  }
  assert.equal(lines.length, 2);
  const [fast, plain] = lines.map((line) => JSON.parse(line));
  for (const r of [fast, plain]) {
    for (
      const key of [
        "model_name",
        "backend",
        "ms_per_step_median",
        "ms_per_step_min",
        "tokens_per_s",
        "peak_rss_mb",
        "steps",
      ]
    ) {
      assert.ok(key in r, `${key} missing`);
    }
    assert.equal(r.model_name, "bigramLM");
    assert.equal(r.backend, "wasm");
    assert.equal(r.steps, 3);
    assert.ok(r.ms_per_step_min > 0 && r.ms_per_step_min <= r.ms_per_step_median);
    assert.equal(r.tensors_after, r.tensors_before);
    assert.ok(Number.isInteger(r.kernels_per_step) && r.kernels_per_step > 0);
    assert.equal(r.gpu_reads_per_step, null); // counted on WebGPU only
  }
  // The counted loss runs fewer kernels than the plain embedding and cross-entropy.
  assert.ok(
    fast.kernels_per_step < plain.kernels_per_step,
    `${fast.kernels_per_step} vs ${plain.kernels_per_step}`,
  );
  assert.deepEqual([fast.fast_paths, plain.fast_paths], [true, false]);
});
