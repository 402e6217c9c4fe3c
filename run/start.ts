/**
 * Starts the backend a script computes on, with the fast paths of the
 * speed folder registered: the one place that imports `fast/`.
 *
 * @module
 */
import { type BackendInfo, initBackend } from "../lib/backend.ts";
import { installFastPaths, wasmProductCeiling } from "../fast/mod.ts";

/** {@link initBackend}, with every fast path registered. */
export async function startBackend(choice: string): Promise<BackendInfo> {
  const backend = await initBackend(choice);
  installFastPaths(backend.name);
  return backend;
}

export { wasmProductCeiling };
