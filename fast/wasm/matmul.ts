/**
 * Matrix products for the models: `a @ b`, plain or batched, either operand
 * optionally transposed, with gradients.
 *
 * On WASM they run on our own WebAssembly SIMD kernel (`gemm_kernel.ts`)
 * split across the machine's cores, instead of tfjs-backend-wasm's matMul:
 * that one uses one core, runs every batched or transposed product as a
 * scalar loop (ten times slower than its plain 2-D path), and
 * repacks its right operand whenever that tensor is new — every step, for a
 * weight. Operands are copied into a shared `WebAssembly.Memory` (B, and a
 * transposed A, repacked there into the panels the kernel reads in order),
 * the rows of the result are shared out between this thread and helper
 * threads (`gemm_worker.ts`), and the result is copied back.
 *
 * It relies on internals of tfjs-backend-wasm 4.22 (see `heap.ts`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Worker } from "node:worker_threads";
import type { WasmBackendInternals } from "./heap.ts";
import { copyToShared, tensorFromShared } from "./shared_copy.ts";
import { thinProduct, thinProductFits } from "./thin_product.ts";
import {
  COL_BLOCK,
  compileGemm,
  CONTROL_BYTES,
  Job,
  type Kernels,
  kernelsOf,
  MAX_CHUNKS,
  MEMORY_PAGES,
  openTicket,
  PACK_SLACK,
  PackField,
  ROW_BLOCK,
  runChunks,
  Slot,
  waitUntil,
} from "./gemm_kernel.ts";

/**
 * `op(a) @ op(b)` on our kernel, where op transposes the last two axes when
 * asked: a (..., m, k) or (..., k, m), b (..., k, n) or (..., n, k) →
 * (..., m, n). Leading axes must be equal (no broadcasting).
 */
export function matMulWasm(
  a: tf.Tensor,
  b: tf.Tensor,
  transposeA = false,
  transposeB = false,
): tf.Tensor {
  return wasmMatMul(transposeA, transposeB)(a, b);
}

/**
 * The product on our kernel with its gradient, spelled out for each layout
 * as two more products of the same kind (dC is the output's gradient):
 *
 *   C = A B:    dA = dC Bᵀ   dB = Aᵀ dC        C = Aᵀ B:   dA = B dCᵀ    dB = A dC
 *   C = A Bᵀ:   dA = dC B    dB = dCᵀ A        C = Aᵀ Bᵀ:  dA = Bᵀ dCᵀ   dB = dCᵀ Aᵀ
 */
function wasmMatMul(
  transposeA: boolean,
  transposeB: boolean,
): (a: tf.Tensor, b: tf.Tensor) => tf.Tensor {
  return tf.customGrad((a, b, save) => {
    const [at, bt] = [a as tf.Tensor, b as tf.Tensor];
    (save as tf.GradSaveFunc)([at, bt]);
    return {
      value: tf.engine().runKernel(KERNEL, { a: at, b: bt }, {
        transposeA,
        transposeB,
      }) as tf.Tensor,
      gradFunc: (dy, saved) => {
        const [as, bs] = saved as [tf.Tensor, tf.Tensor];
        const dc = dy as tf.Tensor;
        if (!transposeA && !transposeB) {
          return [matMulWasm(dc, bs, false, true), matMulWasm(as, dc, true, false)];
        }
        if (transposeA && !transposeB) {
          return [matMulWasm(bs, dc, false, true), matMulWasm(as, dc, false, false)];
        }
        if (!transposeA && transposeB) {
          return [matMulWasm(dc, bs, false, false), matMulWasm(dc, as, true, false)];
        }
        return [matMulWasm(bs, dc, true, true), matMulWasm(dc, as, true, true)];
      },
    };
  }) as (a: tf.Tensor, b: tf.Tensor) => tf.Tensor;
}

/**
 * `op(a) @ op(b)` with each operand read as 2-D where it is, all its axes
 * but the last as rows (a reshape is a kernel, and under the tape a saved
 * copy): a (..., k) @ (k, n) → (..., n); transposed, a (..., m) is read as
 * (rows, m) and gives (m, n); `bias` (n), if given, added to every row.
 * No gradient of its own: {@link linearProduct} gives it one.
 */
function rowsProduct(
  a: tf.Tensor,
  b: tf.Tensor,
  transposeA: boolean,
  transposeB: boolean,
  bias?: tf.Tensor,
): tf.Tensor {
  const inputs: tf.NamedTensorMap = bias ? { a, b, bias } : { a, b };
  return tf.engine().runKernel(KERNEL, inputs, { transposeA, transposeB, rows: true }) as tf.Tensor;
}

/**
 * `x @ w (+ bias)` on WASM: x (..., in) (its leading axes read as rows, in
 * place), w (in, out), bias (out) → (..., out), one product whose sums
 * start from the bias (if any), and its gradient:
 *
 *   dx = dy wᵀ    dw = xᵀ dy    dbias = column sums of dy = 1ᵀ dy
 *
 * Call only with the fast paths on, on WASM.
 */
export function linearProduct(x: tf.Tensor, w: tf.Tensor2D, bias?: tf.Tensor1D): tf.Tensor {
  return bias ? productAddBias(x, w, bias) : product(x, w);
}

/** The gradients of x and w in {@link linearProduct}. */
function linearGrads(d: tf.Tensor, xs: tf.Tensor, ws: tf.Tensor): tf.Tensor[] {
  return [
    rowsProduct(d, ws, false, true), // (..., out) @ (out, in) -> (..., in)
    rowsProduct(xs, d, true, false), // (in, N) @ (N, out) -> (in, out)
  ];
}

const product = tf.customGrad((x, w, save) => {
  const inputs = { a: x as tf.Tensor, b: w as tf.Tensor };
  (save as tf.GradSaveFunc)([inputs.a, inputs.b]);
  return {
    value: rowsProduct(inputs.a, inputs.b, false, false), // (..., out)
    gradFunc: (dy, saved) => linearGrads(dy as tf.Tensor, saved[0], saved[1]),
  };
}) as (x: tf.Tensor, w: tf.Tensor) => tf.Tensor;

const productAddBias = tf.customGrad((x, w, bias, save) => {
  const inputs = { a: x as tf.Tensor, b: w as tf.Tensor, bias: bias as tf.Tensor };
  (save as tf.GradSaveFunc)([inputs.a, inputs.b]);
  const rows = tf.util.sizeFromShape(inputs.a.shape) / inputs.a.shape[inputs.a.rank - 1];
  return {
    value: rowsProduct(inputs.a, inputs.b, false, false, inputs.bias), // (..., out)
    gradFunc: (dy, saved) => {
      const d = dy as tf.Tensor; // (..., out)
      const ones = tf.ones([1, rows]);
      const dBias = rowsProduct(ones, d, false, false); // (1, N) @ (N, out) -> (1, out)
      ones.dispose();
      return [...linearGrads(d, saved[0], saved[1]), dBias.reshape([-1])];
    },
  };
}) as (x: tf.Tensor, w: tf.Tensor, bias: tf.Tensor) => tf.Tensor;

const KERNEL = "SimpleLMMatMul";

/** Our shared memory, this thread's kernels and the helper threads. */
export interface Pool {
  memory: WebAssembly.Memory;
  ctrl: Int32Array;
  kernels: Kernels;
  /** This thread and the helpers that started. */
  threads: number;
  seq: number;
}
let pool: Pool | null = null;

/**
 * Brings the helpers out of their wait and their loop as the process ends,
 * and waits (up to a second) until they have left it: a thread left
 * blocked in `Atomics.wait` while the process exits made it abort, now and
 * then, with a corrupted-heap message from the C library.
 */
function stopHelpers(ctrl: Int32Array, helpers: number): void {
  Atomics.store(ctrl, Slot.STOP, 1);
  // The next seq, with every chunk still claimed: a helper about to wait on the old value does not.
  Atomics.add(ctrl, Slot.TICKET, 1 << 24);
  Atomics.notify(ctrl, Slot.TICKET);
  const deadline = performance.now() + 1000;
  for (let stopped; (stopped = Atomics.load(ctrl, Slot.STOPPED)) < helpers;) {
    if (performance.now() > deadline) return;
    Atomics.wait(ctrl, Slot.STOPPED, stopped, 50);
  }
}

/** The pool, started on first use. */
export function sharedPool(): Pool {
  return pool ??= startPool();
}

/** Grows the shared memory to at least `bytes` (views made before see only the old size). */
export function growShared(pool: Pool, bytes: number): void {
  const { memory } = pool;
  if (bytes > memory.buffer.byteLength) {
    memory.grow(Math.ceil((bytes - memory.buffer.byteLength) / 65536));
  }
}

/** Floats a packing chunk copies at least: smaller operands are packed by one thread. */
const PACK_CHUNK_FLOATS = 16384;

/**
 * How a (k, count) operand of each of `batch` matrices is packed in panels
 * of `width`: panels per chunk, and chunks per matrix (a few per thread, in
 * all, each at least PACK_CHUNK_FLOATS).
 */
function packing(
  pool: Pool,
  batch: number,
  k: number,
  count: number,
  width: number,
): { panels: number; chunks: number } {
  const panelsPerMatrix = Math.ceil(count / width);
  const wanted = Math.ceil(2 * pool.threads / batch);
  const most = Math.max(1, Math.floor(k * count / PACK_CHUNK_FLOATS));
  const panels = Math.ceil(panelsPerMatrix / Math.min(wanted, most, panelsPerMatrix));
  return { panels, chunks: Math.ceil(panelsPerMatrix / panels) };
}

/**
 * Publishes the job written in the control block, with `chunks` chunks,
 * runs chunks here too, and returns when all are done.
 */
export function runJob(pool: Pool, chunks: number): void {
  const { ctrl } = pool;
  Atomics.store(ctrl, Slot.DONE, 0);
  Atomics.store(ctrl, Slot.TICKET, openTicket(++pool.seq, chunks));
  Atomics.notify(ctrl, Slot.TICKET);
  runChunks(ctrl, pool.kernels, 0);
  waitUntil(ctrl, Slot.DONE, (done) => done >= chunks); // a helper is finishing a chunk
}

/**
 * Starts the pool on first use: one helper thread per core beyond this one
 * (at most 7). A helper that cannot start (say, no read permission for its
 * file) only costs speed: this thread claims every chunk it finds unclaimed.
 */
function startPool(): Pool {
  const memory = new WebAssembly.Memory({ ...MEMORY_PAGES, shared: true });
  const instance = new WebAssembly.Instance(compileGemm(), { env: { memory } });
  const helpers = Math.max(0, Math.min(7, (navigator.hardwareConcurrency ?? 1) - 1));
  let started = 0;
  for (let i = 0; i < helpers; i++) {
    try {
      const worker = new Worker(new URL("./gemm_worker.ts", import.meta.url), {
        workerData: { memory, thread: 1 + started },
      });
      worker.unref(); // a helper never keeps the process alive
      worker.on("error", () => {}); // one that fails to load never claims a chunk: no harm
      started++;
    } catch {
      break;
    }
  }
  const ctrl = new Int32Array(memory.buffer, 0, CONTROL_BYTES / 4);
  globalThis.addEventListener("unload", () => stopHelpers(ctrl, started));
  return {
    memory,
    ctrl,
    kernels: kernelsOf(instance),
    threads: 1 + started,
    seq: 0,
  };
}

tf.registerKernel({
  kernelName: KERNEL,
  backendName: "wasm",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const wasm = backend as unknown as WasmBackendInternals; // the "wasm" backend: this kernel's
    const given = inputs as { a: tf.TensorInfo; b: tf.TensorInfo; bias?: tf.TensorInfo };
    const { transposeA, transposeB, rows } = attrs as unknown as {
      transposeA: boolean;
      transposeB: boolean;
      rows?: boolean;
    };
    // With `rows`, each operand as 2-D, all its axes but the last as rows: the same values.
    const asRows = (t: tf.TensorInfo) =>
      rows
        ? { ...t, shape: [tf.util.sizeFromShape(t.shape) / t.shape.at(-1)!, t.shape.at(-1)!] }
        : t;
    const [a, b, bias] = [asRows(given.a), asRows(given.b), given.bias];
    const lead = a.shape.slice(0, -2);
    const [m, k] = transposeA ? a.shape.slice(-2).reverse() : a.shape.slice(-2);
    const [kb, n] = transposeB ? b.shape.slice(-2).reverse() : b.shape.slice(-2);
    // The kernel trusts its shapes: a mismatch would read past a tensor.
    if (
      b.shape.length !== a.shape.length || b.shape.slice(0, -2).join() !== lead.join() || kb !== k
    ) {
      throw new Error(
        `matMul: shapes [${a.shape}] and [${b.shape}] do not match (transposeA ${transposeA}, transposeB ${transposeB})`,
      );
    }
    const batch = lead.reduce((x, y) => x * y, 1);
    // (..., m, n); with `rows`, a's leading axes kept when they are its rows.
    const outShape = rows && !transposeA ? [...given.a.shape.slice(0, -1), n] : [...lead, m, n];
    if (thinProductFits(batch, m, n, transposeA, transposeB, Boolean(bias))) {
      return thinProduct(wasm, a, b, bias, transposeB, outShape);
    }
    const pool = sharedPool();
    // Per matrix: A as it is, or packed in panels of ROW_BLOCK rows when
    // transposed; B packed in panels of COL_BLOCK columns (see gemm_kernel.ts).
    // Operands to pack are copied as they are to STAGE_A and STAGE_B, and
    // packed by the job's first chunks, on every thread.
    const aBytes = (transposeA ? Math.ceil(m / ROW_BLOCK) * ROW_BLOCK : m) * k * 4;
    const bBytes = Math.ceil(n / COL_BLOCK) * COL_BLOCK * k * 4;
    const cBytes = m * n * 4;
    const A = CONTROL_BYTES;
    const B = A + batch * aBytes;
    const C = B + batch * bBytes;
    const BIAS = C + batch * cBytes;
    const STAGE_A = BIAS + n * 4;
    const STAGE_B = STAGE_A + (transposeA ? batch * m * k * 4 + PACK_SLACK : 0);
    const end = STAGE_B + batch * k * n * 4 + PACK_SLACK;
    const { memory } = pool;
    growShared(pool, end);
    if (bias) copyToShared(wasm, memory, bias, BIAS);
    copyToShared(wasm, memory, a, transposeA ? STAGE_A : A); // stored (k, m) when transposed
    copyToShared(wasm, memory, b, STAGE_B);

    // A few chunks per thread balance the load; a chunk never spans two matrices.
    const chunkRows = ROW_BLOCK *
      Math.max(1, Math.ceil(batch * m / (4 * pool.threads) / ROW_BLOCK));
    const perMatrix = Math.ceil(m / chunkRows);
    const { ctrl } = pool;
    ctrl[Slot.JOB] = Job.PRODUCT;
    ctrl[Slot.BIAS] = bias ? BIAS : 0;
    ctrl.set([m, k, n], Slot.M);
    ctrl.set(transposeA ? [4, ROW_BLOCK * 4] : [k * 4, 4], Slot.A_ROW);
    ctrl.set([aBytes, bBytes, cBytes, chunkRows, perMatrix, ROW_BLOCK * k * 4], Slot.A_BATCH);
    // A transposed A, stored (k, m): element (p, i) at p·m + i. B stored
    // (n, k): element (p, j) at j·k + p; or (k, n), at p·n + j.
    const aPacks = transposeA ? packing(pool, batch, k, m, ROW_BLOCK) : { panels: 0, chunks: 0 };
    const bPacks = packing(pool, batch, k, n, COL_BLOCK);
    ctrl.set([m * 4, 4, m * k * 4, aPacks.panels, aPacks.chunks], Slot.PACK_A + PackField.P_STRIDE);
    ctrl.set(
      [...(transposeB ? [4, k * 4] : [n * 4, 4]), k * n * 4, bPacks.panels, bPacks.chunks],
      Slot.PACK_B + PackField.P_STRIDE,
    );
    // One job per group of matrices whose chunks fit in a ticket.
    const chunksPerMatrix = aPacks.chunks + bPacks.chunks + perMatrix;
    const groupSize = Math.floor(MAX_CHUNKS / chunksPerMatrix);
    for (let t = 0; t < batch; t += groupSize) {
      const matrices = Math.min(groupSize, batch - t);
      ctrl.set([A + t * aBytes, B + t * bBytes, C + t * cBytes], Slot.A);
      ctrl[Slot.PACK_A + PackField.SRC] = STAGE_A + t * m * k * 4;
      ctrl[Slot.PACK_B + PackField.SRC] = STAGE_B + t * k * n * 4;
      ctrl[Slot.MATRICES] = matrices;
      ctrl[Slot.PACKED] = 0;
      runJob(pool, matrices * chunksPerMatrix);
    }

    return tensorFromShared(wasm, memory, C, outShape);
  },
});
