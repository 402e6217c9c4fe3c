/**
 * Whether a model and one step of it fit the backend's memory and the
 * machine's, judged from the settings before anything is built, so a size
 * that cannot work stops at once with one line naming the number and the
 * fix instead of an allocation failure minutes later.
 *
 * @module
 */
import { UsageError } from "../cli/errors.ts";
import type { ModelConfig, ModelName } from "../models/model.ts";
import { MODELS } from "../models/registry.ts";
import { microBatchesFor } from "./training.ts";

/** WebAssembly's memory stops at 4 GB: the WASM backend's tensors must fit in it. */
export const WASM_MEMORY = 4 * 2 ** 30;

/** Rough JavaScript bytes each tensor costs beside its values (tfjs's objects and records). */
const BYTES_PER_TENSOR = 1024;

/** This machine's memory in bytes, or null where it cannot be read (`--allow-sys` not granted). */
function machineMemory(): number | null {
  try {
    return Deno.systemMemoryInfo().total;
  } catch {
    return null;
  }
}

/** Bytes for people: `512 MB`, `4.8 GB`, `12,930 TB`. */
function gb(bytes: number): string {
  const units: [string, number, number][] = [["MB", 2 ** 20, 1], ["GB", 2 ** 30, 1], [
    "TB",
    2 ** 40,
    0,
  ]];
  const [unit, size, digits] = units.findLast(([, size]) => bytes >= size) ?? units[0];
  return `${(bytes / size).toLocaleString("en-US", { maximumFractionDigits: digits })} ${unit}`;
}

/** What a model with `config` needs for `rows` batch rows at once: training, or sampling and evaluation. */
export function memoryNeeded(
  name: ModelName,
  config: ModelConfig,
  rows: number,
  backend: string,
  training: boolean,
): { values: number; objects: number; batch: number; params: number; parts: number } {
  const sizes = MODELS[name].sizes(config);
  // Training holds each weight's gradient and AdamW's two moments beside it.
  const copies = training ? 4 : 1;
  const parts = microBatchesFor(sizes.splittable ? sizes.bytesPerRow : undefined, rows, backend);
  return {
    params: sizes.params,
    values: 4 * (copies * sizes.params + sizes.buffers),
    objects: BYTES_PER_TENSOR * copies * sizes.tensors,
    batch: Math.ceil(rows / parts) * sizes.bytesPerRow,
    parts,
  };
}

/**
 * Refuses a model and step that cannot fit: more than the machine's memory
 * (where it can be read), or, on WASM, more than its 4 GB.
 *
 * @param rows the batch rows one step (or one evaluation pass) holds.
 * @throws {UsageError} naming the sizes and the flags that would make it fit.
 */
export function checkFits(
  name: ModelName,
  config: ModelConfig,
  rows: number,
  backend: string,
  training: boolean,
): void {
  const need = memoryNeeded(name, config, rows, backend, training);
  const sizeFlags = MODELS[name].sizeFlags;
  const smaller = need.values + need.objects < need.batch
    ? "use a smaller --batch_size or --block_size"
    : sizeFlags.length > 0
    ? `use a smaller ${sizeFlags.join(" or ")}`
    : "use a text with fewer distinct characters";
  const limits: [string, number | null, string][] = [
    ["this machine's", machineMemory(), training ? smaller : "it needs a machine with more memory"],
    [
      "WASM's",
      backend === "wasm" ? WASM_MEMORY : null,
      training ? `${smaller}, or --backend=cpu` : "use --backend=cpu",
    ],
  ];
  for (const [where, limit, fix] of limits) {
    // The WASM memory holds the values only; the machine, tfjs's objects too.
    const total = need.values + need.batch + (where === "WASM's" ? 0 : need.objects);
    if (limit === null || total <= limit) continue;
    throw new UsageError(
      `${name} needs about ${gb(total)} (${need.params.toLocaleString("en-US")} parameters${
        training ? " with their gradients and AdamW state" : ""
      }: ${gb(need.values + need.objects)}; a batch of ${rows.toLocaleString("en-US")} rows${
        need.parts > 1 ? `, ${rows / need.parts} at a time` : ""
      }: ${gb(need.batch)}), more than ${where} ${gb(limit)}: ${fix}`,
    );
  }
}
