import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { UsageError } from "../cli/errors.ts";
import { Rng } from "../lib/rng.ts";
import {
  blockWiseLayout,
  linspace,
  makeDivisible,
  roundNumpy2,
} from "../models/block_wise_scaling_gptLM.ts";
import { countParams, disposeModel, type LanguageModel } from "../models/model.ts";
import { createModel } from "../models/registry.ts";
import { parseTrainConfig } from "../run/config.ts";
import { startBackend } from "../run/start.ts";
import { decoderVsFullForward, modelConfig } from "./helpers.ts";

Deno.test("block_wise_scaling_gptLM: per-block heads and FFN widths as the original computes them", () => {
  // numpy rounds v·100 half to even: 0.625 -> 0.62 and 3.125 -> 3.12 (JavaScript's toFixed: 0.63, 3.13).
  assert.deepEqual([0.625, 3.125, 0.475, 0.325, 0.9249999999999999].map(roundNumpy2), [
    0.62,
    3.12,
    0.48,
    0.32,
    0.92,
  ]);
  assert.deepEqual(linspace(0.5, 4, 6), [0.5, 1.2, 1.9, 2.5999999999999996, 3.3, 4]);
  assert.deepEqual(linspace(0.5, 1, 1), [0.5]);
  assert.equal(makeDivisible(64 * 0.62, 16), 48);
  assert.equal(makeDivisible(8 * 0.5, 256), 256); // never below the divisor
  // (n_embd, n_head, n_layer, divisor) -> heads, widths: the original's numbers (utils.py, numpy 1.24).
  const cases: [number, number, number, number, number[], number[]][] = [
    [384, 6, 6, 256, [3, 4, 4, 5, 5, 6], [256, 512, 768, 1024, 1280, 1536]],
    [
      1280,
      20,
      16,
      256,
      [10, 11, 11, 12, 13, 13, 14, 15, 15, 16, 17, 17, 18, 19, 19, 20],
      [
        768,
        1024,
        1280,
        1536,
        1792,
        2048,
        2560,
        2816,
        3072,
        3328,
        3584,
        3840,
        4352,
        4608,
        4864,
        5120,
      ],
    ],
    [128, 4, 4, 256, [2, 3, 3, 4], [256, 256, 512, 512]],
    [16, 4, 3, 8, [2, 3, 4], [8, 40, 64]],
    [64, 4, 5, 32, [2, 3, 3, 4, 4], [32, 96, 160, 192, 256]],
  ];
  for (const [C, H, L, divisor, heads, widths] of cases) {
    const layout = blockWiseLayout(
      modelConfig({ n_embd: C, n_head: H, n_layer: L, ffn_intermediate_divisor: divisor }),
    );
    assert.deepEqual(layout.heads, heads, `C${C} H${H} L${L}`);
    assert.deepEqual(layout.ffnWidths, widths, `C${C} H${H} L${L}`);
  }
  assert.deepEqual(
    blockWiseLayout(
      modelConfig({ n_embd: 64, n_head: 4, n_layer: 5, ffn_intermediate_divisor: 32 }),
    )
      .ffnMultipliers,
    [0.5, 1.38, 2.25, 3.12, 4],
  );
});

const X = [[3, 6, 2, 7, 0, 3], [1, 10, 2, 6, 4, 6]];
const Y = [[7, 0, 3, 4, 4, 5], [2, 2, 6, 9, 8, 3]];

/** V=11, T=6: the model with every parameter N(0, 0.5²), drawn in PyTorch's layout and order. */
function seeded(C: number, H: number, L: number, divisor: number): LanguageModel {
  const config = modelConfig({
    vocab_size: 11,
    block_size: 6,
    dropout: 0,
    n_embd: C,
    n_head: H,
    n_layer: L,
    ffn_intermediate_divisor: divisor,
  });
  const model = createModel("block_wise_scaling_gptLM", config, new Rng(3));
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

for (const backend of ["cpu", "wasm", "webgpu"]) {
  Deno.test(`${backend}: block_wise_scaling_gptLM matches the original's DelightGPTLanguageModel`, async () => {
    await startBackend(backend);
    // simpleLM/block_wise_scaling_gptLM.py (torch 1.13) with these weights, eval():
    // the loss and the logits of [batch 1, position 0] and [batch 0, position 5].
    // deno-fmt-ignore
    const references: [number, number, number, number, number, number[], number[]][] = [
      [8, 2, 2, 256, 2.646797, [0.60023, 2.29643, 1.5385, 0.78303, 0.13669, 0.18818, 0.32988, 0.92937, 1.25556, 0.35418, -0.24157], [0.66207, 2.56579, 1.46995, 0.72439, 0.38378, 0.08876, 0.34437, 0.87268, 1.49867, 0.62798, -0.35389]],
      [8, 2, 2, 8, 2.459055, [0.18024, 1.10207, 0.04206, 0.66664, -0.06166, -0.60588, -0.15493, -0.51557, 0.53561, -0.39584, -1.71596], [0.32744, 1.10744, 0.07693, 0.71159, -0.03493, -0.58096, -0.0285, -0.51078, 0.49033, -0.25612, -1.92997]],
      [16, 4, 3, 8, 3.372024, [0.40472, 0.58057, 0.25202, -0.39208, 1.90769, 3.34635, -0.41654, 0.00505, -2.36142, -1.7158, -2.00841], [0.13269, 0.28662, 0.08294, -0.1678, 1.84251, 3.4215, -0.3686, -0.39273, -2.16762, -1.2734, -2.05714]],
    ];
    for (const [C, H, L, divisor, loss, row10, row05] of references) {
      const model = seeded(C, H, L, divisor);
      const x = tf.tensor2d(X, undefined, "int32");
      const y = tf.tensor2d(Y, undefined, "int32");
      const logits = tf.tidy(() => model.forward(x, { training: false }));
      const lossValue = tf.tidy(() => model.loss(x, y, { training: false }));
      const values = await logits.data();
      const what = `C${C} H${H} L${L} divisor ${divisor}`;
      const near = (a: ArrayLike<number>, b: number[]) =>
        b.every((v, i) => Math.abs(v - a[i]) < 1e-4);
      assert.ok(near(values.slice(66, 77), row10), `${what}: logits[1, 0]`);
      assert.ok(near(values.slice(55, 66), row05), `${what}: logits[0, 5]`);
      assert.ok(Math.abs((await lossValue.data())[0] - loss) < 1e-4, `${what}: loss`);
      tf.dispose([x, y, logits, lossValue]);
      disposeModel(model);
    }
  });
}

Deno.test("block_wise_scaling_gptLM: PyTorch names and shapes, parameter count, init, summary", async () => {
  await startBackend("cpu");
  const model = seeded(16, 4, 3, 8); // heads [2, 3, 4] of size 4, FFN widths [8, 40, 64]
  const torchShape = (p: LanguageModel["params"][number]) =>
    p.transposed ? [...p.variable.shape].reverse() : p.variable.shape;
  const shapes = new Map(model.params.map((p) => [p.name, torchShape(p)]));
  assert.deepEqual(shapes.get("blocks.0.sa.heads.1.key.weight"), [4, 16]);
  assert.equal(shapes.has("blocks.0.sa.heads.2.key.weight"), false);
  assert.deepEqual(shapes.get("blocks.1.sa.proj.weight"), [16, 12]);
  assert.deepEqual(shapes.get("blocks.2.sa.heads.3.value.weight"), [4, 16]);
  assert.deepEqual(shapes.get("blocks.0.ffwd.net.0.weight"), [8, 16]);
  assert.deepEqual(shapes.get("blocks.1.ffwd.net.2.weight"), [16, 40]);
  assert.deepEqual(shapes.get("blocks.2.ffwd.net.0.bias"), [64]);
  // gptLM's order: per head key, query, value; then proj, ffwd, ln1, ln2.
  assert.deepEqual(model.params.slice(2, 9).map((p) => p.name), [
    "blocks.0.sa.heads.0.key.weight",
    "blocks.0.sa.heads.0.query.weight",
    "blocks.0.sa.heads.0.value.weight",
    "blocks.0.sa.heads.1.key.weight",
    "blocks.0.sa.heads.1.query.weight",
    "blocks.0.sa.heads.1.value.weight",
    "blocks.0.sa.proj.weight",
  ]);
  assert.deepEqual(model.buffers.map((b) => b.name), [
    ...[0, 1].map((h) => `blocks.0.sa.heads.${h}.tril`),
    ...[0, 1, 2].map((h) => `blocks.1.sa.heads.${h}.tril`),
    ...[0, 1, 2, 3].map((h) => `blocks.2.sa.heads.${h}.tril`),
  ]);
  assert.deepEqual(model.summary, [
    "qkv multipliers [0.5, 0.75, 1.0] -> heads per block [2, 3, 4]",
    "ffn multipliers [0.5, 2.25, 4.0] -> FFN widths [8, 40, 64]",
  ]);
  disposeModel(model);
  // --config=cpu: the original class counts 619,585 parameters; gptLM's init N(0, 0.02).
  const { config } = parseTrainConfig(["--model_name=block_wise_scaling_gptLM", "--config=cpu"]);
  const cpu = createModel("block_wise_scaling_gptLM", { ...config, vocab_size: 65 }, new Rng(1));
  assert.equal(countParams(cpu), 619_585);
  const fc = cpu.params.find((p) => p.name === "blocks.3.ffwd.net.0.weight")!.variable;
  const std = tf.tidy(() => Math.sqrt(tf.moments(fc).variance.dataSync()[0]));
  assert.ok(Math.abs(std - 0.02) < 0.001, `std ${std}`);
  disposeModel(cpu);
});

Deno.test("block_wise_scaling_gptLM: multipliers out of order are a UsageError", () => {
  const fails = (args: string[], message: RegExp) =>
    assert.throws(
      () => parseTrainConfig(["--model_name=block_wise_scaling_gptLM", ...args]),
      (e) => e instanceof UsageError && message.test(e.message),
    );
  fails(
    ["--qkv_multiplier_min=1.5"],
    /^qkv_multiplier_min \(1\.5\) must not exceed qkv_multiplier_max \(1\): sizes grow/,
  );
  fails(["--ffn_multiplier_max=0.25"], /^ffn_multiplier_min \(0\.5\) must not exceed/);
  fails(["--ffn_multiplier_min=-1"], /^--ffn_multiplier_min=-1: must be > 0$/);
  fails(["--n_embd=30", "--n_head=4"], /^n_embd \(30\) must be divisible by n_head \(4\)/);
});

Deno.test("block_wise_scaling_gptLM: cached sampling steps give the full forward's logits (blocks of 2, 3 and 4 heads)", async () => {
  for (const backend of ["cpu", "wasm"]) {
    await startBackend(backend);
    const model = seeded(16, 4, 3, 8);
    assert.ok((await decoderVsFullForward(model, [4, 7], 6)) <= 1e-5, backend);
    disposeModel(model);
  }
});
