import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { startBackend } from "../run/start.ts";
import { gemmAlonePeak, multiplyAddPeak } from "../fast/wasm/gemm_kernel.ts";
import { linearProduct, matMulWasm } from "../fast/wasm/matmul.ts";
import { THIN_ROWS } from "../fast/wasm/thin_product.ts";
import { Rng } from "../lib/rng.ts";

const size = (shape: number[]) => shape.reduce((p, q) => p * q, 1);

Deno.test("matMulWasm: our threaded SIMD kernel matches tf.matMul, values and gradients, every layout", async () => {
  await startBackend("wasm");
  // Sizes cover the 6×8 blocks, the leftover rows (m % 6: 4 + 1) and columns
  // (n % 8), k = 1, m = 1, batches (attention's shape, with 64 = 6·10 + 4 rows
  // per matrix; and more matrices than one job's 4095 chunks), k over two
  // blocks of 256, and a product big enough to be cut into many chunks; and
  // n over three blocks of 128 columns, the last one short, plus leftover
  // columns (300 = 128 + 128 + 40 + 4), with k over two blocks of 256 and a
  // last step of p that is not a whole pass of four (263 = 256 + 4 + 3); and
  // operands packed by several chunks, on both threads (a transposed A of
  // 400 × 100, B of 400 × 9 or more).
  const cases: { m: number; k: number; n: number; lead: number[] }[] = [
    { m: 5, k: 7, n: 19, lead: [2, 3] },
    { m: 33, k: 20, n: 32, lead: [4] },
    { m: 1, k: 1, n: 33, lead: [3] },
    { m: 7, k: 3, n: 8, lead: [] },
    { m: 203, k: 130, n: 65, lead: [] },
    { m: 64, k: 32, n: 64, lead: [3, 4] },
    { m: 13, k: 600, n: 21, lead: [] },
    { m: 2, k: 3, n: 5, lead: [4100] },
    // Thin products (at most THIN_ROWS rows on one side), computed in place:
    // k and n not multiples of 4 or 8, the thin side A or, with Bᵀ, B.
    { m: 1, k: 384, n: 65, lead: [] },
    { m: 3, k: 13, n: 301, lead: [1] },
    { m: THIN_ROWS, k: 9, n: 21, lead: [] },
    { m: 300, k: 37, n: 3, lead: [] },
    { m: 13, k: 263, n: 300, lead: [] },
    { m: 100, k: 400, n: 9, lead: [] },
  ];
  const rng = new Rng(4);
  const random = (shape: number[]) => tf.tensor(rng.normals(size(shape), 1), shape);
  for (const { m, k, n, lead } of cases) {
    for (
      const [transposeA, transposeB] of [[false, false], [true, false], [false, true], [true, true]]
    ) {
      const a = random([...lead, ...(transposeA ? [k, m] : [m, k])]);
      const b = random([...lead, ...(transposeB ? [n, k] : [k, n])]);
      const dy = random([...lead, m, n]);
      const run = (f: (a: tf.Tensor, b: tf.Tensor) => tf.Tensor) =>
        tf.tidy(() => {
          const { value, grads } = tf.valueAndGrads((x: tf.Tensor, y: tf.Tensor) =>
            f(x, y).mul(dy).sum()
          )([a, b]);
          return [f(a, b), value, ...grads];
        });
      const ours = run((x, y) => matMulWasm(x, y, transposeA, transposeB));
      const theirs = run((x, y) => tf.matMul(x, y, transposeA, transposeB));
      const what =
        `${lead} (${m}, ${k}) @ (${k}, ${n}), transposeA ${transposeA}, transposeB ${transposeB}`;
      for (let i = 0; i < ours.length; i++) {
        assert.deepEqual(ours[i].shape, theirs[i].shape, what);
        const [x, y] = [
          await ours[i].data() as Float32Array,
          await theirs[i].data() as Float32Array,
        ];
        let [worst, scale] = [0, 1];
        for (let j = 0; j < x.length; j++) {
          worst = Math.max(worst, Math.abs(x[j] - y[j]));
          scale = Math.max(scale, Math.abs(y[j]));
        }
        assert.ok(worst / scale < 1e-5, `${what}: output ${i} differs by ${worst}`);
      }
      tf.dispose([a, b, dy, ...ours, ...theirs]);
    }
  }
});

Deno.test("linearProduct: x's leading axes read as rows, with and without a bias (thin products too), values and gradients", async () => {
  await startBackend("wasm");
  const rng = new Rng(6);
  const random = (shape: number[]) => tf.tensor(rng.normals(size(shape), 1), shape);
  const cases = [[[1, 384], 65], [[5, 7], 6], [[THIN_ROWS + 1, 7], 6], [[3, 4, 7], 6], [
    [2, 64, 16],
    40,
  ]];
  for (const [lead, n] of cases as [number[], number][]) {
    const k = lead.at(-1)!;
    const [x, w, b, dy] = [
      random(lead),
      random([k, n]),
      random([n]),
      random([...lead.slice(0, -1), n]),
    ];
    for (const withBias of [true, false]) {
      const run = (f: (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor) =>
        tf.tidy(() => {
          const { value, grads } = tf.valueAndGrads((x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) =>
            f(x, w, b).mul(dy).sum()
          )([x, w, b]);
          return [f(x, w, b), value, ...grads];
        });
      const ours = run((x, w, b) =>
        withBias
          ? linearProduct(x, w as tf.Tensor2D, b as tf.Tensor1D)
          : linearProduct(x, w as tf.Tensor2D).add(b)
      );
      const theirs = run((x, w, b) =>
        tf.matMul(x.reshape([-1, k]), w).add(b).reshape([...lead.slice(0, -1), n])
      );
      for (let i = 0; i < ours.length; i++) {
        assert.deepEqual(ours[i].shape, theirs[i].shape, `[${lead}] output ${i}'s shape`);
        const [p, q] = [await ours[i].data(), await theirs[i].data()];
        let worst = 0;
        for (let j = 0; j < p.length; j++) worst = Math.max(worst, Math.abs(p[j] - q[j]));
        assert.ok(
          worst < 1e-4,
          `[${lead}] @ (${k}, ${n})${withBias ? " + bias" : ""}: output ${i} differs by ${worst}`,
        );
      }
      tf.dispose([...ours, ...theirs]);
    }
    tf.dispose([x, w, b, dy]);
  }
});

Deno.test("matMulWasm: a thin operand's leading zero columns are skipped, not miscounted", async () => {
  await startBackend("wasm");
  const rng = new Rng(9);
  const k = 13;
  // Thin rows zero up to column 5 and 9 (skip 5), and rows all zero (skip all).
  const prefixes = [[5, 9], [k, k]];
  for (const zeros of prefixes) {
    const values = rng.normals(zeros.length * k, 1);
    zeros.forEach((z, r) => values.fill(0, r * k, r * k + z));
    const thin = tf.tensor2d(values, [zeros.length, k]);
    const big = tf.tensor(rng.normals(30 * k, 1), [30, k]);
    for (const [x, y] of [[big, thin], [thin, big]]) {
      const [ours, theirs] = [matMulWasm(x, y, false, true), tf.matMul(x, y, false, true)];
      const [p, q] = [await ours.data(), await theirs.data()];
      for (let i = 0; i < p.length; i++) {
        assert.ok(Math.abs(p[i] - q[i]) < 1e-5, `zeros ${zeros}: element ${i}: ${p[i]} vs ${q[i]}`);
      }
      tf.dispose([ours, theirs]);
    }
    tf.dispose([thin, big]);
  }
});

Deno.test("matMulWasm: mismatched shapes are refused, not read past", async () => {
  await startBackend("wasm");
  const [a, b] = [tf.ones([2, 3, 4]), tf.ones([2, 5, 6])];
  assert.throws(() => matMulWasm(a, b), /matMul: shapes \[2,3,4\] and \[2,5,6\] do not match/);
  tf.dispose([a, b]);
});

Deno.test("multiplyAddPeak, gemmAlonePeak: the bench's ceiling and kernel figures are finite, positive rates, the kernel's under the ceiling", () => {
  const peak = multiplyAddPeak();
  assert.ok(Number.isFinite(peak) && peak > 0.1, `GFLOP/s: ${peak}`);
  const kernel = gemmAlonePeak();
  // Loads and all, the kernel cannot outrun multiply-adds with none (a margin for timer noise).
  assert.ok(Number.isFinite(kernel) && kernel > 0.1 && kernel < 1.5 * peak, `${kernel} vs ${peak}`);
});
