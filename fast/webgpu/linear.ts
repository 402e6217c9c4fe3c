/**
 * `nn.Linear` with its bias (and ReLU) in the product's epilogue: tfjs's
 * `_FusedMatMul` kernel, one dispatch forward. Backward, the bias gradient
 * (and ReLU's mask on dy) is one column-sum dispatch over dy — two when dy
 * has more than {@link CHUNK_ROWS} rows: per-chunk partials, then their
 * sum — instead of tfjs's Step, Multiply, Transpose and Sum; then the two
 * products. (Inside tfjs's own gradient scope, `tf.fused.matMul` does not
 * fuse a ReLU at all.)
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  allocate,
  dispatch,
  internals,
  type Kernel,
  release,
  vectorHelpers,
  vectorWidth,
} from "./kernel.ts";
import { columnSums } from "./reduce.ts";

const BIAS_GRAD = "WebGPUBiasGrad";
/** dy's rows per workgroup: more rows leave one partial row per chunk to add up. */
const CHUNK_ROWS = 256;
const LANES = 64;
const SLICES = 4;

function biasGradKernel(vec: 1 | 4, relu: boolean): Kernel {
  return {
    key: `bias_grad_v${vec}${relu ? "_relu" : ""}`,
    uniforms: [["rows", "u32"], ["width", "u32"]],
    code: `${vectorHelpers(vec)}
@group(0) @binding(0) var<storage, read> dy: array<V>;
${
      relu
        ? `@group(0) @binding(1) var<storage, read> y: array<V>;
@group(0) @binding(2) var<storage, read_write> dyMasked: array<V>;
@group(0) @binding(3) var<storage, read_write> partials: array<V>;`
        : "@group(0) @binding(1) var<storage, read_write> partials: array<V>;"
    }
var<workgroup> slices: array<V, ${LANES * SLICES}>;

// Workgroup: ${LANES} columns × ${SLICES} row slices over one chunk of ${CHUNK_ROWS} rows.
@compute @workgroup_size(${LANES * SLICES})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let lane = lid % ${LANES}u;
  let col = wid.x * ${LANES}u + lane;
  let end = min((wid.y + 1u) * ${CHUNK_ROWS}u, u.rows);
  var acc = V(0.0);
  if (col < u.width) {
    for (var r = wid.y * ${CHUNK_ROWS}u + lid / ${LANES}u; r < end; r += ${SLICES}u) {
      let i = r * u.width + col;
      ${
      relu
        ? `let g = select(V(0.0), dy[i], y[i] > V(0.0)); // ReLU's gradient: dy where y > 0
      dyMasked[i] = g;
      acc += g;`
        : "acc += dy[i];"
    }
    }
  }
  slices[lid] = acc;
  workgroupBarrier();
  if (lid < ${LANES}u && col < u.width) {
    var total = V(0.0);
    for (var s = 0u; s < ${SLICES}u; s++) { total += slices[s * ${LANES}u + lane]; }
    partials[wid.y * u.width + col] = total;
  }
}
`,
  };
}

tf.registerKernel({
  kernelName: BIAS_GRAD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { dy, y } = inputs as Record<string, tf.TensorInfo>;
    const { relu } = attrs as unknown as { relu: boolean };
    const gpu = internals(backend);
    const [rows, width] = dy.shape;
    const vec = vectorWidth(width);
    const chunks = Math.ceil(rows / CHUNK_ROWS);
    const db = allocate(gpu, [width]);
    const partials = chunks === 1 ? db : allocate(gpu, [chunks, width]);
    const dyMasked = relu ? allocate(gpu, dy.shape) : null;
    dispatch(
      gpu,
      biasGradKernel(vec, relu),
      relu ? [dy, y, dyMasked!, partials] : [dy, partials],
      [rows, width / vec],
      [Math.ceil(width / vec / LANES), chunks, 1],
    );
    if (chunks > 1) {
      columnSums(gpu, partials, chunks, width, [db]);
      release(gpu, partials);
    }
    return relu ? [dyMasked!, db] : db;
  },
});

/**
 * dy (N, out) → [dy, masked where `reluOutput` (N, out) is not positive
 * when given; its column sums (out)].
 */
function biasGrad(dy: tf.Tensor, reluOutput?: tf.Tensor): [tf.Tensor, tf.Tensor] {
  if (!reluOutput) {
    return [dy, tf.engine().runKernel(BIAS_GRAD, { dy }, { relu: false }) as tf.Tensor];
  }
  return tf.engine().runKernel(BIAS_GRAD, { dy, y: reluOutput }, { relu: true }) as [
    tf.Tensor,
    tf.Tensor,
  ];
}

/**
 * tfjs's `_FusedMatMul`: a @ op(b) + bias, then the activation, in one
 * dispatch (its split-K variant, for a long inner dimension and few output
 * tiles, adds a zero fill and an epilogue pass).
 */
function fusedMatMul(
  a: tf.Tensor,
  b: tf.Tensor,
  bias: tf.Tensor,
  transposeB: boolean,
  activation: "relu" | "linear",
): tf.Tensor {
  return tf.engine().runKernel(
    tf._FusedMatMul,
    { a, b, bias },
    { transposeA: false, transposeB, activation, leakyreluAlpha: 0 },
  ) as tf.Tensor;
}

/**
 * PyTorch `nn.Linear` (+ ReLU when asked), with its gradient: x (N, in),
 * w (in, out), b (out) → (N, out). Without a bias it is `tf.matMul` (and
 * `tf.relu`), which has nothing to fuse.
 */
export function linear(
  x: tf.Tensor2D,
  w: tf.Tensor2D,
  b?: tf.Tensor1D,
  activation?: "relu",
): tf.Tensor2D {
  if (!b) {
    const y = tf.matMul(x, w) as tf.Tensor2D; // (N, out)
    return activation === "relu" ? tf.relu(y) : y;
  }
  const relu = activation === "relu";
  const op = tf.customGrad((xt, wt, bt, save) => {
    const y = fusedMatMul(
      xt as tf.Tensor,
      wt as tf.Tensor,
      bt as tf.Tensor,
      false,
      relu ? "relu" : "linear",
    );
    // y only for ReLU's mask: keeping it costs memory, not a dispatch.
    (save as tf.GradSaveFunc)(
      relu ? [xt as tf.Tensor, wt as tf.Tensor, y] : [xt as tf.Tensor, wt as tf.Tensor],
    );
    return {
      value: y, // (N, out)
      gradFunc: (dy, saved) => {
        const [sx, sw, sy] = saved as tf.Tensor[];
        const [g, db] = biasGrad(dy as tf.Tensor, relu ? sy : undefined); // (N, out), (out)
        return [
          tf.matMul(g, sw, false, true), // (N, out) @ (out, in) -> (N, in)
          tf.matMul(sx, g, true, false), // (in, N) @ (N, out) -> (in, out)
          db,
        ];
      },
    };
  }) as (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor;
  return op(x, w, b) as tf.Tensor2D;
}

/**
 * mlpLM's `nn.Linear` with PyTorch's [out, in] weight, with its gradient:
 * x (N, in), w (out, in), b (out) → x @ wᵀ + b (N, out). With
 * `inputIsData`, x gets no gradient (it is not differentiated at all).
 */
export function linearOutIn(
  x: tf.Tensor2D,
  w: tf.Tensor2D,
  b: tf.Tensor1D,
  inputIsData: boolean,
): tf.Tensor2D {
  const forward = (xt: tf.Tensor, wt: tf.Tensor, bt: tf.Tensor, save: tf.GradSaveFunc) => {
    save([xt, wt]);
    return {
      value: fusedMatMul(xt, wt, bt, true, "linear") as tf.Tensor2D, // (N, out)
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
        const [sx, sw] = saved;
        const d = dy as tf.Tensor; // (N, out)
        const [, db] = biasGrad(d);
        const dw = tf.matMul(d, sx, true, false); // (out, N) @ (N, in) -> (out, in)
        return inputIsData ? [dw, db] : [tf.matMul(d, sw), dw, db]; // dx: (N, out) @ (out, in)
      },
    };
  };
  if (inputIsData) {
    const op = tf.customGrad((wt, bt, save) =>
      forward(x, wt as tf.Tensor, bt as tf.Tensor, save as tf.GradSaveFunc)
    ) as (w: tf.Tensor, b: tf.Tensor) => tf.Tensor2D;
    return op(w, b);
  }
  const op = tf.customGrad((xt, wt, bt, save) =>
    forward(xt as tf.Tensor, wt as tf.Tensor, bt as tf.Tensor, save as tf.GradSaveFunc)
  ) as (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor2D;
  return op(x, w, b);
}
