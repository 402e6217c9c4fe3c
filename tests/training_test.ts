import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { AdamW } from "../nn/adamw.ts";
import { startBackend } from "../run/start.ts";
import { Rng } from "../lib/rng.ts";
import { parseTrainConfig, pyFloat, runId } from "../run/config.ts";
import { estimateLoss, getBatch, microBatchCount, trainStep } from "../run/training.ts";
import { disposeModel, MODEL_NAMES } from "../models/model.ts";
import { createModel } from "../models/registry.ts";
import { buildRun } from "../run/run.ts";
import { modelConfig, preparedWorkdir, runScript, shakespeareData } from "./helpers.ts";

for (const backend of ["cpu", "wasm", "webgpu"]) {
  Deno.test(`${backend}: AdamW matches PyTorch's update formula, step by step`, async () => {
    await startBackend(backend);
    // Seven values: one four-lane SIMD step and three single ones on WASM.
    const p = tf.variable(tf.tensor1d([1.0, -2.0, 0.5, 0.25, -1.5, 3.0, 0.0]));
    const opt = new AdamW([p], { lr: 0.1, weightDecay: 0.01 });
    const grads = [[0.5, 0.1, -3.0, 0.02, 1.5, -0.7, 0.3], [-0.2, 0.4, 1.0, -0.05, 2.0, 0.6, -0.3]];
    // PyTorch torch.optim.AdamW (single-tensor path), in float64:
    const expected = [1.0, -2.0, 0.5, 0.25, -1.5, 3.0, 0.0];
    const m = new Array(7).fill(0), v = new Array(7).fill(0);
    for (let t = 1; t <= grads.length; t++) {
      opt.applyGradients({ [p.name]: tf.tensor1d(grads[t - 1]) });
      for (let i = 0; i < 7; i++) {
        const g = grads[t - 1][i];
        expected[i] *= 1 - 0.1 * 0.01;
        m[i] = 0.9 * m[i] + 0.1 * g;
        v[i] = 0.999 * v[i] + 0.001 * g * g;
        const stepSize = 0.1 / (1 - 0.9 ** t);
        const denom = Math.sqrt(v[i]) / Math.sqrt(1 - 0.999 ** t) + 1e-8;
        expected[i] -= stepSize * m[i] / denom;
      }
      const got = await p.data();
      for (let i = 0; i < 7; i++) {
        assert.ok(
          Math.abs(got[i] - expected[i]) < 1e-6,
          `step ${t}[${i}]: ${got[i]} vs ${expected[i]}`,
        );
      }
    }
    // Step 1 by hand: 1·(1−0.001) − 0.1·0.5/(0.5+1e-8) = 0.899
    assert.equal(opt.step, 2);
    opt.dispose();
    p.dispose();
  });
}

Deno.test("run ids follow the original's, with '-' for ':'", () => {
  assert.equal(pyFloat(3e-4), "0.0003");
  assert.equal(pyFloat(1e-5), "1e-05");
  assert.equal(pyFloat(0), "0.0");
  assert.equal(pyFloat(0.2), "0.2");
  const { config } = parseTrainConfig(["--model_name=gptLM"]);
  assert.equal(
    runId(config, 65, 10788929),
    "gptLM_BA-64_BL-256_PAR-10.79_V-65_LR-0.0003_DR-0.2_shakespeare_char",
  );
  const mlp = parseTrainConfig(["--model_name=mlpLM"]).config;
  assert.equal(
    runId(mlp, 65, 10008641),
    "mlpLM_BA-64_BL-256_PAR-10.01_E-12_V-65_AF-relu_BN-True_LR-0.0003_DR-0.2_shakespeare_char",
  );
  // The original's train.py names the other models' runs as gptLM's (its log of this moeLM run:
  // loss_moeLM_BA:12_BL:64_PAR:4.51_V:65_LR:0.001_DR:0.0_shakespeare_char.log).
  const moe = parseTrainConfig([
    "--model_name=moeLM",
    "--config=cpu",
    "--learning_rate=1e-3",
    "--num_experts=4",
  ]).config;
  assert.equal(
    runId(moe, 65, 4512897),
    "moeLM_BA-12_BL-64_PAR-4.51_V-65_LR-0.001_DR-0.0_shakespeare_char",
  );
});

Deno.test("--config=cpu is nanoGPT's CPU setting; explicit flags win", () => {
  const { config } = parseTrainConfig(["--config=cpu", "--n_layer=2"]);
  assert.deepEqual(
    [
      config.n_layer,
      config.n_head,
      config.n_embd,
      config.block_size,
      config.batch_size,
      config.dropout,
    ],
    [2, 4, 128, 64, 12, 0],
  );
  assert.equal(config.learning_rate, 3e-4);
});

for (const backend of ["cpu", "wasm", "webgpu"]) {
  Deno.test(`bigramLM loss falls on ${backend}`, async () => {
    const info = await startBackend(backend);
    assert.equal(info.name, backend);
    assert.equal(tf.getBackend(), backend);
    const data = await shakespeareData();
    const rng = new Rng(1337);
    const model = createModel("bigramLM", modelConfig(), rng);
    const opt = new AdamW(model.params.map((p) => p.variable), { lr: 1e-1, weightDecay: 0.01 });
    const before = await estimateLoss(model, data, 16, 4, new Rng(1));
    const tensorsBefore = tf.memory().numTensors;
    for (let i = 0; i < 30; i++) {
      const batch = getBatch(model, data.train, 16, rng);
      const loss = trainStep(model, opt, batch, rng);
      tf.dispose([batch.x, batch.y, loss]);
    }
    assert.equal(tf.memory().numTensors, tensorsBefore, "training leaks tensors");
    const after = await estimateLoss(model, data, 16, 4, new Rng(1));
    assert.ok(before.val > 4.4, `initial loss ${before.val}`);
    assert.ok(after.val < before.val - 0.5, `${before.val} -> ${after.val}`);
    opt.dispose();
    disposeModel(model);
  });
}

Deno.test("train: loss log, checkpoint, no overwrite, then generate with a seed", async () => {
  const dir = await preparedWorkdir();
  const args = [
    "--model_name=bigramLM",
    "--max_iters=21",
    "--eval_interval=10",
    "--eval_iters=2",
    "--batch_size=8",
    "--block_size=16",
    "--learning_rate=0.05",
    "--backend=cpu",
  ];
  const first = await runScript("train.ts", args, { cwd: dir });
  assert.equal(first.code, 0, first.stderr);
  assert.equal(first.stderr, "");
  assert.match(
    first.stdout,
    />>> step 0: train loss \d\.\d{4}, val loss \d\.\d{4}, min loss \d\.\d{4}, \d+\.\d\d ms per step/,
  );
  const id = "bigramLM_BA-8_BL-16_PAR-0.00_V-65_LR-0.05_DR-0.2_shakespeare_char";
  const log = await Deno.readTextFile(`${dir}/loss_${id}.txt`);
  const lines = log.trim().split("\n");
  assert.deepEqual(lines.map((l) => l.split(" ")[0]), ["10", "20"]);
  for (const line of lines) assert.match(line, /^\d+ \d+\.\d{4} \d+\.\d{4}$/);
  const checkpoint = `${dir}/out/${id}.safetensors`;
  const saved = await Deno.readFile(checkpoint);

  const second = await runScript("train.ts", args, { cwd: dir });
  assert.equal(second.code, 0, second.stderr);
  assert.match(second.stdout, new RegExp(`this one is ${id}_2`));
  assert.equal(
    await Deno.readTextFile(`${dir}/loss_${id}.txt`),
    log,
    "first run's log overwritten",
  );
  assert.deepEqual(await Deno.readFile(checkpoint), saved, "first run's checkpoint overwritten");

  const sample = (seed: string) =>
    runScript("generate.ts", [
      `--ckpt=${checkpoint}`,
      "--max_new_tokens=40",
      `--seed=${seed}`,
      "--backend=cpu",
    ], {
      cwd: dir,
    });
  const [a, b, c] = [await sample("7"), await sample("7"), await sample("8")];
  assert.equal(a.code, 0, a.stderr);
  assert.equal(a.stdout, b.stdout);
  assert.notEqual(a.stdout, c.stdout);
  assert.equal([...a.stdout.trimEnd()].length > 20, true);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train and generate refuse bad flags with one line and exit 2", async () => {
  const dir = await preparedWorkdir();
  const cases: [string, string[], RegExp][] = [
    ["train.ts", ["--batch_size=abc"], /--batch_size=abc: expected an integer/],
    ["train.ts", ["--use_batch_norm=maybe"], /expected true or false/],
    ["train.ts", ["--bogus=1"], /unknown flag '--bogus'.*valid flags: --batch_size/],
    ["train.ts", ["--batch_size", "3"], /not of the form --key=value/],
    ["train.ts", ["--dropout=1"], /--dropout=1: must be >= 0 and < 1/],
    ["train.ts", ["--learning_rate=0"], /must be > 0/],
    ["train.ts", ["--model_name=rnnLM"], /expected one of bigramLM, mlpLM, gptLM/],
    ["train.ts", ["--backend=tpu"], /expected one of auto, webgpu, wasm, cpu/],
    [
      "train.ts",
      ["--n_embd=100", "--n_head=3"],
      /n_embd \(100\) must be divisible by n_head \(3\)/,
    ],
    [
      "train.ts",
      ["--model_name=bigramLM", "--block_size=200000", "--backend=cpu"],
      /block_size 200000 does not fit/,
    ],
    ["generate.ts", ["--temperature=0"], /--temperature=0: must be > 0/],
    ["generate.ts", ["--top_p=1.5"], /--top_p=1.5: must be > 0 and <= 1/],
    ["generate.ts", ["--max_new_tokens=0"], /must be >= 1/],
  ];
  for (const [script, args, message] of cases) {
    const r = await runScript(script, args, { cwd: dir });
    assert.equal(r.code, 2, `${args.join(" ")}: exit ${r.code}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
  const none = await runScript("generate.ts", [], { cwd: dir });
  assert.equal(none.code, 1);
  assert.match(none.stderr, /no checkpoint under out\/: train one first/);
  const noGpu = await runScript("train.ts", ["--backend=webgpu"], {
    cwd: dir,
    env: { SIMPLELM_NO_WEBGPU: "1" },
  });
  assert.equal(noGpu.code, 1);
  assert.match(noGpu.stderr, /no WebGPU adapter/);
  const noData = await runScript("train.ts", ["--dataset=other", "--backend=cpu"], { cwd: dir });
  assert.equal(noData.code, 1);
  assert.match(noData.stderr, /run `deno task prepare --dataset=other` first/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("wasm: a gptLM batch split into micro-batches gives the whole batch's step", async () => {
  await startBackend("wasm");
  const gptDefault = { ...parseTrainConfig(["--model_name=gptLM"]).config, vocab_size: 65 };
  const defaultModel = createModel("gptLM", gptDefault, new Rng(1));
  // ~230 MB a row at the default size: 64 rows are 8 parts of 8 on WASM, 1 elsewhere.
  assert.equal(microBatchCount(defaultModel, 64, "wasm"), 8);
  assert.equal(microBatchCount(defaultModel, 64, "webgpu"), 1);
  disposeModel(defaultModel);
  const mlp = createModel("mlpLM", modelConfig(), new Rng(1));
  assert.equal(microBatchCount(mlp, 4096, "wasm"), 1, "BatchNorm rows are not independent");
  disposeModel(mlp);

  const data = await shakespeareData();
  const config = { ...modelConfig(), n_layer: 2, n_head: 2, n_embd: 16, block_size: 8, dropout: 0 };
  const run = async (parts: number) => {
    const rng = new Rng(7);
    const model = createModel("gptLM", config, rng);
    const opt = new AdamW(model.params.map((p) => p.variable), { lr: 1e-2, weightDecay: 0.1 });
    const losses: number[] = [];
    const tensorsBefore = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) {
      const batch = getBatch(model, data.train, 8, rng);
      const loss = trainStep(model, opt, batch, rng, parts);
      losses.push((await loss.data())[0]);
      tf.dispose([batch.x, batch.y, loss]);
    }
    assert.equal(tf.memory().numTensors, tensorsBefore, `${parts} parts leak tensors`);
    const evalLoss = await estimateLoss(model, data, 8, 2, new Rng(3), parts);
    const weights = await model.params[0].variable.data() as Float32Array;
    opt.dispose();
    disposeModel(model);
    return { losses, evalLoss, weights };
  };
  const whole = await run(1);
  const split = await run(4);
  for (let i = 0; i < 3; i++) {
    assert.ok(
      Math.abs(whole.losses[i] - split.losses[i]) < 1e-5,
      `step ${i}: ${whole.losses} vs ${split.losses}`,
    );
  }
  assert.ok(Math.abs(whole.evalLoss.val - split.evalLoss.val) < 1e-5);
  const maxDiff = whole.weights.reduce((m, w, i) => Math.max(m, Math.abs(w - split.weights[i])), 0);
  assert.ok(maxDiff < 1e-5, `weights after 3 steps differ by ${maxDiff}`);
});

const LEAK_CONFIGS: Record<string, string[]> = {
  bigramLM: [],
  mlpLM: ["--max_hidden_nodes=32", "--char_encoding_len=8"],
  gptLM: ["--n_layer=1", "--n_head=2", "--n_embd=16", "--dropout=0.1"],
  block_wise_scaling_gptLM: [
    "--n_layer=2",
    "--n_head=2",
    "--n_embd=16",
    "--dropout=0.1",
    "--ffn_intermediate_divisor=8",
  ],
  moeLM: ["--n_layer=1", "--n_head=2", "--n_embd=16", "--dropout=0.1", "--num_experts=4"],
  moa_moeLM: ["--n_layer=1", "--n_head=2", "--n_embd=16", "--dropout=0.1", "--num_experts=4"],
};

for (const backend of ["cpu", "wasm", "webgpu"]) {
  Deno.test(`${backend}: no tensor leaks across training steps of any model`, async () => {
    const { name: backendName } = await startBackend(backend);
    const data = await shakespeareData();
    for (const name of MODEL_NAMES) {
      // MoE steps on llvmpipe are slow: moe_test.ts checks their tensor count on WebGPU.
      if (backend === "webgpu" && name.endsWith("moeLM")) continue;
      const { config } = parseTrainConfig([
        `--model_name=${name}`,
        ...LEAK_CONFIGS[name],
        "--block_size=8",
        "--batch_size=4",
      ]);
      const run = buildRun(config, data.vocab.length, backendName);
      // Tensors and bytes held after step 5 and after step 25: a step that
      // leaves anything behind grows both.
      const counts: { tensors: number; bytes: number }[] = [];
      for (let i = 1; i <= 25; i++) {
        const loss = run.step(data.train);
        if (i % 5 === 0) await loss.data();
        loss.dispose();
        if (i === 5 || i === 25) {
          counts.push({ tensors: tf.memory().numTensors, bytes: tf.memory().numBytes });
        }
      }
      assert.deepEqual(counts[1], counts[0], `${name} on ${backend}: step 5 vs step 25`);
      run.dispose();
    }
  });
}
