import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { UsageError } from "../cli/errors.ts";
import { Rng } from "../lib/rng.ts";
import { routeToAllExperts } from "../fast/expert_groups.ts";
import { countParams, disposeModel, type LanguageModel, type Mode } from "../models/model.ts";
import { createModel } from "../models/registry.ts";
import { registerFastPaths } from "../nn/fast_paths.ts";
import { topkGates } from "../nn/layers.ts";
import { chosenGates, loadBalancingLoss } from "../models/moe.ts";
import { parseTrainConfig } from "../run/config.ts";
import { startBackend } from "../run/start.ts";
import { expertLoadReport, trainStep } from "../run/training.ts";
import { AdamW } from "../nn/adamw.ts";
import { getBatch } from "../run/training.ts";
import { decoderVsFullForward, modelConfig, shakespeareData, withFastPaths } from "./helpers.ts";

type MoEName = "moeLM" | "moa_moeLM";

const X = [[3, 6, 2, 7, 0, 3], [1, 10, 2, 6, 4, 6]];
const Y = [[7, 0, 3, 4, 4, 5], [2, 2, 6, 9, 8, 3]];

/** The reference models: V=11, T=6, C=8, L=2, 4 experts, top 2; 2 heads (moeLM) or 4 (moa_moeLM). */
function tinyConfig(name: MoEName, overrides: Record<string, unknown> = {}) {
  return modelConfig({
    vocab_size: 11,
    block_size: 6,
    dropout: 0,
    n_embd: 8,
    n_head: name === "moeLM" ? 2 : 4,
    n_layer: 2,
    num_experts: 4,
    top_k: 2,
    ...overrides,
  });
}

/**
 * The tiny model, every parameter overwritten with N(0, 0.5²) values drawn
 * in PyTorch's layout and `named_parameters()` order: the weights the
 * PyTorch references below were computed with.
 */
function seeded(name: MoEName, overrides: Record<string, unknown> = {}): LanguageModel {
  const model = createModel(name, tinyConfig(name, overrides), new Rng(3));
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

/** A stream whose normals are all 0: the references' "zero noise" (training mode, dropout 0). */
class ZeroNoise extends Rng {
  constructor() {
    super(0);
  }
  override normals(n: number): Float32Array {
    return new Float32Array(n);
  }
}

/**
 * References from the original classes (simpleLM/moeLM.py and moa_moeLM.py,
 * torch 1.13) with these weights: the loss (training: CE + 0.01 × aux), the
 * aux loss, and the logits of [batch 1, position 0] and [batch 0, position
 * 5]. Each bug is the original's code or a one-line fix of it. Router noise:
 * none (evaluation), zeros, or Rng(7).normals(numel, 1) per router call
 * (attention router first in moa_moeLM), in place of torch.randn_like.
 */
interface Reference {
  name: MoEName;
  variant: string;
  flags: Record<string, unknown>;
  mode: "eval" | "train";
  noise: "none" | "zero" | "rng7";
  loss: number;
  aux?: number;
  rows: [number[], number[]];
}

// deno-fmt-ignore
const REFERENCES: Reference[] = [
  { name: "moeLM", variant: "original (masked_scatter_ combine)", flags: { original_bugs: "combine" }, mode: "eval", noise: "none", loss: 2.76584,
    rows: [[-0.82557, 1.11034, -0.0643, 0.03987, 0.55759, 1.4831, 0.99215, 0.34712, -0.86924, 0.29866, 0.48293], [-0.85618, 1.17226, -0.17475, 0.1917, 0.7203, 1.57188, 0.96448, 0.35686, -0.86372, 0.24013, 0.68981]] },
  { name: "moeLM", variant: "original, noise in evaluation", flags: { original_bugs: "all" }, mode: "eval", noise: "rng7", loss: 2.760953,
    rows: [[-1.00797, 1.16265, 0.21117, -0.35006, 0.13386, 1.47487, 1.15039, 0.81411, -1.03837, 0.46735, -0.43058], [-0.76819, 0.95203, -0.51453, 0.16995, 0.7171, 1.56942, 0.94878, -0.09509, -0.49409, 0.07057, 1.54607]] },
  { name: "moeLM", variant: "fixed", flags: {}, mode: "eval", noise: "rng7", loss: 2.933475,
    rows: [[-1.02275, 0.46296, -0.58234, 0.54484, 0.766, 1.53095, 1.84214, 0.58602, -0.27824, -0.40241, 1.16754], [-0.94229, 0.43058, -0.65831, 0.54065, 0.77724, 1.5981, 1.76611, 0.37079, -0.1989, -0.39728, 1.50691]] },
  { name: "moeLM", variant: "gated sum, noise in evaluation", flags: { original_bugs: "eval_noise" }, mode: "eval", noise: "rng7", loss: 2.945964,
    rows: [[-0.79201, 0.44348, -0.8347, 0.6728, 0.87983, 1.86273, 1.67462, 0.20624, -0.06252, -0.48235, 2.07352], [-0.77821, 0.46482, -0.79199, 0.72633, 0.95586, 1.82252, 1.63511, 0.15141, -0.1186, -0.44898, 2.06592]] },
  { name: "moeLM", variant: "capacity_factor 1 (SparseMoEWithCapacity as meant)", flags: { capacity_factor: 1 }, mode: "eval", noise: "none", loss: 2.959896,
    rows: [[-0.65454, 0.98103, -0.49971, -0.01516, 0.55821, 1.51483, 0.79483, -0.2238, -0.45542, 0.13274, 1.55962], [-0.94229, 0.43058, -0.65831, 0.54065, 0.77724, 1.5981, 1.76611, 0.37079, -0.1989, -0.39728, 1.50691]] },
  { name: "moa_moeLM", variant: "original", flags: { original_bugs: "all" }, mode: "eval", noise: "zero", loss: 2.883526,
    rows: [[1.69531, -1.0989, 0.97539, -0.74899, 1.46487, 0.30463, -1.85092, 1.04127, 2.07211, -0.36632, 1.72924], [1.99714, -0.91998, 0.99543, -0.66909, 1.33544, 0.36532, -1.15188, 0.64951, 1.41574, -0.00547, 2.17994]] },
  { name: "moa_moeLM", variant: "original, noise in evaluation", flags: { original_bugs: "all" }, mode: "eval", noise: "rng7", loss: 2.997831,
    rows: [[1.79315, -1.16447, 1.01939, -0.83584, 1.25901, 0.33669, -1.99702, 1.12778, 2.24235, -0.50139, 1.55642], [1.90357, -0.98884, 0.9044, -0.48725, 1.64435, 0.32279, -0.88898, 0.4515, 1.13313, 0.19155, 2.40051]] },
  { name: "moa_moeLM", variant: "fixed", flags: {}, mode: "eval", noise: "rng7", loss: 2.876737,
    rows: [[1.77151, -1.13112, 0.99808, -0.75162, 1.41843, 0.2988, -1.67101, 0.98073, 1.84452, -0.34077, 1.79731], [1.05923, -0.75191, 0.75769, -0.04546, 1.78592, 0.00243, -0.86844, 0.79002, 0.93973, 0.23364, 1.99707]] },
  { name: "moa_moeLM", variant: "masked_scatter_ combine only", flags: { original_bugs: "combine" }, mode: "eval", noise: "none", loss: 2.870568,
    rows: [[1.60513, -0.99701, 0.92505, -0.69822, 1.60716, 0.29057, -1.72819, 0.97913, 1.95754, -0.25045, 1.87245], [1.96947, -0.99074, 0.9974, -0.62501, 1.36041, 0.33074, -1.10276, 0.64822, 1.31669, -0.01418, 2.15734]] },
  { name: "moa_moeLM", variant: "full router output as attention gates only", flags: { original_bugs: "moa_gates" }, mode: "eval", noise: "none", loss: 2.982567,
    rows: [[1.73618, -1.02214, 0.96541, -0.6503, 1.49482, 0.27263, -1.35868, 0.84397, 1.52365, -0.15315, 1.99647], [1.03175, -0.65569, 0.72933, -0.02908, 1.82751, 0.00968, -0.79038, 0.74699, 0.88565, 0.30971, 2.08662]] },
  { name: "moa_moeLM", variant: "original, training", flags: { original_bugs: "all" }, mode: "train", noise: "zero", loss: 3.054204, aux: 17.067806,
    rows: [[1.69531, -1.0989, 0.97539, -0.74899, 1.46487, 0.30463, -1.85092, 1.04127, 2.07211, -0.36632, 1.72924], [1.99714, -0.91998, 0.99543, -0.66909, 1.33544, 0.36532, -1.15188, 0.64951, 1.41574, -0.00547, 2.17994]] },
  { name: "moa_moeLM", variant: "fixed, training", flags: {}, mode: "train", noise: "zero", loss: 2.947628, aux: 7.089085,
    rows: [[1.77151, -1.13112, 0.99808, -0.75162, 1.41843, 0.2988, -1.67101, 0.98073, 1.84452, -0.34077, 1.79731], [1.05923, -0.75191, 0.75769, -0.04546, 1.78592, 0.00243, -0.86844, 0.79002, 0.93973, 0.23364, 1.99707]] },
  { name: "moa_moeLM", variant: "the original's aux loss only, training", flags: { original_bugs: "moa_aux" }, mode: "train", noise: "zero", loss: 3.03802, aux: 16.128361,
    rows: [[1.77151, -1.13112, 0.99808, -0.75162, 1.41843, 0.2988, -1.67101, 0.98073, 1.84452, -0.34077, 1.79731], [1.05923, -0.75191, 0.75769, -0.04546, 1.78592, 0.00243, -0.86844, 0.79002, 0.93973, 0.23364, 1.99707]] },
  { name: "moa_moeLM", variant: "fixed, training with noise", flags: {}, mode: "train", noise: "rng7", loss: 2.867653, aux: 6.924304,
    rows: [[0.72657, -0.98495, 0.58599, 0.17722, 2.09323, -0.05206, -1.22236, 0.85171, 1.41465, 0.2028, 1.7338], [0.94315, -0.70993, 0.62837, 0.19728, 1.88993, -0.04559, -0.44679, 0.58553, 0.53177, 0.47391, 2.1418]] },
  { name: "moa_moeLM", variant: "capacity_factor 1, training", flags: { capacity_factor: 1 }, mode: "train", noise: "zero", loss: 2.778739, aux: 7.399312,
    rows: [[1.38768, -0.82252, 0.83905, -0.57264, 1.83688, 0.23518, -1.57264, 0.92992, 1.774, -0.08991, 2.03016], [1.05923, -0.75191, 0.75769, -0.04546, 1.78592, 0.00243, -0.86844, 0.79002, 0.93973, 0.23364, 1.99707]] },
];

function modeOf(ref: Reference): Mode {
  const noise = ref.noise === "zero"
    ? new ZeroNoise()
    : ref.noise === "rng7"
    ? new Rng(7)
    : undefined;
  return ref.mode === "train" ? { training: true, rng: noise! } : { training: false, rng: noise };
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

/** Logits, loss and (training) cross-entropy of a reference case on the current backend. */
async function runReference(ref: Reference) {
  const x = tf.tensor2d(X, undefined, "int32");
  const y = tf.tensor2d(Y, undefined, "int32");
  // With aux_loss_coef 1 and 0, the aux loss is the difference of the training losses.
  const losses: number[] = [];
  let rows: Float32Array[] = [];
  for (const coef of [1, 0]) {
    const model = seeded(ref.name, { ...ref.flags, aux_loss_coef: coef });
    const logits = tf.tidy(() => model.forward(x, modeOf(ref)));
    const values = await logits.data() as Float32Array;
    rows = [values.slice(66, 77), values.slice(55, 66)]; // [1, 0] and [0, 5] of (2, 6, 11)
    const loss = tf.tidy(() => model.loss(x, y, modeOf(ref)));
    losses.push((await loss.data())[0]);
    tf.dispose([logits, loss]);
    disposeModel(model);
  }
  tf.dispose([x, y]);
  return { rows, loss: losses[0], ce: losses[1] };
}

for (const backend of ["cpu", "wasm", "webgpu"]) {
  Deno.test(`${backend}: moeLM and moa_moeLM match the original classes, each bug on and off`, async () => {
    await startBackend(backend);
    // WebGPU runs its own expert groups (no host read): two cases each show it.
    const cases = backend === "webgpu"
      ? REFERENCES.filter((r) => r.variant === "fixed" || r.variant === "original, training")
      : REFERENCES;
    for (const ref of cases) {
      const what = `${ref.name}, ${ref.variant}`;
      const got = await runReference(ref);
      assert.ok(maxDiff(got.rows[0], ref.rows[0]) < 1e-4, `${what}: logits[1, 0]`);
      assert.ok(maxDiff(got.rows[1], ref.rows[1]) < 1e-4, `${what}: logits[0, 5]`);
      if (ref.aux === undefined) {
        assert.ok(Math.abs(got.loss - ref.loss) < 1e-4, `${what}: loss ${got.loss}`);
      } else {
        // Training: CE + 0.01 × aux in the original.
        const aux = got.loss - got.ce;
        assert.ok(Math.abs(aux - ref.aux) < 1e-3, `${what}: aux ${aux} vs ${ref.aux}`);
        assert.ok(Math.abs(got.ce + 0.01 * aux - ref.loss) < 1e-4, `${what}: loss`);
      }
    }
    // Four blocks: eight routers' losses to sum (once one AddN of 8 inputs, more than a WebGPU
    // shader may bind), and eight experts' outputs to join.
    const deep = createModel(
      "moa_moeLM",
      tinyConfig("moa_moeLM", { n_layer: 4, num_experts: 8 }),
      new Rng(1),
    );
    const x = tf.tensor2d(X, undefined, "int32");
    const y = tf.tensor2d(Y, undefined, "int32");
    const loss = tf.tidy(() => deep.loss(x, y, { training: true, rng: new Rng(2) }));
    assert.ok(Number.isFinite((await loss.data())[0]));
    tf.dispose([x, y, loss]);
    disposeModel(deep);
  });
}

Deno.test("eval_noise: evaluation is deterministic unless the original's router noise is asked for", async () => {
  await startBackend("cpu");
  for (const name of ["moeLM", "moa_moeLM"] as const) {
    for (const bugs of ["", "eval_noise"]) {
      const model = seeded(name, { original_bugs: bugs });
      const first = tf.tidy(() => model.nextTokenLogits([3, 6, 2]).dataSync());
      const second = tf.tidy(() => model.nextTokenLogits([3, 6, 2]).dataSync());
      const diff = maxDiff(first, second);
      if (bugs) assert.ok(diff > 1e-3, `${name} with eval_noise: ${diff}`);
      else assert.equal(diff, 0, `${name}: two evaluations differ by ${diff}`);
      disposeModel(model);
    }
  }
});

Deno.test("moeLM and moa_moeLM: PyTorch names, shapes and order", async () => {
  await startBackend("cpu");
  const torchShape = (p: LanguageModel["params"][number]) =>
    p.transposed ? [...p.variable.shape].reverse() : p.variable.shape;
  const router = (p: string): [string, number[]][] => [
    [`${p}.router.topkroute_linear.weight`, [4, 8]],
    [`${p}.router.topkroute_linear.bias`, [4]],
    [`${p}.router.noise_linear.weight`, [4, 8]],
    [`${p}.router.noise_linear.bias`, [4]],
  ];
  const smoe = (p: string): [string, number[]][] => [
    ...router(`${p}.smoe`),
    ...[0, 1, 2, 3].flatMap((e): [string, number[]][] => [
      [`${p}.smoe.experts.${e}.net.0.weight`, [32, 8]],
      [`${p}.smoe.experts.${e}.net.0.bias`, [32]],
      [`${p}.smoe.experts.${e}.net.2.weight`, [8, 32]],
      [`${p}.smoe.experts.${e}.net.2.bias`, [8]],
    ]),
    [`${p}.ln1.weight`, [8]],
    [`${p}.ln1.bias`, [8]],
    [`${p}.ln2.weight`, [8]],
    [`${p}.ln2.bias`, [8]],
  ];
  const ends = (blocks: [string, number[]][]): [string, number[]][] => [
    ["token_embedding_table.weight", [11, 8]],
    ["position_embedding_table.weight", [6, 8]],
    ...blocks,
    ["ln_f.weight", [8]],
    ["ln_f.bias", [8]],
    ["lm_head.weight", [11, 8]],
    ["lm_head.bias", [11]],
  ];
  const moe = seeded("moeLM");
  assert.deepEqual(
    moe.params.map((p) => [p.name, torchShape(p)]),
    ends([0, 1].flatMap((i) => [
      ...[0, 1].flatMap((h): [string, number[]][] =>
        ["query", "key", "value"].map((w) => [`blocks.${i}.sa.heads.${h}.${w}.weight`, [4, 8]])
      ),
      [`blocks.${i}.sa.proj.weight`, [8, 8]],
      [`blocks.${i}.sa.proj.bias`, [8]],
      ...smoe(`blocks.${i}`),
    ])),
  );
  assert.deepEqual(
    moe.buffers.map((b) => [b.name, b.tensor.shape]),
    [0, 1].flatMap((i) => [0, 1].map((h) => [`blocks.${i}.sa.heads.${h}.tril`, [6, 6]])),
  );
  const moa = seeded("moa_moeLM");
  // kv_proj_size = (n_head / top_k) · head_size = 2 · 2 = 4
  assert.deepEqual(
    moa.params.map((p) => [p.name, torchShape(p)]),
    ends([0, 1].flatMap((i) => [
      [`blocks.${i}.sa.p_reduce_bias`, [8]],
      [`blocks.${i}.sa.input_linear.weight`, [4, 4, 8]],
      [`blocks.${i}.sa.output_linear.weight`, [4, 8, 4]],
      ...router(`blocks.${i}.sa`),
      [`blocks.${i}.sa.k_proj.weight`, [4, 8]],
      [`blocks.${i}.sa.v_proj.weight`, [4, 8]],
      ...smoe(`blocks.${i}`),
    ])),
  );
  assert.deepEqual(moa.buffers.map((b) => [b.name, b.tensor.shape]), [
    ["blocks.0.sa.tril", [6, 6]],
    ["blocks.1.sa.tril", [6, 6]],
  ]);
  disposeModel(moe);
  disposeModel(moa);
});

Deno.test("moeLM and moa_moeLM: PyTorch's parameter counts and the original's inits", async () => {
  await startBackend("cpu");
  // n_embd 64, n_head 4, n_layer 2, 4 experts, block_size 16, V 65: the original classes
  // count 308,689 and 317,921 parameters.
  const cases = [["moeLM", "kaiming_normal", 308_689], [
    "moa_moeLM",
    "xavier_normal",
    317_921,
  ]] as const;
  for (const [name, nnInit, count] of cases) {
    const config = modelConfig({
      n_embd: 64,
      n_head: 4,
      n_layer: 2,
      num_experts: 4,
      block_size: 16,
      nn_init: nnInit,
    });
    const model = createModel(name, config, new Rng(1337));
    assert.equal(countParams(model), count);
    const stats = (paramName: string) =>
      tf.tidy(() => {
        const v = model.params.find((p) => p.name === paramName)!.variable;
        const { mean, variance } = tf.moments(v);
        const max = v.abs().max().dataSync()[0];
        return { mean: mean.dataSync()[0], std: Math.sqrt(variance.dataSync()[0]), max };
      });
    const near = (paramName: string, std: number) => {
      const s = stats(paramName);
      assert.ok(
        Math.abs(s.mean) < 0.05 * std && Math.abs(s.std / std - 1) < 0.05,
        `${name} ${paramName}: N(${s.mean}, ${s.std}²), want std ${std}`,
      );
    };
    const fanStd = (fanIn: number, fanOut: number) =>
      nnInit === "kaiming_normal" ? Math.sqrt(2 / fanIn) : Math.sqrt(2 / (fanIn + fanOut));
    near("blocks.0.smoe.experts.3.net.0.weight", fanStd(64, 256));
    near("blocks.1.smoe.experts.0.net.2.weight", fanStd(256, 64));
    near("token_embedding_table.weight", 1);
    // Linear biases keep PyTorch's default U(±1/√fan_in).
    const bias = stats("blocks.1.smoe.experts.2.net.0.bias");
    assert.ok(bias.max <= 1 / 8 && bias.max > 0.9 / 8, `bias bound ${bias.max}`);
    if (name === "moa_moeLM") {
      // ParallelExperts: U(±1/output size); kv_proj_size = 32 in, 64 out.
      const input = stats("blocks.0.sa.input_linear.weight");
      assert.ok(input.max <= 1 / 32 && input.max > 0.95 / 32, `input_linear bound ${input.max}`);
      const output = stats("blocks.0.sa.output_linear.weight");
      assert.ok(
        output.max <= 1 / 64 && output.max > 0.95 / 64,
        `output_linear bound ${output.max}`,
      );
      assert.equal(stats("blocks.1.sa.p_reduce_bias").max, 0);
      near("blocks.1.sa.k_proj.weight", fanStd(64, 32));
    }
    disposeModel(model);
  }
});

Deno.test("MoE settings that cannot work are UsageErrors naming the fix", () => {
  const fails = (args: string[], message: RegExp) =>
    assert.throws(
      () => parseTrainConfig(args),
      (e) => e instanceof UsageError && message.test(e.message),
    );
  fails(["--model_name=moeLM", "--top_k=9"], /^top_k \(9\) must not exceed num_experts \(8\)/);
  fails(
    ["--model_name=moa_moeLM", "--n_head=6", "--top_k=4"],
    /^moa_moeLM needs n_head \(6\) divisible by top_k \(4\)/,
  );
  fails(
    ["--model_name=moeLM", "--nn_init=uniform"],
    /^--nn_init=uniform: expected one of kaiming_normal, xavier_normal$/,
  );
  fails(
    ["--model_name=moa_moeLM", "--original_bugs=combine,noise"],
    /^--original_bugs: unknown bug 'noise'; name some of combine, eval_noise, moa_gates, moa_aux, or all$/,
  );
  fails(
    ["--model_name=moeLM", "--n_embd=30", "--n_head=4"],
    /^n_embd \(30\) must be divisible by n_head \(4\)$/,
  );
  // moa_moeLM's heads split over top_k slots; moeLM does not need it.
  assert.doesNotThrow(() => parseTrainConfig(["--model_name=moeLM", "--n_head=6", "--top_k=4"]));
});

Deno.test("WebGPU's expert groups (every expert on every token) give the grouped mixture's values and gradients", async () => {
  await startBackend("cpu");
  const run = async (name: MoEName, capacity: number) => {
    const model = seeded(name, { capacity_factor: capacity, dropout: 0 });
    const x = tf.tensor2d(X, undefined, "int32");
    const y = tf.tensor2d(Y, undefined, "int32");
    const { value, grads } = tf.variableGrads(
      () => model.loss(x, y, { training: true, rng: new Rng(7) }),
      model.params.map((p) => p.variable),
    );
    const out = {
      loss: (await value.data())[0],
      // An expert that got no token has no gradient in the grouped mixture (PyTorch's: None).
      grads: await Promise.all(model.params.map((p) => grads[p.variable.name]?.data() ?? null)),
    };
    tf.dispose([x, y, value, grads]);
    disposeModel(model);
    return out;
  };
  for (const name of ["moeLM", "moa_moeLM"] as const) {
    for (const capacity of [0, 1]) {
      const grouped = await run(name, capacity);
      registerFastPaths("cpu", { routeToExperts: routeToAllExperts });
      const dense = await run(name, capacity);
      registerFastPaths("cpu", { routeToExperts: undefined });
      const what = `${name}, capacity_factor ${capacity}`;
      assert.ok(Math.abs(grouped.loss - dense.loss) < 1e-5, `${what}: loss`);
      grouped.grads.forEach((g, i) => {
        const d = dense.grads[i]!;
        assert.ok(maxDiff(g ?? new Float32Array(d.length), d) < 1e-4, `${what}: gradient ${i}`);
      });
      assert.ok(grouped.grads.some((g) => g && maxDiff(g, new Float32Array(g.length)) > 1e-3));
    }
  }
  // 10 seeded training steps (every expert gets tokens: 64 a batch) end at the same losses.
  const data = await shakespeareData();
  const losses = async () => {
    const rng = new Rng(1);
    const config = modelConfig({
      block_size: 8,
      n_embd: 16,
      n_head: 2,
      n_layer: 1,
      num_experts: 4,
    });
    const model = createModel("moa_moeLM", config, rng);
    const opt = new AdamW(model.params.map((p) => p.variable), { lr: 3e-3, weightDecay: 0.01 });
    const out: number[] = [];
    for (let i = 0; i < 10; i++) {
      const batch = getBatch(model, data.train, 8, rng);
      const loss = trainStep(model, opt, batch, rng);
      out.push((await loss.data())[0]);
      tf.dispose([batch.x, batch.y, loss]);
    }
    opt.dispose();
    disposeModel(model);
    return out;
  };
  const grouped = await losses();
  registerFastPaths("cpu", { routeToExperts: routeToAllExperts });
  const dense = await losses();
  registerFastPaths("cpu", { routeToExperts: undefined });
  grouped.forEach((l, i) =>
    assert.ok(Math.abs(l - dense[i]) < 1e-4 * l, `step ${i}: ${l} vs ${dense[i]}`)
  );
});

for (const backend of ["cpu", "wasm"]) {
  Deno.test(`${backend}: a router's top-k gates, chosen gates and load-balancing loss in one pass equal the plain composition, values and gradients`, async () => {
    await startBackend(backend);
    const rng = new Rng(3);
    // 8 experts top 2, 4 experts top 3; a row with a tie (the lower column first) and one that is all equal.
    for (const [N, E, k] of [[13, 8, 2], [6, 4, 3]]) {
      const values = rng.normals(N * E, 2);
      values.set([1, 3, 3, 0].slice(0, E), 0);
      values.fill(0.5, E, 2 * E);
      const noisy = tf.tensor2d(values, [N, E]);
      const dGates = tf.tensor2d(rng.normals(N * E, 1), [N, E]);
      const run = async () => {
        const { gates, indices } = topkGates(noisy, k);
        const gatesGrad = tf.grad((x: tf.Tensor) =>
          topkGates(x as tf.Tensor2D, k).gates.mul(dGates).sum()
        )(noisy);
        const loss = loadBalancingLoss(noisy, indices);
        const lossGrad = tf.grad((x: tf.Tensor) => loadBalancingLoss(x as tf.Tensor2D, indices))(
          noisy,
        );
        const dChosen = dGates.slice([0, 0], [N, k]);
        const chosen = chosenGates(gates, indices);
        const chosenGrad = tf.grad((x: tf.Tensor) =>
          chosenGates(x as tf.Tensor2D, indices).mul(dChosen).sum()
        )(noisy);
        const read = async (t: tf.Tensor) => Array.from(await t.data());
        const out = {
          gates: await read(gates),
          indices: await read(indices),
          gatesGrad: await read(gatesGrad),
          loss: await read(loss),
          lossGrad: await read(lossGrad),
          chosen: await read(chosen),
          chosenGrad: await read(chosenGrad),
        };
        tf.dispose([gates, indices, gatesGrad, loss, lossGrad, dChosen, chosen, chosenGrad]);
        return out;
      };
      const fast = await withFastPaths(true, run);
      const plain = await withFastPaths(false, run);
      assert.deepEqual(fast.indices, plain.indices, `${[N, E, k]}: indices`);
      for (
        const key of ["gates", "gatesGrad", "loss", "lossGrad", "chosen", "chosenGrad"] as const
      ) {
        const worst = Math.max(...fast[key].map((v, i) => Math.abs(v - plain[key][i])));
        assert.ok(worst < 1e-5, `${[N, E, k]} ${key}: off by ${worst}`);
      }
      assert.ok(
        fast.lossGrad.some((v) => Math.abs(v) > 1e-4),
        "the loss's gradient is not all zero",
      );
      tf.dispose([noisy, dGates]);
    }
  });
}

Deno.test("moa_moeLM: gradients (aux loss included) match finite differences", async () => {
  await startBackend("cpu");
  const model = seeded("moa_moeLM", { aux_loss_coef: 0.5 });
  const x = tf.tensor2d(X, undefined, "int32");
  const y = tf.tensor2d(Y, undefined, "int32");
  // The same noise in every evaluation: routing stays put under small steps.
  const lossValue = () =>
    tf.tidy(() => model.loss(x, y, { training: true, rng: new Rng(7) }).dataSync()[0]);
  const { grads } = tf.variableGrads(
    () => model.loss(x, y, { training: true, rng: new Rng(7) }),
    model.params.map((p) => p.variable),
  );
  const checked = [
    "token_embedding_table.weight",
    "blocks.0.sa.input_linear.weight",
    "blocks.0.sa.output_linear.weight",
    "blocks.1.sa.router.topkroute_linear.weight",
    "blocks.0.sa.router.noise_linear.bias",
    "blocks.0.sa.k_proj.weight",
    "blocks.1.smoe.router.topkroute_linear.bias",
    "blocks.0.smoe.experts.2.net.0.weight",
    "blocks.1.sa.p_reduce_bias",
  ];
  const eps = 1e-3;
  for (const name of checked) {
    const variable = model.params.find((p) => p.name === name)!.variable;
    const analytic = grads[variable.name].dataSync();
    const values = variable.dataSync().slice() as Float32Array;
    for (const i of [0, Math.floor(values.length / 2) + 1, values.length - 1]) {
      const at = (delta: number) => {
        const v = values.slice();
        v[i] += delta;
        variable.assign(tf.tensor(v, variable.shape));
        return lossValue();
      };
      const numeric = (at(eps) - at(-eps)) / (2 * eps);
      variable.assign(tf.tensor(values, variable.shape));
      assert.ok(
        Math.abs(numeric - analytic[i]) < 3e-4 + 3e-2 * Math.abs(analytic[i]),
        `${name}[${i}]: numeric ${numeric} vs analytic ${analytic[i]}`,
      );
    }
  }
  tf.dispose([x, y, grads]);
  disposeModel(model);
});

for (const backend of ["cpu", "wasm", "webgpu"]) {
  Deno.test(`${backend}: moeLM and moa_moeLM train (tensor count flat; on wasm the loss falls), report their expert load`, async () => {
    await startBackend(backend);
    const data = await shakespeareData();
    // cpu and llvmpipe are slow: a few steps there, the loss falling on wasm.
    const steps = { cpu: 6, webgpu: 3, wasm: 25 }[backend]!;
    for (const name of ["moeLM", "moa_moeLM"] as const) {
      const rng = new Rng(1337);
      const config = modelConfig({
        block_size: 8,
        dropout: 0.1,
        n_embd: 16,
        n_head: 2,
        n_layer: 1,
        num_experts: 4,
      });
      const model = createModel(name, config, rng);
      const opt = new AdamW(model.params.map((p) => p.variable), { lr: 1e-2, weightDecay: 0.01 });
      const losses: number[] = [];
      let tensors = 0;
      for (let i = 0; i < steps; i++) {
        const batch = getBatch(model, data.train, 8, rng);
        const loss = trainStep(model, opt, batch, rng);
        losses.push((await loss.data())[0]);
        tf.dispose([batch.x, batch.y, loss]);
        if (i === 1) tensors = tf.memory().numTensors;
        if (i > 1) assert.equal(tf.memory().numTensors, tensors, `${name}: step ${i} leaks`);
      }
      assert.ok(losses.every(Number.isFinite), `${name}: ${losses}`);
      if (backend === "wasm") {
        const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
        const [first, last] = [mean(losses.slice(0, 5)), mean(losses.slice(-5))];
        assert.ok(last < first - 0.5, `${name}: ${first} -> ${last}`);
      }
      const lines = await expertLoadReport(model, data.val, 8);
      const routers = name === "moeLM" ? ["blocks.0.smoe"] : ["blocks.0.sa", "blocks.0.smoe"];
      assert.equal(lines.length, routers.length + 2, lines.join("\n"));
      assert.match(
        lines[0],
        /^expert load on 8 val windows \(share of tokens per expert; 2 of 4 each, 0\.50 when even\):$/,
      );
      routers.forEach((router, r) => {
        const shares = lines[r + 1].trim().split(/\s+/);
        assert.equal(shares[0], router);
        const sum = shares.slice(1).reduce((a, s) => a + Number(s), 0);
        assert.ok(Math.abs(sum - 2) < 0.03, `${router}: shares sum to ${sum}`);
      });
      assert.match(lines.at(-1)!, name === "moeLM" ? /shown only/ : /training adds aux_loss_coef/);
      opt.dispose();
      disposeModel(model);
    }
  });
}

Deno.test("wasm: the MoE models' fast paths give the plain composition's losses over 20 seeded steps", async () => {
  await startBackend("wasm");
  const data = await shakespeareData();
  for (const name of ["moeLM", "moa_moeLM"] as const) {
    const losses = async () => {
      const rng = new Rng(1);
      const model = createModel(
        name,
        modelConfig({
          block_size: 8,
          n_embd: 16,
          n_head: 2,
          n_layer: 1,
          num_experts: 4,
          dropout: 0.1,
        }),
        rng,
      );
      const opt = new AdamW(model.params.map((p) => p.variable), { lr: 3e-3, weightDecay: 0.01 });
      const out: number[] = [];
      for (let i = 0; i < 20; i++) {
        const batch = getBatch(model, data.train, 8, rng);
        const loss = trainStep(model, opt, batch, rng);
        out.push((await loss.data())[0]);
        tf.dispose([batch.x, batch.y, loss]);
      }
      opt.dispose();
      disposeModel(model);
      return out;
    };
    const fast = await withFastPaths(true, losses);
    const plain = await withFastPaths(false, losses);
    fast.forEach((l, i) =>
      assert.ok(
        Math.abs(l - plain[i]) < 1e-3 * Math.max(1, l),
        `${name} step ${i}: ${l} vs ${plain[i]}`,
      )
    );
  }
});

for (const backend of ["cpu", "wasm", "webgpu"]) {
  Deno.test(`${backend}: the MoE models' cached sampling steps give the full forward's logits, past block_size too`, async () => {
    await startBackend(backend);
    for (const name of ["moeLM", "moa_moeLM"] as const) {
      const model = seeded(name);
      assert.ok(model.decoder, `${name} has a decoder`);
      const before = tf.memory().numTensors;
      assert.ok((await decoderVsFullForward(model, [4, 7], 6)) <= 1e-5); // 2 + 6 > block_size 6
      assert.equal(tf.memory().numTensors, before, `${name}: the decoder leaves no tensor behind`);
      disposeModel(model);
      // Capacity and the original's noise in evaluation depend on the whole window: full forwards.
      for (const flags of [{ capacity_factor: 1 }, { original_bugs: "eval_noise" }]) {
        const windowed = seeded(name, flags);
        assert.equal(windowed.decoder, undefined, `${name} ${JSON.stringify(flags)}`);
        disposeModel(windowed);
      }
    }
  });
}
