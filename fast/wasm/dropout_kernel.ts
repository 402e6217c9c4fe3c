/**
 * Dropout masks drawn by a WebAssembly loop instead of JavaScript: the
 * same draws from the run's stream (`lib/rng.ts`'s sfc32, one `random() <
 * p` per element, in order), so the same masks and the same stream after,
 * at a fraction of the cost (gptLM at its defaults draws ~226M a step). The
 * module has its own memory: it serves every backend.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { Rng } from "../../lib/rng.ts";
import {
  add,
  assemble,
  type Code,
  eqz,
  F32,
  f32Store,
  f32Zero,
  get,
  I32,
  i32,
  i32And,
  i32Load,
  op,
  select,
  set,
  shl,
  shr,
  sub,
  uleb,
  whileNot,
} from "./asm.ts";

const F64 = 0x7c;
const [or, xor, rotl, i32Store, store8] = [
  op([0x72]),
  op([0x73]),
  op([0x77]),
  (addr: Code, value: Code, offset: number): Code => [...addr, ...value, 0x36, 2, offset],
  (addr: Code, value: Code): Code => [...addr, ...value, 0x3a, 0, 0],
];
const [f64FromU32, f64Lt] = [op([0xb8]), op([0x63])];

/** Bytes at the start of the module's memory that hold the stream's four words. */
const STATE_BYTES = 16;

/**
 * `maskFloats(dst, n, threshold, keep)`, `maskBytes(dst, n, threshold)` and
 * `maskBits(dst, n, threshold)`: n draws from the sfc32 state at byte 0
 * (advanced in place), element i dropped when draw i < threshold (= p·2³²,
 * exactly `random() < p`): floats 0 or keep, as `layers.ts`'s dropout;
 * bytes 0x00 or 0xFF, a lane mask; bits, set where kept (bit i % 32 of
 * 32-bit word i / 32), WebGPU's upload.
 */
function maskModule(): Uint8Array<ArrayBuffer> {
  const [DST, N, THRESHOLD, KEEP] = [0, 1, 2, 3]; // parameters (KEEP: maskFloats only)
  /** The loop over n draws, `store(dropped)` writing each and `width` bytes apart; `first` is its first local. */
  const draws = (first: number, width: number, store: (dropped: Code) => Code): Code => {
    const [A, B, C, D, T] = [first, first + 1, first + 2, first + 3, first + 4]; // i32 locals
    const words = [A, B, C, D];
    return [
      ...words.flatMap((w, i) => set(w, i32Load(i32(0), 4 * i))),
      ...whileNot(
        eqz(get(N)),
        // lib/rng.ts's nextUint32, word for word.
        set(T, add(add(get(A), get(B)), get(D))),
        set(D, add(get(D), i32(1))),
        set(A, xor(get(B), shr(get(B), i32(9)))),
        set(B, add(get(C), shl(get(C), i32(3)))),
        set(C, add(rotl(get(C), i32(21)), get(T))),
        store(f64Lt(f64FromU32(get(T)), get(THRESHOLD))),
        set(DST, add(get(DST), i32(width))),
        set(N, sub(get(N), i32(1))),
      ),
      ...words.flatMap((w, i) => i32Store(i32(0), get(w), 4 * i)),
    ];
  };
  return assemble([0x00, ...uleb(1)], [
    {
      name: "maskFloats",
      params: [I32, I32, F64, F32],
      locals: [[5, I32]],
      body: draws(4, 4, (dropped) => f32Store(get(DST), select(f32Zero, get(KEEP), dropped))),
    },
    {
      name: "maskBytes",
      params: [I32, I32, F64],
      locals: [[5, I32]],
      body: draws(3, 1, (dropped) => store8(get(DST), select(i32(0), i32(0xff), dropped))),
    },
    {
      name: "maskBits",
      params: [I32, I32, F64],
      locals: [[6, I32]],
      body: (() => {
        const I = 8; // the element's index: the locals after draws' five
        const word = add(get(DST), shl(shr(get(I), i32(5)), i32(2)));
        const slot = i32And(get(I), i32(31));
        return draws(3, 0, (dropped) => {
          const bit = shl(eqz(dropped), slot);
          return [
            // A word's first element starts it afresh; the others add their bit.
            ...i32Store(word, select(bit, or(i32Load(word, 0), bit), eqz(slot)), 0),
            ...set(I, add(get(I), i32(1))),
          ];
        });
      })(),
    },
  ]);
}

let module: { exports: WebAssembly.Exports; memory: WebAssembly.Memory } | null = null;

/**
 * Draws a mask of `bytes` bytes from `rng` (advancing it) by `draw`, given
 * the module's exports and the threshold; returns the module's memory, the
 * mask at byte STATE_BYTES.
 */
function drawMask(
  rng: Rng,
  p: number,
  bytes: number,
  draw: (exports: WebAssembly.Exports, threshold: number) => void,
): WebAssembly.Memory {
  if (!module) {
    const memory = new WebAssembly.Memory({ initial: 1 });
    const bytes = maskModule();
    module = {
      exports: new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } }).exports,
      memory,
    };
  }
  const { exports, memory } = module;
  const need = STATE_BYTES + bytes;
  if (need > memory.buffer.byteLength) {
    memory.grow(Math.ceil((need - memory.buffer.byteLength) / 65536));
  }
  const state = rng.getState();
  new Int32Array(memory.buffer, 0, 4).set(state.words);
  draw(exports, p * 2 ** 32);
  const words = [...new Int32Array(memory.buffer, 0, 4)] as typeof state.words;
  rng.setState({ words, spareNormal: state.spareNormal });
  return memory;
}

/**
 * `n` values of `layers.ts`'s dropout mask, 0 with probability p and
 * 1/(1−p) otherwise, drawn from `rng` exactly as `dropout` draws them.
 */
export function dropoutMaskFloats(rng: Rng, n: number, p: number): Float32Array {
  const keep = 1 / (1 - p);
  const memory = drawMask(
    rng,
    p,
    4 * n,
    (e, threshold) => (e.maskFloats as (...a: number[]) => void)(STATE_BYTES, n, threshold, keep),
  );
  return new Float32Array(memory.buffer, STATE_BYTES, n).slice();
}

/**
 * The same draws as {@link dropoutMaskFloats}, as bytes: 0x00 where the
 * element is dropped, 0xFF where it is kept (scaled by 1/(1−p) by whoever
 * applies it).
 */
export function dropoutMaskBytes(rng: Rng, n: number, p: number): Uint8Array {
  const memory = drawMask(
    rng,
    p,
    n,
    (e, threshold) => (e.maskBytes as (...a: number[]) => void)(STATE_BYTES, n, threshold),
  );
  return new Uint8Array(memory.buffer, STATE_BYTES, n).slice();
}

/**
 * The same draws as {@link dropoutMaskFloats}, as bits: bit i % 32 of word
 * i / 32 set where element i is kept (WebGPU's dropout uploads these).
 */
export function dropoutMaskBits(rng: Rng, n: number, p: number): Uint32Array {
  const words = Math.ceil(n / 32);
  const memory = drawMask(
    rng,
    p,
    4 * words,
    (e, threshold) => (e.maskBits as (...a: number[]) => void)(STATE_BYTES, n, threshold),
  );
  return new Uint32Array(memory.buffer, STATE_BYTES, words).slice();
}

/** `layers.ts`'s dropout, its mask drawn by {@link dropoutMaskFloats}: on any backend. */
export function dropoutWasmMask(x: tf.Tensor, p: number, rng: Rng): tf.Tensor {
  return x.mul(tf.tensor(dropoutMaskFloats(rng, x.size, p), x.shape));
}
