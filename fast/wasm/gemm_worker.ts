/**
 * A helper thread of {@link ./matmul.ts}: instantiates the SIMD product
 * module on the shared memory it is given, then claims chunks of every
 * published job (products, attention) until the pool stops it, as the
 * process ends (the thread is unref'd: it never keeps the process alive).
 *
 * @module
 */
import { workerData } from "node:worker_threads";
import {
  allClaimed,
  compileGemm,
  CONTROL_BYTES,
  kernelsOf,
  runChunks,
  Slot,
  waitUntil,
} from "./gemm_kernel.ts";

const { memory, thread } = workerData as { memory: WebAssembly.Memory; thread: number };
const kernels = kernelsOf(new WebAssembly.Instance(compileGemm(), { env: { memory } }));
const ctrl = new Int32Array(memory.buffer, 0, CONTROL_BYTES / 4);
while (!Atomics.load(ctrl, Slot.STOP)) {
  runChunks(ctrl, kernels, thread);
  const ticket = Atomics.load(ctrl, Slot.TICKET);
  if (allClaimed(ticket)) waitUntil(ctrl, Slot.TICKET, (now) => now !== ticket); // the next job
}
Atomics.add(ctrl, Slot.STOPPED, 1);
Atomics.notify(ctrl, Slot.STOPPED);
