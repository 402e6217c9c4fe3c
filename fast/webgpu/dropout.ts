/**
 * Dropout as one tfjs kernel each way, its mask drawn from the run's
 * stream exactly as the plain layer draws it (so every backend drops the
 * same elements; by the WASM path's WebAssembly loop, which needs no WASM
 * backend) and uploaded as bits, one per element, where the plain
 * layer uploads a float per element and multiplies by it. The gradient
 * applies the same mask to dy.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { Rng } from "../../lib/rng.ts";
import { dropoutMaskBits } from "../wasm/dropout_kernel.ts";
import { capWorkgroups, dispatch, internals, type Kernel } from "./kernel.ts";

const DROPOUT = "WebGPUDropout";
const WORKGROUP = 256;

const dropoutKernel: Kernel = {
  key: "dropout",
  uniforms: [["n", "u32"], ["keep", "f32"]],
  code: `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> bits: array<u32>; // bit i: element i is kept
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  for (var i = gid.x; i < u.n; i += groups.x * ${WORKGROUP}u) {
    let kept = ((bits[i / 32u] >> (i % 32u)) & 1u) == 1u;
    y[i] = x[i] * select(0.0, u.keep, kept); // x times the plain layer's mask value
  }
}
`,
};

tf.registerKernel({
  kernelName: DROPOUT,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { x, bits } = inputs as Record<string, tf.TensorInfo>;
    const { keep } = attrs as unknown as { keep: number };
    const gpu = internals(backend);
    const n = tf.util.sizeFromShape(x.shape);
    const y = gpu.makeTensorInfo(x.shape, "float32");
    dispatch(
      gpu,
      dropoutKernel,
      [x, bits, y],
      [n, keep],
      [capWorkgroups(gpu, Math.ceil(n / WORKGROUP)), 1, 1],
    );
    return y;
  },
});

tf.registerGradient({
  kernelName: DROPOUT,
  inputsToSave: ["bits"],
  gradFunc: (dy, [bits], attrs) => {
    const dx = tf.engine().runKernel(
      DROPOUT,
      { x: dy as tf.Tensor, bits },
      attrs as tf.NamedAttrMap,
    );
    return { x: () => dx as tf.Tensor };
  },
});

/**
 * Dropout's mask for `n` elements as a tensor of bits, bit i % 32 of word
 * i / 32 set where element i is kept: the plain layer's draws from `rng`,
 * made in WebAssembly (~226M a step at gptLM's defaults).
 */
export function keptBits(rng: Rng, n: number, p: number): tf.Tensor1D {
  return tf.tensor1d(new Int32Array(dropoutMaskBits(rng, n, p).buffer), "int32");
}

/**
 * Inverted dropout: each element of x zeroed with probability `p`, the
 * rest scaled by 1/(1−p), one draw of `rng` per element in order, as the
 * plain layer.
 */
export function dropout(x: tf.Tensor, p: number, rng: Rng): tf.Tensor {
  const keep = 1 / (1 - p);
  const mask = keptBits(rng, x.size, p);
  const y = tf.engine().runKernel(DROPOUT, { x, bits: mask }, { keep }) as tf.Tensor;
  mask.dispose(); // the gradient keeps its own reference
  return y;
}
