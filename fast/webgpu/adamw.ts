/**
 * AdamW's update of every parameter as one tfjs kernel, in place, two
 * parameters a dispatch: the plain update is a chain of 13 elementwise
 * kernels a parameter, each a pass over it.
 *
 * Two parameters a dispatch is the most tfjs's device allows while each
 * parameter and moment is its own tensor: it is created with the default
 * limit of 8 storage buffers per shader stage, and a parameter needs 4.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { AdamWStep, AdamWTensors } from "../../nn/fast_paths.ts";
import {
  capWorkgroups,
  dispatch,
  internals,
  type Kernel,
  vectorWidth,
  writtenInPlace,
} from "./kernel.ts";

const KERNEL_NAME = "WebGPUAdamW";
const WORKGROUP = 256;
/** Parameters a dispatch: 4 storage buffers each, 8 at most. */
const PER_DISPATCH = 2;

/** One dispatch's shader for parameters read `vecs[i]` floats at a time. */
function adamwKernel(vecs: (1 | 4)[]): Kernel {
  const type = (vec: 1 | 4) => (vec === 4 ? "vec4<f32>" : "f32");
  const bindings = vecs.map((vec, k) =>
    `@group(0) @binding(${4 * k}) var<storage, read_write> p${k}: array<${type(vec)}>;
@group(0) @binding(${4 * k + 1}) var<storage, read_write> m${k}: array<${type(vec)}>;
@group(0) @binding(${4 * k + 2}) var<storage, read_write> v${k}: array<${type(vec)}>;
@group(0) @binding(${4 * k + 3}) var<storage, read> g${k}: array<${type(vec)}>;`
  );
  // Same operations in the same order as the plain update (nn/adamw.ts).
  const loops = vecs.map((_, k) =>
    `for (var i = id.x; i < u.n${k}; i += stride) {
    let gi = g${k}[i];
    let mi = m${k}[i] * u.beta1 + gi * u.oneMinusBeta1;
    let vi = v${k}[i] * u.beta2 + (gi * gi) * u.oneMinusBeta2;
    m${k}[i] = mi;
    v${k}[i] = vi;
    p${k}[i] = p${k}[i] * u.decay - (mi / (sqrt(vi) / u.bc2Sqrt + u.eps)) * u.stepSize;
  }`
  );
  return {
    key: `adamw_v${vecs.join("_")}`,
    uniforms: [
      ...vecs.map((_, k): [string, "u32"] => [`n${k}`, "u32"]),
      ["beta1", "f32"],
      ["beta2", "f32"],
      ["oneMinusBeta1", "f32"],
      ["oneMinusBeta2", "f32"],
      ["decay", "f32"],
      ["stepSize", "f32"],
      ["bc2Sqrt", "f32"],
      ["eps", "f32"],
    ],
    code: `${bindings.join("\n")}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
  let stride = groups.x * ${WORKGROUP}u;
  ${loops.join("\n  ")}
}
`,
  };
}

tf.registerKernel({
  kernelName: KERNEL_NAME,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const tensors = Object.values(inputs) as tf.TensorInfo[]; // p, g, m, v of each parameter
    const c = attrs as unknown as AdamWStep;
    const gpu = internals(backend);
    for (let first = 0; first < tensors.length; first += 4 * PER_DISPATCH) {
      const group = tensors.slice(first, first + 4 * PER_DISPATCH);
      if (new Set(group.map((t) => t.dataId)).size !== group.length) {
        throw new Error("adamwUpdate: parameters, gradients and moments must not share data");
      }
      const sizes: number[] = [];
      const vecs: (1 | 4)[] = [];
      const buffers: tf.TensorInfo[] = [];
      for (let k = 0; k < group.length; k += 4) {
        const [param, grad, expAvg, expAvgSq] = group.slice(k, k + 4);
        const size = tf.util.sizeFromShape(param.shape);
        vecs.push(vectorWidth(size));
        sizes.push(size / vecs[vecs.length - 1]);
        buffers.push(param, expAvg, expAvgSq, grad);
      }
      dispatch(
        gpu,
        adamwKernel(vecs),
        buffers,
        [
          ...sizes,
          c.beta1,
          c.beta2,
          1 - c.beta1, // from doubles, as PyTorch's from Python floats
          1 - c.beta2,
          c.decay,
          c.stepSize,
          c.bc2Sqrt,
          c.eps,
        ],
        [capWorkgroups(gpu, Math.ceil(Math.max(...sizes) / WORKGROUP)), 1, 1],
      );
      for (let k = 0; k < buffers.length; k += 4) {
        for (const t of buffers.slice(k, k + 3)) writtenInPlace(gpu, t); // p, m, v
      }
    }
    return [];
  },
});

/**
 * One AdamW step for every parameter, in place on the GPU, from each one's
 * tensors `[param, grad, expAvg, expAvgSq]` (all of the parameter's shape):
 *
 *   m ← β1·m + (1−β1)·g        v ← β2·v + (1−β2)·g²
 *   p ← p·decay − (m / (√v / bc2Sqrt + eps))·stepSize
 *
 * Every tensor sharing a parameter's or a moment's data sees the update.
 */
export function adamwUpdate(updates: AdamWTensors[], c: AdamWStep): void {
  if (updates.length === 0) return;
  const inputs: Record<string, tf.Tensor> = {};
  updates.forEach(([param, grad, expAvg, expAvgSq], i) => {
    Object.assign(inputs, {
      [`p${i}`]: param,
      [`g${i}`]: grad,
      [`m${i}`]: expAvg,
      [`v${i}`]: expAvgSq,
    });
  });
  tf.engine().runKernel(KERNEL_NAME, inputs, { ...c } as unknown as tf.NamedAttrMap);
}
