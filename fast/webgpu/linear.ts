/**
 * `nn.Linear` (+ ReLU) as one tfjs kernel each way. Forward, tfjs's own
 * `_FusedMatMul`, bias and ReLU in the product's epilogue (one dispatch; its
 * split-K variant, for a long inner dimension and few output tiles, adds a
 * zero fill and an epilogue pass). Backward, the bias gradient (and ReLU's
 * mask on dy) is one column-sum dispatch over dy (two when dy has more than
 * {@link CHUNK_ROWS} rows: per-chunk partials, then their sum) instead of
 * tfjs's Step, Multiply, Transpose and Sum; then the two products. Inputs of
 * any rank are flattened to rows inside the kernels, so no Reshape kernel
 * runs either way.
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
  tfjsKernel,
  vectorHelpers,
  vectorWidth,
  view,
  type WebGPUBackendInternals as Backend,
} from "./kernel.ts";
import { columnSums } from "./reduce.ts";

/** Saves x and w for the gradient. */
const LINEAR = "WebGPULinear";
/** Saves x, w and y (ReLU's mask). */
const LINEAR_RELU = "WebGPULinearReLU";
const LINEAR_GRAD = "WebGPULinearGrad";
/** dy's rows per workgroup: more rows leave one partial row per chunk to add up. */
const CHUNK_ROWS = 256;
const LANES = 64;
const SLICES = 4;

/** What the forward kernels and their gradient are told. */
interface LinearAttrs {
  /** w is (out, in), PyTorch's layout: y = x @ wᵀ + b. Else (in, out). */
  transposeW: boolean;
  /** x is data: its gradient is not wanted, and not computed unless asked for. */
  inputIsData: boolean;
  hasBias: boolean;
}

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

/**
 * dy (N, out) → its column sums (out), and with ReLU's output y (N, out)
 * dy masked where y is not positive, and the masked dy's column sums.
 */
function biasGrad(
  gpu: Backend,
  dy: tf.TensorInfo,
  reluOutput?: tf.TensorInfo,
): { db: tf.TensorInfo; masked?: tf.TensorInfo } {
  const [rows, width] = dy.shape;
  const vec = vectorWidth(width);
  const chunks = Math.ceil(rows / CHUNK_ROWS);
  const db = allocate(gpu, [width]);
  const partials = chunks === 1 ? db : allocate(gpu, [chunks, width]);
  const masked = reluOutput ? allocate(gpu, dy.shape) : undefined;
  dispatch(
    gpu,
    biasGradKernel(vec, masked !== undefined),
    masked ? [dy, reluOutput!, masked, partials] : [dy, partials],
    [rows, width / vec],
    [Math.ceil(width / vec / LANES), chunks, 1],
  );
  if (chunks > 1) {
    columnSums(gpu, partials, chunks, width, [db]);
    release(gpu, partials);
  }
  return { db, masked };
}

/** [in, out] features of a weight stored (in, out), or (out, in) when transposed. */
function features(w: tf.TensorInfo, transposeW: boolean): [number, number] {
  const [a, b] = w.shape;
  return transposeW ? [b, a] : [a, b];
}

/** `op(a) @ op(b)` of 2-D tensors by tfjs's product. */
function product(
  gpu: Backend,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  transposeA: boolean,
  transposeB: boolean,
): tf.TensorInfo {
  return tfjsKernel("BatchMatMul", gpu, { a, b }, { transposeA, transposeB });
}

for (const [kernelName, relu] of [[LINEAR, false], [LINEAR_RELU, true]] as const) {
  tf.registerKernel({
    kernelName,
    backendName: "webgpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { x, w, b } = inputs as Record<string, tf.TensorInfo>;
      const { transposeW } = attrs as unknown as LinearAttrs;
      const [inF, outF] = features(w, transposeW);
      const rows = tf.util.sizeFromShape(x.shape) / inF;
      const y = tfjsKernel(tf._FusedMatMul, internals(backend), {
        a: view(x, [rows, inF]),
        b: w,
        bias: b,
      }, {
        transposeA: false,
        transposeB: transposeW,
        activation: relu ? "relu" : "linear",
        leakyreluAlpha: 0,
      }); // (N, out)
      return view(y, [...x.shape.slice(0, -1), outF]); // (..., out)
    },
  });
  tf.registerGradient({
    kernelName,
    inputsToSave: ["x", "w"],
    outputsToSave: [relu], // y only for ReLU's mask: keeping it costs memory, not a dispatch
    gradFunc: (dy, saved, attrs) => {
      const [x, w, y] = saved;
      const a = attrs as unknown as LinearAttrs;
      const grads = tf.engine().runKernel(
        LINEAR_GRAD,
        relu ? { dy: dy as tf.Tensor, x, w, y } : { dy: dy as tf.Tensor, x, w },
        attrs as tf.NamedAttrMap,
      ) as tf.Tensor[];
      const [dw, ...rest] = grads;
      const named: Record<string, () => tf.Tensor> = { w: () => dw };
      if (a.hasBias) {
        const db = rest.shift()!;
        named.b = () => db;
      }
      // x's gradient when x is data, asked for all the same: a product of its own.
      named.x = a.inputIsData
        ? () => tf.matMul(dy as tf.Tensor, w, false, !a.transposeW)
        : () => rest[0];
      return named;
    },
  });
}

tf.registerKernel({
  kernelName: LINEAR_GRAD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { dy, x, w, y } = inputs as Record<string, tf.TensorInfo>;
    const { transposeW, inputIsData, hasBias } = attrs as unknown as LinearAttrs;
    const gpu = internals(backend);
    const [inF, outF] = features(w, transposeW);
    const rows = tf.util.sizeFromShape(x.shape) / inF;
    const x2 = view(x, [rows, inF]); // (N, in)
    let g = view(dy, [rows, outF]); // (N, out)
    const outputs: tf.TensorInfo[] = [];
    let masked: tf.TensorInfo | undefined;
    if (hasBias || y) {
      const grad = biasGrad(gpu, g, y && view(y, [rows, outF]));
      masked = grad.masked;
      if (masked) g = masked;
      if (hasBias) outputs.push(grad.db);
      else release(gpu, grad.db);
    }
    const dw = transposeW
      ? product(gpu, g, x2, true, false) // (out, N) @ (N, in) -> (out, in)
      : product(gpu, x2, g, true, false); // (in, N) @ (N, out) -> (in, out)
    outputs.unshift(dw);
    if (!inputIsData) {
      const dx = transposeW
        ? product(gpu, g, w, false, false) // (N, out) @ (out, in) -> (N, in)
        : product(gpu, g, w, false, true); // (N, out) @ (out, in) -> (N, in)
      outputs.push(view(dx, x.shape));
    }
    if (masked) release(gpu, masked);
    return outputs; // dw, db when there is a bias, dx unless x is data
  },
});

/**
 * PyTorch `nn.Linear` (+ ReLU when asked), with its gradient: x (..., in),
 * w (in, out), b (out) → (..., out).
 */
export function linear(
  x: tf.Tensor,
  w: tf.Tensor2D,
  b?: tf.Tensor1D,
  activation?: "relu",
): tf.Tensor {
  const attrs: LinearAttrs = { transposeW: false, inputIsData: false, hasBias: b !== undefined };
  return tf.engine().runKernel(
    activation === "relu" ? LINEAR_RELU : LINEAR,
    b ? { x, w, b } : { x, w },
    attrs as unknown as tf.NamedAttrMap,
  ) as tf.Tensor;
}

/**
 * mlpLM's `nn.Linear` with PyTorch's [out, in] weight, with its gradient:
 * x (N, in), w (out, in), b (out) → x @ wᵀ + b (N, out). With
 * `inputIsData`, x's gradient is left out of the backward kernel.
 */
export function linearOutIn(
  x: tf.Tensor2D,
  w: tf.Tensor2D,
  b: tf.Tensor1D,
  inputIsData: boolean,
): tf.Tensor2D {
  const attrs: LinearAttrs = { transposeW: true, inputIsData, hasBias: true };
  return tf.engine().runKernel(
    LINEAR,
    { x, w, b },
    attrs as unknown as tf.NamedAttrMap,
  ) as tf.Tensor2D;
}
