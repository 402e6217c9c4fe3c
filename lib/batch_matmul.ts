/**
 * Batched matrix product for attention, `a @ b` over leading batch axes.
 *
 * tfjs-backend-wasm runs every batched (3-D+) or transposed product as a
 * scalar triple loop (~1.5 GFLOP/s): at gptLM's CPU config that was half of
 * a training step. On WASM this module runs a small WebAssembly SIMD kernel
 * of its own instead, registered as a tfjs kernel and working in place on
 * the tensors in tfjs's own WebAssembly memory (no copies). Elsewhere it is
 * `tf.matMul`.
 *
 * It relies on internals of tfjs-backend-wasm 4.22 (`wasm.asm.memory`,
 * `dataIdMap`, `makeOutput`), pinned in deno.json; its test in
 * tests/gptLM_test.ts fails if they change.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

/**
 * Batched `a @ b`: a (..., m, k), b (..., k, n) → (..., m, n), with the same
 * leading axes (no broadcasting). On WASM it runs our SIMD kernel (below),
 * ~5× faster there than tfjs's batched product, which is a scalar loop; its
 * gradient is two more such products of explicitly transposed operands.
 * Elsewhere it is `tf.matMul`.
 */
export function batchMatMul(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  return tf.getBackend() === "wasm" ? simdBatchMatMul(a, b) : tf.matMul(a, b);
}

/** Swaps the last two axes: (..., m, n) → (..., n, m). */
function swapLastAxes(x: tf.Tensor): tf.Tensor {
  const lead = Array.from({ length: x.rank - 2 }, (_, i) => i);
  return x.transpose([...lead, x.rank - 1, x.rank - 2]);
}

const simdBatchMatMul: (a: tf.Tensor, b: tf.Tensor) => tf.Tensor = tf.customGrad((a, b, save) => {
  const [at, bt] = [a as tf.Tensor, b as tf.Tensor];
  (save as tf.GradSaveFunc)([at, bt]);
  return {
    value: tf.engine().runKernel(SIMD_BMM, { a: at, b: bt }) as tf.Tensor, // (..., m, n)
    gradFunc: (dy, saved): tf.Tensor[] => {
      const [as, bs] = saved as [tf.Tensor, tf.Tensor];
      return [
        simdBatchMatMul(dy as tf.Tensor, swapLastAxes(bs)), // da = dy @ bᵀ: (..., m, n) @ (..., n, k)
        simdBatchMatMul(swapLastAxes(as), dy as tf.Tensor), // db = aᵀ @ dy: (..., k, m) @ (..., m, n)
      ];
    },
  };
});

/**
 * Our tfjs kernel on the WASM backend: a WebAssembly SIMD module that works
 * in place on the tensors in tfjs's own WebAssembly memory (no copies).
 */
const SIMD_BMM = "SimpleLMBatchMatMul";

/** The parts of tfjs-backend-wasm 4.22's `BackendWasm` that its own kernels use. */
interface WasmBackendInternals {
  wasm: { asm: { memory: WebAssembly.Memory } };
  dataIdMap: { get(dataId: object): { memoryOffset: number } };
  makeOutput(shape: number[], dtype: "float32"): tf.TensorInfo;
}

/** {@link bmmModule}'s `bmm(a, b, c, batch, m, k, n)`. */
type Bmm = (...args: number[]) => void;
let simdKernel: { memory: WebAssembly.Memory; bmm: Bmm } | null = null;

tf.registerKernel({
  kernelName: SIMD_BMM,
  backendName: "wasm",
  kernelFunc: ({ inputs, backend }) => {
    const wasm = backend as unknown as WasmBackendInternals;
    const memory = wasm.wasm.asm.memory;
    if (simdKernel?.memory !== memory) {
      const module = new WebAssembly.Module(bmmModule());
      const instance = new WebAssembly.Instance(module, { env: { memory } });
      simdKernel = { memory, bmm: instance.exports.bmm as Bmm };
    }
    const { a, b } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const [m, k] = a.shape.slice(-2);
    const n = b.shape[b.shape.length - 1];
    const batch = a.shape.slice(0, -2).reduce((x, y) => x * y, 1);
    // The kernel trusts its shapes: a mismatch would read past a tensor.
    if (
      b.shape.length !== a.shape.length ||
      b.shape.slice(0, -1).join() !== [...a.shape.slice(0, -2), k].join()
    ) {
      throw new Error(`batchMatMul: shapes [${a.shape}] and [${b.shape}] do not match`);
    }
    const out = wasm.makeOutput([...a.shape.slice(0, -1), n], "float32"); // (..., m, n)
    const at = (t: tf.TensorInfo) => wasm.dataIdMap.get(t.dataId).memoryOffset;
    simdKernel.bmm(at(a), at(b), at(out), batch, m, k, n);
    return out;
  },
});

// The module, assembled from WAT-like helpers (one per instruction, operands
// first as in WAT's folded form); wabt's wat2wasm gives the same bytes.
type Code = number[];
function uleb(n: number): Code {
  const out: Code = [];
  do {
    const low = n & 0x7f;
    n >>>= 7;
    out.push(n ? low | 0x80 : low);
  } while (n);
  return out;
}
const vec = (items: Code[]): Code => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: Code): Code => [id, ...uleb(body.length), ...body];
const name = (s: string): Code => vec([...s].map((ch) => [ch.charCodeAt(0)]));
const [I32, F32, V128, BLOCK_VOID, SIMD] = [0x7f, 0x7d, 0x7b, 0x40, 0xfd];
const op = (code: Code) => (...args: Code[]): Code => [...args.flat(), ...code];
const get = (local: number): Code => [0x20, local];
const set = (local: number, value: Code): Code => [...value, 0x21, local];
const i32 = (x: number): Code => [0x41, x]; // x < 64: one LEB128 byte
const [add, sub, mul, shl] = [op([0x6a]), op([0x6b]), op([0x6c]), op([0x74])];
const [eqz, gtU, geU] = [op([0x45]), op([0x4b]), op([0x4f])];
const f32Zero: Code = [0x43, 0, 0, 0, 0];
const f32Load = (addr: Code): Code => [...addr, 0x2a, 2, 0]; // align 4, offset 0
const f32Store = (addr: Code, value: Code): Code => [...addr, ...value, 0x38, 2, 0];
const [f32Add, f32Mul] = [op([0x92]), op([0x94])];
const vZero: Code = [SIMD, 0x0c, ...new Array(16).fill(0)]; // v128.const 0
const vLoad = (addr: Code, offset: number): Code => [...addr, SIMD, 0x00, 4, ...uleb(offset)];
const vStore = (addr: Code, value: Code, offset: number): Code => [
  ...addr,
  ...value,
  ...[SIMD, 0x0b, 4, ...uleb(offset)],
];
const [splat, vAdd, vMul] = [op([SIMD, 0x13]), op([SIMD, 0xe4, 0x01]), op([SIMD, 0xe6, 0x01])];
/** `block (loop (br_if 1 exitWhen) body… (br 0)))`: a while loop. */
const whileNot = (exitWhen: Code, ...body: Code[]): Code => [
  ...[0x02, BLOCK_VOID, 0x03, BLOCK_VOID],
  ...exitWhen,
  ...[0x0d, 1],
  ...body.flat(),
  ...[0x0c, 0, 0x0b, 0x0b],
];

/**
 * `bmm(a, b, c, batch, m, k, n)`: C[t] = A[t] @ B[t] for t < batch, with
 * A (m, k), B (k, n), C (m, n) row-major f32 at byte addresses a, b, c.
 * Each output row is built 16 columns at a time in four f32x4 accumulators,
 * so every load of B is one contiguous vector; the last n % 16 columns take a
 * scalar loop.
 */
function bmmModule(): Uint8Array<ArrayBuffer> {
  const [A, B, C, BATCH, M, K, N] = [0, 1, 2, 3, 4, 5, 6]; // parameters
  const [ROW, COL, P, AP, BP, B_ROW_BYTES, CP] = [7, 8, 9, 10, 11, 12, 13]; // i32 locals
  const [AV, ...ACC] = [14, 15, 16, 17, 18]; // v128 locals: A[row, p] four times, C[row, col…col+16]
  const SUM = 19; // f32 local
  const rowOfA = add(get(A), shl(mul(get(ROW), get(K)), i32(2))); // &A[row, 0]
  const columnOfB = add(get(B), shl(get(COL), i32(2))); // &B[0, col]
  const outAddr = add(get(C), shl(add(mul(get(ROW), get(N)), get(COL)), i32(2))); // &C[row, col]
  const nextP = [
    set(AP, add(get(AP), i32(4))), // A[row, p + 1]
    set(BP, add(get(BP), get(B_ROW_BYTES))), // B[p + 1, col]
    set(P, sub(get(P), i32(1))),
  ];
  const body: Code = [
    ...set(B_ROW_BYTES, shl(get(N), i32(2))),
    ...whileNot(
      eqz(get(BATCH)),
      set(ROW, i32(0)),
      whileNot(
        geU(get(ROW), get(M)),
        set(COL, i32(0)),
        whileNot(
          gtU(add(get(COL), i32(16)), get(N)),
          ...ACC.map((acc) => set(acc, vZero)),
          set(AP, rowOfA),
          set(BP, columnOfB),
          set(P, get(K)),
          whileNot(
            eqz(get(P)),
            set(AV, splat(f32Load(get(AP)))),
            ...ACC.map((acc, v) => set(acc, vAdd(get(acc), vMul(get(AV), vLoad(get(BP), 16 * v))))),
            ...nextP,
          ),
          set(CP, outAddr),
          ...ACC.map((acc, v) => vStore(get(CP), get(acc), 16 * v)),
          set(COL, add(get(COL), i32(16))),
        ),
        whileNot(
          geU(get(COL), get(N)),
          set(SUM, f32Zero),
          set(AP, rowOfA),
          set(BP, columnOfB),
          set(P, get(K)),
          whileNot(
            eqz(get(P)),
            set(SUM, f32Add(get(SUM), f32Mul(f32Load(get(AP)), f32Load(get(BP))))),
            ...nextP,
          ),
          f32Store(outAddr, get(SUM)),
          set(COL, add(get(COL), i32(1))),
        ),
        set(ROW, add(get(ROW), i32(1))),
      ),
      set(A, add(get(A), shl(mul(get(M), get(K)), i32(2)))), // next A[t]
      set(B, add(get(B), shl(mul(get(K), get(N)), i32(2)))),
      set(C, add(get(C), shl(mul(get(M), get(N)), i32(2)))),
      set(BATCH, sub(get(BATCH), i32(1))),
    ),
    0x0b, // end
  ];
  const locals = vec([[7, I32], [5, V128], [1, F32]]);
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // "\0asm", version 1
    ...section(1, vec([[0x60, ...vec(new Array(7).fill([I32])), ...vec([])]])), // type 0: (i32 ×7) → ()
    ...section(2, vec([[...name("env"), ...name("memory"), 0x02, 0x00, 1]])), // import tfjs's memory
    ...section(3, vec([[0]])), // function 0 has type 0
    ...section(7, vec([[...name("bmm"), 0x00, 0]])), // export function 0
    ...section(10, vec([[...uleb(locals.length + body.length), ...locals, ...body]])),
  ]);
}
