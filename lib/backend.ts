/**
 * Picks and starts the TensorFlow.js backend every script computes on.
 *
 * `auto` takes WebGPU only when the adapter is a real GPU. Software adapters
 * (Mesa's llvmpipe/lavapipe, SwiftShader, anything flagged as a fallback) are
 * several times slower than the WASM backend, so `auto` takes WASM there.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { UsageError, UserError } from "../cli/errors.ts";

/** The backends a user can ask for. */
export const BACKENDS = ["auto", "webgpu", "wasm", "cpu"] as const;
/** One of {@link BACKENDS}. */
export type BackendChoice = typeof BACKENDS[number];

/** The `--backend` flag every script that computes takes. */
export const BACKEND_FLAG = {
  type: "string",
  default: "auto",
  choices: BACKENDS,
  help: "auto, webgpu, wasm or cpu",
} as const;

/** What {@link initBackend} started. */
export interface BackendInfo {
  /** The tfjs backend in use: `webgpu`, `wasm` or `cpu`. */
  name: "webgpu" | "wasm" | "cpu";
  /** The WebGPU adapter's description, or why none is used. */
  adapter: string;
}

const SOFTWARE_ADAPTER = /llvmpipe|lavapipe|softpipe|swiftshader|software/i;

/** Set `SIMPLELM_NO_WEBGPU=1` to behave as on a machine without any adapter (tests use it). */
const NO_WEBGPU_ENV = "SIMPLELM_NO_WEBGPU";

async function findAdapter(): Promise<GPUAdapter | null> {
  if (Deno.env.get(NO_WEBGPU_ENV) === "1") return null;
  // Mesa prints "XDG_RUNTIME_DIR is invalid or not set" unless it names a folder.
  if (!Deno.env.get("XDG_RUNTIME_DIR")) {
    Deno.env.set("XDG_RUNTIME_DIR", Deno.env.get("TMPDIR") ?? "/tmp");
  }
  if (!("gpu" in navigator)) return null;
  return await navigator.gpu.requestAdapter({
    powerPreference: "high-performance",
  });
}

function describe(adapter: GPUAdapter): string {
  const info = adapter.info;
  return [info.description, info.vendor && `vendor ${info.vendor}`]
    .filter(Boolean).join(", ") || "unnamed adapter";
}

function isSoftware(adapter: GPUAdapter): boolean {
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  return Boolean(info.isFallbackAdapter) ||
    SOFTWARE_ADAPTER.test(info.description);
}

/** The folder holding tfjs-backend-wasm's `.wasm` files (`nodeModulesDir: "auto"`). */
function wasmFolder(): string {
  const url = import.meta.resolve("@tensorflow/tfjs-backend-wasm");
  // .../node_modules/@tensorflow/tfjs-backend-wasm/dist/index.js -> .../dist/
  return new URL(".", url).pathname;
}

/**
 * Starts the chosen backend and returns what runs. Fails with a one-line
 * error when the choice cannot be honoured; never falls back silently.
 */
export async function initBackend(choice: string): Promise<BackendInfo> {
  if (!(BACKENDS as readonly string[]).includes(choice)) {
    throw new UsageError(
      `unknown backend '${choice}': use one of ${BACKENDS.join(", ")}`,
    );
  }
  tf.enableProdMode(); // also silences tfjs's "install tfjs-node" banner
  const adapter = choice === "auto" || choice === "webgpu" ? await findAdapter() : null;
  let name: BackendInfo["name"];
  let adapterText: string;
  if (choice === "webgpu") {
    if (!adapter) {
      throw new UserError(
        "--backend=webgpu: no WebGPU adapter on this machine (install Mesa: apt-get install libegl-mesa0 libgl1-mesa-dri), or use --backend=wasm",
      );
    }
    name = "webgpu";
    adapterText = describe(adapter);
  } else if (choice === "auto") {
    name = adapter && !isSoftware(adapter) ? "webgpu" : "wasm";
    adapterText = adapter ? describe(adapter) : "no WebGPU adapter";
    if (name === "wasm" && adapter) {
      adapterText += " (software: WASM is faster)";
    }
  } else {
    name = choice as "wasm" | "cpu";
    adapterText = "not used";
  }
  // Only the backend that runs is loaded.
  if (name === "wasm") {
    const { setWasmPaths } = await import("@tensorflow/tfjs-backend-wasm");
    setWasmPaths(wasmFolder());
  }
  if (name === "webgpu") await import("@tensorflow/tfjs-backend-webgpu");
  const ok = await tf.setBackend(name);
  await tf.ready();
  if (!ok || tf.getBackend() !== name) {
    throw new UserError(
      `backend '${name}' failed to start (tfjs is on '${tf.getBackend()}')`,
    );
  }
  if (name === "webgpu") watchDevice();
  return { name, adapter: adapterText };
}

/** A WebGPU validation or shader error is otherwise only logged: make it fatal. */
function watchDevice(): void {
  const device = (tf.backend() as unknown as { device: GPUDevice }).device;
  device.addEventListener("uncapturederror", (event) => {
    const message = (event as GPUUncapturedErrorEvent).error.message.split("\n")[0];
    console.error(
      `error: WebGPU device error: ${message} (try --backend=wasm)`,
    );
    Deno.exit(1);
  });
  device.lost.then((info) => {
    if (info.reason !== "destroyed") {
      console.error(
        `error: WebGPU device lost: ${info.message} (try --backend=wasm)`,
      );
      Deno.exit(1);
    }
  });
}
