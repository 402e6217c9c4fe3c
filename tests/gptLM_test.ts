import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { AdamW } from "../nn/adamw.ts";
import { startBackend } from "../run/start.ts";
import { UsageError } from "../cli/errors.ts";
import { Rng } from "../lib/rng.ts";
import { generateTokens } from "../run/sampling.ts";
import { getBatch, trainStep } from "../run/training.ts";
import { gptLM } from "../models/gptLM.ts";
import { countParams, disposeModel, type LanguageModel } from "../models/model.ts";
import { modelConfig, shakespeareData, withFastPaths } from "./helpers.ts";

const BACKENDS = ["cpu", "wasm", "webgpu"] as const;

/** V=11, C=8, H=2, L=2, T=6: small enough for llvmpipe, every part still there. */
const TINY = modelConfig({
  vocab_size: 11,
  block_size: 6,
  dropout: 0.1,
  n_embd: 8,
  n_head: 2,
  n_layer: 2,
});
const X = [[3, 6, 2, 7, 0, 3], [1, 10, 2, 6, 4, 6]];
const Y = [[7, 0, 3, 4, 4, 5], [2, 2, 6, 9, 8, 3]];

/**
 * The tiny model on the current backend, every parameter (LayerNorms and
 * biases too) overwritten with N(0, 0.5²) values drawn in PyTorch's layout:
 * the weights the PyTorch reference below was computed with.
 */
function seededTiny(): LanguageModel {
  const model = gptLM.create(TINY, new Rng(3));
  const rng = new Rng(5);
  for (const p of model.params) {
    const shape = p.transposed ? [...p.variable.shape].reverse() : p.variable.shape;
    tf.tidy(() => {
      const values = tf.tensor(rng.normals(p.variable.size, 0.5), shape);
      p.variable.assign(p.transposed ? values.transpose() : values);
    });
  }
  return model;
}

/** Logits (eval mode), and loss and gradients in training mode with dropout masks from a fixed seed. */
async function tinyRun(model: LanguageModel) {
  const x = tf.tensor2d(X, undefined, "int32");
  const y = tf.tensor2d(Y, undefined, "int32");
  const logits = tf.tidy(() => model.forward(x, { training: false }));
  const { value, grads } = tf.variableGrads(
    () => model.loss(x, y, { training: true, rng: new Rng(9) }),
    model.params.map((p) => p.variable),
  );
  const out = {
    logits: await logits.data(),
    loss: (await value.data())[0],
    grads: new Map<string, Float32Array>(),
  };
  for (const p of model.params) {
    out.grads.set(p.name, await grads[p.variable.name].data() as Float32Array);
  }
  tf.dispose([x, y, logits, value, grads]);
  return out;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

function maxAbs(a: ArrayLike<number>): number {
  return maxDiff(a, new Float32Array(a.length));
}

Deno.test("gptLM: PyTorch names, shapes and order; tril buffers; output shapes", async () => {
  await startBackend("cpu");
  const model = gptLM.create(TINY, new Rng(1));
  const expected: [string, number[]][] = [
    ["token_embedding_table.weight", [11, 8]],
    ["position_embedding_table.weight", [6, 8]],
  ];
  for (let i = 0; i < 2; i++) {
    for (let h = 0; h < 2; h++) {
      for (const w of ["key", "query", "value"]) {
        expected.push([`blocks.${i}.sa.heads.${h}.${w}.weight`, [4, 8]]);
      }
    }
    expected.push(
      [`blocks.${i}.sa.proj.weight`, [8, 8]],
      [`blocks.${i}.sa.proj.bias`, [8]],
      [`blocks.${i}.ffwd.net.0.weight`, [32, 8]],
      [`blocks.${i}.ffwd.net.0.bias`, [32]],
      [`blocks.${i}.ffwd.net.2.weight`, [8, 32]],
      [`blocks.${i}.ffwd.net.2.bias`, [8]],
      [`blocks.${i}.ln1.weight`, [8]],
      [`blocks.${i}.ln1.bias`, [8]],
      [`blocks.${i}.ln2.weight`, [8]],
      [`blocks.${i}.ln2.bias`, [8]],
    );
  }
  expected.push(["ln_f.weight", [8]], ["ln_f.bias", [8]], ["lm_head.weight", [11, 8]], [
    "lm_head.bias",
    [11],
  ]);
  const torchShape = (p: LanguageModel["params"][number]) =>
    p.transposed ? [...p.variable.shape].reverse() : p.variable.shape;
  assert.deepEqual(model.params.map((p) => [p.name, torchShape(p)]), expected);
  assert.deepEqual(
    model.buffers.map((b) => [b.name, b.dtype, b.tensor.shape]),
    [0, 1].flatMap((i) => [0, 1].map((h) => [`blocks.${i}.sa.heads.${h}.tril`, "F32", [6, 6]])),
  );
  assert.ok(model.buffers.every((b) => !(b.tensor instanceof tf.Variable)));
  const tril = await model.buffers[0].tensor.array() as number[][];
  assert.deepEqual(tril, tril.map((row, r) => row.map((_, c) => (c <= r ? 1 : 0))));

  const x = tf.tensor2d(X, undefined, "int32");
  const y = tf.tensor2d(Y, undefined, "int32");
  const logits = tf.tidy(() => model.forward(x, { training: true, rng: new Rng(2) }));
  assert.deepEqual(logits.shape, [2, 6, 11]);
  const loss = tf.tidy(() => model.loss(x, y, { training: false }));
  assert.deepEqual(loss.shape, []);
  // Fresh init predicts near-uniform: loss ≈ ln 11.
  assert.ok(Math.abs((await loss.data())[0] - Math.log(11)) < 0.05);
  tf.dispose([x, y, logits, loss]);
  disposeModel(model);
});

Deno.test("gptLM: 10,788,929 parameters at the original defaults, N(0, 0.02) init", async () => {
  await startBackend("cpu");
  const before = tf.memory().numTensors;
  const model = gptLM.create(modelConfig({}), new Rng(1337));
  assert.equal(countParams(model), 10_788_929);
  const stats = (name: string) =>
    tf.tidy(() => {
      const { mean, variance } = tf.moments(model.params.find((p) => p.name === name)!.variable);
      return [mean.dataSync()[0], Math.sqrt(variance.dataSync()[0])];
    });
  for (
    const name of [
      "token_embedding_table.weight",
      "blocks.5.sa.heads.3.key.weight",
      "lm_head.weight",
    ]
  ) {
    const [mean, std] = stats(name);
    assert.ok(
      Math.abs(mean) < 0.001 && Math.abs(std - 0.02) < 0.001,
      `${name}: N(${mean}, ${std}²)`,
    );
  }
  assert.deepEqual(stats("blocks.0.ffwd.net.0.bias").map((v) => v + 0), [0, 0]); // + 0: -0 → 0
  assert.deepEqual(stats("ln_f.weight").map((v) => v + 0), [1, 0]);
  disposeModel(model);
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("gptLM: n_embd not divisible by n_head is a UsageError", async () => {
  await startBackend("cpu");
  assert.throws(() => gptLM.create(modelConfig({ n_embd: 10, n_head: 4 }), new Rng(1)), UsageError);
});

Deno.test("gptLM: matches PyTorch's GPTLanguageModel on a seeded tiny model", async () => {
  await startBackend("cpu");
  const model = seededTiny();
  const { logits } = await tinyRun(model);
  // simpleLM/gptLM.py (torch 1.13) with these weights exported as a state_dict, eval():
  // loss 2.502862; logits of [batch, position] rows:
  // deno-fmt-ignore
  const reference: [number, number, number[]][] = [
    [1, 0, [0.65126, 1.05979, -0.41411, 0.44995, 2.14256, 1.41152, -0.39438, 1.58333, 0.78475, -0.88741, -0.42472]],
    [1, 5, [0.30061, 0.69736, 0.75446, 0.10148, 2.0486, 0.77581, 0.19116, 0.6242, 0.19447, -0.35487, -0.44573]],
    [0, 2, [0.60004, 1.15316, 0.32893, 0.32991, 2.23031, 1.0014, -0.12295, 0.95816, 0.19693, -0.80113, -0.24843]],
  ];
  for (const [b, t, row] of reference) {
    const start = (b * 6 + t) * 11;
    assert.ok(maxDiff(logits.subarray(start, start + 11), row) < 1e-4, `logits[${b}, ${t}]`);
  }
  const evalLoss = tf.tidy(() =>
    model.loss(tf.tensor2d(X, undefined, "int32"), tf.tensor2d(Y, undefined, "int32"), {
      training: false,
    })
  );
  assert.ok(Math.abs((await evalLoss.data())[0] - 2.502862) < 1e-4);
  evalLoss.dispose();
  disposeModel(model);
});

Deno.test("gptLM: attention is causal (a later token never changes earlier logits)", async () => {
  await startBackend("wasm");
  for (const fast of [true, false]) {
    const model = seededTiny();
    const logitsOf = (ids: number[]) =>
      tf.tidy(() =>
        model.forward(tf.tensor2d([ids], undefined, "int32"), { training: false }).dataSync()
      );
    await withFastPaths(fast, () => {
      const base = logitsOf(X[0]);
      for (let t = 0; t < 6; t++) {
        const changed = [...X[0]];
        changed[t] = (changed[t] + 5) % 11;
        const out = logitsOf(changed);
        const what = `${fast ? "fast" : "plain"}: token ${t}`;
        assert.ok(maxDiff(out.subarray(0, t * 11), base.subarray(0, t * 11)) < 1e-6, what);
        assert.ok(maxDiff(out.subarray(t * 11), base.subarray(t * 11)) > 1e-3, `${what} ignored`);
      }
      return Promise.resolve();
    });
    disposeModel(model);
  }
});

let cpuReference: Awaited<ReturnType<typeof tinyRun>> | null = null;

for (const backend of BACKENDS) {
  Deno.test(`gptLM: logits, loss and gradients on ${backend} match cpu, fast and plain paths`, async () => {
    await startBackend("cpu");
    if (!cpuReference) {
      const model = seededTiny();
      cpuReference = await withFastPaths(false, () => tinyRun(model));
      disposeModel(model);
    }
    const ref = cpuReference;
    await startBackend(backend);
    const runs = [];
    for (const fast of [false, true]) {
      const model = seededTiny();
      runs.push(await withFastPaths(fast, () => tinyRun(model)));
      disposeModel(model);
    }
    for (const [i, run] of runs.entries()) {
      const what = `${backend} ${i ? "fast" : "plain"}`;
      assert.ok(maxDiff(run.logits, ref.logits) < 1e-4, `${what}: logits`);
      assert.ok(Math.abs(run.loss - ref.loss) < 1e-4, `${what}: loss`);
      for (const [name, g] of ref.grads) {
        const scale = Math.max(maxAbs(g), 1e-6);
        assert.ok(maxDiff(run.grads.get(name)!, g) <= 1e-3 * scale, `${what}: gradient of ${name}`);
      }
    }
    // The fast path against the plain one on the same backend.
    const [plain, fast] = runs;
    assert.ok(maxDiff(fast.logits, plain.logits) < 1e-4);
    for (const [name, g] of plain.grads) {
      assert.ok(maxDiff(fast.grads.get(name)!, g) < 1e-4, `fast vs plain: ${name}`);
    }
  });
}

Deno.test("gptLM: gradients match finite differences (cpu)", async () => {
  await startBackend("cpu");
  const model = seededTiny();
  const x = tf.tensor2d(X, undefined, "int32");
  const y = tf.tensor2d(Y, undefined, "int32");
  // The same dropout masks in every evaluation.
  const lossValue = () =>
    tf.tidy(() => model.loss(x, y, { training: true, rng: new Rng(9) }).dataSync()[0]);
  const { grads } = await tinyRun(model);
  const checked = [
    "token_embedding_table.weight",
    "position_embedding_table.weight",
    "blocks.0.sa.heads.1.key.weight",
    "blocks.1.sa.heads.0.query.weight",
    "blocks.0.sa.heads.0.value.weight",
    "blocks.1.sa.proj.weight",
    "blocks.0.ffwd.net.0.bias",
    "blocks.1.ln1.weight",
    "lm_head.weight",
  ];
  // float32: ε = 1e-3 leaves ~1e-4 of rounding noise in the quotient, and
  // rarely steps over a ReLU kink (1e-2 does, on a few entries).
  const eps = 1e-3;
  for (const name of checked) {
    const variable = model.params.find((p) => p.name === name)!.variable;
    const analytic = grads.get(name)!;
    const values = variable.dataSync().slice() as Float32Array;
    // In the token table, rows 0 and 10 are ids of X; row 5 is not (a zero gradient).
    for (const i of [0, Math.floor(values.length / 2) + 1, values.length - 1]) {
      const at = (delta: number) => {
        const v = values.slice();
        v[i] += delta;
        variable.assign(tf.tensor(v, variable.shape));
        return lossValue();
      };
      const numeric = (at(eps) - at(-eps)) / (2 * eps);
      variable.assign(tf.tensor(values, variable.shape));
      const tolerance = 3e-4 + 3e-2 * Math.abs(analytic[i]);
      assert.ok(
        Math.abs(numeric - analytic[i]) < tolerance,
        `${name}[${i}]: numeric ${numeric} vs analytic ${analytic[i]}`,
      );
    }
  }
  tf.dispose([x, y]);
  disposeModel(model);
});

for (const backend of BACKENDS) {
  Deno.test(`gptLM: loss falls on ${backend}, tensor count flat`, async () => {
    await startBackend(backend);
    const data = await shakespeareData();
    const rng = new Rng(1337);
    const config = modelConfig({ block_size: 8, dropout: 0.1, n_embd: 16, n_head: 2, n_layer: 1 });
    const model = gptLM.create(config, rng);
    const opt = new AdamW(model.params.map((p) => p.variable), { lr: 1e-2, weightDecay: 0.01 });
    const losses: number[] = [];
    let tensors = 0;
    for (let i = 0; i < 40; i++) {
      const batch = getBatch(model, data.train, 8, rng);
      const loss = trainStep(model, opt, batch, rng);
      losses.push((await loss.data())[0]);
      tf.dispose([batch.x, batch.y, loss]);
      if (i === 1) tensors = tf.memory().numTensors; // after AdamW's first step made its moments
      if (i > 1) assert.equal(tf.memory().numTensors, tensors, `step ${i} leaks tensors`);
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const [first, last] = [mean(losses.slice(0, 5)), mean(losses.slice(-5))];
    assert.ok(first > 4, `initial loss ${first}`);
    assert.ok(last < first - 0.8, `${first} -> ${last}`);
    opt.dispose();
    disposeModel(model);
  });
}

Deno.test("gptLM: generation crops a prompt longer than block_size", async () => {
  await startBackend("wasm");
  const model = seededTiny();
  const prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2, 3, 4];
  const last = tf.tidy(() => model.nextTokenLogits(prompt).dataSync());
  assert.equal(last.length, 11);
  const cropped = tf.tidy(() =>
    model.forward(tf.tensor2d([prompt.slice(-6)], undefined, "int32"), { training: false })
      .dataSync()
  );
  assert.ok(maxDiff(last, cropped.subarray(5 * 11)) < 1e-6);
  const short = tf.tidy(() => model.nextTokenLogits([4]).dataSync());
  assert.equal(short.length, 11);
  const before = tf.memory().numTensors;
  const ids = await generateTokens(model, prompt, 10, {}, new Rng(1));
  assert.equal(ids.length, 10);
  assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < 11));
  assert.equal(tf.memory().numTensors, before);
  disposeModel(model);
});
