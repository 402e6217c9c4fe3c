/**
 * The helper thread of {@link ./matmul.ts}: instantiates the SIMD product on
 * the shared memory it is given, then claims chunks of every published job
 * until the process ends (the thread is unref'd: it never keeps it alive).
 *
 * @module
 */
import { workerData } from "node:worker_threads";
import { allClaimed, compileGemm, type Gemm, runChunks, Slot } from "./gemm_kernel.ts";

const memory = (workerData as { memory: WebAssembly.Memory }).memory;
const instance = new WebAssembly.Instance(compileGemm(), { env: { memory } });
const gemm = instance.exports.gemm as Gemm;
const ctrl = new Int32Array(memory.buffer, 0, 16);
for (;;) {
  runChunks(ctrl, gemm);
  const ticket = Atomics.load(ctrl, Slot.TICKET);
  if (allClaimed(ticket)) Atomics.wait(ctrl, Slot.TICKET, ticket);
}
