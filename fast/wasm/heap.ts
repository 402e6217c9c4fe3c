/**
 * Our WebAssembly code on tfjs-backend-wasm's own heap: the internals of
 * tfjs-backend-wasm 4.22 that its kernels use (pinned in deno.json;
 * tests/nn_test.ts and tests/matmul_test.ts fail if they change), and
 * modules instantiated on its memory so they read and write tensors in
 * place. Used by AdamW, LayerNorm, ReLU's gradient, the row kernels and the
 * matrix product's copies.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

/** The parts of tfjs-backend-wasm 4.22's `BackendWasm` that its own kernels use. */
export interface WasmBackendInternals {
  wasm: { asm: { memory: WebAssembly.Memory } };
  dataIdMap: { get(dataId: object): { memoryOffset: number } };
  makeOutput(shape: number[], dtype: "float32"): tf.TensorInfo;
  disposeData(dataId: object): boolean;
}

/** The active backend's internals; call only when it is "wasm". */
export function wasmBackend(): WasmBackendInternals {
  return tf.backend() as unknown as WasmBackendInternals;
}

/** Byte address of a tensor's values in tfjs-backend-wasm's heap. */
export function heapAddress(backend: WasmBackendInternals, t: tf.TensorInfo): number {
  return backend.dataIdMap.get(t.dataId).memoryOffset;
}

/**
 * The exports of `bytes()`, a module importing `env.memory`, instantiated
 * on tfjs-backend-wasm's memory (once per memory: the object stays the same
 * when it grows).
 */
export function onHeap(bytes: () => Uint8Array<ArrayBuffer>): () => WebAssembly.Exports {
  let memory: WebAssembly.Memory | null = null;
  let exports: WebAssembly.Exports = {};
  return () => {
    const heap = wasmBackend().wasm.asm.memory;
    if (heap !== memory) {
      exports = new WebAssembly.Instance(new WebAssembly.Module(bytes()), { env: { memory: heap } })
        .exports;
      memory = heap;
    }
    return exports;
  };
}

/** What a kernel on the heap gets: its inputs and attributes, the backend, and tensors' addresses. */
export interface HeapKernelArgs {
  inputs: Record<string, tf.TensorInfo>;
  attrs: Record<string, unknown>;
  wasm: WasmBackendInternals;
  /** A tensor's byte address in the heap. */
  at: (t: tf.TensorInfo) => number;
}

/** Registers kernel `name` on the "wasm" backend, run by `run` on tfjs-backend-wasm's heap. */
export function registerHeapKernel(
  name: string,
  run: (args: HeapKernelArgs) => tf.TensorInfo | tf.TensorInfo[],
): void {
  tf.registerKernel({
    kernelName: name,
    backendName: "wasm",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const wasm = backend as unknown as WasmBackendInternals; // the "wasm" backend: this kernel's
      return run({
        inputs: inputs as Record<string, tf.TensorInfo>,
        attrs: attrs as Record<string, unknown>,
        wasm,
        at: (t) => heapAddress(wasm, t),
      });
    },
  });
}
