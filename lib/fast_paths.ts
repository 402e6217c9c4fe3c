/**
 * One switch for every fast path: our WASM kernels, host-memory loops and
 * bigramLM's counted loss. Switched off, each runs the plain tfjs
 * composition it replaces — the reference the fast paths are tested
 * against (to 1e-4), and the "before" of `deno task bench --plain`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

let enabled = true;

/** Whether the fast paths are on (the default). */
export function fastPaths(): boolean {
  return enabled;
}

/** Turns every fast path on or off. */
export function setFastPaths(on: boolean): void {
  enabled = on;
}

/**
 * Whether the fast paths that loop over tensors on the host may run: they
 * are on, and the backend keeps tensors in CPU memory (WASM, cpu), where
 * `dataSync()` reads them. WebGPU keeps the plain composition.
 */
export function hostFastPaths(): boolean {
  return enabled && tf.getBackend() !== "webgpu";
}
