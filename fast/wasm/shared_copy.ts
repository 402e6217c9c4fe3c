/**
 * Copies between tfjs-backend-wasm's heap and the memory our product's
 * threads share (`matmul.ts`), for the products' and attention's operands
 * and results.
 *
 * One small module imports both memories (WebAssembly's multi-memory) and
 * copies with `memory.copy` from one to the other, which V8 runs as a
 * plain memcpy; `TypedArray.set` into a SharedArrayBuffer copies with
 * relaxed atomics instead, about half as fast. Row by row, a copy can also
 * take some columns of every row (q, k or v from attention's packed qkv)
 * or put parts side by side (dq, dk and dv into one gradient of qkv).
 *
 * It relies on internals of tfjs-backend-wasm 4.22 (see `heap.ts`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { assemble, copyRowsBody, I32, uleb } from "./asm.ts";
import { heapAddress, type WasmBackendInternals } from "./heap.ts";

/** `copyRows(dst, src, rows, rowBytes, dstStride, srcStride)`: rows of `rowBytes` bytes, each row's start `stride` bytes after the last. */
type CopyRows = (...args: number[]) => void;

/** The module's two directions: memory 0 is tfjs's heap, memory 1 the shared one. */
interface Bridge {
  toShared: CopyRows;
  fromShared: CopyRows;
}

/** The module: `copyRows` from the heap to the shared memory, and back. */
function bridgeModule(): Uint8Array<ArrayBuffer> {
  const params = new Array(6).fill(I32);
  return assemble(
    [0x00, ...uleb(0)], // tfjs's memory: not shared
    [
      { name: "toShared", params, locals: [], body: copyRowsBody(1, 0) },
      { name: "fromShared", params, locals: [], body: copyRowsBody(0, 1) },
    ],
    { shared: [0x03, ...uleb(0), ...uleb(65536)] }, // ours: shared, any size
  );
}

let bridge: { heap: WebAssembly.Memory; shared: WebAssembly.Memory; exports: Bridge } | null = null;

/** The module on these two memories (the objects stay the same as they grow). */
function bridgeOf(wasm: WasmBackendInternals, shared: WebAssembly.Memory): Bridge {
  const heap = wasm.wasm.asm.memory;
  if (bridge?.heap !== heap || bridge.shared !== shared) {
    const instance = new WebAssembly.Instance(new WebAssembly.Module(bridgeModule()), {
      env: { memory: heap, shared },
    });
    bridge = { heap, shared, exports: instance.exports as unknown as Bridge };
  }
  return bridge.exports;
}

/**
 * Copies the values of `t` from tfjs's heap to byte `to` of `shared`; with
 * `columns` [first, count], only those columns of each of its rows (its
 * last axis), side by side: a (..., count) block.
 */
export function copyToShared(
  wasm: WasmBackendInternals,
  shared: WebAssembly.Memory,
  t: tf.TensorInfo,
  to: number,
  columns?: [first: number, count: number],
): void {
  const { toShared } = bridgeOf(wasm, shared);
  const from = heapAddress(wasm, t);
  if (!columns) {
    toShared(to, from, 1, tf.util.sizeFromShape(t.shape) * 4, 0, 0);
    return;
  }
  const width = t.shape[t.shape.length - 1];
  const [first, count] = columns;
  toShared(
    to,
    from + first * 4,
    tf.util.sizeFromShape(t.shape) / width,
    count * 4,
    count * 4,
    width * 4,
  );
}

/**
 * A new tensor of `shape` holding the floats at byte `from` of `shared`;
 * with several addresses, each holds an equal block of the last axis (a
 * (..., last / parts) block each), put side by side.
 */
export function tensorFromShared(
  wasm: WasmBackendInternals,
  shared: WebAssembly.Memory,
  from: number | number[],
  shape: number[],
): tf.TensorInfo {
  const out = wasm.makeOutput(shape, "float32");
  // Looked up after makeOutput, which may have grown tfjs's memory.
  const { fromShared } = bridgeOf(wasm, shared);
  const to = heapAddress(wasm, out);
  if (typeof from === "number") {
    fromShared(to, from, 1, tf.util.sizeFromShape(shape) * 4, 0, 0);
    return out;
  }
  const width = shape[shape.length - 1];
  const part = width / from.length;
  from.forEach((at, i) =>
    fromShared(
      to + i * part * 4,
      at,
      tf.util.sizeFromShape(shape) / width,
      part * 4,
      width * 4,
      part * 4,
    )
  );
  return out;
}
