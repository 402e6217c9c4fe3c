/**
 * The second step of the two-step reductions: the fused kernels leave one
 * partial sum per workgroup (or row group), and one of these dispatches adds
 * them up in a fixed order, so results do not depend on scheduling. WGSL
 * has no float atomics and no cross-workgroup barrier, so a reduction over
 * rows spread across workgroups takes this second dispatch.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  dispatch,
  gcd,
  type Kernel,
  vectorHelpers,
  vectorWidth,
  type WebGPUBackendInternals as Backend,
} from "./kernel.ts";

/** Column lanes and row slices of a {@link columnSums} workgroup. */
const LANES = 32;
const SLICES = 8;

function columnSumsKernel(vec: 1 | 4, outputs: 1 | 2): Kernel {
  const store = outputs === 1
    ? "out0[col] = total;"
    : "if (col < u.split) { out0[col] = total; } else { out1[col - u.split] = total; }";
  return {
    key: `column_sums_v${vec}_o${outputs}`,
    uniforms: [["rows", "u32"], ["width", "u32"], ["split", "u32"]],
    code: `${vectorHelpers(vec)}
@group(0) @binding(0) var<storage, read> partials: array<V>;
@group(0) @binding(1) var<storage, read_write> out0: array<V>;
${outputs === 2 ? "@group(0) @binding(2) var<storage, read_write> out1: array<V>;" : ""}
var<workgroup> slices: array<V, ${LANES * SLICES}>;

// Workgroup: ${LANES} columns × ${SLICES} row slices; each slice sums every ${SLICES}th row.
@compute @workgroup_size(${LANES * SLICES})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let lane = lid % ${LANES}u;
  let slice = lid / ${LANES}u;
  let col = wid.x * ${LANES}u + lane;
  var acc = V(0.0);
  if (col < u.width) {
    for (var r = slice; r < u.rows; r += ${SLICES}u) { acc += partials[r * u.width + col]; }
  }
  slices[lid] = acc;
  workgroupBarrier();
  if (slice == 0u && col < u.width) {
    var total = V(0.0);
    for (var s = 0u; s < ${SLICES}u; s++) { total += slices[s * ${LANES}u + lane]; }
    ${store}
  }
}
`,
  };
}

/**
 * Sums the rows of `partials` (rows, width) into `outputs`: one output gets
 * all `width` columns, two get the first `split` and the rest. One
 * dispatch, coalesced: consecutive threads read consecutive columns.
 */
export function columnSums(
  backend: Backend,
  partials: tf.TensorInfo,
  rows: number,
  width: number,
  outputs: [tf.TensorInfo] | [tf.TensorInfo, tf.TensorInfo],
  split = width,
): void {
  const vec = vectorWidth(outputs.length === 2 ? gcd(width, split) : width);
  const columns = width / vec;
  dispatch(
    backend,
    columnSumsKernel(vec, outputs.length),
    [partials, ...outputs],
    [rows, columns, split / vec],
    [Math.ceil(columns / LANES), 1, 1],
  );
}

const SUM_WORKGROUP = 256;

const sumKernel: Kernel = {
  key: "sum_to_scalar",
  uniforms: [["n", "u32"], ["divisor", "f32"]],
  code: `
@group(0) @binding(0) var<storage, read> values: array<f32>;
@group(0) @binding(1) var<storage, read_write> result: array<f32>;
var<workgroup> partial: array<f32, ${SUM_WORKGROUP}>;

@compute @workgroup_size(${SUM_WORKGROUP})
fn main(@builtin(local_invocation_index) lid: u32) {
  var acc = 0.0;
  for (var i = lid; i < u.n; i += ${SUM_WORKGROUP}u) { acc += values[i]; }
  partial[lid] = acc;
  for (var half = ${SUM_WORKGROUP / 2}u; half > 0u; half >>= 1u) {
    workgroupBarrier();
    if (lid < half) { partial[lid] += partial[lid + half]; }
  }
  if (lid == 0u) { result[0] = partial[0] / u.divisor; }
}
`,
};

/** `Σ values / divisor` as a new scalar: one workgroup, a tree in shared memory. */
export function sumToScalar(
  backend: Backend,
  values: tf.TensorInfo,
  n: number,
  divisor: number,
): tf.TensorInfo {
  const result = backend.makeTensorInfo([], "float32");
  dispatch(backend, sumKernel, [values, result], [n, divisor], [1, 1, 1]);
  return result;
}
