/**
 * Our own WGSL compute shaders, run on tfjs-backend-webgpu's device inside
 * its command stream. tfjs's program model gives a shader one output and
 * read-only inputs; the fused kernels here write several buffers (y and the
 * row statistics, dq/dk/dv, p/m/v in place), so each brings its own WGSL
 * with its own bindings and is recorded by tfjs's `recordAndSubmit`: the
 * same compute pass, deferred submission, timestamp queries under
 * `tf.profile`, and deferred release of every buffer bound (a tensor
 * disposed after the dispatch keeps its buffer until the queue is
 * submitted), exactly as for tfjs's own kernels.
 *
 * It relies on internals of tfjs-backend-webgpu 4.22 (see
 * {@link WebGPUBackendInternals}).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

/** A scalar uniform's WGSL type. */
export type UniformType = "i32" | "u32" | "f32";

/** One compute shader, its uniforms and its storage bindings. */
export interface Kernel {
  /** Names the pipeline: must change with everything the WGSL text depends on. */
  key: string;
  /** Scalar uniforms, read in the shader as `u.<name>`, in the order values are given. */
  uniforms: [name: string, type: UniformType][];
  /**
   * The shader, entry point `main`. It declares storage bindings 0…n−1 in
   * the order the buffers are given to {@link dispatch}; the uniforms are
   * declared for it at binding n.
   */
  code: string;
}

/** The parts of tfjs-backend-webgpu 4.22's `WebGPUBackend` used here (private there). */
export interface WebGPUBackendInternals {
  device: GPUDevice;
  tensorMap: {
    get(dataId: object): { resource: GPUBuffer | GPUTexture | null; values: unknown };
  };
  commandEncoder: GPUCommandEncoder | null;
  commandQueueOwnedIds: WeakSet<object>;
  makeTensorInfo(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  uploadToGPU(dataId: object): void;
  disposeData(dataId: object): boolean;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  /**
   * Binds `[output, ...inputs, uniforms]` at bindings 0…n, records one
   * dispatch of `program.pipeline` into the open compute pass (a timed one
   * under `tf.profile`), marks every buffer as owned by the queue, and
   * submits every `WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE` dispatches. The
   * uniforms are tfjs's own (NaN, ∞, each buffer's shape and strides)
   * followed by the program's.
   */
  recordAndSubmit(
    program: RecordedProgram,
    output: tf.TensorInfo,
    inputs: tf.TensorInfo[],
    uniforms: ProgramUniform,
  ): void;
}

/** What `recordAndSubmit` reads of a program. */
interface RecordedProgram {
  pipeline: GPUComputePipeline;
  dispatch: [number, number, number];
  size: boolean;
  /** Its `name` labels the dispatch in `tf.profile`'s timings. */
  constructor: { name: string };
}

type ProgramUniform = { type: "int32" | "uint32" | "float32"; data: number[] }[];

const UNIFORM_DATA_TYPE = { i32: "int32", u32: "uint32", f32: "float32" } as const;

/** The backend's internals, for a kernel function's `backend` argument. */
export function internals(backend: unknown): WebGPUBackendInternals {
  return backend as WebGPUBackendInternals;
}

const pipelines = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/**
 * The uniform block as `recordAndSubmit` fills it: tfjs's NaN and ∞, then
 * a shape and a stride for each of the `buffers` bindings (all bound as 1-D,
 * so one i32 each), then the kernel's own.
 */
function uniformBlock(kernel: Kernel, buffers: number): string {
  const fields = ["nan_: f32", "infinity_: f32"];
  for (let i = 0; i < buffers; i++) fields.push(`shape${i}_: i32`, `stride${i}_: i32`);
  for (const [name, type] of kernel.uniforms) fields.push(`${name}: ${type}`);
  return `struct Uniforms { ${fields.join(", ")} }
@group(0) @binding(${buffers}) var<uniform> u: Uniforms;
`;
}

function pipeline(
  backend: WebGPUBackendInternals,
  kernel: Kernel,
  buffers: number,
): GPUComputePipeline {
  let cache = pipelines.get(backend.device);
  if (!cache) pipelines.set(backend.device, cache = new Map());
  const key = `${kernel.key}/${buffers}`;
  let found = cache.get(key);
  if (!found) {
    const module = backend.device.createShaderModule({
      code: uniformBlock(kernel, buffers) + kernel.code,
      label: kernel.key,
    });
    found = backend.device.createComputePipeline({
      layout: "auto",
      compute: { module, entryPoint: "main" },
      label: kernel.key,
    });
    cache.set(key, found);
  }
  return found;
}

/**
 * A tensor's data under another shape of the same size, as tfjs-backend-webgpu's
 * own Reshape does it: no copy, no dispatch, and no kernel tfjs counts.
 * Not a new reference: the view must not outlive, or be disposed instead
 * of, its tensor (returned from a kernel, it is the tensor).
 */
export function view(info: tf.TensorInfo, shape: number[]): tf.TensorInfo {
  return { dataId: info.dataId, shape, dtype: info.dtype };
}

/** A tensor seen as a flat 1-D buffer: `recordAndSubmit` gives each binding one shape uniform. */
function flat(info: tf.TensorInfo): tf.TensorInfo {
  return view(info, [Math.max(1, tf.util.sizeFromShape(info.shape))]);
}

/**
 * Runs tfjs-backend-webgpu's own kernel `name` (its product, gather,
 * concatenation) from inside one of ours: its dispatches join ours, and
 * tfjs counts one kernel, ours.
 */
export function tfjsKernel(
  name: string,
  backend: WebGPUBackendInternals,
  inputs: Record<string, tf.TensorInfo> | tf.TensorInfo[],
  attrs: Record<string, unknown>,
): tf.TensorInfo {
  const kernel = tf.getKernel(name, "webgpu");
  if (!kernel) throw new Error(`tfjs-backend-webgpu has no kernel ${name}`);
  return kernel.kernelFunc({
    inputs: inputs as tf.NamedTensorInfoMap,
    attrs: attrs as tf.NamedAttrMap,
    backend: backend as unknown as tf.KernelBackend,
  }) as tf.TensorInfo;
}

/**
 * Records one dispatch of `kernel` over `workgroups`, with `buffers` at
 * storage bindings 0…n−1 (uploaded first if they still live on the CPU)
 * and `uniforms` the values of `kernel.uniforms`. A buffer the shader
 * writes must not also be bound a second time.
 */
export function dispatch(
  backend: WebGPUBackendInternals,
  kernel: Kernel,
  buffers: tf.TensorInfo[],
  uniforms: number[],
  workgroups: [number, number, number],
): void {
  const limit = backend.device.limits.maxComputeWorkgroupsPerDimension;
  if (workgroups.some((n) => n > limit)) {
    throw new Error(
      `${kernel.key}: ${workgroups.join("×")} workgroups exceed the device's ${limit}`,
    );
  }
  for (const b of buffers) backend.uploadToGPU(b.dataId);
  const program: RecordedProgram = {
    pipeline: pipeline(backend, kernel, buffers.length),
    dispatch: workgroups,
    size: false,
    constructor: { name: kernel.key },
  };
  const data: ProgramUniform = kernel.uniforms.map(([, type], i) => ({
    type: UNIFORM_DATA_TYPE[type],
    data: [uniforms[i]],
  }));
  const [first, ...rest] = buffers.map(flat);
  backend.recordAndSubmit(program, first, rest, data);
}

/**
 * Runs our tfjs kernel `name` whose first output is the result and whose
 * others (row statistics and such) are only for its gradient: tfjs saves
 * those for the gradient with references of their own, so they are freed
 * here, with or without a gradient to come.
 */
export function runKernelForResult(
  name: string,
  inputs: tf.NamedTensorMap,
  attrs: Record<string, unknown> = {},
): tf.Tensor {
  const [result, ...forGradient] = tf.engine().runKernel(
    name,
    inputs,
    attrs as tf.NamedAttrMap,
  ) as tf.Tensor[];
  tf.dispose(forGradient);
  return result;
}

/** A new tensor's storage on the GPU, its contents undefined (pooled buffers are reused). */
export function allocate(
  backend: WebGPUBackendInternals,
  shape: number[],
  dtype: tf.DataType = "float32",
): tf.TensorInfo {
  const info = backend.makeTensorInfo(shape, dtype);
  backend.uploadToGPU(info.dataId);
  return info;
}

/** Zero-fills a tensor's buffer, in order with the dispatches around it. */
export function clear(backend: WebGPUBackendInternals, info: tf.TensorInfo): void {
  backend.uploadToGPU(info.dataId);
  backend.ensureCommandEncoderReady();
  backend.endComputePassEncoder(); // clearBuffer is recorded between passes
  backend.commandEncoder!.clearBuffer(backend.tensorMap.get(info.dataId).resource as GPUBuffer);
  backend.commandQueueOwnedIds.add(info.dataId);
}

/** Frees scratch tensors; their buffers return to the pool once the queue is submitted. */
export function release(backend: WebGPUBackendInternals, ...infos: tf.TensorInfo[]): void {
  for (const info of infos) backend.disposeData(info.dataId);
}

/**
 * After a kernel wrote a tensor in place: drops the copy tfjs may have kept
 * on the CPU since its last read, which would now be stale.
 */
export function writtenInPlace(backend: WebGPUBackendInternals, info: tf.TensorInfo): void {
  backend.tensorMap.get(info.dataId).values = null;
}

/** Greatest common divisor. */
export function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/** Elements per vector for rows of `width` floats: 4 (vec4 loads) when it divides them, else 1. */
export function vectorWidth(width: number): 1 | 4 {
  return width % 4 === 0 ? 4 : 1;
}

/**
 * WGSL for rows read `vec` floats at a time: the type `V`, `hsum(v)` (sum
 * of its lanes) and `vdot(a, b)`.
 */
export function vectorHelpers(vec: 1 | 4): string {
  return vec === 4
    ? `alias V = vec4<f32>;
fn hsum(v: V) -> f32 { return v.x + v.y + v.z + v.w; }
fn vdot(a: V, b: V) -> f32 { return dot(a, b); }
`
    : `alias V = f32;
fn hsum(v: V) -> f32 { return v; }
fn vdot(a: V, b: V) -> f32 { return a * b; }
`;
}

/** A workgroup count no larger than the device allows in one dimension. */
export function capWorkgroups(backend: WebGPUBackendInternals, wanted: number): number {
  return Math.max(1, Math.min(wanted, backend.device.limits.maxComputeWorkgroupsPerDimension));
}
