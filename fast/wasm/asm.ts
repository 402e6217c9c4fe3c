/**
 * A WebAssembly assembler small enough to read: one helper per instruction,
 * operands first as in WAT's folded form (`add(get(X), i32(4))` is
 * `(i32.add (local.get $x) (i32.const 4))`), so the kernels of
 * `gemm_kernel.ts` and `adamw.ts` are written as code, not as bytes. wabt's
 * `wat2wasm` gives the same bytes for the same WAT.
 *
 * @module
 */

/** Bytes of WebAssembly code. */
export type Code = number[];

/** Unsigned LEB128. */
export function uleb(n: number): Code {
  const out: Code = [];
  do {
    const low = n & 0x7f;
    n >>>= 7;
    out.push(n ? low | 0x80 : low);
  } while (n);
  return out;
}

/** A length-prefixed vector of items. */
export const vec = (items: Code[]): Code => [...uleb(items.length), ...items.flat()];
/** A size-prefixed section. */
export const section = (id: number, body: Code): Code => [id, ...uleb(body.length), ...body];
/** A name (ASCII). */
export const name = (s: string): Code => vec([...s].map((ch) => [ch.charCodeAt(0)]));
/** Value types, the void block type and the SIMD prefix. */
export const [I32, F32, V128, BLOCK_VOID, SIMD] = [0x7f, 0x7d, 0x7b, 0x40, 0xfd];

/** An instruction taking its operands from the stack, as a function of their code. */
export const op = (code: Code) => (...args: Code[]): Code => [...args.flat(), ...code];
/** `local.get` and `local.set`. */
export const get = (local: number): Code => [0x20, local];
export const set = (local: number, value: Code): Code => [...value, 0x21, local];

/** i32.const of a non-negative x, signed LEB128. */
export const i32 = (x: number): Code => {
  const out: Code = [0x41];
  for (; x >= 64; x >>>= 7) out.push((x & 0x7f) | 0x80);
  return [...out, x];
};
export const [add, sub, mul, shl, shr] = [
  op([0x6a]),
  op([0x6b]),
  op([0x6c]),
  op([0x74]),
  op([0x76]),
];
export const [eqz, ltU, gtU, geU] = [op([0x45]), op([0x49]), op([0x4b]), op([0x4f])];
export const [divU, remU] = [op([0x6e]), op([0x70])];
/** i32.and, and v128.and (bitwise, on all 128 bits). */
export const [i32And, vAnd] = [op([0x71]), op([SIMD, 0x4e])];

/** f32 scalars: memory is addressed with align 4, offset 0. */
export const f32Zero: Code = [0x43, 0, 0, 0, 0];
/** f32.const x. */
export const f32 = (x: number): Code => [0x43, ...new Uint8Array(new Float32Array([x]).buffer)];
/** f32.convert_i32_u. */
export const f32FromU32 = op([0xb3]);
export const f32Load = (addr: Code): Code => [...addr, 0x2a, 2, 0];
/** i32.load, align 4, at addr + offset. */
export const i32Load = (addr: Code, offset = 0): Code => [...addr, 0x28, 2, ...uleb(offset)];
export const f32Store = (addr: Code, value: Code): Code => [...addr, ...value, 0x38, 2, 0];
export const [f32Sqrt, f32Add, f32Sub, f32Mul, f32Div] = [
  op([0x91]),
  op([0x92]),
  op([0x93]),
  op([0x94]),
  op([0x95]),
];

/** f32.max and f32.nearest (to the nearest integer, ties to even). */
export const [f32Max, f32Nearest] = [op([0x97]), op([0x90])];
/** i32.trunc_f32_s, and f32.reinterpret_i32: the float whose bits are the i32. */
export const [i32FromF32, f32FromBits] = [op([0xa8]), op([0xbe])];

/** `call` of the module's function `index`, with its arguments. */
export const call = (
  index: number,
  ...args: Code[]
): Code => [...args.flat(), 0x10, ...uleb(index)];

/** f32x4 vectors. */
export const vZero: Code = [SIMD, 0x0c, ...new Array(16).fill(0)]; // v128.const 0
export const vLoad = (addr: Code, offset: number): Code => [
  ...addr,
  ...[SIMD, 0x00, 4, ...uleb(offset)],
];
export const vStore = (addr: Code, value: Code, offset: number): Code => [
  ...addr,
  ...value,
  ...[SIMD, 0x0b, 4, ...uleb(offset)],
];
export const vSplat = op([SIMD, 0x13]); // f32x4.splat
/** f32x4.extract_lane. */
export const vLane = (v: Code, lane: number): Code => [...v, SIMD, 0x1f, lane];
/** The sum of a vector's four lanes. */
export const vLaneSum = (v: Code): Code =>
  f32Add(f32Add(vLane(v, 0), vLane(v, 1)), f32Add(vLane(v, 2), vLane(v, 3)));
export const [vSqrt, vAdd, vSub, vMul, vDiv] = [
  op([SIMD, 0xe3, 0x01]),
  op([SIMD, 0xe4, 0x01]),
  op([SIMD, 0xe5, 0x01]),
  op([SIMD, 0xe6, 0x01]),
  op([SIMD, 0xe7, 0x01]),
];
/** f32x4.pmax (`b < a ? a : b` lane-wise: no NaN handling, one instruction) and f32x4.nearest. */
export const [vMax, vNearest] = [op([SIMD, 0xeb, 0x01]), op([SIMD, 0x6a])];
/** i32x4 lanes: splat, i32x4.trunc_sat_f32x4_s, add, and shift left by an i32. */
export const [iSplat, iFromF32, iAdd, iShl] = [
  op([SIMD, 0x11]),
  op([SIMD, 0xf8, 0x01]),
  op([SIMD, 0xae, 0x01]),
  op([SIMD, 0xab, 0x01]),
];
/** f32x4.relaxed_madd(a, b, c) = a·b + c, fused or not (relaxed SIMD). */
export const relaxedMadd = op([SIMD, 0x85, 0x02]);
/** v128.load32_splat: one f32 loaded into every lane. */
export const vLoadSplat = (addr: Code): Code => [...addr, SIMD, 0x09, 2, 0];

/**
 * f32 arithmetic written once for one float (`SCALAR`) or four lanes
 * (`VECTOR`, f32x4): the loops of a kernel run four at a time, then the
 * leftovers one at a time, from the same code.
 */
export interface Lanes {
  load: (addr: Code) => Code;
  store: (addr: Code, value: Code) => Code;
  add: (a: Code, b: Code) => Code;
  sub: (a: Code, b: Code) => Code;
  mul: (a: Code, b: Code) => Code;
  div: (a: Code, b: Code) => Code;
  sqrt: (a: Code) => Code;
  max: (a: Code, b: Code) => Code;
  nearest: (a: Code) => Code;
  constant: (c: number) => Code;
  /** 2^n for an integral n in [−126, 127]. */
  pow2: (n: Code) => Code;
}
export const SCALAR: Lanes = {
  load: f32Load,
  store: f32Store,
  add: f32Add,
  sub: f32Sub,
  mul: f32Mul,
  div: f32Div,
  sqrt: f32Sqrt,
  max: f32Max,
  nearest: f32Nearest,
  constant: f32,
  pow2: (n) => f32FromBits(shl(add(i32FromF32(n), i32(127)), i32(23))),
};
export const VECTOR: Lanes = {
  load: (addr) => vLoad(addr, 0),
  store: (addr, value) => vStore(addr, value, 0),
  add: vAdd,
  sub: vSub,
  mul: vMul,
  div: vDiv,
  sqrt: vSqrt,
  max: vMax,
  nearest: vNearest,
  constant: (c) => vSplat(f32(c)),
  pow2: (n) => iShl(iAdd(iFromF32(n), iSplat(i32(127))), i32(23)),
};

/** `(if cond (then …) (else …))`. */
export const ifElse = (cond: Code, then: Code[], otherwise: Code[]): Code => [
  ...cond,
  ...[0x04, BLOCK_VOID],
  ...then.flat(),
  0x05,
  ...otherwise.flat(),
  0x0b,
];
/** `memory.copy`: `bytes` bytes from `src` in memory `srcMemory` to `dst` in memory `dstMemory`. */
export const memoryCopy = (
  dst: Code,
  src: Code,
  bytes: Code,
  dstMemory = 0,
  srcMemory = 0,
): Code => [...dst, ...src, ...bytes, 0xfc, 10, dstMemory, srcMemory];

/**
 * The body of `copyRows(dst, src, rows, rowBytes, dstStride, srcStride)`
 * (six i32 parameters, no other locals): `rows` runs of `rowBytes` bytes
 * from memory `srcMemory` to memory `dstMemory`, each run's start `srcStride`
 * (`dstStride`) bytes after the one before.
 */
export function copyRowsBody(dstMemory = 0, srcMemory = 0): Code {
  const [DST, SRC, ROWS, ROW_BYTES, DST_STRIDE, SRC_STRIDE] = [0, 1, 2, 3, 4, 5];
  return whileNot(
    eqz(get(ROWS)),
    memoryCopy(get(DST), get(SRC), get(ROW_BYTES), dstMemory, srcMemory),
    set(DST, add(get(DST), get(DST_STRIDE))),
    set(SRC, add(get(SRC), get(SRC_STRIDE))),
    set(ROWS, sub(get(ROWS), i32(1))),
  );
}

/** `select`: whenTrue if the i32 condition is not 0, else whenFalse (both evaluated). */
export const select = (whenTrue: Code, whenFalse: Code, condition: Code): Code => [
  ...whenTrue,
  ...whenFalse,
  ...condition,
  0x1b,
];
/** The smaller of two unsigned i32. */
export const minU = (x: Code, y: Code): Code => select(x, y, ltU(x, y));
/** `block (loop (br_if 1 exitWhen) body… (br 0)))`: a while loop. */
export const whileNot = (exitWhen: Code, ...body: Code[]): Code => [
  ...[0x02, BLOCK_VOID, 0x03, BLOCK_VOID],
  ...exitWhen,
  ...[0x0d, 1],
  ...body.flat(),
  ...[0x0c, 0, 0x0b, 0x0b],
];

/** 16·⌊floats/4⌋: the bytes a loop four floats at a time covers of `floats` floats. */
export const vectorBytes = (floats: Code): Code => shl(shl(shr(floats, i32(2)), i32(2)), i32(2));

/**
 * `step` at byte offsets OFF = 0, 16, … below VECTOR_END in f32x4 lanes,
 * then OFF += 4 below END one float at a time (OFF, VECTOR_END and END are
 * i32 locals): the loop of a kernel written once for both.
 */
export const fourThenOne = (
  OFF: number,
  VECTOR_END: number,
  END: number,
  step: (ops: Lanes) => Code[],
): Code => [
  ...set(OFF, i32(0)),
  ...whileNot(geU(get(OFF), get(VECTOR_END)), ...step(VECTOR), set(OFF, add(get(OFF), i32(16)))),
  ...whileNot(geU(get(OFF), get(END)), ...step(SCALAR), set(OFF, add(get(OFF), i32(4)))),
];

/** One function of a module: its parameter types, extra locals and body (without `end`). */
export interface WasmFunction {
  name: string;
  params: number[];
  locals: [count: number, type: number][];
  body: Code;
}

/**
 * A module that imports `env.memory` (`memoryType`: limits flag, initial and
 * maximum pages as the binary format writes them), then the memories of
 * `moreMemories` as `env.<name>` (memories 1, 2, … in that order), and
 * exports `functions`.
 */
export function assemble(
  memoryType: Code,
  functions: WasmFunction[],
  moreMemories: Record<string, Code> = {},
): Uint8Array<ArrayBuffer> {
  const memories = Object.entries({ memory: memoryType, ...moreMemories });
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // "\0asm", version 1
    ...section(1, vec(functions.map((f) => [0x60, ...vec(f.params.map((t) => [t])), 0]))), // one type each: (params) → ()
    ...section(2, vec(memories.map(([n, type]) => [...name("env"), ...name(n), 0x02, ...type]))),
    ...section(3, vec(functions.map((_, i) => uleb(i)))), // function i has type i
    ...section(7, vec(functions.map((f, i) => [...name(f.name), 0x00, ...uleb(i)]))),
    ...section(
      10,
      vec(functions.map((f) => {
        const code = [...vec(f.locals.map(([n, t]) => [...uleb(n), t])), ...f.body, 0x0b];
        return [...uleb(code.length), ...code];
      })),
    ),
  ]);
}
