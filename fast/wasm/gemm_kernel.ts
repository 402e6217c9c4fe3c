/**
 * The WebAssembly SIMD matrix product behind {@link ./matmul.ts}, and the
 * protocol by which the main thread and a helper thread share its work. No
 * tfjs here: the helper thread (`gemm_worker.ts`) imports this file alone.
 *
 * Both threads instantiate the same module on one shared
 * `WebAssembly.Memory`. A job is published in that memory's first bytes
 * (the control block); its work is cut into chunks (a product's: the
 * packing of its operands' panels, then its output rows), and each thread
 * claims chunks with an atomic compare-and-swap until none are left. The
 * main thread claims chunks too, so a job finishes even while the helper is
 * still starting (or never started). Each output element is computed by one
 * thread in one fixed order: results do not depend on who ran what.
 *
 * @module
 */

import {
  add,
  assemble,
  type Code,
  divU,
  eqz,
  F32,
  f32Add,
  f32Load,
  f32Mul,
  f32Store,
  f32Zero,
  get,
  geU,
  gtU,
  I32,
  i32,
  ifElse,
  ltU,
  minU,
  mul,
  relaxedMadd,
  remU,
  set,
  shl,
  shr,
  sub,
  uleb,
  V128,
  vAdd,
  VECTOR,
  vLoad,
  vLoadSplat,
  vMul,
  vStore,
  vZero,
  whileNot,
} from "./asm.ts";
import { attentionFunctions } from "./attention_kernel.ts";

/** Slots of the control block, an Int32Array at byte 0 of the shared memory. */
export const Slot = {
  /** `seq << 24 | chunkCount << 12 | nextChunk`: the job's claim counter. */
  TICKET: 0,
  /** Chunks finished in the current job. */
  DONE: 1,
  /** Byte addresses of A's, B's and C's first matrix. */
  A: 2,
  B: 3,
  C: 4,
  /** One product: A (M, K) @ B (K, N) → C (M, N). */
  M: 5,
  K: 6,
  N: 7,
  /** Byte distance between A[i, p] and A[i+1, p], and between A[i, p] and A[i, p+1], within a panel. */
  A_ROW: 8,
  A_COL: 9,
  /** Byte distance between consecutive matrices of the batch, for A, B and C. */
  A_BATCH: 10,
  B_BATCH: 11,
  C_BATCH: 12,
  /** Output rows per chunk (a multiple of ROW_BLOCK), and chunks per matrix of the batch. */
  CHUNK_ROWS: 13,
  CHUNKS_PER_MATRIX: 14,
  /** Byte distance between A's consecutive panels of ROW_BLOCK rows. */
  A_PANEL: 15,
  /** What the job's chunks are: one of {@link Job}. */
  JOB: 16,
  /**
   * Attention, one (batch, head) pair a chunk: byte addresses of q, k, v
   * (B, T, C), P (B, H, T, T), y or dy (B, T, C), dq, dk, dv (B, T, C).
   */
  ATT_Q: 17,
  ATT_K: 18,
  ATT_V: 19,
  ATT_P: 20,
  ATT_Y: 21,
  ATT_DQ: 22,
  ATT_DK: 23,
  ATT_DV: 24,
  /** Its T, C and heads; each thread's scratch (its thread index·SCRATCH_BYTES on) and the panels' share. */
  ATT_T: 25,
  ATT_C: 26,
  ATT_HEADS: 27,
  ATT_SCRATCH: 28,
  ATT_SCRATCH_BYTES: 29,
  ATT_PANEL_BYTES: 30,
  /** A product's bias (N floats added to every row of C), or 0 for none. */
  BIAS: 31,
  /** Set to 1 when the process ends: helpers leave their loop, each then adding 1 to STOPPED. */
  STOP: 32,
  STOPPED: 33,
  /** Attention with dropout on its weights: the byte address of the (B, H, T, T) mask bytes, or 0 for none, and keep = 1/(1−p) as float32 bits. */
  ATT_MASK: 34,
  ATT_KEEP: 35,
  /**
   * A product job's packing, done by its first chunks: how many of them are
   * done, and the job's matrices. Then for a transposed A and for B, each
   * staged as stored: its first byte address, the byte distances between its
   * elements (p, x) and (p + 1, x), and (p, x) and (p, x + 1), and between
   * matrices; panels per packing chunk, and packing chunks per matrix (0:
   * none, A read as it is).
   */
  PACKED: 36,
  MATRICES: 37,
  PACK_A: 38,
  PACK_B: 44,
} as const;

/** Fields of a packing descriptor, from its first slot (Slot.PACK_A or Slot.PACK_B). */
export const PackField = {
  SRC: 0,
  P_STRIDE: 1,
  X_STRIDE: 2,
  SRC_BATCH: 3,
  PANELS: 4,
  CHUNKS: 5,
} as const;

/** The kinds of job. */
export const Job = { PRODUCT: 0, ATTENTION: 1, ATTENTION_GRAD: 2 } as const;

/** Bytes reserved for the control block; operands start after it. */
export const CONTROL_BYTES = 256;

/**
 * How long (ms) a thread spins, waiting for the next job or for the other
 * threads' last chunks, before it sleeps in `Atomics.wait`: waking from it
 * takes tens of µs on our machines, and a training step's jobs come back
 * to back, a fraction of a millisecond apart.
 */
export const SPIN_MS = 1;

/**
 * Waits until `done(ctrl[slot])` (a count reached, a ticket changed):
 * spinning for up to SPIN_MS, then sleeping until the slot is notified.
 */
export function waitUntil(ctrl: Int32Array, slot: number, done: (value: number) => boolean): void {
  const until = performance.now() + SPIN_MS;
  for (let spins = 0, value; !done(value = Atomics.load(ctrl, slot)); spins++) {
    // The clock is read every 64 spins: reading it costs more than a load.
    if ((spins & 63) === 0 && performance.now() > until) Atomics.wait(ctrl, slot, value, 100);
  }
}

/** Chunk counts and indices live in 12 bits of the ticket. */
export const MAX_CHUNKS = 0xfff;

/** `gemm(a, b, c, firstRow, endRow, k, n, aRow, aCol, aPanel, cRow, bPanel, bias)`: see {@link gemmModule}. */
export type Gemm = (...args: number[]) => void;

/** `pack(src, dst, k, count, pStride, xStride, width)`: see {@link packBody}. */
export type Pack = (...args: number[]) => void;

/** Bytes `pack` may read past its source. */
export const PACK_SLACK = 32;

/** The ticket that opens job `seq` with `count` chunks, none claimed. */
export function openTicket(seq: number, count: number): number {
  return ((seq & 0xff) << 24) | (count << 12);
}

/** True when every chunk of the ticket's job has been claimed. */
export function allClaimed(ticket: number): boolean {
  return (ticket & 0xfff) >= ((ticket >>> 12) & 0xfff);
}

/** The module's functions a thread runs chunks of. */
export interface Kernels {
  gemm: Gemm;
  pack: Pack;
  attentionForward: (...args: number[]) => void;
  attentionBackward: (...args: number[]) => void;
}

/** The {@link Kernels} of an instance of {@link compileGemm}'s module. */
export function kernelsOf(instance: WebAssembly.Instance): Kernels {
  const { gemm, pack, attentionForward, attentionBackward } = instance.exports;
  return { gemm, pack, attentionForward, attentionBackward } as unknown as Kernels;
}

/**
 * Claims and runs chunks of the published job until none are left; the
 * main thread is `thread` 0, helpers 1, 2, …. Job parameters are read after
 * a successful claim: the publisher rewrites them only once every claimed
 * chunk is done, so they are the claimed job's.
 */
export function runChunks(ctrl: Int32Array, kernels: Kernels, thread: number): void {
  for (;;) {
    const ticket = Atomics.load(ctrl, Slot.TICKET);
    if (allClaimed(ticket)) return;
    if (Atomics.compareExchange(ctrl, Slot.TICKET, ticket, ticket + 1) !== ticket) continue;
    const chunk = ticket & 0xfff;
    if (ctrl[Slot.JOB] === Job.PRODUCT) runProductOrPackChunk(ctrl, kernels, chunk);
    else runAttentionChunk(ctrl, kernels, chunk, thread);
    Atomics.add(ctrl, Slot.DONE, 1);
    Atomics.notify(ctrl, Slot.DONE);
  }
}

/** One (batch, head) pair of an attention job, forward or backward. */
function runAttentionChunk(ctrl: Int32Array, kernels: Kernels, pair: number, thread: number) {
  const [T, C, heads] = [ctrl[Slot.ATT_T], ctrl[Slot.ATT_C], ctrl[Slot.ATT_HEADS]];
  const hs = C / heads;
  const b = Math.floor(pair / heads);
  const at = (b * T * C + (pair - b * heads) * hs) * 4; // (b, 0, h·hs) in a (B, T, C)
  const p = ctrl[Slot.ATT_P] + pair * T * T * 4;
  // This thread's scratch: the panels, then the forward's (T, hs) out and (T, T) P̃, or the
  // backward's (T, T) dP, (T, hs) out and (T, T) P̃.
  const panel = ctrl[Slot.ATT_SCRATCH] + thread * ctrl[Slot.ATT_SCRATCH_BYTES];
  const scratch = panel + ctrl[Slot.ATT_PANEL_BYTES];
  const [q, k, v, y] = [Slot.ATT_Q, Slot.ATT_K, Slot.ATT_V, Slot.ATT_Y].map((s) => ctrl[s] + at);
  const mask = ctrl[Slot.ATT_MASK] && ctrl[Slot.ATT_MASK] + pair * T * T;
  const keep = new Float32Array(Int32Array.of(ctrl[Slot.ATT_KEEP]).buffer)[0];
  if (ctrl[Slot.JOB] === Job.ATTENTION) {
    const dropped = scratch + T * hs * 4;
    kernels.attentionForward(
      q,
      k,
      v,
      y,
      p,
      T,
      C,
      hs,
      hs ** -0.5,
      panel,
      scratch,
      mask,
      keep,
      dropped,
    );
  } else {
    const [dq, dk, dv] = [Slot.ATT_DQ, Slot.ATT_DK, Slot.ATT_DV].map((s) => ctrl[s] + at);
    const dScores = scratch;
    const out = scratch + T * T * 4;
    const dropped = out + T * hs * 4;
    kernels.attentionBackward(
      ...[q, k, v, p, y, dq, dk, dv, T, C, hs, hs ** -0.5, panel, dScores, out],
      ...[mask, keep, dropped],
    );
  }
}

/**
 * A product job's chunks: first its packing (A's panels if A is packed,
 * then B's), then rows of its matrices, each begun once every packing chunk
 * is done (they were claimed first: a short wait).
 */
function runProductOrPackChunk(ctrl: Int32Array, kernels: Kernels, chunk: number) {
  const matrices = ctrl[Slot.MATRICES];
  const aPacks = matrices * ctrl[Slot.PACK_A + PackField.CHUNKS];
  const packs = aPacks + matrices * ctrl[Slot.PACK_B + PackField.CHUNKS];
  if (chunk < aPacks) {
    runPackChunk(ctrl, kernels.pack, Slot.PACK_A, Slot.A, Slot.A_BATCH, ROW_BLOCK, Slot.M, chunk);
  } else if (chunk < packs) {
    const b = chunk - aPacks;
    runPackChunk(ctrl, kernels.pack, Slot.PACK_B, Slot.B, Slot.B_BATCH, COL_BLOCK, Slot.N, b);
  } else {
    // Another thread's last panels.
    waitUntil(ctrl, Slot.PACKED, (packed) => packed >= packs);
    runProductChunk(ctrl, kernels.gemm, chunk - packs);
    return;
  }
  Atomics.add(ctrl, Slot.PACKED, 1);
  Atomics.notify(ctrl, Slot.PACKED);
}

/**
 * Panels of one matrix of a product job's A or B (its descriptor at slot
 * `desc`, its panels at the job's `to`, `width` rows or columns wide, of
 * `countSlot` in all), from its staged copy.
 */
function runPackChunk(
  ctrl: Int32Array,
  pack: Pack,
  desc: number,
  to: number,
  toBatch: number,
  width: number,
  countSlot: number,
  chunk: number,
) {
  const perMatrix = ctrl[desc + PackField.CHUNKS];
  const t = Math.floor(chunk / perMatrix);
  const panels = ctrl[desc + PackField.PANELS];
  const first = (chunk - t * perMatrix) * panels * width; // the chunk's first row or column
  const k = ctrl[Slot.K];
  pack(
    ctrl[desc + PackField.SRC] + t * ctrl[desc + PackField.SRC_BATCH] +
      first * ctrl[desc + PackField.X_STRIDE],
    ctrl[to] + t * ctrl[toBatch] + first * k * 4,
    k,
    Math.min(ctrl[countSlot] - first, panels * width),
    ctrl[desc + PackField.P_STRIDE],
    ctrl[desc + PackField.X_STRIDE],
    width,
  );
}

/** Rows of one matrix of a product job. */
function runProductChunk(ctrl: Int32Array, gemm: Gemm, chunk: number) {
  // A chunk is rows first…first+CHUNK_ROWS of one matrix of the batch.
  const perMatrix = ctrl[Slot.CHUNKS_PER_MATRIX];
  const t = Math.floor(chunk / perMatrix);
  const first = (chunk - t * perMatrix) * ctrl[Slot.CHUNK_ROWS];
  gemm(
    ctrl[Slot.A] + t * ctrl[Slot.A_BATCH],
    ctrl[Slot.B] + t * ctrl[Slot.B_BATCH],
    ctrl[Slot.C] + t * ctrl[Slot.C_BATCH],
    first,
    Math.min(ctrl[Slot.M], first + ctrl[Slot.CHUNK_ROWS]),
    ctrl[Slot.K],
    ctrl[Slot.N],
    ctrl[Slot.A_ROW],
    ctrl[Slot.A_COL],
    ctrl[Slot.A_PANEL],
    ctrl[Slot.N] * 4,
    ctrl[Slot.K] * 4 * COL_BLOCK,
    ctrl[Slot.BIAS],
  );
}

/**
 * The compiled {@link gemmModule}, for both threads: with fused
 * multiply-adds where the engine has relaxed SIMD (V8 does: ~1.3× faster on
 * x86), else with separate multiplies and adds.
 */
export function compileGemm(): WebAssembly.Module {
  return compileFusedOrNot(gemmModule);
}

/** The module `build(fused)` makes, fused if the engine takes relaxed SIMD, else not. */
function compileFusedOrNot(build: (fused: boolean) => Uint8Array<ArrayBuffer>): WebAssembly.Module {
  try {
    return new WebAssembly.Module(build(true));
  } catch {
    return new WebAssembly.Module(build(false));
  }
}

/** acc + a·b, lane-wise: one fused instruction (relaxed SIMD), or a multiply and an add. */
const multiplyAddOf = (fused: boolean) => (a: Code, b: Code, acc: Code): Code =>
  fused ? relaxedMadd(a, b, acc) : vAdd(acc, vMul(a, b));

/**
 * The GFLOP/s one thread reaches here with f32x4 multiply-adds alone: the
 * inner loop of {@link gemmModule} (twelve accumulators) without its loads,
 * the ceiling `gemm` runs against on each thread. Best of a few short runs
 * after a warm-up (V8 first runs WebAssembly unoptimized); ~0.1 s.
 */
export function multiplyAddPeak(): number {
  const [ITERATIONS, X] = [0, 1]; // parameter; v128 local: the factor
  const ACC = Array.from({ length: 2 * ROW_BLOCK }, (_, i) => 2 + i); // v128 locals
  const module = compileFusedOrNot((fused) => {
    const multiplyAdd = multiplyAddOf(fused);
    const body: Code = [
      ...set(X, VECTOR.constant(0.9999999)),
      ...ACC.flatMap((acc, i) => set(acc, VECTOR.constant(i))),
      ...whileNot(
        eqz(get(ITERATIONS)),
        ...ACC.map((acc) => set(acc, multiplyAdd(get(acc), get(X), get(X)))),
        set(ITERATIONS, sub(get(ITERATIONS), i32(1))),
      ),
      ...ACC.flatMap((acc, i) => vStore(i32(16 * i), get(acc), 0)), // the sums stay live
    ];
    return assemble([0x00, 1], [{ // one page, unshared
      name: "multiplyAdds",
      params: [I32],
      locals: [[1 + ACC.length, V128]],
      body,
    }]);
  });
  const memory = new WebAssembly.Memory({ initial: 1 });
  const run = new WebAssembly.Instance(module, { env: { memory } }).exports.multiplyAdds as (
    n: number,
  ) => void;
  const iterations = 1_000_000;
  let best = 0;
  for (let i = 0; i < 12; i++) {
    const start = performance.now();
    run(iterations);
    const flops = iterations * ACC.length * 4 * 2; // four lanes, a multiply and an add each
    best = Math.max(best, flops / ((performance.now() - start) * 1e6));
  }
  return best;
}

/**
 * The GFLOP/s one thread reaches with `gemm` itself on hot data, at a gptLM
 * feed-forward shape (768 × 128 @ 128 × 512, a row-major A and a packed B):
 * the kernel's own rate, its loads included, to set against
 * {@link multiplyAddPeak}. Best of the runs of ~0.2 s, the first ones
 * unoptimized (V8 compiles the optimized code in the background).
 */
export function gemmAlonePeak(): number {
  const [m, k, n] = [768, 128, 512];
  const memory = new WebAssembly.Memory({
    initial: MEMORY_PAGES.initial,
    maximum: MEMORY_PAGES.initial,
    shared: true,
  });
  const { gemm } = kernelsOf(new WebAssembly.Instance(compileGemm(), { env: { memory } }));
  const [a, b] = [CONTROL_BYTES, CONTROL_BYTES + m * k * 4];
  const c = b + k * n * 4;
  new Float32Array(memory.buffer, a, m * k + k * n).fill(0.5);
  let best = 0;
  for (const end = performance.now() + 200; performance.now() < end;) {
    const start = performance.now();
    gemm(a, b, c, 0, m, k, n, k * 4, 4, ROW_BLOCK * k * 4, n * 4, k * 4 * COL_BLOCK, 0);
    best = Math.max(best, (2 * m * k * n) / ((performance.now() - start) * 1e6));
  }
  return best;
}

/** Memory limits of the shared memory, in 64 KiB pages. */
export const MEMORY_PAGES = { initial: 256, maximum: 32768 } as const;

/** Output rows per block: 12 accumulators, enough to hide a fused multiply-add's latency. */
export const ROW_BLOCK = 6;

/** Columns per block, and the width of B's panels. */
export const COL_BLOCK = 8;

/** Steps of p the inner loop takes per pass. */
const UNROLL = 4;

/** Steps of p per pass over a block of columns: A's 6·256 and a panel of B's 256·8 floats fit L1. */
const K_BLOCK = 256;

/**
 * Columns per block (whole panels): a block of B, K_BLOCK·COL_SPAN floats
 * (128 KiB), stays in L2 while every row of the chunk goes by, even where
 * L2 is 512 KiB.
 */
const COL_SPAN = 128;

/**
 * `gemm(a, b, c, firstRow, endRow, k, n, aRow, aCol, aPanel, cRow, bPanel,
 * bias)`: rows firstRow…endRow−1 of C = A @ B (+ bias on every row, if its
 * address is not 0), f32 at byte addresses a, b, c and bias.
 *
 * - C (·, n) is row-major with rows `cRow` bytes apart (4n for a whole
 *   matrix). firstRow is a multiple of ROW_BLOCK.
 * - A is read in panels of ROW_BLOCK rows, `aPanel` bytes apart; within a
 *   panel A[i, p] is at `i·aRow + p·aCol`. A row-major A is one such layout
 *   (aRow = 4k, aCol = 4, aPanel = 24k); a transposed A is packed by
 *   `pack` into another (aRow = 4, aCol = 24, aPanel = 24k).
 * - B is packed by `pack` in panels of COL_BLOCK columns, `bPanel` bytes
 *   apart (32k for a whole matrix; attention reads k rows of a taller one),
 *   so the kernel reads it in order: unpacked, a strip of 8 columns over k
 *   rows touches k cache lines and uses half of each, which at k = 768
 *   (weight gradients) no longer fits L1 (packed, with k in blocks, ~1.6×
 *   faster there).
 *
 * The loops nest as in GotoBLAS: columns in blocks of COL_SPAN, k in blocks
 * of K_BLOCK, then rows, then the block's panels. So a K_BLOCK × COL_SPAN
 * block of B is read from L2 by every row of the chunk, and a row block's
 * K_BLOCK steps of A from L1 by every panel of the block; with every column
 * inside the row loop, as before, B's whole K_BLOCK × n slab passed by for
 * each six rows, from L3 once it outgrew L2. Each element of C still sums
 * its k blocks in order, the first starting from the bias (or 0).
 *
 * Rows go six at a time, columns eight at a time: a 6×8 block of C sits in
 * twelve f32x4 accumulators while p runs over a block of k, so each step
 * loads two vectors of B and six numbers of A for 48 multiply-adds.
 * Leftover rows (a matrix's last m % 6) take narrower versions of the same
 * loop, and leftover columns (n % 8) a scalar loop over all of k.
 */
function gemmModule(fused: boolean): Uint8Array<ArrayBuffer> {
  const multiplyAdd = multiplyAddOf(fused);
  const [A, B, C, FIRST_ROW, END_ROW, K, N, A_ROW, A_COL, A_PANEL, C_ROW, B_PANEL_BYTES, BIAS] = [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
  ]; // parameters
  const [ROW, COL, P, AP, BP, B_PANEL, CP, TAIL_COL, A_START, KB, SPAN, SPAN_END, FULL] = [
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
  ]; // i32 locals
  const A_ROWS = [26, 27, 28, 29]; // i32 locals: 2·aRow … 5·aRow
  const A_COLS = [A_COL, 30, 31, 32]; // aCol (a parameter), then i32 locals: 2·aCol … 4·aCol
  const A_AT = [AP, 33, 34, 35]; // AP, then i32 locals: &A[row, p + 1] … &A[row, p + 3]
  const [AV, B0, B1] = [36, 37, 38]; // v128 locals: A[row + i, p] splatted, B[p, col…col+8]
  const ACC = Array.from({ length: 2 * ROW_BLOCK }, (_, i) => 39 + i); // v128 locals: C[row + i, col…col+8] as ACC[2i], ACC[2i+1]
  const SUM = 39 + 2 * ROW_BLOCK; // f32 local
  const rowOffsets = [null, A_ROW, ...A_ROWS];
  /** &A[row + i, p] from AP = &A[row, p]. */
  const aOfRow = (i: number, ap = get(AP)): Code => (i === 0 ? ap : add(ap, get(rowOffsets[i]!)));
  /** Step p + u of the R rows' multiply-adds, B's row p + u at BP + 32u and A's column at A_AT[u]. */
  const multiplyAddStep = (R: number, u: number): Code => [
    ...(u === 0 ? [] : set(A_AT[u], add(get(AP), get(A_COLS[u - 1])))),
    ...set(B0, vLoad(get(BP), 32 * u)),
    ...set(B1, vLoad(get(BP), 32 * u + 16)),
    ...Array.from({ length: R }, (_, i) => [
      ...set(AV, vLoadSplat(aOfRow(i, get(A_AT[u])))),
      ...set(ACC[2 * i], multiplyAdd(get(AV), get(B0), get(ACC[2 * i]))),
      ...set(ACC[2 * i + 1], multiplyAdd(get(AV), get(B1), get(ACC[2 * i + 1]))),
    ]).flat(),
  ];
  const outAddr = (i: number, col: Code): Code =>
    add(add(get(C), mul(add(get(ROW), i32(i)), get(C_ROW))), shl(col, i32(2))); // &C[row + i, col]
  const nextP = [
    set(AP, add(get(AP), get(A_COL))), // A[·, p + 1]
    set(BP, add(get(BP), i32(4 * COL_BLOCK))), // B[p + 1, ·] in the panel
    set(P, sub(get(P), i32(1))),
  ];
  /** A_START = &A[row, 0]: the row's panel, then its place in the panel. */
  const rowStart = set(
    A_START,
    add(
      add(get(A), mul(divU(get(ROW), i32(ROW_BLOCK)), get(A_PANEL))),
      mul(remU(get(ROW), i32(ROW_BLOCK)), get(A_ROW)),
    ),
  );

  /** Rows row…row+R-1 over the columns SPAN…SPAN_END−1 and the k block KB. */
  const rowBlock = (R: number): Code => [
    ...rowStart,
    ...set(COL, get(SPAN)),
    ...set(
      B_PANEL,
      add(add(get(B), mul(shr(get(SPAN), i32(3)), get(B_PANEL_BYTES))), shl(get(KB), i32(5))),
    ), // B[kb, span] in the span's first panel
    ...whileNot(
      geU(get(COL), get(SPAN_END)),
      ifElse(
        eqz(get(KB)),
        // The first block of k starts from the bias, or from 0.
        [ifElse(
          eqz(get(BIAS)),
          ACC.slice(0, 2 * R).map((acc) => set(acc, vZero)),
          ACC.slice(0, 2 * R).map((acc, j) =>
            set(acc, vLoad(add(get(BIAS), shl(get(COL), i32(2))), 16 * (j % 2)))
          ),
        )],
        Array.from({ length: R }, (_, i) => [
          ...set(CP, outAddr(i, get(COL))),
          ...set(ACC[2 * i], vLoad(get(CP), 0)),
          ...set(ACC[2 * i + 1], vLoad(get(CP), 16)),
        ]),
      ),
      set(AP, add(get(A_START), mul(get(KB), get(A_COL)))),
      set(BP, get(B_PANEL)),
      set(P, minU(sub(get(K), get(KB)), i32(K_BLOCK))),
      // Four steps of p a pass, B's at immediate offsets: a quarter of the loop's own work.
      whileNot(
        ltU(get(P), i32(UNROLL)),
        ...Array.from({ length: UNROLL }, (_, u) => multiplyAddStep(R, u)),
        set(AP, add(get(AP), get(A_COLS[UNROLL - 1]))),
        set(BP, add(get(BP), i32(4 * COL_BLOCK * UNROLL))),
        set(P, sub(get(P), i32(UNROLL))),
      ),
      whileNot(eqz(get(P)), multiplyAddStep(R, 0), ...nextP),
      ...Array.from({ length: R }, (_, i) => [
        ...set(CP, outAddr(i, get(COL))),
        ...vStore(get(CP), get(ACC[2 * i]), 0),
        ...vStore(get(CP), get(ACC[2 * i + 1]), 16),
      ]),
      set(COL, add(get(COL), i32(COL_BLOCK))),
      set(B_PANEL, add(get(B_PANEL), get(B_PANEL_BYTES))),
    ),
  ];

  /** Row `row`'s last n % 8 columns, one output at a time, from B's last (partial) panel. */
  const tailColumns: Code = [
    ...rowStart,
    ...set(TAIL_COL, get(FULL)),
    ...whileNot(
      geU(get(TAIL_COL), get(N)),
      set(SUM, f32Zero),
      ifElse(eqz(get(BIAS)), [], [set(SUM, f32Load(add(get(BIAS), shl(get(TAIL_COL), i32(2)))))]),
      set(AP, get(A_START)),
      set(BP, add(get(B_PANEL), shl(sub(get(TAIL_COL), get(FULL)), i32(2)))),
      set(P, get(K)),
      whileNot(
        eqz(get(P)),
        set(SUM, f32Add(get(SUM), f32Mul(f32Load(get(AP)), f32Load(get(BP))))),
        ...nextP,
      ),
      f32Store(outAddr(0, get(TAIL_COL)), get(SUM)),
      set(TAIL_COL, add(get(TAIL_COL), i32(1))),
    ),
  ];

  /** `body` for rows firstRow…endRow−1 in blocks of six, then of four (a 64-row matrix ends 6·10 + 4), then one. */
  const overRows = (body: (R: number) => Code): Code => [
    ...set(ROW, get(FIRST_ROW)),
    ...[ROW_BLOCK, 4].flatMap((R) =>
      whileNot(
        gtU(add(get(ROW), i32(R)), get(END_ROW)),
        body(R),
        set(ROW, add(get(ROW), i32(R))),
      )
    ),
    ...whileNot(
      geU(get(ROW), get(END_ROW)),
      body(1),
      set(ROW, add(get(ROW), i32(1))),
    ),
  ];

  const body: Code = [
    ...A_ROWS.flatMap((local, i) => set(local, add(get(rowOffsets[i + 1]!), get(A_ROW)))),
    ...A_COLS.slice(1).flatMap((local, i) => set(local, add(get(A_COLS[i]), get(A_COL)))),
    ...set(FULL, sub(get(N), remU(get(N), i32(COL_BLOCK)))), // columns in whole panels
    ...set(SPAN, i32(0)),
    ...whileNot(
      geU(get(SPAN), get(FULL)),
      set(SPAN_END, minU(add(get(SPAN), i32(COL_SPAN)), get(FULL))),
      set(KB, i32(0)),
      whileNot(
        geU(get(KB), get(K)),
        overRows(rowBlock),
        set(KB, add(get(KB), i32(K_BLOCK))),
      ),
      set(SPAN, get(SPAN_END)),
    ),
    ...set(B_PANEL, add(get(B), mul(shr(get(FULL), i32(3)), get(B_PANEL_BYTES)))), // the partial panel
    ...set(ROW, get(FIRST_ROW)),
    ...whileNot(
      geU(get(ROW), get(END_ROW)),
      tailColumns,
      set(ROW, add(get(ROW), i32(1))),
    ),
  ];
  const { initial, maximum } = MEMORY_PAGES;
  return assemble([0x03, ...uleb(initial), ...uleb(maximum)], [ // shared, with a maximum
    {
      name: "gemm",
      params: new Array(13).fill(I32),
      locals: [[23, I32], [3 + 2 * ROW_BLOCK, V128], [1, F32]],
      body,
    },
    { name: "pack", params: new Array(7).fill(I32), locals: [[6, I32]], body: packBody() },
    ...attentionFunctions(0, 1, 2, ROW_BLOCK, COL_BLOCK),
  ]);
}

/**
 * `pack(src, dst, k, count, pStride, xStride, width)`: copies the matrix
 * whose element (p, x), p < k and x < count, is at byte `src + p·pStride +
 * x·xStride` into panels of `width` consecutive x: panel j holds (p, j·width
 * + l) at `dst + 4·(j·k·width + p·width + l)`, so the kernel reads it in
 * order. B (k, n) goes in panels of COL_BLOCK columns; a transposed A,
 * stored (k, m), in panels of ROW_BLOCK rows.
 *
 * When each row's elements sit side by side (xStride 4) a row of a panel is
 * copied whole, COL_BLOCK floats as two 16-byte copies, ROW_BLOCK as one and
 * an 8-byte copy: a last, partial panel gets floats from past its row (up to
 * 32 bytes past `src`'s end), in lanes the kernel never reads. Nothing is
 * written outside the panels, so threads can pack neighbouring panels at
 * once. Otherwise (a transposed B) elements go one at a time.
 */
function packBody(): Code {
  const [SRC, DST, K, COUNT, P_STRIDE, X_STRIDE, WIDTH] = [0, 1, 2, 3, 4, 5, 6]; // parameters
  const [X, S, D, P, ROW_BYTES, PANEL_BYTES] = [7, 8, 9, 10, 11, 12]; // i32 locals
  /** The loop over x, each x (or each panel's x) copied for every p by `copy`. */
  const overX = (xStep: Code, copy: Code[]): Code =>
    whileNot(
      geU(get(X), get(COUNT)),
      set(S, add(get(SRC), mul(get(X), get(X_STRIDE)))), // element (0, x)
      set(
        D,
        add(
          add(get(DST), mul(divU(get(X), get(WIDTH)), get(PANEL_BYTES))), // its panel
          shl(remU(get(X), get(WIDTH)), i32(2)), // its lane
        ),
      ),
      set(P, get(K)),
      whileNot(
        eqz(get(P)),
        ...copy,
        set(S, add(get(S), get(P_STRIDE))),
        set(D, add(get(D), get(ROW_BYTES))),
        set(P, sub(get(P), i32(1))),
      ),
      set(X, add(get(X), xStep)),
    );
  return [
    ...set(ROW_BYTES, shl(get(WIDTH), i32(2))),
    ...set(PANEL_BYTES, mul(get(K), get(ROW_BYTES))),
    ...set(X, i32(0)),
    ...ifElse(
      eqz(sub(get(X_STRIDE), i32(4))),
      [ifElse(
        eqz(sub(get(WIDTH), i32(COL_BLOCK))),
        [overX(get(WIDTH), [
          vStore(get(D), vLoad(get(S), 0), 0),
          vStore(get(D), vLoad(get(S), 16), 16),
        ])],
        [overX(get(WIDTH), [ // ROW_BLOCK: 4 + 2 floats
          vStore(get(D), vLoad(get(S), 0), 0),
          i64Store(get(D), i64Load(get(S), 16), 16),
        ])],
      )],
      [overX(i32(1), [f32Store(get(D), f32Load(get(S)))])],
    ),
  ];
}

/** i64.load and i64.store: eight bytes copied as they are. */
const i64Load = (addr: Code, offset: number): Code => [...addr, 0x29, 3, offset];
const i64Store = (addr: Code, value: Code, offset: number): Code => [
  ...addr,
  ...value,
  0x37,
  3,
  offset,
];
