/**
 * Attention of a few new positions to a key/value cache (sampling: one
 * position per row) on WASM, as one WebAssembly SIMD loop on
 * tfjs-backend-wasm's heap. tfjs's composition splits the heads of the
 * whole cache with two transposes and runs two batched products as scalar
 * loops, every step and every layer; here each (row, head) reads its keys
 * and values where they are, in (B, S, C) with the heads side by side.
 *
 * Per row, query i of t (position S−t+i) and head h, with s = hs^-½:
 *
 *   scores_j = s · q·k_j (j ≤ S−t+i)    p = softmax(scores)    y = Σ_j p_j v_j
 *
 * the exp a polynomial (`attention_kernel.ts`). Evaluation only: no gradient.
 * It relies on internals of tfjs-backend-wasm 4.22 (see `heap.ts`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  add,
  assemble,
  type Code,
  F32,
  f32,
  f32Add,
  f32Load,
  f32Max,
  f32Mul,
  f32Store,
  f32Zero,
  get,
  geU,
  I32,
  i32,
  mul,
  set,
  shl,
  sub,
  V128,
  vAdd,
  vLaneSum,
  vLoad,
  vMul,
  vSplat,
  vStore,
  vZero,
  whileNot,
} from "./asm.ts";
import { rowPass, softmaxPasses } from "./attention_kernel.ts";
import { heapAddress, onHeap, type WasmBackendInternals } from "./heap.ts";

const KERNEL = "SimpleLMCachedAttention";

/**
 * Every head's `softmax(q kᵀ · hs^-½) v` for queries q (B, t, C), the last t
 * of S positions, over keys and values k, v (B, S, C), causal → (B, t, C).
 */
export function cachedAttentionWasm(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  nHead: number,
): tf.Tensor {
  return tf.engine().runKernel(KERNEL, { q, k, v }, { nHead }) as tf.Tensor;
}

const kernels = onHeap(cachedAttentionModule);

tf.registerKernel({
  kernelName: KERNEL,
  backendName: "wasm",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const wasm = backend as unknown as WasmBackendInternals; // the "wasm" backend: this kernel's
    const { q, k, v } = inputs as Record<string, tf.TensorInfo>;
    const { nHead } = attrs as unknown as { nHead: number };
    const [B, t, C] = q.shape;
    const S = k.shape[1];
    const hs = C / nHead;
    const y = wasm.makeOutput(q.shape, "float32"); // (B, t, C)
    const scores = wasm.makeOutput([S], "float32"); // scratch: one query's scores
    const at = (x: tf.TensorInfo) => heapAddress(wasm, x);
    const attend = kernels().attend as (...args: number[]) => void;
    attend(at(q), at(k), at(v), at(y), at(scores), B, t, S, C, hs, nHead, hs ** -0.5);
    wasm.disposeData(scores.dataId);
    return y;
  },
});

/** `attend(q, k, v, y, scores, B, t, S, C, hs, H, scale)`: byte addresses, then sizes. */
function cachedAttentionModule(): Uint8Array<ArrayBuffer> {
  const [Q, K, V, Y, SC, B, T, S, C, HS, H, SCALE] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
  // i32 locals: row, query, head, key, element, keys seen; the (row, query, head)'s
  // first addresses; moving addresses; C·4; the head's byte offset.
  const [BI, I, HI, J, E, L] = [12, 13, 14, 15, 16, 17];
  const [QROW, KBASE, VBASE, YROW, KROW, VROW] = [18, 19, 20, 21, 22, 23];
  const [QAT, KAT, VAT, YAT, SAT, CB, HOFF] = [24, 25, 26, 27, 28, 29, 30];
  const [MAX, SUM, DOT, X, N, XY] = [31, 32, 33, 34, 35, 36]; // f32
  const [ACC, VMAX, VSUM, VP, VX, VN, VY] = [37, 38, 39, 40, 41, 42, 43]; // v128
  const softmax = softmaxPasses({
    at: SAT,
    max: MAX,
    sum: SUM,
    value: DOT,
    scalarExp: [X, N, XY],
    vMax: VMAX,
    vSum: VSUM,
    vValue: VP,
    vectorExp: [VX, VN, VY],
  });
  /** `for (local = 0; local < end; local++) body…`. */
  const loop = (local: number, end: Code, ...body: Code[]): Code => [
    ...set(local, i32(0)),
    ...whileNot(geU(get(local), end), ...body, set(local, add(get(local), i32(1)))),
  ];
  /** Elements of a head (hs) or of the keys seen (L), from the addresses in `addrs`. */
  const over = (end: number, addrs: [number, Code][], vector: Code[], scalar: Code[]): Code => [
    ...set(E, i32(0)),
    ...addrs.flatMap(([local, start]) => set(local, start)),
    ...rowPass(E, end, addrs.map(([local]) => local), vector, scalar),
  ];
  const row = (base: number, index: Code): Code => add(get(base), mul(index, get(CB))); // base + index·C·4

  const query: Code[] = [
    set(HOFF, shl(mul(get(HI), get(HS)), i32(2))),
    set(QROW, add(row(Q, add(mul(get(BI), get(T)), get(I))), get(HOFF))),
    set(YROW, add(row(Y, add(mul(get(BI), get(T)), get(I))), get(HOFF))),
    set(KBASE, add(row(K, mul(get(BI), get(S))), get(HOFF))),
    set(VBASE, add(row(V, mul(get(BI), get(S))), get(HOFF))),
    // scores_j = s · q·k_j, and their largest.
    set(MAX, f32(-Infinity)),
    set(KROW, get(KBASE)),
    set(SAT, get(SC)),
    loop(
      J,
      get(L),
      set(ACC, vZero),
      set(DOT, f32Zero),
      over(
        HS,
        [[QAT, get(QROW)], [KAT, get(KROW)]],
        [set(ACC, vAdd(get(ACC), vMul(vLoad(get(QAT), 0), vLoad(get(KAT), 0))))],
        [set(DOT, f32Add(get(DOT), f32Mul(f32Load(get(QAT)), f32Load(get(KAT)))))],
      ),
      set(DOT, f32Mul(f32Add(vLaneSum(get(ACC)), get(DOT)), get(SCALE))),
      f32Store(get(SAT), get(DOT)),
      set(MAX, f32Max(get(MAX), get(DOT))),
      set(KROW, add(get(KROW), get(CB))),
      set(SAT, add(get(SAT), i32(4))),
    ),
    // p_j = e^(scores_j − max) / Σ e^(…).
    softmax.start,
    over(L, [[SAT, get(SC)]], ...softmax.exponentials),
    softmax.total,
    over(L, [[SAT, get(SC)]], ...softmax.normalise),
    // y = Σ_j p_j v_j.
    over(HS, [[YAT, get(YROW)]], [vStore(get(YAT), vZero, 0)], [f32Store(get(YAT), f32Zero)]),
    set(VROW, get(VBASE)),
    set(SAT, get(SC)),
    loop(
      J,
      get(L),
      set(DOT, f32Load(get(SAT))),
      set(VP, vSplat(get(DOT))),
      over(
        HS,
        [[YAT, get(YROW)], [VAT, get(VROW)]],
        [vStore(get(YAT), vAdd(vLoad(get(YAT), 0), vMul(get(VP), vLoad(get(VAT), 0))), 0)],
        [f32Store(get(YAT), f32Add(f32Load(get(YAT)), f32Mul(get(DOT), f32Load(get(VAT)))))],
      ),
      set(VROW, add(get(VROW), get(CB))),
      set(SAT, add(get(SAT), i32(4))),
    ),
  ];

  const body: Code = [
    ...set(CB, shl(get(C), i32(2))),
    ...loop(
      BI,
      get(B),
      loop(
        I,
        get(T),
        set(L, add(sub(get(S), get(T)), add(get(I), i32(1)))), // keys 0…S−t+i
        loop(HI, get(H), ...query),
      ),
    ),
  ];
  return assemble([0x00, ...[0]], [ // tfjs's memory: not shared
    {
      name: "attend",
      params: [...new Array(11).fill(I32), F32],
      locals: [[19, I32], [6, F32], [7, V128]],
      body,
    },
  ]);
}
