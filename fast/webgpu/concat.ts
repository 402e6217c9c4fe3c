/**
 * `torch.cat(parts, dim=1)` of 2-D parts as one tfjs kernel each way, one
 * dispatch each (for up to seven parts): forward copies every part into its
 * columns, backward splits dy's columns into every part's gradient. tfjs's
 * gradient is a SplitV kernel of one slice dispatch a part, after saving
 * every part (a kernel each) only for its shape. gptLM joins its per-head
 * projection weights with it every layer.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  allocate,
  capWorkgroups,
  dispatch,
  gcd,
  internals,
  type Kernel,
  vectorHelpers,
  vectorWidth,
  type WebGPUBackendInternals as Backend,
} from "./kernel.ts";

const CONCAT = "WebGPUConcatColumns";
const SPLIT = "WebGPUSplitColumns";
const WORKGROUP = 256;
/** Parts one dispatch binds: with the whole, tfjs's device allows 8 storage buffers. */
const PARTS_PER_DISPATCH = 7;

/**
 * Copies between columns first…first+Σwidths of a whole (rows, width) and
 * parts of `widths` columns (all in V): into the parts (`split`) or from
 * them.
 */
function columnsKernel(vec: 1 | 4, widths: number[], split: boolean): Kernel {
  const total = widths.reduce((a, b) => a + b, 0);
  const access = split ? "read_write" : "read";
  const parts = widths.map((_, i) =>
    `@group(0) @binding(${i + 1}) var<storage, ${access}> part${i}: array<V>;`
  );
  let start = 0;
  const copies = widths.map((w, i) => {
    const at = `part${i}[row * ${w}u + col - ${start}u]`;
    const copy = `if (col < ${start + w}u) { ${
      split ? `${at} = whole[e0]` : `whole[e0] = ${at}`
    }; }`;
    start += w;
    return copy;
  });
  return {
    key: `${split ? "split" : "concat"}_columns_v${vec}_${widths.join("_")}`,
    uniforms: [["rows", "u32"], ["width", "u32"], ["first", "u32"]],
    code: `${vectorHelpers(vec)}
@group(0) @binding(0) var<storage, ${split ? "read" : "read_write"}> whole: array<V>;
${parts.join("\n")}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  for (var e = gid.x; e < u.rows * ${total}u; e += groups.x * ${WORKGROUP}u) {
    let row = e / ${total}u;
    let col = e % ${total}u;
    let e0 = row * u.width + u.first + col;
    ${copies.join(" else ")}
  }
}
`,
  };
}

/** Copies between `whole` (rows, Σ widths) and `parts`, in dispatches of up to seven parts. */
function copyColumns(gpu: Backend, whole: tf.TensorInfo, parts: tf.TensorInfo[], split: boolean) {
  const [rows, width] = whole.shape;
  const widths = parts.map((part) => part.shape[1]);
  const vec = vectorWidth(widths.reduce((g, w) => gcd(g, w), width));
  let first = 0;
  for (let i = 0; i < parts.length; i += PARTS_PER_DISPATCH) {
    const group = widths.slice(i, i + PARTS_PER_DISPATCH).map((w) => w / vec);
    const columns = group.reduce((a, b) => a + b, 0);
    dispatch(
      gpu,
      columnsKernel(vec, group, split),
      [whole, ...parts.slice(i, i + PARTS_PER_DISPATCH)],
      [rows, width / vec, first],
      [capWorkgroups(gpu, Math.ceil((rows * columns) / WORKGROUP)), 1, 1],
    );
    first += columns;
  }
}

tf.registerKernel({
  kernelName: CONCAT,
  backendName: "webgpu",
  kernelFunc: ({ inputs, backend }) => {
    const parts = Object.values(inputs) as tf.TensorInfo[];
    const gpu = internals(backend);
    const width = parts.reduce((sum, part) => sum + part.shape[1], 0);
    const whole = allocate(gpu, [parts[0].shape[0], width]);
    copyColumns(gpu, whole, parts, false);
    return whole;
  },
});

tf.registerGradient({
  kernelName: CONCAT,
  gradFunc: (dy, _saved, attrs) => {
    const { widths } = attrs as unknown as { widths: number[] };
    const parts = tf.engine().runKernel(SPLIT, { dy: dy as tf.Tensor }, { widths }) as tf.Tensor[];
    return Object.fromEntries(parts.map((part, i) => [`part${i}`, () => part]));
  },
});

tf.registerKernel({
  kernelName: SPLIT,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { dy } = inputs as Record<string, tf.TensorInfo>;
    const { widths } = attrs as unknown as { widths: number[] };
    const gpu = internals(backend);
    const parts = widths.map((w) => allocate(gpu, [dy.shape[0], w]));
    copyColumns(gpu, dy, parts, true);
    return parts;
  },
});

/**
 * `torch.cat(parts, dim=1)`: parts (rows, cols_i) → (rows, Σ cols_i), with
 * each part's gradient.
 */
export function concatColumns(parts: tf.Tensor2D[]): tf.Tensor2D {
  const inputs = Object.fromEntries(parts.map((part, i) => [`part${i}`, part]));
  const widths = parts.map((part) => part.shape[1]);
  return tf.engine().runKernel(CONCAT, inputs, { widths }) as tf.Tensor2D;
}
