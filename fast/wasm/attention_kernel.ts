/**
 * Causal self-attention of one (batch, head) pair as WebAssembly functions
 * of the product module (`gemm_kernel.ts`), which calls them one pair per
 * chunk on both threads. No tfjs here: the helper thread imports this file.
 *
 * q, k, v, y and their gradients are (B, T, C) with the heads side by side
 * (head h is columns h·hs…(h+1)·hs), read and written in place with a row
 * stride of C; P, the attention weights, is (T, T) per pair. With s the
 * scale hs^-½ and M the causal mask (−∞ above the diagonal):
 *
 *   S = s·Q Kᵀ + M     P = softmax(S) by rows     Y = P V
 *   dP = dY Vᵀ         dS = s·P ∘ (dP − rowsum(P ∘ dP))
 *   dV = Pᵀ dY         dQ = dS K                  dK = dSᵀ Q
 *
 * The five products run on the module's `gemm`, each operand packed by its
 * `pack` or read where it is; rows of the softmax and its gradient are plain
 * loops, with exp as a polynomial (Cephes' expf: within 2 ulp).
 *
 * @module
 */
import {
  add,
  call,
  type Code,
  divU,
  eqz,
  F32,
  f32,
  f32Add,
  f32Div,
  f32FromBits,
  f32Load,
  f32Max,
  f32Mul,
  f32Store,
  f32Sub,
  f32Zero,
  get,
  geU,
  gtU,
  I32,
  i32,
  i32And,
  ifElse,
  type Lanes,
  minU,
  mul,
  op,
  SCALAR,
  set,
  shl,
  SIMD,
  sub,
  V128,
  vAdd,
  vAnd,
  vDiv,
  VECTOR,
  vLane,
  vLaneSum,
  vLoad,
  vMax,
  vMul,
  vSplat,
  vStore,
  vSub,
  vZero,
  type WasmFunction,
  whileNot,
} from "./asm.ts";

/**
 * `e^x` for x ≤ 0 (below −87.3, e^−87.3 ≈ 1e-38), leaving it on the stack;
 * X, N and Y are locals (f32 for SCALAR, v128 for VECTOR) it may use. x = n·ln 2 +
 * r with |r| ≤ ½ ln 2, e^r by a degree-7 polynomial, 2^n from its exponent
 * bits.
 */
export function exp(x: Code, ops: Lanes, X: number, N: number, Y: number): Code {
  const { add, sub, mul, constant } = ops;
  const horner = [
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
  ]
    .reduce((y: Code, c) => add(mul(y, get(X)), constant(c)), constant(1.98756915e-4));
  return [
    ...set(X, ops.max(x, constant(-87.3))),
    ...set(N, ops.nearest(mul(get(X), constant(Math.LOG2E)))),
    // r = x − n·ln 2, ln 2 in two parts so that n·ln2Hi is exact.
    ...set(
      X,
      sub(sub(get(X), mul(get(N), constant(0.693359375))), mul(get(N), constant(-2.12194440e-4))),
    ),
    ...set(Y, horner),
    ...mul(add(add(mul(get(Y), mul(get(X), get(X))), get(X)), constant(1)), ops.pow2(get(N))), // e^r · 2^n
  ];
}

/** Locals a softmax pass over a row works in: f32 (SCALAR) and v128 (VECTOR) ones. */
export interface SoftmaxLocals {
  /** i32: the element the loop is at. */
  at: number;
  /** f32: the row's largest score, the running sum, a value, and {@link exp}'s three. */
  max: number;
  sum: number;
  value: number;
  scalarExp: [number, number, number];
  /** v128: the same, four lanes. */
  vMax: number;
  vSum: number;
  vValue: number;
  vectorExp: [number, number, number];
}

/**
 * A softmax's second and third passes over a row whose largest score is in
 * `max`, each as the [vector, scalar] bodies of a loop that walks `at`:
 * e^(s − max) in place, summed into `sum` (which ends as the row's total,
 * its lanes in `vSum`); then each value divided by the sum.
 */
export function softmaxPasses(l: SoftmaxLocals): {
  start: Code;
  exponentials: [Code[], Code[]];
  total: Code;
  normalise: [Code[], Code[]];
} {
  return {
    start: [...set(l.vMax, vSplat(get(l.max))), ...set(l.sum, f32Zero), ...set(l.vSum, vZero)],
    exponentials: [
      [
        set(l.vValue, exp(vSub(vLoad(get(l.at), 0), get(l.vMax)), VECTOR, ...l.vectorExp)),
        vStore(get(l.at), get(l.vValue), 0),
        set(l.vSum, vAdd(get(l.vSum), get(l.vValue))),
      ],
      [
        set(l.value, exp(f32Sub(f32Load(get(l.at)), get(l.max)), SCALAR, ...l.scalarExp)),
        f32Store(get(l.at), get(l.value)),
        set(l.sum, f32Add(get(l.sum), get(l.value))),
      ],
    ],
    total: [
      ...set(l.sum, f32Add(get(l.sum), vLaneSum(get(l.vSum)))),
      ...set(l.vSum, vSplat(get(l.sum))),
    ],
    normalise: [
      [vStore(get(l.at), vDiv(vLoad(get(l.at), 0), get(l.vSum)), 0)],
      [f32Store(get(l.at), f32Div(f32Load(get(l.at)), get(l.sum)))],
    ],
  };
}

/**
 * Elements J…END−1 of a row, J and END i32 locals: `vector` four at a time
 * while four remain, then `scalar` one at a time; each address local in
 * `addrs` moves along with J.
 */
export function rowPass(
  J: number,
  END: number,
  addrs: number[],
  vector: Code[],
  scalar: Code[],
): Code {
  const step = (bytes: number) => addrs.map((a) => set(a, add(get(a), i32(bytes))));
  return [
    ...whileNot(
      gtU(add(get(J), i32(4)), get(END)),
      ...vector,
      ...step(16),
      set(J, add(get(J), i32(4))),
    ),
    ...whileNot(geU(get(J), get(END)), ...scalar, ...step(4), set(J, add(get(J), i32(1)))),
  ];
}

/** Elements J…END−1 of a row, from the address in AT on: 0. */
const zeroRest = (J: number, END: number, AT: number): Code =>
  rowPass(J, END, [AT], [vStore(get(AT), vZero, 0)], [f32Store(get(AT), f32Zero)]);

/** The largest of a vector's four lanes. */
const laneMax = (v: Code): Code =>
  f32Max(f32Max(vLane(v, 0), vLane(v, 1)), f32Max(vLane(v, 2), vLane(v, 3)));

/**
 * `softmaxCausal(p, T, scale)`: row t of the (T, T) scores at p becomes
 * softmax(scale · row[0…t]) followed by zeros, in place.
 */
function softmaxCausal(): WasmFunction {
  const [P, T, SCALE] = [0, 1, 2]; // parameters
  const [ROW, TT, J, AT, COUNT] = [3, 4, 5, 6, 7]; // i32 locals: row address, t, j, element address, t + 1
  const [MAX, SUM, S, X, N, Y] = [8, 9, 10, 11, 12, 13]; // f32 locals
  const [VMAX, VSUM, VS, VX, VN, VY] = [14, 15, 16, 17, 18, 19]; // v128 locals
  const softmax = softmaxPasses({
    at: AT,
    max: MAX,
    sum: SUM,
    value: S,
    scalarExp: [X, N, Y],
    vMax: VMAX,
    vSum: VSUM,
    vValue: VS,
    vectorExp: [VX, VN, VY],
  });
  /** Keys 0…t of row t. */
  const overKeys = (vector: Code[], scalar: Code[]): Code => [
    ...set(J, i32(0)),
    ...set(AT, get(ROW)),
    ...rowPass(J, COUNT, [AT], vector, scalar),
  ];
  const body: Code = [
    ...set(ROW, get(P)),
    ...set(TT, i32(0)),
    ...whileNot(
      geU(get(TT), get(T)),
      set(COUNT, add(get(TT), i32(1))),
      // Scale, and the row's largest score.
      set(MAX, f32(-Infinity)),
      set(VMAX, vSplat(get(MAX))),
      overKeys([
        set(VS, vMul(vLoad(get(AT), 0), vSplat(get(SCALE)))),
        vStore(get(AT), get(VS), 0),
        set(VMAX, vMax(get(VMAX), get(VS))),
      ], [
        set(S, f32Mul(f32Load(get(AT)), get(SCALE))),
        f32Store(get(AT), get(S)),
        set(MAX, f32Max(get(MAX), get(S))),
      ]),
      set(MAX, f32Max(get(MAX), laneMax(get(VMAX)))),
      // e^(s − max), their sum, and each divided by it.
      softmax.start,
      overKeys(...softmax.exponentials),
      softmax.total,
      overKeys(...softmax.normalise),
      // The masked keys, t+1…T−1: weight 0.
      zeroRest(J, T, AT),
      set(ROW, add(get(ROW), shl(get(T), i32(2)))),
      set(TT, get(COUNT)),
    ),
  ];
  return {
    name: "softmaxCausal",
    params: [I32, I32, F32],
    locals: [[5, I32], [6, F32], [6, V128]],
    body,
  };
}

/**
 * `softmaxGrad(p, d, T, scale)`: the (T, T) dP at d becomes dS = scale · P ∘
 * (dP − rowsum(P ∘ dP)), in place, on and below the diagonal; 0 above it,
 * as P is.
 */
function softmaxGrad(): WasmFunction {
  const [P, D, T, SCALE] = [0, 1, 2, 3]; // parameters
  const [ROW_P, ROW_D, TT, J, AP, AD, COUNT] = [4, 5, 6, 7, 8, 9, 10]; // i32 locals
  const SUM = 11; // f32 local
  const [VSUM, VSCALE] = [12, 13]; // v128 locals
  const body: Code = [
    ...set(ROW_P, get(P)),
    ...set(ROW_D, get(D)),
    ...set(VSCALE, vSplat(get(SCALE))),
    ...set(TT, i32(0)),
    ...whileNot(
      geU(get(TT), get(T)),
      set(COUNT, add(get(TT), i32(1))),
      // rowsum(P ∘ dP) over keys 0…t (P is 0 beyond).
      set(SUM, f32Zero),
      set(VSUM, vZero),
      set(J, i32(0)),
      set(AP, get(ROW_P)),
      set(AD, get(ROW_D)),
      rowPass(
        J,
        COUNT,
        [AP, AD],
        [set(VSUM, vAdd(get(VSUM), vMul(vLoad(get(AP), 0), vLoad(get(AD), 0))))],
        [set(SUM, f32Add(get(SUM), f32Mul(f32Load(get(AP)), f32Load(get(AD)))))],
      ),
      set(SUM, f32Add(get(SUM), vLaneSum(get(VSUM)))),
      set(VSUM, vSplat(get(SUM))),
      set(J, i32(0)),
      set(AP, get(ROW_P)),
      set(AD, get(ROW_D)),
      rowPass(J, COUNT, [AP, AD], [
        vStore(
          get(AD),
          vMul(vMul(vLoad(get(AP), 0), vSub(vLoad(get(AD), 0), get(VSUM))), get(VSCALE)),
          0,
        ),
      ], [
        f32Store(
          get(AD),
          f32Mul(f32Mul(f32Load(get(AP)), f32Sub(f32Load(get(AD)), get(SUM))), get(SCALE)),
        ),
      ]),
      // Above the diagonal dS is 0, whatever dP holds there (the product may not have written it).
      zeroRest(J, T, AD),
      set(ROW_P, add(get(ROW_P), shl(get(T), i32(2)))),
      set(ROW_D, add(get(ROW_D), shl(get(T), i32(2)))),
      set(TT, get(COUNT)),
    ),
  ];
  return {
    name: "softmaxGrad",
    params: [I32, I32, I32, F32],
    locals: [[7, I32], [1, F32], [2, V128]],
    body,
  };
}

/**
 * `copyRows(src, dst, rows, cols, srcRow, dstRow)`: a (rows, cols) block of
 * floats whose rows are srcRow and dstRow bytes apart, four at a time.
 */
function copyRows(): WasmFunction {
  const [SRC, DST, ROWS, COLS, SRC_ROW, DST_ROW] = [0, 1, 2, 3, 4, 5]; // parameters
  const [J, S, D] = [6, 7, 8]; // i32 locals: column, its source and destination
  const body: Code = whileNot(
    eqz(get(ROWS)),
    set(J, i32(0)),
    set(S, get(SRC)),
    set(D, get(DST)),
    rowPass(J, COLS, [S, D], [vStore(get(D), vLoad(get(S), 0), 0)], [
      f32Store(get(D), f32Load(get(S))),
    ]),
    set(SRC, add(get(SRC), get(SRC_ROW))),
    set(DST, add(get(DST), get(DST_ROW))),
    set(ROWS, sub(get(ROWS), i32(1))),
  );
  return { name: "copyRows", params: new Array(6).fill(I32), locals: [[3, I32]], body };
}

const [i32Load8, i32FromBits] = [
  (addr: Code): Code => [...addr, 0x2c, 0, 0], // i32.load8_s
  op([0xbc]), // i32.reinterpret_f32
];
const [vLoad32Zero, vWiden8, vWiden16] = [
  (addr: Code): Code => [...addr, SIMD, 0x5c, 2, 0], // v128.load32_zero
  op([SIMD, 0x87, 0x01]), // i16x8.extend_low_i8x16_s
  op([SIMD, 0xa7, 0x01]), // i32x4.extend_low_i16x8_s
];

/**
 * `dropRows(src, dst, mask, count, keep)`: dst[i] = src[i]·keep where
 * mask byte i is 0xFF, 0 where it is 0x00 (a dropout mask), for count
 * floats; dst may be src. Each byte widened to a 32-bit lane of ones or
 * zeros selects its float by a bitwise and.
 */
function dropRows(): WasmFunction {
  const [SRC, DST, MASK, COUNT, KEEP] = [0, 1, 2, 3, 4]; // parameters, KEEP f32
  const [J, S, D] = [5, 6, 7]; // i32 locals: element, its source and destination
  const VKEEP = 8; // v128 local
  const maskAt = add(get(MASK), get(J));
  const body: Code = [
    ...set(VKEEP, vSplat(get(KEEP))),
    ...set(J, i32(0)),
    ...set(S, get(SRC)),
    ...set(D, get(DST)),
    ...rowPass(J, COUNT, [S, D], [
      vStore(
        get(D),
        vAnd(vMul(vLoad(get(S), 0), get(VKEEP)), vWiden16(vWiden8(vLoad32Zero(maskAt)))),
        0,
      ),
    ], [
      f32Store(
        get(D),
        f32FromBits(i32And(i32FromBits(f32Mul(f32Load(get(S)), get(KEEP))), i32Load8(maskAt))),
      ),
    ]),
  ];
  return {
    name: "dropRows",
    params: [I32, I32, I32, I32, F32],
    locals: [[3, I32], [1, V128]],
    body,
  };
}

/**
 * The attention functions, to be the module's functions `first`…`first+5`;
 * `gemm` and `pack` are the indices of the product and of the packing
 * (their signatures in `gemm_kernel.ts`), with `rowBlock` and `colBlock` its
 * panel sizes.
 *
 * - `attentionForward(q, k, v, y, p, T, C, hs, scale, panel, out, mask,
 *   keep, dropped)`: Y and P of one pair; `panel` and `out` are scratch of
 *   (T + 8)·(hs + 8) and T·hs floats (and pack's slack).
 * - `attentionBackward(q, k, v, p, dy, dq, dk, dv, T, C, hs, scale, panel,
 *   dScores, out, mask, keep, dropped)`: dQ, dK and dV of one pair;
 *   `dScores` is scratch of T·T floats.
 *
 * With dropout on the weights (`mask`, the pair's (T, T) bytes of
 * `dropout_kernel.ts`, not 0), P̃ = P ∘ M·keep takes P's place in Y = P̃ V
 * and dV = P̃ᵀ dY, and dP̃ = dY Vᵀ becomes dP = dP̃ ∘ M·keep; P, saved, is
 * the weights before dropout. `dropped` is scratch of T·T floats for P̃.
 *
 * The products skip what the mask makes zero: they run over rows in chunks
 * of CHUNK_ROWS, and a chunk of rows r0…r1−1 of S or dP needs only keys
 * below r1 (rounded up to whole panels), of P V or dS K only keys below r1,
 * and of Pᵀ dY or dSᵀ Q only queries from r0 on: about half the work.
 */
export function attentionFunctions(
  gemm: number,
  pack: number,
  first: number,
  rowBlock: number,
  colBlock: number,
): WasmFunction[] {
  const [softmax, softmaxBack, copy, drop] = [first, first + 1, first + 2, first + 3];
  /** Bytes of `count` floats. */
  const bytes = (count: Code): Code => shl(count, i32(2));
  const CHUNK_ROWS = 2 * rowBlock;
  /**
   * `body` for each chunk of rows R0…R1−1 of T (i32 locals), then the
   * product's rows as they are.
   */
  const overChunks = (R0: number, R1: number, T: number, ...body: Code[]): Code => [
    ...set(R0, i32(0)),
    ...whileNot(
      geU(get(R0), get(T)),
      set(R1, minU(add(get(R0), i32(CHUNK_ROWS)), get(T))),
      ...body,
      set(R0, get(R1)),
    ),
  ];
  /** `gemm` over rows R0…R1−1, from the chunk's first row of A and C. */
  const gemmRows = (
    R0: number,
    R1: number,
    { a, b, c, k, n, aRow, aCol, aPanel, cRow, bPanel }: Record<string, Code>,
  ): Code =>
    call(
      gemm,
      a,
      b,
      c,
      i32(0),
      sub(get(R1), get(R0)),
      k,
      n,
      aRow,
      aCol,
      aPanel,
      cRow,
      bPanel,
      i32(0),
    );
  /** Keys 0…r1−1 in whole panels, at most T. */
  const keysBelow = (R1: number, T: number): Code =>
    minU(mul(divU(add(get(R1), i32(colBlock - 1)), i32(colBlock)), i32(colBlock)), get(T));

  /** Where a function keeps T, hs, C·4 (the row stride of the (B, T, C) tensors), its scratch and its chunk's rows. */
  interface Frame {
    T: number;
    HS: number;
    ROW: number;
    PANEL: number;
    OUT: number;
    R0: number;
    R1: number;
  }
  /** (T, T) `out` = `x` Kᵀ for the (T, hs) head `keys`, on and below the diagonal. */
  const scoresInto = (f: Frame, x: number, keys: number, out: number): Code => [
    // Kᵀ (hs, T) packed from the head read down its columns.
    ...call(pack, get(keys), get(f.PANEL), get(f.HS), get(f.T), i32(4), get(f.ROW), i32(colBlock)),
    ...overChunks(
      f.R0,
      f.R1,
      f.T,
      gemmRows(f.R0, f.R1, {
        a: add(get(x), mul(get(f.R0), get(f.ROW))), // x's head in place
        b: get(f.PANEL),
        c: add(get(out), mul(get(f.R0), bytes(get(f.T)))),
        k: get(f.HS),
        n: keysBelow(f.R1, f.T),
        aRow: get(f.ROW),
        aCol: i32(4),
        aPanel: mul(get(f.ROW), i32(rowBlock)),
        cRow: bytes(get(f.T)),
        bPanel: mul(get(f.HS), i32(4 * colBlock)),
      }),
    ),
  ];
  /**
   * (T, hs) `m` @ `b`, or `m`ᵀ @ `b` when `transposed`, for a (T, T) m zero
   * above its diagonal and the (T, hs) head `b`, into the head `to`.
   */
  const productInto = (f: Frame, m: number, transposed: boolean, b: number, to: number): Code => {
    const tRow = bytes(get(f.T)); // m's row stride
    return [
      ...call(pack, get(b), get(f.PANEL), get(f.T), get(f.HS), get(f.ROW), i32(4), i32(colBlock)),
      ...overChunks(
        f.R0,
        f.R1,
        f.T,
        gemmRows(f.R0, f.R1, {
          ...(transposed
            ? { // rows are keys j, read down m's columns from query r0 on: m[t, j] = 0 for t < j
              a: add(add(get(m), mul(get(f.R0), tRow)), bytes(get(f.R0))),
              b: add(get(f.PANEL), mul(get(f.R0), i32(4 * colBlock))),
              k: sub(get(f.T), get(f.R0)),
              aRow: i32(4),
              aCol: tRow,
              aPanel: i32(4 * rowBlock),
            }
            : { // rows are queries t, over keys below r1: m[t, j] = 0 for j > t
              a: add(get(m), mul(get(f.R0), tRow)),
              b: get(f.PANEL),
              k: get(f.R1),
              aRow: tRow,
              aCol: i32(4),
              aPanel: mul(tRow, i32(rowBlock)),
            }),
          c: add(get(f.OUT), mul(get(f.R0), bytes(get(f.HS)))),
          n: get(f.HS),
          cRow: bytes(get(f.HS)),
          bPanel: mul(get(f.T), i32(4 * colBlock)),
        }),
      ),
      ...call(copy, get(f.OUT), get(to), get(f.T), get(f.HS), bytes(get(f.HS)), get(f.ROW)),
    ];
  };

  /** WEIGHTS = P, or P̃ = P ∘ M·keep into `dropped` when there is a mask. */
  const dropWeights = (
    p: number,
    T: number,
    mask: number,
    keep: number,
    dropped: number,
    weights: number,
  ): Code => [
    ...set(weights, get(p)),
    ...ifElse(eqz(get(mask)), [], [
      call(drop, get(p), get(dropped), get(mask), mul(get(T), get(T)), get(keep)),
      set(weights, get(dropped)),
    ]),
  ];

  // attentionForward: parameters, then i32 locals.
  const [Q, K, V, Y, P, T, C, HS, SCALE, PANEL, OUT, MASK, KEEP, DROPPED] = [
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
    13,
  ];
  const [ROW, R0, R1, WEIGHTS] = [14, 15, 16, 17];
  const fwd: Frame = { T, HS, ROW, PANEL, OUT, R0, R1 };
  const forward: Code = [
    ...set(ROW, bytes(get(C))),
    ...scoresInto(fwd, Q, K, P), // S = Q Kᵀ
    ...call(softmax, get(P), get(T), get(SCALE)), // P
    ...dropWeights(P, T, MASK, KEEP, DROPPED, WEIGHTS), // P, or P̃
    ...productInto(fwd, WEIGHTS, false, V, Y), // Y = P̃ V
  ];

  // attentionBackward: parameters, then i32 locals.
  const [BQ, BK, BV, BP, DY, DQ, DK, DV, BT, BC, BHS, BSCALE, BPANEL, DS, BOUT] = [
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
    13,
    14,
  ];
  const [BMASK, BKEEP, BDROPPED] = [15, 16, 17];
  const [BROW, BR0, BR1, BWEIGHTS] = [18, 19, 20, 21];
  const bwd: Frame = { T: BT, HS: BHS, ROW: BROW, PANEL: BPANEL, OUT: BOUT, R0: BR0, R1: BR1 };
  const backward: Code = [
    ...set(BROW, bytes(get(BC))),
    ...scoresInto(bwd, DY, BV, DS), // dP̃ = dY Vᵀ
    ...ifElse(eqz(get(BMASK)), [], [ // dP = dP̃ ∘ M·keep
      call(drop, get(DS), get(DS), get(BMASK), mul(get(BT), get(BT)), get(BKEEP)),
    ]),
    ...dropWeights(BP, BT, BMASK, BKEEP, BDROPPED, BWEIGHTS), // P, or P̃
    ...call(softmaxBack, get(BP), get(DS), get(BT), get(BSCALE)), // dS
    ...productInto(bwd, BWEIGHTS, true, DY, DV), // dV = P̃ᵀ dY
    ...productInto(bwd, DS, false, BK, DQ), // dQ = dS K
    ...productInto(bwd, DS, true, BQ, DK), // dK = dSᵀ Q
  ];

  return [
    softmaxCausal(),
    softmaxGrad(),
    copyRows(),
    dropRows(),
    {
      name: "attentionForward",
      params: [...new Array(8).fill(I32), F32, I32, I32, I32, F32, I32],
      locals: [[4, I32]],
      body: forward,
    },
    {
      name: "attentionBackward",
      params: [...new Array(11).fill(I32), F32, I32, I32, I32, I32, F32, I32],
      locals: [[4, I32]],
      body: backward,
    },
  ];
}
