/**
 * AdamW's update as one WGSL dispatch per parameter, in place: the plain
 * update is a chain of elementwise kernels, each a pass over the parameter.
 *
 * One dispatch per parameter is the floor while each parameter and moment
 * is its own tfjs tensor: tfjs creates the device with the default limit
 * of 8 storage buffers per shader stage, and each parameter needs 4.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  capWorkgroups,
  dispatch,
  internals,
  type Kernel,
  vectorHelpers,
  vectorWidth,
  writtenInPlace,
} from "./kernel.ts";

/** What one step's update uses, the same for every parameter (names as PyTorch's). */
export interface AdamWStepConstants {
  beta1: number;
  beta2: number;
  eps: number;
  /** 1 − lr·weight_decay. */
  decay: number;
  /** lr / (1 − β1ᵗ). */
  stepSize: number;
  /** √(1 − β2ᵗ). */
  bc2Sqrt: number;
}

const KERNEL_NAME = "WebGPUAdamW";
const WORKGROUP = 256;

function adamwKernel(vec: 1 | 4): Kernel {
  return {
    key: `adamw_v${vec}`,
    uniforms: [
      ["n", "u32"],
      ["beta1", "f32"],
      ["beta2", "f32"],
      ["oneMinusBeta1", "f32"],
      ["oneMinusBeta2", "f32"],
      ["decay", "f32"],
      ["stepSize", "f32"],
      ["bc2Sqrt", "f32"],
      ["eps", "f32"],
    ],
    // Same operations in the same order as the plain update (lib/adamw.ts).
    code: `${vectorHelpers(vec)}
@group(0) @binding(0) var<storage, read_write> p: array<V>;
@group(0) @binding(1) var<storage, read_write> m: array<V>;
@group(0) @binding(2) var<storage, read_write> v: array<V>;
@group(0) @binding(3) var<storage, read> g: array<V>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
  let stride = groups.x * ${WORKGROUP}u;
  for (var i = id.x; i < u.n; i += stride) {
    let gi = g[i];
    let mi = m[i] * u.beta1 + gi * u.oneMinusBeta1;
    let vi = v[i] * u.beta2 + (gi * gi) * u.oneMinusBeta2;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * u.decay - (mi / (sqrt(vi) / u.bc2Sqrt + u.eps)) * u.stepSize;
  }
}
`,
  };
}

tf.registerKernel({
  kernelName: KERNEL_NAME,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { param, grad, expAvg, expAvgSq } = inputs as Record<string, tf.TensorInfo>;
    const c = attrs as unknown as AdamWStepConstants;
    const ids = new Set([param, grad, expAvg, expAvgSq].map((t) => t.dataId));
    if (ids.size !== 4) throw new Error("adamwUpdate: param, grad and moments must not share data");
    const gpu = internals(backend);
    const size = tf.util.sizeFromShape(param.shape);
    const vec = vectorWidth(size);
    const n = size / vec;
    dispatch(
      gpu,
      adamwKernel(vec),
      [param, expAvg, expAvgSq, grad],
      [
        n,
        c.beta1,
        c.beta2,
        1 - c.beta1, // from doubles, as PyTorch's from Python floats
        1 - c.beta2,
        c.decay,
        c.stepSize,
        c.bc2Sqrt,
        c.eps,
      ],
      [capWorkgroups(gpu, Math.ceil(n / WORKGROUP)), 1, 1],
    );
    for (const t of [param, expAvg, expAvgSq]) writtenInPlace(gpu, t);
    return [];
  },
});

/**
 * One AdamW step for one parameter, in place on the GPU, from its tensors
 * `[param, grad, expAvg, expAvgSq]` (all the same shape):
 *
 *   m ← β1·m + (1−β1)·g        v ← β2·v + (1−β2)·g²
 *   p ← p·decay − (m / (√v / bc2Sqrt + eps))·stepSize
 *
 * Every tensor sharing the parameter's or a moment's data sees the update.
 */
export function adamwUpdate(tensors: tf.Tensor[], c: AdamWStepConstants): void {
  const [param, grad, expAvg, expAvgSq] = tensors;
  tf.engine().runKernel(
    KERNEL_NAME,
    { param, grad, expAvg, expAvgSq },
    { ...c } as unknown as tf.NamedAttrMap,
  );
}
