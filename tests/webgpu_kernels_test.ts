/**
 * The WGSL fast paths (`fast/webgpu/`) against the plain tfjs compositions
 * they replace (`nn/layers.ts`, `nn/adamw.ts`: no fast path is registered
 * in this file), on the webgpu backend: values and gradients to 1e-4
 * (relative to the largest reference value), at awkward sizes; the tfjs
 * kernels (tf.profile) and GPU dispatches each uses; tensors not leaked.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-webgpu";
import { watchWebGpu } from "../bench.ts";
import { Rng } from "../lib/rng.ts";
import { AdamW } from "../nn/adamw.ts";
import {
  type AdamWStep,
  type AdamWTensors,
  type BatchNormState,
  type DropoutSpec,
  fastPath,
} from "../nn/fast_paths.ts";
import * as layers from "../nn/layers.ts";
import {
  adamwUpdate,
  batchNorm1d,
  bigramLoss,
  causalSelfAttention,
  concatColumns,
  crossEntropy,
  dropout,
  embedding,
  layerNorm,
  linear,
  linearOutIn,
  webgpuFastPaths,
} from "../fast/webgpu/mod.ts";

// Mesa reads it; without it, it prints a warning.
if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");

async function useWebGPU(): Promise<GPUDevice> {
  tf.enableProdMode();
  assert.ok(await tf.setBackend("webgpu"), "the webgpu backend starts");
  await tf.ready();
  assert.equal(fastPath("layerNorm"), undefined, "nothing registered here: nn/ runs plain");
  return (tf.backend() as unknown as { device: GPUDevice }).device;
}

/** Runs `f` on WebGPU and fails on any validation error (a shader that does not compile, a bad binding). */
async function onWebGPU(f: () => Promise<void>): Promise<void> {
  const device = await useWebGPU();
  device.pushErrorScope("validation");
  try {
    await f();
  } finally {
    const error = await device.popErrorScope();
    assert.equal(error?.message ?? null, null, "no WebGPU validation error");
  }
}

/** A seeded stream of floats in [−1, 1) (mulberry32), so failures reproduce. */
function stream(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 31 - 1;
  };
}

function random(shape: number[], seed: number, scale = 1): tf.Tensor {
  const next = stream(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(Float32Array.from({ length: n }, () => next() * scale), shape);
}

function randomIds(shape: number[], vocab: number, seed: number): tf.Tensor {
  const next = stream(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(
    Int32Array.from({ length: n }, () => Math.floor((next() + 1) / 2 * vocab)),
    shape,
    "int32",
  );
}

/** |fast − plain| ≤ 1e-4 · max|plain| everywhere (NaN fails), shapes equal. */
async function assertClose(fast: tf.Tensor, plain: tf.Tensor, what: string): Promise<void> {
  assert.deepEqual(fast.shape, plain.shape, `${what}: shape`);
  const [a, e] = [await fast.data(), await plain.data()];
  let scale = 0;
  for (const v of e) scale = Math.max(scale, Math.abs(v));
  const bound = 1e-4 * Math.max(scale, 1e-6);
  for (let i = 0; i < a.length; i++) {
    const error = Math.abs(a[i] - e[i]);
    assert.ok(error <= bound, `${what}[${i}]: fast ${a[i]}, plain ${e[i]} (max |plain| ${scale})`);
  }
}

/** Values and input gradients of `fast` and `plain` on the same inputs and output gradient. */
async function assertSameWithGrads(
  what: string,
  fast: (...xs: tf.Tensor[]) => tf.Tensor,
  plain: (...xs: tf.Tensor[]) => tf.Tensor,
  inputs: tf.Tensor[],
  seed: number,
): Promise<void> {
  const results = (f: (...xs: tf.Tensor[]) => tf.Tensor) =>
    tf.tidy(() => {
      const y = f(...inputs);
      const dy = random(y.shape, seed, 1);
      return [y, ...tf.grads(f)(inputs, dy)];
    });
  const [yFast, ...gFast] = results(fast);
  const [yPlain, ...gPlain] = results(plain);
  await assertClose(yFast, yPlain, `${what}: value`);
  for (let i = 0; i < gFast.length; i++) {
    await assertClose(gFast[i], gPlain[i], `${what}: grad ${i}`);
  }
  tf.dispose([yFast, yPlain, ...gFast, ...gPlain]);
}

interface Counts {
  /** Kernels tfjs runs (tf.profile), its Identity saves for the gradient included. */
  kernels: number;
  /** Compute dispatches recorded on the GPU. */
  dispatches: number;
  names: string[];
}

/** The kernels and dispatches `f` takes (its tensors freed after). */
async function count(f: () => tf.TensorContainer): Promise<Counts> {
  const watch = watchWebGpu();
  try {
    const info = await tf.profile(() => {
      tf.dispose(f());
    });
    return {
      kernels: info.kernels.length,
      dispatches: watch.dispatches,
      names: info.kernels.map((k) => k.name),
    };
  } finally {
    watch.stop();
  }
}

/** Counts of fast and plain forward + backward, logged and checked against exact fast counts. */
async function assertCounts(
  what: string,
  fast: (...xs: tf.Tensor[]) => tf.Tensor,
  plain: (...xs: tf.Tensor[]) => tf.Tensor,
  inputs: tf.Tensor[],
  expected: { dispatches: number; kernels: number },
): Promise<void> {
  const run = async (f: (...xs: tf.Tensor[]) => tf.Tensor) => {
    // The output gradient exists before counting: made inside, it would count.
    const dy = tf.tidy(() => tf.onesLike(f(...inputs)));
    const forwardBackward = () => tf.grads(f)(inputs, dy);
    tf.dispose(forwardBackward()); // pipelines compiled outside the count
    const counts = await count(forwardBackward);
    dy.dispose();
    return counts;
  };
  const [fastCounts, plainCounts] = [await run(fast), await run(plain)];
  console.log(
    `${what}: plain ${plainCounts.kernels} kernels / ${plainCounts.dispatches} dispatches, ` +
      `fast ${fastCounts.kernels} / ${fastCounts.dispatches} (${fastCounts.names.join(" ")})`,
  );
  assert.equal(fastCounts.dispatches, expected.dispatches, `${what}: fast dispatches`);
  assert.equal(fastCounts.kernels, expected.kernels, `${what}: fast kernels`);
  assert.ok(fastCounts.kernels < plainCounts.kernels, `${what}: fewer kernels than plain`);
}

/** `tf.memory().numTensors` does not grow over repeated forward + backward passes. */
function assertNoLeak(f: (...xs: tf.Tensor[]) => tf.Tensor, inputs: tf.Tensor[]): void {
  const step = () => tf.dispose(tf.tidy(() => tf.grads(f)(inputs, tf.onesLike(f(...inputs)))));
  step();
  const before = tf.memory().numTensors;
  for (let i = 0; i < 3; i++) step();
  assert.equal(tf.memory().numTensors, before, "tensor count flat");
}

// ---- the plain compositions: nn/layers.ts and nn/adamw.ts, with no fast path registered here ----

const plainLayerNorm = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => layers.layerNorm(x, w, b);

/** gptLM's mask bias: 0 on and below the diagonal, −∞ above. (T, T) */
function causalMaskBias(T: number): tf.Tensor {
  const future = tf.linalg.bandPart(tf.ones([T, T]), -1, 0).equal(0);
  return tf.where(future, tf.fill([T, T], -Infinity), tf.zeros([T, T]));
}

function plainAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  nHead: number,
  weightsDropout?: DropoutSpec,
): tf.Tensor {
  return layers.causalSelfAttention(q, k, v, nHead, causalMaskBias(q.shape[1]!), weightsDropout);
}

const plainCrossEntropy = (logits: tf.Tensor, targets: tf.Tensor) =>
  layers.crossEntropy(logits as tf.Tensor2D, targets as tf.Tensor1D);

/** AdamW's constants at `step`, as nn/adamw.ts computes them. */
function adamwStep(lr: number, weightDecay: number, step: number): AdamWStep {
  return {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    decay: 1 - lr * weightDecay,
    stepSize: lr / (1 - 0.9 ** step),
    bc2Sqrt: Math.sqrt(1 - 0.999 ** step),
  };
}

/** Running statistics of a BatchNorm1d. */
type RunningStats = Omit<BatchNormState, "weight" | "bias">;

function plainBatchNorm(
  x: tf.Tensor,
  weight: tf.Tensor,
  bias: tf.Tensor,
  stats: RunningStats,
  training: boolean,
): tf.Tensor {
  const bn = { ...stats, weight: weight as tf.Variable, bias: bias as tf.Variable };
  return layers.batchNorm1d(x as tf.Tensor2D, bn, training);
}

// ---- tests ----

Deno.test("bench's WebGPU watch counts reads of GPU-held tensors only, and dispatches", async () => {
  await onWebGPU(async () => {
    const held = tf.tensor([1, 2, 3]); // tfjs keeps a tensor this small on the CPU
    const computed = tf.add(tf.tensor(new Float32Array(2048)), 1); // on the GPU
    const watch = watchWebGpu();
    try {
      assert.deepEqual(Array.from(await held.data()), [1, 2, 3]);
      assert.equal(watch.reads, 0, "a CPU-held tensor is read without the GPU");
      assert.equal(watch.dispatches, 0);
      const plusOne = computed.add(1);
      assert.equal((await plusOne.data())[0], 2);
      plusOne.dispose();
      assert.equal(watch.reads, 1, "one read from the GPU");
      assert.equal(watch.dispatches, 1, "one Add");
    } finally {
      watch.stop();
      tf.dispose([held, computed]);
    }
    const after = watch.reads;
    const later = tf.add(tf.tensor(new Float32Array(2048)), 1);
    await later.data();
    later.dispose();
    assert.equal(watch.reads, after, "stop() stops counting");
  });
});

Deno.test("webgpu kernels: the registry object names every kernel exported", () => {
  assert.deepEqual(Object.keys(webgpuFastPaths).sort(), [
    "adamwUpdate",
    "batchNorm1d",
    "bigramLoss",
    "causalSelfAttention",
    "concatColumns",
    "crossEntropy",
    "dropout",
    "embedding",
    "layerNorm",
    "linear",
    "linearOutIn",
  ]);
});

Deno.test("webgpu kernels: adamwUpdate equals AdamW's 13-kernel update, in place, one kernel", async () => {
  await onWebGPU(async () => {
    // Scalar and vec4 parameters, two a dispatch, the last one alone.
    const shapes = [[7], [3, 4], [1000], [1], [2, 6]];
    const make = () =>
      shapes.map((shape, i) =>
        [random(shape, i), random(shape, 10 + i), tf.zeros(shape), tf.zeros(shape)].map((t) =>
          tf.variable(t, false)
        ) as AdamWTensors
      );
    const fast = make();
    const params = make().map(([param]) => param);
    const plain = new AdamW(params, { lr: 3e-3, weightDecay: 0.1 });
    const grads = (step: number) =>
      Object.fromEntries(params.map((p, i) => [p.name, random(shapes[i], 20 * step + i)]));
    for (let step = 1; step <= 3; step++) {
      const g = grads(step);
      fast.forEach((tensors, i) => (tensors[1] as tf.Variable).assign(g[params[i].name]));
      await fast[0][0].data(); // a CPU copy the in-place update must not leave stale
      adamwUpdate(fast, adamwStep(3e-3, 0.1, step));
      plain.applyGradients(g);
      tf.dispose(Object.values(g));
    }
    for (const [i, shape] of shapes.entries()) {
      const { expAvg, expAvgSq } = plain.moments.get(params[i])!;
      for (const [j, t] of [params[i], expAvg, expAvgSq].entries()) {
        await assertClose(
          fast[i][[0, 2, 3][j]],
          t,
          `adamw ${shape} ${["param", "exp_avg", "exp_avg_sq"][j]}`,
        );
      }
    }
    const before = tf.memory().numTensors;
    const counts = await count(() => adamwUpdate(fast, adamwStep(3e-3, 0.1, 4)));
    assert.equal(tf.memory().numTensors, before, "no tensor left behind");
    const g = grads(4);
    const plainCounts = await count(() => plain.applyGradients(g));
    tf.dispose(Object.values(g));
    console.log(
      `adamw, ${shapes.length} parameters: plain ${plainCounts.kernels} kernels / ` +
        `${plainCounts.dispatches} dispatches, fast ${counts.kernels} / ${counts.dispatches}`,
    );
    assert.deepEqual([counts.kernels, counts.dispatches], [1, 3]);
    assert.throws(
      () =>
        adamwUpdate([[fast[0][0], fast[0][0], fast[0][2], fast[0][3]]], adamwStep(3e-3, 0.1, 5)),
      /must not share data/,
    );
    plain.dispose();
    tf.dispose([...fast.flat(), ...params]);
  });
});

Deno.test("webgpu kernels: layerNorm equals the plain composition, values and gradients", async () => {
  await onWebGPU(async () => {
    // vec4 rows (8 lanes a row); one row of 5; C = 65 (32 lanes); C = 200 (16 lanes, the last
    // ones short); more rows than 32·128 row groups (the backward's row groups loop); C = 36
    // (9 vec4 over 8 lanes).
    for (const shape of [[2, 3, 8], [1, 1, 5], [3, 65], [3, 200], [4100, 4], [4, 36]]) {
      const C = shape[shape.length - 1];
      const inputs = [random(shape, 1, 2), random([C], 2), random([C], 3)];
      const fast = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => layerNorm(x, w, b, 1e-5);
      await assertSameWithGrads(`layerNorm ${shape}`, fast, plainLayerNorm, inputs, 4);
      assertNoLeak(fast, inputs);
      tf.dispose(inputs);
    }
    const inputs = [random([2, 16, 32], 1), random([32], 2), random([32], 3)];
    const fast = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => layerNorm(x, w, b, 1e-5);
    // forward 1 dispatch; backward 2 (dx with partial dw/db, then their sum)
    await assertCounts("layerNorm (2,16,32)", fast, plainLayerNorm, inputs, {
      dispatches: 3,
      kernels: 5, // one each way, and tfjs's saves of x, w and the row statistics
    });
    tf.dispose(inputs);
  });
});

Deno.test("webgpu kernels: causalSelfAttention equals the plain composition, values and gradients", async () => {
  await onWebGPU(async () => {
    // [B, T, C, nHead]: hs 4 (vec4); hs 3; T 1 with one head; T 70 (two 64-row
    // tiles, the key tiles' tail); hs 5; hs 16 with T not a multiple of the tiles.
    for (
      const [B, T, C, H] of [[2, 17, 12, 3], [1, 5, 6, 2], [1, 1, 8, 1], [1, 70, 8, 1], [
        1,
        33,
        10,
        2,
      ], [2, 19, 32, 2]]
    ) {
      const inputs = [random([B, T, C], 1, 2), random([B, T, C], 2, 2), random([B, T, C], 3)];
      const fast = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => causalSelfAttention(q, k, v, H);
      const plain = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => plainAttention(q, k, v, H);
      await assertSameWithGrads(`attention ${[B, T, C, H]}`, fast, plain, inputs, 4);
      assertNoLeak(fast, inputs);
      tf.dispose(inputs);
    }
    // Dropout on the weights: the masks drawn from equal streams.
    for (const [B, T, C, H] of [[2, 17, 12, 3], [1, 70, 8, 1], [2, 5, 10, 2]]) {
      const inputs = [random([B, T, C], 1, 2), random([B, T, C], 2, 2), random([B, T, C], 3)];
      const [fastRng, plainRng] = [new Rng(B + T), new Rng(B + T)];
      const fast = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) =>
        causalSelfAttention(q, k, v, H, { p: 0.3, rng: fastRng });
      const plain = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) =>
        plainAttention(q, k, v, H, { p: 0.3, rng: plainRng });
      // Each call draws a new mask: the value and the gradient pass draw the same ones.
      await assertSameWithGrads(`attention ${[B, T, C, H]} dropout`, fast, plain, inputs, 4);
      assertNoLeak(fast, inputs);
      tf.dispose(inputs);
    }
    const inputs = [random([2, 16, 32], 1), random([2, 16, 32], 2), random([2, 16, 32], 3)];
    // forward 1 dispatch; backward 2 (dq and rowsum(dy∘y), then dk and dv)
    await assertCounts(
      "causalSelfAttention (2,16,32) 4 heads",
      (q, k, v) => causalSelfAttention(q, k, v, 4),
      (q, k, v) => plainAttention(q, k, v, 4),
      inputs,
      { dispatches: 3, kernels: 7 }, // one each way, and the saves of q, k, v, y, stats
    );
    tf.dispose(inputs);
  });
});

Deno.test("webgpu kernels: crossEntropy equals the plain composition, values and gradients", async () => {
  await onWebGPU(async () => {
    // vocabulary 65; one row; vec4 rows; several workgroups; over 8·1024 rows (rows loop).
    for (const [N, V] of [[7, 65], [1, 65], [5, 8], [300, 12], [8200, 4]]) {
      const targets = randomIds([N], V, 5);
      const fast = (l: tf.Tensor) => crossEntropy(l as tf.Tensor2D, targets as tf.Tensor1D);
      const plain = (l: tf.Tensor) => plainCrossEntropy(l, targets);
      const logits = random([N, V], 1, 3);
      // Twice the loss: an upstream gradient other than 1.
      const twice = (f: (l: tf.Tensor) => tf.Tensor) => (l: tf.Tensor) => f(l).mul(2);
      await assertSameWithGrads(`crossEntropy ${[N, V]}`, twice(fast), twice(plain), [logits], 4);
      assertNoLeak(fast, [logits]);
      tf.dispose([logits, targets]);
    }
    const targets = randomIds([32], 65, 5);
    // forward 2 dispatches (rows, then the sum); backward 1
    await assertCounts(
      "crossEntropy (32,65)",
      (l) => crossEntropy(l as tf.Tensor2D, targets as tf.Tensor1D),
      (l) => plainCrossEntropy(l, targets),
      [random([32, 65], 1)],
      { dispatches: 3, kernels: 5 }, // one each way, and the saves of logits, targets, lse
    );
  });
});

Deno.test("webgpu kernels: linear and linearOutIn equal the plain composition, values and gradients", async () => {
  await onWebGPU(async () => {
    // [N, in, out]: out 9 (scalar columns); out 12 (vec4); N 300 (two bias-gradient dispatches).
    for (const [N, I, O] of [[5, 7, 9], [3, 8, 12], [300, 3, 5], [1, 4, 4]]) {
      const inputs = [random([N, I], 1), random([I, O], 2), random([O], 3)];
      for (const relu of [false, true]) {
        const activation = relu ? "relu" as const : undefined;
        const fast = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) =>
          linear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D, activation);
        const plain = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => {
          const y = tf.matMul(x, w).add(b);
          return relu ? y.relu() : y;
        };
        await assertSameWithGrads(`linear ${[N, I, O]} relu ${relu}`, fast, plain, inputs, 4);
        assertNoLeak(fast, inputs);
      }
      const noBias = (x: tf.Tensor, w: tf.Tensor) => linear(x as tf.Tensor2D, w as tf.Tensor2D);
      await assertSameWithGrads(
        `linear ${[N, I, O]} no bias`,
        noBias,
        (x, w) => tf.matMul(x, w),
        inputs.slice(0, 2),
        4,
      );
      // mlpLM's layout: w (out, in), y = (W @ xᵀ)ᵀ + b.
      const outIn = [inputs[0], random([O, I], 5), inputs[2]];
      const plainOutIn = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) =>
        tf.matMul(w, x.transpose()).transpose().add(b);
      const fastOutIn = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) =>
        linearOutIn(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D, false);
      await assertSameWithGrads(`linearOutIn ${[N, I, O]}`, fastOutIn, plainOutIn, outIn, 4);
      const x = inputs[0];
      await assertSameWithGrads(
        `linearOutIn ${[N, I, O]} input is data`,
        (w, b) => linearOutIn(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D, true),
        (w, b) => plainOutIn(x, w, b),
        outIn.slice(1),
        4,
      );
      assertNoLeak(fastOutIn, outIn);
      tf.dispose([...inputs, outIn[1]]);
    }
    const inputs = [random([32, 16], 1), random([16, 64], 2), random([64], 3)];
    // forward 1 (tfjs's fused product); backward 1 (mask and bias gradient) + 2 products
    await assertCounts(
      "linear+relu (32,16)→64",
      (x, w, b) => linear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D, "relu"),
      (x, w, b) => tf.matMul(x, w).add(b).relu(),
      inputs,
      { dispatches: 4, kernels: 5 }, // one each way, and the saves of x, w, y
    );
    tf.dispose(inputs);
  });
});

Deno.test("webgpu kernels: linear flattens inputs of any rank inside its kernels", async () => {
  await onWebGPU(async () => {
    const inputs = [random([2, 3, 7], 1), random([7, 9], 2), random([9], 3)];
    const plain = (relu: boolean) => (x: tf.Tensor, w: tf.Tensor, b?: tf.Tensor) => {
      let y = tf.matMul(x.reshape([-1, 7]), w);
      if (b) y = y.add(b);
      return (relu ? y.relu() : y).reshape([2, 3, 9]);
    };
    for (const relu of [false, true]) {
      const activation = relu ? "relu" as const : undefined;
      await assertSameWithGrads(
        `linear (2,3,7) relu ${relu}`,
        (x, w, b) => linear(x, w as tf.Tensor2D, b as tf.Tensor1D, activation),
        plain(relu),
        inputs,
        4,
      );
      await assertSameWithGrads(
        `linear (2,3,7) relu ${relu} no bias`,
        (x, w) => linear(x, w as tf.Tensor2D, undefined, activation),
        plain(relu),
        inputs.slice(0, 2),
        4,
      );
    }
    // forward 1 (the fused product, no Reshape); backward 1 (bias gradient + 2 products)
    await assertCounts(
      "linear (2,16,32)→32",
      (x, w, b) => linear(x, w as tf.Tensor2D, b as tf.Tensor1D),
      plain(false),
      inputs,
      { dispatches: 4, kernels: 4 },
    );
    tf.dispose(inputs);
  });
});

Deno.test("webgpu kernels: concatColumns equals tf.concat, values and gradients", async () => {
  await onWebGPU(async () => {
    const fast = (...parts: tf.Tensor[]) => concatColumns(parts as tf.Tensor2D[]);
    const plain = (...parts: tf.Tensor[]) => tf.concat(parts, 1);
    // Scalar columns; vec4 columns; nine parts (two dispatches each way); one row.
    const cases: [number, number[]][] = [[5, [3, 5, 4]], [6, [8, 8, 8, 8]], [3, Array(9).fill(4)], [
      1,
      [2, 6],
    ]];
    for (const [rows, widths] of cases) {
      const parts = widths.map((w, i) => random([rows, w], i + 1));
      await assertSameWithGrads(`concatColumns ${rows} × ${widths}`, fast, plain, parts, 4);
      assertNoLeak(fast, parts);
      tf.dispose(parts);
    }
    const parts = [8, 8, 8, 8].map((w, i) => random([32, w], i + 1));
    // forward 1 dispatch; backward 1 (every part's columns)
    await assertCounts("concatColumns 4 × (32, 8)", fast, plain, parts, {
      dispatches: 2,
      kernels: 2,
    });
    tf.dispose(parts);
  });
});

Deno.test("webgpu kernels: dropout draws the plain layer's mask from the stream, values and gradients", async () => {
  await onWebGPU(async () => {
    // Sizes off a multiple of 32 bits; one element.
    for (const shape of [[5, 7], [64], [3, 33], [1]]) {
      const x = random(shape, 1, 3);
      for (const p of [0.2, 0.5]) {
        const [fastRng, plainRng] = [new Rng(3), new Rng(3)];
        await assertSameWithGrads(
          `dropout ${shape} p ${p}`,
          (t) => dropout(t, p, fastRng),
          (t) => layers.dropout(t, p, plainRng),
          [x],
          4,
        );
        assert.equal(
          fastRng.nextUint32(),
          plainRng.nextUint32(),
          "as many draws as the plain layer",
        );
        assertNoLeak((t) => dropout(t, p, fastRng), [x]);
      }
      x.dispose();
    }
    const rng = new Rng(3);
    // forward 1 dispatch (the mask uploaded as bits); backward 1
    await assertCounts(
      "dropout (32, 64) p 0.2",
      (t) => dropout(t, 0.2, rng),
      (t) => layers.dropout(t, 0.2, rng),
      [random([32, 64], 1)],
      { dispatches: 2, kernels: 3 },
    );
  });
});

Deno.test("webgpu kernels: embedding equals tfjs's gather, values and gradients", async () => {
  await onWebGPU(async () => {
    // vocabulary 65 (C 5, repeated ids); vec4 rows; 1-D ids; every id the same.
    const cases: [number, number, number[], number][] = [[65, 5, [2, 7], 1], [10, 8, [3, 4], 2], [
      7,
      3,
      [9],
      3,
    ], [4, 6, [2, 5], 0]];
    for (const [V, C, idShape, seed] of cases) {
      const ids = seed === 0 ? tf.fill(idShape, 2, "int32") : randomIds(idShape, V, seed);
      const fast = (t: tf.Tensor) => embedding(t as tf.Tensor2D, ids);
      const plain = (t: tf.Tensor) => tf.gather(t, ids);
      const table = random([V, C], 1);
      await assertSameWithGrads(`embedding V ${V} C ${C} ids ${idShape}`, fast, plain, [table], 4);
      assertNoLeak(fast, [table]);
      tf.dispose([ids, table]);
    }
    const ids = randomIds([2, 16], 65, 1);
    // forward 1 (gather); backward 1 (scatter-add into a cleared table)
    await assertCounts(
      "embedding (65,32) ids (2,16)",
      (t) => embedding(t as tf.Tensor2D, ids),
      (t) => tf.gather(t, ids),
      [random([65, 32], 1)],
      { dispatches: 2, kernels: 3 }, // one each way, and the save of ids
    );
  });
});

Deno.test("webgpu kernels: batchNorm1d equals mlpLM's composition, training and evaluation", async () => {
  await onWebGPU(async () => {
    // (N, C): vec4; N 2; C 65 over two workgroups of columns.
    for (const [N, C] of [[4, 8], [2, 6], [33, 65]]) {
      const stats = (): RunningStats => ({
        runningMean: tf.variable(random([C], 7, 0.5), false),
        runningVar: tf.variable(tf.tidy(() => random([C], 8, 0.5).add(1)), false),
        numBatchesTracked: tf.variable(tf.scalar(3, "int32"), false),
      });
      // Separate running statistics for the leak check, which moves them more often.
      const [fastStats, plainStats, leakStats] = [stats(), stats(), stats()];
      const inputs = [random([N, C], 1, 2), random([C], 2), random([C], 3)];
      for (const training of [true, false]) {
        const fast = (on: RunningStats) => (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) =>
          batchNorm1d(
            x as tf.Tensor2D,
            { ...on, weight: w as tf.Variable, bias: b as tf.Variable },
            training,
            1e-5,
            0.1,
          );
        const plain = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) =>
          plainBatchNorm(x, w, b, plainStats, training);
        // Each call (value, then gradient) moves the running statistics once in training.
        const what = `batchNorm ${[N, C]} training ${training}`;
        await assertSameWithGrads(what, fast(fastStats), plain, inputs, 4);
        const names = ["running_mean", "running_var", "num_batches_tracked"] as const;
        for (
          const [i, key] of (["runningMean", "runningVar", "numBatchesTracked"] as const).entries()
        ) {
          await assertClose(fastStats[key], plainStats[key], `${what}: ${names[i]}`);
        }
        assertNoLeak(fast(leakStats), inputs);
      }
      tf.dispose([
        ...inputs,
        ...[fastStats, plainStats, leakStats].flatMap((s) => Object.values(s)),
      ]);
    }
    const bn = () => ({
      runningMean: tf.variable(tf.zeros([64]), false),
      runningVar: tf.variable(tf.ones([64]), false),
      numBatchesTracked: tf.variable(tf.scalar(0, "int32"), false),
    });
    const [fastStats, plainStats] = [bn(), bn()];
    // forward 1 dispatch (with the running statistics); backward 1
    await assertCounts(
      "batchNorm1d training (32,64)",
      (x, w, b) =>
        batchNorm1d(
          x as tf.Tensor2D,
          { ...fastStats, weight: w as tf.Variable, bias: b as tf.Variable },
          true,
          1e-5,
          0.1,
        ),
      (x, w, b) => plainBatchNorm(x, w, b, plainStats, true),
      [random([32, 64], 1), random([64], 2), random([64], 3)],
      { dispatches: 2, kernels: 5 }, // one each way, and the saves of x, w, stats
    );
  });
});

Deno.test("webgpu kernels: bigramLoss equals the plain loss, values and gradient", async () => {
  await onWebGPU(async () => {
    const plain = (V: number, x: tf.Tensor, y: tf.Tensor) => (t: tf.Tensor) =>
      plainCrossEntropy(layers.embedding(t as tf.Tensor2D, x).reshape([-1, V]), y.reshape([-1]));
    // vocabulary 65; vec4 rows; one position.
    for (const [V, B, T] of [[65, 2, 7], [8, 3, 5], [65, 1, 1]]) {
      const [x, y] = [randomIds([B, T], V, 1), randomIds([B, T], V, 2)];
      const fast = (t: tf.Tensor) => bigramLoss(t as tf.Tensor2D, x, y);
      const table = random([V, V], 3, 2);
      await assertSameWithGrads(`bigramLoss V ${V} (${B},${T})`, fast, plain(V, x, y), [table], 4);
      assertNoLeak(fast, [table]);
      tf.dispose([x, y, table]);
    }
    const [x, y] = [randomIds([2, 16], 65, 1), randomIds([2, 16], 65, 2)];
    // forward 3 dispatches (count pairs, rows, sum); backward 1
    await assertCounts(
      "bigramLoss V 65 (2,16)",
      (t) => bigramLoss(t as tf.Tensor2D, x, y),
      plain(65, x, y),
      [random([65, 65], 1)],
      { dispatches: 4, kernels: 6 }, // one each way, and the saves of the table, lse, counts
    );
  });
});
