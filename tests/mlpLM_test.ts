import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { AdamW } from "../nn/adamw.ts";
import { startBackend } from "../run/start.ts";
import { loadCheckpoint, restoreWeights, saveCheckpoint } from "../run/checkpoint.ts";
import { UsageError } from "../cli/errors.ts";
import { Rng } from "../lib/rng.ts";
import { generateTokens } from "../run/sampling.ts";
import { trainStep } from "../run/training.ts";
import { genCodingPatterns } from "../models/mlp_patterns.ts";
import { mlpLM } from "../models/mlpLM.ts";
import { modelConfig } from "./helpers.ts";
import { countParams, disposeModel, type LanguageModel } from "../models/model.ts";

/** The model the PyTorch reference values below were computed for. */
const TINY = modelConfig({
  vocab_size: 4,
  block_size: 3,
  char_encoding_len: 4,
  max_hidden_nodes: 8,
  dropout: 0,
});

/*
 * Reference values from PyTorch 1.13 and the original `MLPLanguageModel`
 * with TINY's shape (widths 12 → 8 → 4 → 4 → 2 → 4), weights set by
 * `setWeights`' formulas, inputs `X1`/`X2`:
 *
 *   m = MLPLanguageModel(4, 8, 4, 3, None, True, act, 0.0)   # then the formulas
 *   m.train(); train, _ = m(x1); m.eval(); eval, _ = m(x1)
 *   m = ... relu; opt = torch.optim.AdamW([p for n, p in m.named_parameters()
 *                                          if n not in FROZEN], lr=0.01)
 *   for x, y in [(x1, y1), (x2, y2)]: loss = m(x, y)[1]; opt.zero_grad(); loss.backward(); opt.step()
 */
const TORCH_LOGITS: Record<string, { train: number[]; eval: number[] }> = {
  relu: {
    train: [
      -0.630947,
      0.671857,
      -0.743852,
      0.5221,
      -0.004245,
      0.068669,
      -0.17625,
      0.001444,
      -0.111506,
      0.167073,
      -0.263828,
      0.076442,
      -0.624816,
      0.717167,
      -0.839695,
      0.666557,
    ],
    eval: [
      0.034621,
      0.025069,
      -0.128789,
      -0.048929,
      0.034201,
      0.025477,
      -0.129176,
      -0.048569,
      0.035116,
      0.024588,
      -0.128331,
      -0.049354,
      0.03461,
      0.02508,
      -0.128799,
      -0.048919,
    ],
  },
  sigmoid: {
    train: [
      -0.37793,
      0.451525,
      -0.560614,
      0.379623,
      -0.406499,
      0.47704,
      -0.582565,
      0.397571,
      -0.448656,
      0.506725,
      -0.599182,
      0.400788,
      -0.364089,
      0.418182,
      -0.508438,
      0.309657,
    ],
    eval: [
      -0.407952,
      0.479073,
      -0.585137,
      0.400629,
      -0.407951,
      0.479072,
      -0.585136,
      0.400629,
      -0.407951,
      0.479071,
      -0.585135,
      0.400627,
      -0.407948,
      0.479069,
      -0.585132,
      0.400624,
    ],
  },
  silu: {
    train: [
      -0.09231,
      0.139411,
      -0.228253,
      0.033667,
      0.049933,
      0.003333,
      -0.101065,
      -0.082087,
      0.011538,
      0.039756,
      -0.134786,
      -0.051741,
      -0.517336,
      0.614006,
      -0.742919,
      0.578102,
    ],
    eval: [
      0.057984,
      0.001639,
      -0.105761,
      -0.071094,
      0.05798,
      0.001643,
      -0.105764,
      -0.071091,
      0.057984,
      0.001636,
      -0.105756,
      -0.071101,
      0.058018,
      0.001597,
      -0.105711,
      -0.07115,
    ],
  },
};

/**
 * The biases of fc1–fc4 stay out of the optimizer in the two-step check: the
 * BatchNorm after each makes their gradient zero up to rounding (~1e-8), and
 * Adam scales that rounding noise up to lr-sized steps, which would follow
 * each library's rounding rather than the model.
 */
const FROZEN = ["fc1.bias", "fc2.bias", "fc3.bias", "fc4.bias"];

/** Running statistics after the two AdamW steps, and the eval logits of X1 then. */
const TORCH_AFTER_TWO_STEPS = {
  "bn1.running_mean": [
    -0.057506,
    0.024707,
    -0.030281,
    0.048444,
    -0.012278,
    0.020507,
    -0.041756,
    -0.003721,
  ],
  "bn1.running_var": [
    0.814427,
    0.813763,
    0.813447,
    0.813354,
    0.812748,
    0.812407,
    0.811742,
    0.811754,
  ],
  "bn2.running_mean": [-0.146729, 0.123923, -0.083986, 0.096906],
  "bn2.running_var": [0.844933, 0.845793, 0.846207, 0.846264],
  "bn3.running_mean": [-0.087023, 0.094777, -0.046376, 0.039326],
  "bn3.running_var": [0.837198, 0.830735, 0.825888, 0.822026],
  "bn4.running_mean": [-0.121251, 0.150311],
  "bn4.running_var": [0.863225, 0.863923],
  evalLogits: [
    0.026877,
    0.031863,
    -0.136,
    -0.044488,
    0.03258,
    0.026332,
    -0.130595,
    -0.049435,
    0.028951,
    0.029851,
    -0.134035,
    -0.046287,
    0.025445,
    0.03325,
    -0.137357,
    -0.043247,
  ],
};

const B = 4;
const X1 = Array.from(
  { length: B * 12 },
  (_, k) => ((Math.floor(k / 12) * 13 + (k % 12) * 7) % 5) / 4,
);
const X2 = Array.from(
  { length: B * 12 },
  (_, k) => ((Math.floor(k / 12) * 11 + (k % 12) * 5 + 3) % 7) / 6,
);
const Y1 = [0, 1, 2, 3];
const Y2 = [3, 1, 0, 2];

/** Deterministic weights both here and in the PyTorch script. */
function setWeights(model: LanguageModel): void {
  for (const p of model.params) {
    const [, layer, kind] = p.name.match(/^(?:fc|bn)(\d)\.(weight|bias)$/)!;
    const l = Number(layer);
    const shape = p.transposed ? [...p.variable.shape].reverse() : p.variable.shape; // PyTorch's
    const value = (o: number, i: number) => {
      if (p.name.startsWith("fc")) {
        return kind === "weight"
          ? 0.5 * Math.sin(1 + 7 * l + 3 * o + 0.5 * i)
          : 0.1 * Math.cos(2 + l + o);
      }
      return kind === "weight" ? 1 + 0.1 * Math.sin(3 + l + o) : 0.1 * Math.cos(4 + l + o);
    };
    const cols = shape[1] ?? 1;
    const values = Array.from(
      { length: shape[0] * cols },
      (_, k) => value(Math.floor(k / cols), k % cols),
    );
    const t = tf.tensor(values, shape);
    p.variable.assign(p.transposed ? t.transpose() : t);
    t.dispose();
  }
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 1e-4): void {
  assert.equal(actual.length, expected.length, "length");
  for (let i = 0; i < expected.length; i++) {
    assert.ok(
      Math.abs(actual[i] - expected[i]) <= tol,
      `[${i}]: ${actual[i]} vs ${expected[i]} (±${tol})`,
    );
  }
}

async function values(t: tf.Tensor): Promise<Float32Array> {
  return await t.data() as Float32Array;
}

function buffer(model: LanguageModel, name: string): tf.Tensor {
  return model.buffers.find((b) => b.name === name)!.tensor;
}

Deno.test("mlpLM: the original's parameter count, names and buffers at its defaults", async () => {
  await startBackend("cpu");
  const model = mlpLM.create(modelConfig({ vocab_size: 65 }), new Rng(1));
  try {
    assert.equal(countParams(model), 10_008_641);
    const names = [1, 2, 3, 4].flatMap((i) => [
      `fc${i}.weight`,
      `fc${i}.bias`,
      `bn${i}.weight`,
      `bn${i}.bias`,
    ]);
    assert.deepEqual(model.params.map((p) => p.name), [...names, "fc5.weight", "fc5.bias"]);
    assert.deepEqual(
      model.buffers.map((b) => `${b.name}:${b.dtype}`),
      [1, 2, 3, 4].flatMap((i) => [
        `bn${i}.running_mean:F32`,
        `bn${i}.running_var:F32`,
        `bn${i}.num_batches_tracked:I64`,
      ]),
    );
    const fc1 = model.params[0];
    const torchShape = fc1.transposed ? [...fc1.variable.shape].reverse() : fc1.variable.shape;
    assert.deepEqual(torchShape, [2048, 256 * 12]);
    // nn.Linear's default init: U(±1/√fan_in).
    const w = await values(fc1.variable);
    const bound = 1 / Math.sqrt(256 * 12);
    assert.ok(w.every((v) => Math.abs(v) <= bound));
    assert.ok(Math.max(...w.subarray(0, 10000)) > bound * 0.99);
    assertClose(await values(buffer(model, "bn1.running_var")), new Array(2048).fill(1), 0);
    assert.equal((await buffer(model, "bn1.num_batches_tracked").data())[0], 0);
  } finally {
    disposeModel(model);
  }
});

Deno.test("mlpLM: BatchNorm train and eval outputs match PyTorch, per activation", async () => {
  await startBackend("cpu");
  for (const act of ["relu", "sigmoid", "silu", "swiglu"]) {
    const model = mlpLM.create({ ...TINY, active_fn: act }, new Rng(1));
    setWeights(model);
    const x = tf.tensor2d(X1, [B, 12]);
    const expected = TORCH_LOGITS[act === "swiglu" ? "silu" : act];
    const train = model.forward(x, { training: true, rng: new Rng(2) });
    assert.deepEqual(train.shape, [B, 4]);
    assertClose(await values(train), expected.train);
    // Eval mode reads the running statistics the training forward just moved.
    const evalOut = model.forward(x, { training: false });
    assertClose(await values(evalOut), expected.eval);
    tf.dispose([x, train, evalOut]);
    disposeModel(model);
  }
  // The activations really differ from each other.
  assert.notDeepEqual(TORCH_LOGITS.sigmoid.train, TORCH_LOGITS.silu.train);
  assert.notDeepEqual(TORCH_LOGITS.relu.train, TORCH_LOGITS.silu.train);
  assert.throws(() => mlpLM.create({ ...TINY, active_fn: "tanh" }, new Rng(1)), UsageError);
});

Deno.test("mlpLM: running statistics after two AdamW steps match PyTorch", async () => {
  await startBackend("cpu");
  const model = mlpLM.create(TINY, new Rng(1));
  setWeights(model);
  const trained = model.params.filter((p) => !FROZEN.includes(p.name)).map((p) => p.variable);
  const optimizer = new AdamW(trained, { lr: 0.01, weightDecay: 0.01 });
  const rng = new Rng(3);
  for (const [x, y] of [[X1, Y1], [X2, Y2]]) {
    const batch = { x: tf.tensor2d(x, [B, 12]), y: tf.tensor1d(y, "int32") };
    trainStep(model, optimizer, batch, rng).dispose();
    tf.dispose([batch.x, batch.y]);
  }
  for (let i = 1; i <= 4; i++) {
    for (const stat of ["running_mean", "running_var"] as const) {
      const name = `bn${i}.${stat}` as keyof typeof TORCH_AFTER_TWO_STEPS;
      assertClose(await values(buffer(model, name)), TORCH_AFTER_TWO_STEPS[name]);
    }
    const tracked = buffer(model, `bn${i}.num_batches_tracked`);
    assert.equal(tracked.dtype, "int32");
    assert.deepEqual(Array.from(await tracked.data()), [2]);
  }
  const x = tf.tensor2d(X1, [B, 12]);
  const logits = model.forward(x, { training: false });
  assertClose(await values(logits), TORCH_AFTER_TWO_STEPS.evalLogits);
  tf.dispose([x, logits]);
  optimizer.dispose();
  disposeModel(model);
});

Deno.test("mlpLM: makeBatch codes the context and zeroes the first N features of B//4 rows", async () => {
  await startBackend("cpu");
  const [T, E, V, rows] = [5, 4, 6, 9];
  const model = mlpLM.create(
    modelConfig({ vocab_size: V, block_size: T, char_encoding_len: E }),
    new Rng(1),
  );
  const codes = genCodingPatterns(E, V);
  const windows = Int32Array.from({ length: rows * (T + 1) }, (_, k) => (k * 7 + 3) % V);
  const rng = new Rng(5);
  const twin = new Rng(0);
  twin.setState(rng.getState());
  const { x, y } = model.makeBatch(windows, rows, rng);
  assert.deepEqual(x.shape, [rows, T * E]);
  assert.equal(x.dtype, "float32");
  assert.deepEqual(y.shape, [rows]);
  assert.equal(y.dtype, "int32");
  assert.deepEqual(
    Array.from(await y.data()),
    Array.from({ length: rows }, (_, r) => windows[r * (T + 1) + T]),
  );
  const xs = await values(x);
  for (let r = 0; r < rows; r++) {
    const coded = Array.from(windows.subarray(r * (T + 1), r * (T + 1) + T)).flatMap((id) =>
      codes[id]
    );
    // rows * 1/4 = 2 rows get prompt dropout, N uniform in [1, T], drawn in row order.
    const n = r < Math.floor(rows / 4) ? 1 + twin.below(T) : 0;
    coded.fill(0, 0, n);
    assert.deepEqual(Array.from(xs.subarray(r * T * E, (r + 1) * T * E)), coded, `row ${r}`);
  }
  tf.dispose([x, y]);
  disposeModel(model);
});

/** A cyclic text 0 1 2 … V-1 0 1 …: its next character is always known. */
function cyclicWindows(rows: number, T: number, V: number, rng: Rng): Int32Array {
  const w = new Int32Array(rows * (T + 1));
  for (let r = 0; r < rows; r++) {
    const start = rng.below(V);
    for (let t = 0; t <= T; t++) w[r * (T + 1) + t] = (start + t) % V;
  }
  return w;
}

const CYCLIC = modelConfig({
  vocab_size: 6,
  block_size: 4,
  char_encoding_len: 4,
  max_hidden_nodes: 32,
  dropout: 0.1,
});

/** Trains CYCLIC for `steps` and returns the mean loss of the first and last five. */
async function trainCyclic(model: LanguageModel, steps: number): Promise<[number, number]> {
  const rng = new Rng(11);
  const optimizer = new AdamW(model.params.map((p) => p.variable), { lr: 1e-2, weightDecay: 0.01 });
  const losses: number[] = [];
  for (let step = 0; step < steps; step++) {
    const rows = 16;
    const batch = model.makeBatch(
      cyclicWindows(rows, CYCLIC.block_size, CYCLIC.vocab_size, rng),
      rows,
      rng,
    );
    const loss = trainStep(model, optimizer, batch, rng);
    losses.push((await loss.data())[0]);
    tf.dispose([loss, batch.x, batch.y]);
  }
  optimizer.dispose();
  const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
  return [mean(losses.slice(0, 5)), mean(losses.slice(-5))];
}

// WebGPU here is Mesa's software rasteriser, slow: fewer steps there.
for (const [backend, steps] of [["cpu", 40], ["wasm", 40], ["webgpu", 20]] as const) {
  Deno.test(`mlpLM: the loss falls on ${backend}`, async () => {
    await startBackend(backend);
    const model = mlpLM.create(CYCLIC, new Rng(1));
    const [first, last] = await trainCyclic(model, steps);
    assert.ok(last < first * 0.8, `loss ${first.toFixed(3)} → ${last.toFixed(3)}`);
    disposeModel(model);
  });
}

Deno.test("mlpLM: generation from an empty and a given prompt", async () => {
  await startBackend("cpu");
  const model = mlpLM.create(CYCLIC, new Rng(1));
  await trainCyclic(model, 150);
  const rng = new Rng(7);
  // An empty context is the original's all-zero start.
  const fromNothing = await generateTokens(model, [], 12, {}, rng);
  assert.equal(fromNothing.length, 12);
  assert.ok(fromNothing.every((id) => Number.isInteger(id) && id >= 0 && id < 6));
  // A prompt longer than block_size: only its last four ids count, right-aligned.
  const fromPrompt = await generateTokens(model, [5, 5, 5, 2, 3, 4, 5], 8, { topK: 1 }, rng);
  assert.deepEqual(fromPrompt, [0, 1, 2, 3, 4, 5, 0, 1]);
  // A short prompt sits at the right end, zeros before it.
  const codes = genCodingPatterns(4, 6);
  const features = [0, 0, 0, 0, 0, 0, 0, 0, ...codes[3], ...codes[4]];
  const short = model.nextTokenLogits([3, 4]);
  const x = tf.tensor2d(features, [1, 16]);
  const direct = model.forward(x, { training: false });
  assertClose(await values(short), await values(direct), 1e-6);
  tf.dispose([short, x, direct]);
  disposeModel(model);
});

Deno.test("mlpLM: training leaks no tensors and updates the statistics once per step", async () => {
  await startBackend("cpu");
  const model = mlpLM.create({ ...CYCLIC, dropout: 0.2 }, new Rng(1));
  const optimizer = new AdamW(model.params.map((p) => p.variable), { lr: 1e-3, weightDecay: 0.01 });
  const rng = new Rng(2);
  const counts: number[] = [];
  for (let step = 1; step <= 50; step++) {
    const batch = model.makeBatch(cyclicWindows(8, 4, 6, rng), 8, rng);
    trainStep(model, optimizer, batch, rng).dispose();
    tf.dispose([batch.x, batch.y]);
    if (step === 10 || step === 50) counts.push(tf.memory().numTensors);
  }
  assert.equal(counts[0], counts[1]);
  assert.deepEqual(Array.from(await buffer(model, "bn3.num_batches_tracked").data()), [50]);
  optimizer.dispose();
  disposeModel(model);
});

Deno.test("mlpLM: a checkpoint round-trips parameters and BatchNorm buffers", async () => {
  await startBackend("cpu");
  const model = mlpLM.create(TINY, new Rng(1));
  const optimizer = new AdamW(model.params.map((p) => p.variable), { lr: 0.01, weightDecay: 0.01 });
  const rng = new Rng(3);
  for (const [x, y] of [[X1, Y1], [X2, Y2], [X1, Y2]]) {
    const batch = { x: tf.tensor2d(x, [B, 12]), y: tf.tensor1d(y, "int32") };
    trainStep(model, optimizer, batch, rng).dispose();
    tf.dispose([batch.x, batch.y]);
  }
  // Checkpoints are read only inside the working folder.
  const dir = await Deno.makeTempDir();
  const cwd = Deno.cwd();
  Deno.chdir(dir);
  try {
    const path = "mlp.safetensors";
    await saveCheckpoint(path, model, {
      config: { ...TINY, model_name: "mlpLM" },
      vocab: ["a", "b", "c", "d"],
      state: { iter: 3, evalDone: true, bestVal: 1, logFile: "x.txt", rng: rng.getState() },
    });
    const restored = mlpLM.create(TINY, new Rng(99));
    restoreWeights(restored, await loadCheckpoint(path));
    const all = (
      m: LanguageModel,
    ) => [...m.params.map((p) => p.variable), ...m.buffers.map((b) => b.tensor)];
    const [before, after] = [all(model), all(restored)];
    for (let i = 0; i < before.length; i++) {
      assert.equal(after[i].dtype, before[i].dtype);
      assert.deepEqual(Array.from(await after[i].data()), Array.from(await before[i].data()));
    }
    assert.deepEqual(Array.from(await buffer(restored, "bn2.num_batches_tracked").data()), [3]);
    disposeModel(restored);
  } finally {
    Deno.chdir(cwd);
    await Deno.remove(dir, { recursive: true });
    optimizer.dispose();
    disposeModel(model);
  }
});

Deno.test("mlpLM: a one-row training batch is refused with BatchNorm (as PyTorch), fine without", async () => {
  await startBackend("cpu");
  const model = mlpLM.create(TINY, new Rng(1));
  const x = tf.tensor2d(X1.slice(0, 12), [1, 12]);
  assert.throws(() => model.forward(x, { training: true, rng: new Rng(1) }), UsageError);
  const logits = model.forward(x, { training: false });
  assert.deepEqual(logits.shape, [1, 4]);
  // Without BatchNorm there is nothing to refuse, and no bn parameters or buffers.
  const plain = mlpLM.create({ ...TINY, use_batch_norm: false }, new Rng(1));
  assert.deepEqual(
    plain.params.map((p) => p.name),
    [1, 2, 3, 4, 5].flatMap((i) => [`fc${i}.weight`, `fc${i}.bias`]),
  );
  assert.equal(plain.buffers.length, 0);
  const trained = plain.forward(x, { training: true, rng: new Rng(1) });
  assert.deepEqual(trained.shape, [1, 4]);
  tf.dispose([x, logits, trained]);
  disposeModel(model);
  disposeModel(plain);
});
