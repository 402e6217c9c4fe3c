import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { startBackend } from "../run/start.ts";
import { setFastPaths } from "../nn/fast_paths.ts";
import {
  cachedSelfAttention,
  causalSelfAttention,
  causalSelfAttentionQKV,
  concatColumns,
  crossEntropy,
  dropout,
  embedding,
  indexAdd,
  layerNorm,
  linear,
  linearOutIn,
  logSumExp,
  scaleRows,
} from "../nn/layers.ts";
import { Rng } from "../lib/rng.ts";
import { dropoutMaskBits } from "../fast/wasm/dropout_kernel.ts";

/** Largest absolute difference between two tensors' values. */
async function maxDiff(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  assert.deepEqual(a.shape, b.shape);
  const [x, y] = [await a.data(), await b.data()];
  let worst = 0;
  for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i] - y[i]));
  return worst;
}

/** `f()` with the fast paths on, then off (the plain tfjs composition). */
function fastAndPlain<T>(f: () => T): [fast: T, plain: T] {
  const run = (on: boolean) => {
    setFastPaths(on);
    try {
      return f();
    } finally {
      setFastPaths(true);
    }
  };
  return [run(true), run(false)];
}

function randomTensor(shape: number[], rng: Rng): tf.Tensor {
  return tf.tensor(rng.normals(shape.reduce((a, b) => a * b, 1), 1), shape);
}

for (const backend of ["cpu", "wasm", "webgpu"]) {
  Deno.test(`${backend}: fast layers equal the plain tfjs composition, values and gradients`, async () => {
    await startBackend(backend);
    const rng = new Rng(42);
    const x = randomTensor([2, 3, 5], rng);
    const w = randomTensor([5, 4], rng);
    const b = randomTensor([4], rng);
    const table = randomTensor([7, 4], rng);
    const ids = tf.tensor2d([[1, 6, 1], [0, 3, 3]], [2, 3], "int32");

    // linear (+ ReLU): the fast path vs the plain composition; also with 13
    // rows and 19 outputs (on WASM, the bias starts whole column blocks and
    // the leftover columns' sums) or 300 (blocks in three spans of columns),
    // and without a bias.
    const linearCases: [tf.Tensor, tf.Tensor2D, tf.Tensor1D | undefined][] = [
      [x, w as tf.Tensor2D, b as tf.Tensor1D],
      ...[19, 300].map((out): [tf.Tensor, tf.Tensor2D, tf.Tensor1D] => [
        randomTensor([13, 7], rng),
        randomTensor([7, out], rng) as tf.Tensor2D,
        randomTensor([out], rng) as tf.Tensor1D,
      ]),
      [x, w as tf.Tensor2D, undefined],
    ];
    for (const [lx, lw, lb] of linearCases) {
      for (const activation of [undefined, "relu"] as const) {
        const what = `linear ${lw.shape}${lb ? "" : " without bias"}${activation ? " + relu" : ""}`;
        const dOut = randomTensor([...lx.shape.slice(0, -1), lw.shape[1]], rng);
        const inputs = lb ? [lx, lw, lb] : [lx, lw];
        const [fast, plain] = fastAndPlain(() => {
          const f = (...t: tf.Tensor[]) =>
            linear(t[0], t[1] as tf.Tensor2D, t[2] as tf.Tensor1D | undefined, activation);
          return [
            f(...inputs),
            ...tf.grads((...t: tf.Tensor[]) => f(...t).mul(dOut).sum())(inputs),
          ];
        });
        for (let i = 0; i < fast.length; i++) {
          assert.ok(await maxDiff(fast[i], plain[i]) < 1e-4, `${what} output ${i}`);
        }
      }
    }

    // mlpLM's linear with a [out, in] weight, with and without the input's gradient.
    for (const inputIsData of [false, true]) {
      const [lx, lw, lb, dOut] = [
        randomTensor([9, 7], rng) as tf.Tensor2D,
        randomTensor([11, 7], rng) as tf.Tensor2D,
        randomTensor([11], rng) as tf.Tensor1D,
        randomTensor([9, 11], rng),
      ];
      const [fast, plain] = fastAndPlain(() => {
        const f = (xx: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) =>
          linearOutIn(xx as tf.Tensor2D, ww as tf.Tensor2D, bb as tf.Tensor1D, inputIsData);
        const grads = tf.grads((xx, ww, bb) => f(xx, ww, bb).mul(dOut).sum())([lx, lw, lb]);
        return [f(lx, lw, lb), ...(inputIsData ? grads.slice(1) : grads)];
      });
      for (let i = 0; i < fast.length; i++) {
        assert.ok(await maxDiff(fast[i], plain[i]) < 1e-4, `linearOutIn output ${i}`);
      }
    }

    // embedding: the fast path vs the one-hot product, values and the table's gradient.
    const weight = randomTensor([2, 3, 4], rng);
    const [embFast, embPlain] = fastAndPlain(() => [
      embedding(table as tf.Tensor2D, ids),
      tf.grad((t: tf.Tensor) => embedding(t as tf.Tensor2D, ids).mul(weight).sum())(table),
    ]);
    assert.ok(await maxDiff(embFast[0], embPlain[0]) < 1e-6, "embedding value");
    assert.ok(await maxDiff(embFast[1], embPlain[1]) < 1e-4, "embedding gradient");

    // cross-entropy: vs tfjs's softmaxCrossEntropy.
    const logits = randomTensor([6, 7], rng) as tf.Tensor2D;
    const targets = tf.tensor1d([0, 6, 2, 2, 5, 1], "int32");
    const ours = (l: tf.Tensor) => crossEntropy(l as tf.Tensor2D, targets);
    const theirs = (l: tf.Tensor) => tf.losses.softmaxCrossEntropy(tf.oneHot(targets, 7), l);
    assert.ok(await maxDiff(ours(logits), theirs(logits)) < 1e-5);
    assert.ok(await maxDiff(tf.grad(ours)(logits), tf.grad(theirs)(logits)) < 1e-5);

    // layer norm: the fast path vs tfjs's composition, at a width of 5 (the
    // JavaScript loop) and 8 (on WASM, the SIMD kernel), 7 rows; then mean
    // 0 and biased variance 1 per row before the affine part.
    for (const C of [5, 8]) {
      const [lnX, lnW, lnB, lnDy] = [
        randomTensor([7, C], rng),
        randomTensor([C], rng),
        randomTensor([C], rng),
        randomTensor([7, C], rng),
      ];
      const [lnFast, lnPlain] = fastAndPlain(() => {
        const f = (xx: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) =>
          layerNorm(xx, ww, bb).mul(lnDy).sum();
        return [layerNorm(lnX, lnW, lnB), ...tf.grads(f)([lnX, lnW, lnB])];
      });
      for (let i = 0; i < 4; i++) {
        assert.ok(
          await maxDiff(lnFast[i], lnPlain[i]) < 1e-4,
          `layerNorm (C = ${C}) ${["value", "dx", "dw", "db"][i]}`,
        );
      }
    }
    const normed = layerNorm(x, tf.ones([5]), tf.zeros([5]));

    // concatColumns: its fast route (row copies on WASM, a host loop, a WGSL join) vs tf.concat's.
    const parts = [randomTensor([3, 2], rng), randomTensor([3, 4], rng), randomTensor([3, 1], rng)];
    const catDy = randomTensor([3, 7], rng);
    const [catFast, catPlain] = fastAndPlain(() => {
      const f = (...ps: tf.Tensor[]) => concatColumns(ps as tf.Tensor2D[]).mul(catDy).sum();
      return [concatColumns(parts as tf.Tensor2D[]), ...tf.grads(f)(parts)];
    });
    for (let i = 0; i < 4; i++) {
      assert.equal(await maxDiff(catFast[i], catPlain[i]), 0, `concat ${i}`);
    }
    const { mean, variance } = tf.moments(normed, -1);
    assert.ok((await mean.abs().max().data())[0] < 1e-5);
    assert.ok((await variance.sub(1).abs().max().data())[0] < 1e-3);
  });
}

Deno.test("wasm: causal self-attention's kernels equal the plain tfjs composition, values and gradients, with and without dropout, q, k, v apart and packed", async () => {
  await startBackend("wasm");
  const rng = new Rng(7);
  // gptLM's CPU shape; rows and heads that fill no block (T = 13 = 6 + 6 + 1,
  // hs = 5, T·T odd); one row; and more (batch, head) pairs than one job's 4095.
  const cases = [
    { B: 12, T: 64, C: 128, H: 4 },
    { B: 3, T: 13, C: 10, H: 2 },
    { B: 2, T: 1, C: 8, H: 1 },
    { B: 1100, T: 3, C: 8, H: 4 },
  ];
  for (const { B, T, C, H } of cases) {
    const [q, k, v, dy] = [0, 1, 2, 3].map(() => randomTensor([B, T, C], rng));
    const maskBias = tf.where(
      tf.linalg.bandPart(tf.ones([T, T]), -1, 0).equal(0),
      tf.fill([T, T], -Infinity),
      tf.zeros([T, T]),
    );
    for (const p of [0, 0.3]) {
      // Each path draws its masks (the value's, then the gradient's forward) from its own copy of one stream.
      const streams: Rng[] = [];
      const [fast, plain] = fastAndPlain(() => {
        const stream = new Rng(11);
        streams.push(stream);
        const drop = p > 0 ? { p, rng: stream } : undefined;
        const f = (qq: tf.Tensor, kk: tf.Tensor, vv: tf.Tensor) =>
          causalSelfAttention(qq, kk, vv, H, maskBias, drop).mul(dy).sum();
        return [causalSelfAttention(q, k, v, H, maskBias, drop), ...tf.grads(f)([q, k, v])];
      });
      const what = `attention (B ${B}, T ${T}, C ${C}, H ${H}, dropout ${p})`;
      for (let i = 0; i < 4; i++) {
        assert.ok(
          await maxDiff(fast[i], plain[i]) < 1e-4,
          `${what} ${["value", "dq", "dk", "dv"][i]}`,
        );
      }
      assert.equal(streams[0].random(), streams[1].random(), `${what}: the streams moved alike`);
      // Packed: q, k, v side by side in one (B, T, 3C), one gradient of it.
      const qkv = tf.concat([q, k, v], 2);
      const [packedFast, packedPlain] = fastAndPlain(() => {
        const drop = p > 0 ? { p, rng: new Rng(11) } : undefined;
        const f = (x: tf.Tensor) => causalSelfAttentionQKV(x, H, maskBias, drop).mul(dy).sum();
        return [causalSelfAttentionQKV(qkv, H, maskBias, drop), tf.grad(f)(qkv)];
      });
      const dqkv = tf.concat(plain.slice(1), 2);
      for (const [i, name] of ["value", "dqkv"].entries()) {
        assert.ok(await maxDiff(packedFast[i], packedPlain[i]) < 1e-4, `packed ${what} ${name}`);
        // …and equal to attention of q, k, v apart (its value, and dq, dk, dv side by side).
        assert.ok(
          await maxDiff(packedFast[i], [plain[0], dqkv][i]) < 1e-4,
          `packed ${what} ${name}`,
        );
      }
      tf.dispose([...fast, ...plain, ...packedFast, ...packedPlain, qkv, dqkv]);
    }
    tf.dispose([q, k, v, dy, maskBias]);
  }
});

Deno.test("wasm: rows picked, added and scaled (embedding, indexAdd, scaleRows) equal the plain composition, values and gradients", async () => {
  await startBackend("wasm");
  const rng = new Rng(11);
  // C = 1 and 3 run the one-float loop alone, 8 the vector loop alone, 14 both; ids repeat.
  for (const C of [1, 3, 8, 14]) {
    const table = randomTensor([9, C], rng) as tf.Tensor2D;
    const ids = tf.tensor1d([3, 0, 8, 3, 3, 5, 0], "int32");
    const dOut = randomTensor([7, C], rng);
    const values = randomTensor([7, C], rng) as tf.Tensor2D;
    const dSum = randomTensor([9, C], rng);
    const scale = randomTensor([7, 1], rng) as tf.Tensor2D;
    const [fast, plain] = fastAndPlain(() => [
      embedding(table, ids),
      tf.grad((t: tf.Tensor) => embedding(t as tf.Tensor2D, ids).mul(dOut).sum())(table),
      indexAdd(values, ids, 9),
      tf.grad((v: tf.Tensor) => indexAdd(v as tf.Tensor2D, ids, 9).mul(dSum).sum())(values),
      scaleRows(values, scale),
      ...tf.grads((v: tf.Tensor, g: tf.Tensor) =>
        scaleRows(v as tf.Tensor2D, g as tf.Tensor2D).mul(dOut).sum()
      )([values, scale]),
    ]);
    const what = [
      "embedding",
      "its gradient",
      "indexAdd",
      "its gradient",
      "scaleRows",
      "its gradient for x",
      "its gradient for the scale",
    ];
    for (let i = 0; i < what.length; i++) {
      assert.ok(await maxDiff(fast[i], plain[i]) < 1e-6, `C ${C}: ${what[i]}`);
    }
    // The scatter-add zeroes what no id names: row 1 of indexAdd is 0.
    assert.deepEqual(Array.from(await fast[2].slice([1, 0], [1, C]).data()), new Array(C).fill(0));
  }
  // No rows at all (an expert left with no tokens): zeros, and no read of the empty tensors.
  const none = tf.tensor1d([], "int32");
  assert.deepEqual(embedding(randomTensor([4, 3], rng) as tf.Tensor2D, none).shape, [0, 3]);
  assert.ok(
    await maxDiff(indexAdd(tf.zeros([0, 3]) as tf.Tensor2D, none, 4), tf.zeros([4, 3])) === 0,
  );
  // An index outside the table (or the output) is refused, not read or written past.
  assert.throws(
    () => embedding(randomTensor([4, 3], rng) as tf.Tensor2D, tf.tensor1d([1, 4], "int32")),
    /embedding: index 4 at 1 is outside its 4 rows/,
  );
  assert.throws(
    () => indexAdd(randomTensor([2, 3], rng) as tf.Tensor2D, tf.tensor1d([-1, 0], "int32"), 4),
    /indexAdd: index -1 at 0 is outside its 4 rows/,
  );
  // Indices that are not int32 are refused, as the plain layers refuse them.
  assert.throws(
    () => embedding(randomTensor([4, 3], rng) as tf.Tensor2D, tf.tensor1d([1, 2])),
    /embedding: indices must be int32, not float32/,
  );
});

Deno.test("wasm: cached self-attention's kernel equals the plain tfjs composition", async () => {
  await startBackend("wasm");
  const rng = new Rng(8);
  // One new position (sampling) and three, over caches of S keys; heads of 4
  // (whole vectors) and 5 (leftover lanes); t = S, the whole window; keys
  // enough for the softmax's vector and leftover lanes (S = 13).
  const cases = [
    { B: 1, t: 1, S: 64, C: 128, H: 4 },
    { B: 3, t: 1, S: 13, C: 10, H: 2 },
    { B: 2, t: 3, S: 7, C: 12, H: 3 },
    { B: 2, t: 5, S: 5, C: 8, H: 2 },
  ];
  for (const { B, t, S, C, H } of cases) {
    const q = randomTensor([B, t, C], rng);
    const [k, v] = [randomTensor([B, S, C], rng), randomTensor([B, S, C], rng)];
    const [fast, plain] = fastAndPlain(() => cachedSelfAttention(q, k, v, H));
    assert.ok(
      await maxDiff(fast, plain) < 1e-5,
      `cached attention (B ${B}, t ${t}, S ${S}, C ${C}, H ${H})`,
    );
    tf.dispose([q, k, v, fast, plain]);
  }
});

Deno.test("wasm: Slice, SplitV and Unpack read the heap in place and give the cpu backend's values", async () => {
  // Ranks 1 to 4, each dtype, parts along every axis; the cpu backend's kernels are the reference.
  const rng = new Rng(11);
  const cases: { shape: number[]; dtype: "float32" | "int32" | "bool" }[] = [
    { shape: [9], dtype: "int32" },
    { shape: [6, 5], dtype: "float32" },
    { shape: [4, 3, 5], dtype: "bool" },
    { shape: [3, 4, 2, 5], dtype: "float32" },
  ];
  const ops = (x: tf.Tensor): tf.Tensor[] => {
    const parts: tf.Tensor[] = [];
    for (let axis = 0; axis < x.rank; axis++) {
      const n = x.shape[axis];
      parts.push(...tf.split(x, [1, n - 1], axis), ...tf.unstack(x, axis));
      const begin = x.shape.map((d, i) => i === axis ? 1 : Math.floor(d / 3));
      parts.push(x.slice(begin, x.shape.map((d, i) => d - begin[i] - (i === axis ? 1 : 0))));
    }
    return parts;
  };
  for (const { shape, dtype } of cases) {
    const values = rng.normals(shape.reduce((a, b) => a * b, 1), 3).map(Math.round);
    const results: { shape: number[]; values: number[] }[][] = [];
    for (const backend of ["cpu", "wasm"]) {
      await startBackend(backend);
      const x = tf.tensor(values, shape, dtype);
      const parts = ops(x);
      results.push(
        await Promise.all(parts.map(async (p) => ({
          shape: p.shape,
          values: Array.from(await p.data()),
        }))),
      );
      tf.dispose([x, ...parts]);
    }
    assert.deepEqual(results[1], results[0], `${dtype} [${shape}]`);
  }
});

for (const backend of ["wasm", "cpu"]) {
  Deno.test(`${backend}: dropout's mask drawn by WebAssembly equals the plain one, and leaves the stream where it does`, async () => {
    await startBackend(backend);
    const x = randomTensor([7, 1001], new Rng(2)); // an odd count
    for (const p of [0.2, 0.5]) {
      const streams: Rng[] = [];
      const [fast, plain] = fastAndPlain(() => {
        const stream = new Rng(5);
        streams.push(stream);
        return dropout(x, p, stream);
      });
      assert.deepEqual(await fast.data(), await plain.data());
      assert.equal(streams[0].random(), streams[1].random());
      tf.dispose([fast, plain]);
    }
    x.dispose();
  });
}

Deno.test("dropout's mask as bits, drawn by WebAssembly: the plain draws, bit i of word i / 32, the stream after", () => {
  for (const n of [1, 31, 32, 33, 1001]) {
    for (const p of [0.2, 0.5]) {
      const [wasm, plain] = [new Rng(7), new Rng(7)];
      wasm.random(); // a stream not at its start
      plain.random();
      const expected = new Uint32Array(Math.ceil(n / 32));
      for (let i = 0; i < n; i++) if (!(plain.random() < p)) expected[i >>> 5] |= 1 << (i & 31);
      assert.deepEqual(dropoutMaskBits(wasm, n, p), expected, `n ${n}, p ${p}`);
      assert.equal(wasm.nextUint32(), plain.nextUint32(), `n ${n}, p ${p}: the stream after`);
    }
  }
});

for (const backend of ["cpu", "wasm"]) {
  Deno.test(`${backend}: logSumExp equals tfjs's logSumExp, values and gradients, without a broadcast Equal`, async () => {
    await startBackend(backend);
    const rng = new Rng(5);
    // Logits spread over tens, as routers' noisy logits can be, (N, E) and (B, T, E).
    for (const shape of [[6, 8], [2, 3, 5]]) {
      const x = randomTensor(shape, rng).mul(10);
      const dy = randomTensor(shape.slice(0, -1), rng);
      const ours = tf.grad((t: tf.Tensor) => logSumExp(t).mul(dy).sum());
      const tfjs = tf.grad((t: tf.Tensor) => tf.logSumExp(t, -1).mul(dy).sum());
      assert.ok(await maxDiff(logSumExp(x), tf.logSumExp(x, -1)) < 1e-5, `${shape}: values`);
      assert.ok(await maxDiff(ours(x), tfjs(x)) < 1e-6, `${shape}: gradients`);
      const kernels = (await tf.profile(() => ours(x))).kernels.map((k) => k.name);
      assert.ok(!kernels.includes("Equal"), kernels.join(" "));
      assert.ok((await tf.profile(() => tfjs(x))).kernels.some((k) => k.name === "Equal"));
    }
  });
}

Deno.test("dropout zeroes about p of the values and scales the rest by 1/(1-p)", async () => {
  await startBackend("cpu");
  const out = await dropout(tf.ones([10000]), 0.2, new Rng(3)).data();
  const zeros = out.filter((v) => v === 0).length;
  assert.ok(zeros > 1800 && zeros < 2200, `${zeros} zeros`);
  assert.ok(out.every((v) => v === 0 || Math.abs(v - 1.25) < 1e-6));
  const again = await dropout(tf.ones([10000]), 0.2, new Rng(3)).data();
  assert.deepEqual(again, out);
});
