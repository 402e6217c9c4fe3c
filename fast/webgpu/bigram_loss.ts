/**
 * bigramLM's counted loss as one tfjs kernel each way: the batch's pairs counted with integer atomics
 * into a zeroed (V, V) table (one dispatch), then the counts-mode softmax
 * loss of `cross_entropy.ts` over the table's rows (two dispatches) —
 * V² work instead of N·V — and one dispatch backward. The plain
 * composition is bincount and a string of reductions and products, and autodiff's
 * backward for each.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  allocate,
  capWorkgroups,
  clear,
  dispatch,
  internals,
  type Kernel,
  runKernelForResult,
} from "./kernel.ts";
import { softmaxLoss, softmaxLossGrad } from "./cross_entropy.ts";

const FORWARD = "WebGPUBigramLoss";
const BACKWARD = "WebGPUBigramLossGrad";
const WORKGROUP = 256;

const countKernel: Kernel = {
  key: "bigram_pair_counts",
  uniforms: [["n", "u32"], ["V", "u32"]],
  code: `
@group(0) @binding(0) var<storage, read> ids: array<i32>;     // (N)
@group(0) @binding(1) var<storage, read> targets: array<i32>; // (N)
@group(0) @binding(2) var<storage, read_write> counts: array<atomic<u32>>; // (V, V)

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  for (var i = gid.x; i < u.n; i += groups.x * ${WORKGROUP}u) {
    let a = ids[i];
    let b = targets[i];
    if (a >= 0 && u32(a) < u.V && b >= 0 && u32(b) < u.V) {
      atomicAdd(&counts[u32(a) * u.V + u32(b)], 1u);
    }
  }
}
`,
};

tf.registerKernel({
  kernelName: FORWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, backend }) => {
    const { table, ids, targets } = inputs as Record<string, tf.TensorInfo>;
    const gpu = internals(backend);
    const V = table.shape[0];
    const n = tf.util.sizeFromShape(ids.shape);
    const counts = allocate(gpu, [V, V], "int32");
    clear(gpu, counts);
    dispatch(
      gpu,
      countKernel,
      [ids, targets, counts],
      [n, V],
      [capWorkgroups(gpu, Math.ceil(n / WORKGROUP)), 1, 1],
    );
    const [loss, lse, rowCounts] = softmaxLoss(gpu, table, counts, "counts", n);
    return [loss, lse, rowCounts, counts];
  },
});

tf.registerKernel({
  kernelName: BACKWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { table, counts, lse, rowCounts, dy } = inputs as Record<string, tf.TensorInfo>;
    const { positions } = attrs as unknown as { positions: number };
    return softmaxLossGrad(
      internals(backend),
      table,
      counts,
      "counts",
      positions,
      lse,
      dy,
      rowCounts,
    );
  },
});

tf.registerGradient({
  kernelName: FORWARD,
  inputsToSave: ["table"],
  outputsToSave: [false, true, true, true], // lse, row counts, pair counts
  gradFunc: (dys, saved, attrs) => {
    const [table, lse, rowCounts, counts] = saved;
    const dy = (dys as tf.Tensor[])[0];
    const dtable = tf.engine().runKernel(
      BACKWARD,
      { table, counts, lse, rowCounts, dy },
      attrs as tf.NamedAttrMap,
    ) as tf.Tensor;
    return { table: () => dtable }; // (V, V)
  },
});

/**
 * bigramLM's mean cross-entropy from pair counts, with the table's
 * gradient: table (V, V), ids x and targets y (B, T) int32 → scalar. With
 * count(a, b) the positions that read a and predict b and n_a = Σ_b
 * count(a, b):
 *
 *   loss = (1/N) Σ_a [ n_a · logsumexp(W[a]) − Σ_b count(a, b) · W[a, b] ]
 *   dW[a] = (n_a · softmax(W[a]) − count(a, ·)) / N
 */
export function bigramLoss(table: tf.Tensor2D, x: tf.Tensor, y: tf.Tensor): tf.Scalar {
  return runKernelForResult(FORWARD, { table, ids: x, targets: y }, {
    positions: x.size,
  }) as tf.Scalar;
}
