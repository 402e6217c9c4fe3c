/**
 * The WebAssembly SIMD matrix product behind {@link ./matmul.ts}, and the
 * protocol by which the main thread and a helper thread share its work. No
 * tfjs here: the helper thread (`gemm_worker.ts`) imports this file alone.
 *
 * Both threads instantiate the same module on one shared
 * `WebAssembly.Memory`. A job is published in that memory's first bytes
 * (the control block); its output rows are cut into chunks, and each thread
 * claims chunks with an atomic compare-and-swap until none are left. The
 * main thread claims chunks too, so a job finishes even while the helper is
 * still starting (or never started). Each output element is computed by one
 * thread in one fixed order: results do not depend on who ran what.
 *
 * @module
 */

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
  /** Byte distance between A[i, p] and A[i+1, p], and between A[i, p] and A[i, p+1]. */
  A_ROW: 8,
  A_COL: 9,
  /** Byte distance between consecutive matrices of the batch, for A, B and C. */
  A_BATCH: 10,
  B_BATCH: 11,
  C_BATCH: 12,
  /** Output rows per chunk, counted over the whole batch (batch · M rows). */
  CHUNK_ROWS: 13,
  TOTAL_ROWS: 14,
} as const;

/** Bytes reserved for the control block; operands start after it. */
export const CONTROL_BYTES = 64;

/** Chunk counts and indices live in 12 bits of the ticket. */
export const MAX_CHUNKS = 0xfff;

/** `gemm(a, b, c, rows, k, n, aRow, aCol)`: see {@link gemmModule}. */
export type Gemm = (...args: number[]) => void;

/** The ticket that opens job `seq` with `count` chunks, none claimed. */
export function openTicket(seq: number, count: number): number {
  return ((seq & 0xff) << 24) | (count << 12);
}

/** True when every chunk of the ticket's job has been claimed. */
export function allClaimed(ticket: number): boolean {
  return (ticket & 0xfff) >= ((ticket >>> 12) & 0xfff);
}

/**
 * Claims and runs chunks of the published job until none are left. Job
 * parameters are read after a successful claim: the publisher rewrites them
 * only once every claimed chunk is done, so they are the claimed job's.
 */
export function runChunks(ctrl: Int32Array, gemm: Gemm): void {
  for (;;) {
    const ticket = Atomics.load(ctrl, Slot.TICKET);
    if (allClaimed(ticket)) return;
    if (Atomics.compareExchange(ctrl, Slot.TICKET, ticket, ticket + 1) !== ticket) continue;
    const chunk = ticket & 0xfff;
    const [m, k, n, aRow, aCol] = [
      ctrl[Slot.M],
      ctrl[Slot.K],
      ctrl[Slot.N],
      ctrl[Slot.A_ROW],
      ctrl[Slot.A_COL],
    ];
    const chunkRows = ctrl[Slot.CHUNK_ROWS];
    const end = Math.min(ctrl[Slot.TOTAL_ROWS], (chunk + 1) * chunkRows);
    // Rows g of the stacked outputs (batch · M of them), one matrix at a time.
    for (let g = chunk * chunkRows; g < end;) {
      const t = Math.floor(g / m); // which matrix of the batch
      const row = g - t * m;
      const rows = Math.min(m - row, end - g);
      gemm(
        ctrl[Slot.A] + t * ctrl[Slot.A_BATCH] + row * aRow,
        ctrl[Slot.B] + t * ctrl[Slot.B_BATCH],
        ctrl[Slot.C] + t * ctrl[Slot.C_BATCH] + row * n * 4,
        rows,
        k,
        n,
        aRow,
        aCol,
      );
      g += rows;
    }
    Atomics.add(ctrl, Slot.DONE, 1);
    Atomics.notify(ctrl, Slot.DONE);
  }
}

/**
 * The compiled {@link gemmModule}, for both threads: with fused
 * multiply-adds where the engine has relaxed SIMD (V8 does: ~1.3× faster on
 * x86), else with separate multiplies and adds.
 */
export function compileGemm(): WebAssembly.Module {
  try {
    return new WebAssembly.Module(gemmModule(true));
  } catch {
    return new WebAssembly.Module(gemmModule(false));
  }
}

/** Memory limits of the shared memory, in 64 KiB pages. */
export const MEMORY_PAGES = { initial: 256, maximum: 32768 } as const;

/** Output rows per block: 12 accumulators, enough to hide a fused multiply-add's latency. */
export const ROW_BLOCK = 6;

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
const [vAdd, vMul] = [op([SIMD, 0xe4, 0x01]), op([SIMD, 0xe6, 0x01])];
const relaxedMadd = op([SIMD, 0x85, 0x02]); // f32x4.relaxed_madd(a, b, c) = a·b + c, fused or not
const vLoadSplat = (addr: Code): Code => [...addr, SIMD, 0x09, 2, 0]; // v128.load32_splat: one broadcast load
/** `block (loop (br_if 1 exitWhen) body… (br 0)))`: a while loop. */
const whileNot = (exitWhen: Code, ...body: Code[]): Code => [
  ...[0x02, BLOCK_VOID, 0x03, BLOCK_VOID],
  ...exitWhen,
  ...[0x0d, 1],
  ...body.flat(),
  ...[0x0c, 0, 0x0b, 0x0b],
];

/**
 * `gemm(a, b, c, rows, k, n, aRow, aCol)`: C = A @ B for `rows` rows, with
 * B (k, n) and C (rows, n) row-major f32 at byte addresses b and c, and
 * A[i, p] at byte `a + i·aRow + p·aCol` — so A may be stored transposed.
 *
 * Rows go six at a time, columns eight at a time: a 6×8 block of C sits in
 * twelve f32x4 accumulators while p runs over k, so each step loads two
 * vectors of B and six numbers of A for 48 multiply-adds. Leftover columns
 * (n % 8) and rows (rows % 6) take narrower versions of the same loop.
 */
function gemmModule(fused: boolean): Uint8Array<ArrayBuffer> {
  /** acc + a·b, lane-wise. */
  const multiplyAdd = (a: Code, b: Code, acc: Code): Code =>
    fused ? relaxedMadd(a, b, acc) : vAdd(acc, vMul(a, b));
  const [A, B, C, ROWS, K, N, A_ROW, A_COL] = [0, 1, 2, 3, 4, 5, 6, 7]; // parameters
  const [ROW, COL, P, AP, BP, B_ROW_BYTES, CP, TAIL_COL] = [8, 9, 10, 11, 12, 13, 14, 15]; // i32 locals
  const A_ROWS = [16, 17, 18, 19]; // i32 locals: 2·aRow … 5·aRow
  const [AV, B0, B1] = [20, 21, 22]; // v128 locals: A[row + i, p] splatted, B[p, col…col+8]
  const ACC = Array.from({ length: 2 * ROW_BLOCK }, (_, i) => 23 + i); // v128 locals: C[row + i, col…col+8] as ACC[2i], ACC[2i+1]
  const SUM = 23 + 2 * ROW_BLOCK; // f32 local
  const rowOffsets = [null, A_ROW, ...A_ROWS];
  /** &A[row + i, p] from AP = &A[row, p]. */
  const aOfRow = (i: number): Code => (i === 0 ? get(AP) : add(get(AP), get(rowOffsets[i]!)));
  const startOfRow = (i: number): Code => add(get(A), mul(add(get(ROW), i32(i)), get(A_ROW))); // &A[row + i, 0]
  const outAddr = (i: number, col: Code): Code =>
    add(get(C), shl(add(mul(add(get(ROW), i32(i)), get(N)), col), i32(2))); // &C[row + i, col]
  const nextP = [
    set(AP, add(get(AP), get(A_COL))), // A[·, p + 1]
    set(BP, add(get(BP), get(B_ROW_BYTES))), // B[p + 1, ·]
    set(P, sub(get(P), i32(1))),
  ];

  /** Rows row…row+R-1, every column: 8-wide blocks, then one column at a time. */
  const rowBlock = (R: number): Code => [
    ...set(COL, i32(0)),
    ...whileNot(
      gtU(add(get(COL), i32(8)), get(N)),
      ...ACC.slice(0, 2 * R).map((acc) => set(acc, vZero)),
      set(AP, startOfRow(0)),
      set(BP, add(get(B), shl(get(COL), i32(2)))),
      set(P, get(K)),
      whileNot(
        eqz(get(P)),
        set(B0, vLoad(get(BP), 0)),
        set(B1, vLoad(get(BP), 16)),
        ...Array.from({ length: R }, (_, i) => [
          ...set(AV, vLoadSplat(aOfRow(i))),
          ...set(ACC[2 * i], multiplyAdd(get(AV), get(B0), get(ACC[2 * i]))),
          ...set(ACC[2 * i + 1], multiplyAdd(get(AV), get(B1), get(ACC[2 * i + 1]))),
        ]),
        ...nextP,
      ),
      ...Array.from({ length: R }, (_, i) => [
        ...set(CP, outAddr(i, get(COL))),
        ...vStore(get(CP), get(ACC[2 * i]), 0),
        ...vStore(get(CP), get(ACC[2 * i + 1]), 16),
      ]),
      set(COL, add(get(COL), i32(8))),
    ),
    // The last n % 8 columns, one output at a time.
    ...Array.from({ length: R }, (_, i) => [
      ...set(TAIL_COL, get(COL)),
      ...whileNot(
        geU(get(TAIL_COL), get(N)),
        set(SUM, f32Zero),
        set(AP, startOfRow(i)),
        set(BP, add(get(B), shl(get(TAIL_COL), i32(2)))),
        set(P, get(K)),
        whileNot(
          eqz(get(P)),
          set(SUM, f32Add(get(SUM), f32Mul(f32Load(get(AP)), f32Load(get(BP))))),
          ...nextP,
        ),
        f32Store(outAddr(i, get(TAIL_COL)), get(SUM)),
        set(TAIL_COL, add(get(TAIL_COL), i32(1))),
      ),
    ]).flat(),
  ];

  const body: Code = [
    ...set(B_ROW_BYTES, shl(get(N), i32(2))),
    ...A_ROWS.flatMap((local, i) => set(local, add(get(rowOffsets[i + 1]!), get(A_ROW)))),
    ...set(ROW, i32(0)),
    // Blocks of six rows, then of four (a 64-row matrix ends 6·10 + 4), then single rows.
    ...[ROW_BLOCK, 4].flatMap((R) =>
      whileNot(
        gtU(add(get(ROW), i32(R)), get(ROWS)),
        rowBlock(R),
        set(ROW, add(get(ROW), i32(R))),
      )
    ),
    ...whileNot(
      geU(get(ROW), get(ROWS)),
      rowBlock(1),
      set(ROW, add(get(ROW), i32(1))),
    ),
    0x0b, // end
  ];
  const locals = vec([[12, I32], [3 + 2 * ROW_BLOCK, V128], [1, F32]]);
  const { initial, maximum } = MEMORY_PAGES;
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // "\0asm", version 1
    ...section(1, vec([[0x60, ...vec(new Array(8).fill([I32])), ...vec([])]])), // type 0: (i32 ×8) → ()
    ...section(
      2,
      vec([[...name("env"), ...name("memory"), 0x02, 0x03, ...uleb(initial), ...uleb(maximum)]]),
    ), // shared memory import
    ...section(3, vec([[0]])), // function 0 has type 0
    ...section(7, vec([[...name("gemm"), 0x00, 0]])), // export function 0
    ...section(10, vec([[...uleb(locals.length + body.length), ...locals, ...body]])),
  ]);
}
