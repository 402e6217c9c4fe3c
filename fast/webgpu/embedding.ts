/**
 * `nn.Embedding` as one tfjs kernel each way: tfjs's gather forward (one
 * dispatch), and backward a scatter-add of dy's rows into a zeroed (V, C)
 * table, one dispatch, where tfjs's gradient is UnsortedSegmentSum between
 * transposes.
 *
 * WGSL has no float atomics: each thread adds one element of dy with a
 * compare-and-swap loop on the float's bits (`atomic<u32>`). Consecutive
 * threads take consecutive columns of a row, so reads of dy and the
 * atomics are coalesced, and two threads collide only on the same id and
 * column. The order of the additions into one element is the hardware's:
 * the sums are equal to float rounding, not bit for bit run to run (as
 * tfjs's UnsortedSegmentSum on WebGPU, also a CAS loop). A deterministic
 * scan of all ids per table row would cost V passes over the ids, work that
 * grows with the vocabulary, where the atomics' cost does not.
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
  tfjsKernel,
  view,
} from "./kernel.ts";

const FORWARD = "WebGPUEmbedding";
const BACKWARD = "WebGPUEmbeddingGrad";
const WORKGROUP = 256;

const scatterAddKernel: Kernel = {
  key: "embedding_scatter_add",
  uniforms: [["size", "u32"], ["C", "u32"], ["V", "u32"]],
  code: `
@group(0) @binding(0) var<storage, read> ids: array<i32>;  // (N)
@group(0) @binding(1) var<storage, read> dy: array<f32>;   // (N, C)
@group(0) @binding(2) var<storage, read_write> table: array<atomic<u32>>; // (V, C), float bits

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  for (var e = gid.x; e < u.size; e += groups.x * ${WORKGROUP}u) {
    let id = ids[e / u.C];
    let value = dy[e];
    if (id >= 0 && u32(id) < u.V && value != 0.0) {
      let at = u32(id) * u.C + e % u.C;
      var old = atomicLoad(&table[at]);
      loop {
        let swapped = atomicCompareExchangeWeak(&table[at], old, bitcast<u32>(bitcast<f32>(old) + value));
        if (swapped.exchanged) { break; }
        old = swapped.old_value;
      }
    }
  }
}
`,
};

tf.registerKernel({
  kernelName: BACKWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { ids, dy } = inputs as Record<string, tf.TensorInfo>;
    const { vocab } = attrs as unknown as { vocab: number };
    const gpu = internals(backend);
    const C = dy.shape[dy.shape.length - 1];
    const size = tf.util.sizeFromShape(dy.shape);
    const table = allocate(gpu, [vocab, C]);
    clear(gpu, table);
    dispatch(
      gpu,
      scatterAddKernel,
      [ids, dy, table],
      [size, C, vocab],
      [capWorkgroups(gpu, Math.ceil(size / WORKGROUP)), 1, 1],
    );
    return table;
  },
});

tf.registerKernel({
  kernelName: FORWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, backend }) => {
    const { table, ids } = inputs as Record<string, tf.TensorInfo>;
    const n = tf.util.sizeFromShape(ids.shape);
    const rows = tfjsKernel("GatherV2", internals(backend), {
      x: table,
      indices: view(ids, [n]),
    }, { axis: 0, batchDims: 0 }); // (N, C)
    return view(rows, [...ids.shape, table.shape[1]]); // (..., C)
  },
});

tf.registerGradient({
  kernelName: FORWARD,
  inputsToSave: ["ids"],
  gradFunc: (dy, saved, attrs) => {
    const table = tf.engine().runKernel(
      BACKWARD,
      { ids: saved[0], dy: dy as tf.Tensor },
      attrs as tf.NamedAttrMap,
    ) as tf.Tensor;
    // The ids get none; a float zero, as the tape asks when they come from a computation (MoE routers).
    return { table: () => table, ids: () => tf.zeros(saved[0].shape) }; // (V, C)
  },
});

/**
 * PyTorch `nn.Embedding`: rows of `table` (V, C) picked by `ids` (int32,
 * any shape) → (..., C), with the table's gradient.
 */
export function embedding(table: tf.Tensor2D, ids: tf.Tensor): tf.Tensor {
  return tf.engine().runKernel(FORWARD, { table, ids }, { vocab: table.shape[0] }) as tf.Tensor;
}
