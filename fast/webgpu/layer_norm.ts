/**
 * LayerNorm over the last axis as one tfjs kernel each way: one WGSL
 * dispatch forward and two backward (dx with per-row-group partial dw/db
 * sums, then the sum of the partials), where tfjs's composition is dozens
 * of kernels.
 *
 * Layout, both directions: a workgroup of 256 threads is row groups of 8
 * to 32 lanes, as many as a row of C floats needs for each lane to hold at
 * most 4 vec4 of it in registers (scalars when C is not a multiple of 4);
 * a row group owns one row at a time, and consecutive lanes read
 * consecutive 16 bytes. The row sums go through shared memory with one
 * barrier each, and every lane adds the group's partials in the same order
 * (no tree).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  allocate,
  capWorkgroups,
  dispatch,
  internals,
  type Kernel,
  release,
  runKernelForResult,
  vectorHelpers,
  vectorWidth,
} from "./kernel.ts";
import { columnSums } from "./reduce.ts";

const FORWARD = "WebGPULayerNorm";
const BACKWARD = "WebGPULayerNormGrad";
/** Threads a workgroup: row groups of `lanes` threads ({@link rowLayout}). */
const THREADS = 256;
/** Backward workgroups at most: each row group leaves a 2·C partial row to add up. */
const MAX_BACKWARD_WORKGROUPS = 128;

/**
 * Lanes a row for rows of C floats: enough that each holds at most 4
 * vectors (8 to 32), so narrow rows are not spread thin over 32 lanes that
 * each then add up 32 partial sums.
 */
function rowLayout(C: number): { lanes: number; groups: number } {
  const columns = C / vectorWidth(C);
  const lanes = Math.min(32, Math.max(8, 2 ** Math.ceil(Math.log2(Math.ceil(columns / 4)))));
  return { lanes, groups: THREADS / lanes };
}

/** Constants of both shaders for rows of C floats. */
function rowConstants(C: number): string {
  const vec = vectorWidth(C);
  const columns = C / vec;
  const { lanes, groups } = rowLayout(C);
  return `${vectorHelpers(vec)}
const C = ${C}u;       // row width
const CV = ${columns}u;  // row width in V
const LANES = ${lanes}u; // threads a row
const GROUPS = ${groups}u; // rows a workgroup at a time
const K = ${Math.ceil(columns / lanes)}u;   // V per lane
`;
}

function forwardKernel(C: number): Kernel {
  return {
    key: `layer_norm_c${C}`,
    uniforms: [["rows", "u32"], ["rowsPerGroup", "u32"], ["eps", "f32"]],
    code: `${rowConstants(C)}
@group(0) @binding(0) var<storage, read> x: array<V>;
@group(0) @binding(1) var<storage, read> w: array<V>;
@group(0) @binding(2) var<storage, read> b: array<V>;
@group(0) @binding(3) var<storage, read_write> y: array<V>;
@group(0) @binding(4) var<storage, read_write> stats: array<vec2<f32>>; // (rows): mean, rstd
var<workgroup> sums: array<f32, ${THREADS}>;
var<workgroup> squares: array<f32, ${THREADS}>;

@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) lid: u32,
        @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
  let lane = lid % LANES;
  let first = lid - lane; // this row group's slots in shared memory
  for (var it = 0u; it < u.rowsPerGroup; it++) {
    let row = (it * groups.x + wid.x) * GROUPS + lid / LANES;
    let valid = row < u.rows;
    var xs: array<V, K>;
    var s = V(0.0);
    for (var k = 0u; k < K; k++) {
      let c = lane + k * LANES;
      xs[k] = V(0.0);
      if (valid && c < CV) { xs[k] = x[row * CV + c]; }
      s += xs[k];
    }
    sums[lid] = hsum(s);
    workgroupBarrier();
    var total = 0.0;
    for (var l = 0u; l < LANES; l++) { total += sums[first + l]; }
    let mean = total / f32(C);
    var q = V(0.0);
    for (var k = 0u; k < K; k++) {
      if (lane + k * LANES < CV) { let d = xs[k] - mean; q += d * d; }
    }
    // The other buffer: a lane still reading sums cannot be overtaken, and
    // the next row's writes to sums come after this barrier.
    squares[lid] = hsum(q);
    workgroupBarrier();
    var squared = 0.0;
    for (var l = 0u; l < LANES; l++) { squared += squares[first + l]; }
    let rstd = inverseSqrt(squared / f32(C) + u.eps);
    if (valid) {
      for (var k = 0u; k < K; k++) {
        let c = lane + k * LANES;
        if (c < CV) { y[row * CV + c] = (xs[k] - mean) * rstd * w[c] + b[c]; }
      }
      if (lane == 0u) { stats[row] = vec2<f32>(mean, rstd); }
    }
  }
}
`,
  };
}

function backwardKernel(C: number): Kernel {
  return {
    key: `layer_norm_grad_c${C}`,
    uniforms: [["rows", "u32"], ["rowsPerGroup", "u32"]],
    code: `${rowConstants(C)}
@group(0) @binding(0) var<storage, read> x: array<V>;
@group(0) @binding(1) var<storage, read> w: array<V>;
@group(0) @binding(2) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> dy: array<V>;
@group(0) @binding(4) var<storage, read_write> dx: array<V>;
@group(0) @binding(5) var<storage, read_write> partials: array<V>; // (row groups, 2, C): dw, db
// Double-buffered by row parity: one barrier per row.
var<workgroup> sums: array<vec2<f32>, ${2 * THREADS}>;

@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let lane = lid % LANES;
  let chunk = wid.x * GROUPS + lid / LANES; // this row group's rows and partial row
  var dwAcc: array<V, K>;
  var dbAcc: array<V, K>;
  for (var k = 0u; k < K; k++) { dwAcc[k] = V(0.0); dbAcc[k] = V(0.0); }
  for (var it = 0u; it < u.rowsPerGroup; it++) {
    let row = chunk * u.rowsPerGroup + it;
    let valid = row < u.rows;
    var st = vec2<f32>(0.0, 0.0);
    if (valid) { st = stats[row]; }
    var xHat: array<V, K>;
    var g: array<V, K>;
    var gSum = V(0.0);
    var gxSum = V(0.0);
    for (var k = 0u; k < K; k++) {
      let c = lane + k * LANES;
      xHat[k] = V(0.0);
      g[k] = V(0.0);
      if (valid && c < CV) {
        let d = dy[row * CV + c];
        xHat[k] = (x[row * CV + c] - st.x) * st.y;
        g[k] = d * w[c];
        gSum += g[k];
        gxSum += g[k] * xHat[k];
        dwAcc[k] += d * xHat[k];
        dbAcc[k] += d;
      }
    }
    let slot = (it % 2u) * ${THREADS}u + lid - lane;
    sums[slot + lane] = vec2<f32>(hsum(gSum), hsum(gxSum));
    workgroupBarrier();
    var total = vec2<f32>(0.0, 0.0);
    for (var l = 0u; l < LANES; l++) { total += sums[slot + l]; }
    let gMean = total.x / f32(C);
    let gxMean = total.y / f32(C);
    if (valid) {
      for (var k = 0u; k < K; k++) {
        let c = lane + k * LANES;
        if (c < CV) { dx[row * CV + c] = st.y * (g[k] - gMean - xHat[k] * gxMean); }
      }
    }
  }
  for (var k = 0u; k < K; k++) {
    let c = lane + k * LANES;
    if (c < CV) {
      partials[chunk * 2u * CV + c] = dwAcc[k];
      partials[chunk * 2u * CV + CV + c] = dbAcc[k];
    }
  }
}
`,
  };
}

tf.registerKernel({
  kernelName: FORWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { x, weight, bias } = inputs as Record<string, tf.TensorInfo>;
    const { eps } = attrs as unknown as { eps: number };
    const gpu = internals(backend);
    const C = x.shape[x.shape.length - 1];
    const rows = tf.util.sizeFromShape(x.shape) / C;
    const { groups } = rowLayout(C);
    const workgroups = capWorkgroups(gpu, Math.ceil(rows / groups));
    const y = allocate(gpu, x.shape);
    const stats = allocate(gpu, [rows, 2]);
    dispatch(
      gpu,
      forwardKernel(C),
      [x, weight, bias, y, stats],
      [rows, Math.ceil(rows / (workgroups * groups)), eps],
      [workgroups, 1, 1],
    );
    return [y, stats];
  },
});

tf.registerKernel({
  kernelName: BACKWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, backend }) => {
    const { x, weight, stats, dy } = inputs as Record<string, tf.TensorInfo>;
    const gpu = internals(backend);
    const C = x.shape[x.shape.length - 1];
    const rows = tf.util.sizeFromShape(x.shape) / C;
    const { groups } = rowLayout(C);
    const workgroups = Math.min(Math.ceil(rows / groups), MAX_BACKWARD_WORKGROUPS);
    const chunks = workgroups * groups;
    const dx = allocate(gpu, x.shape);
    const partials = allocate(gpu, [chunks, 2, C]);
    dispatch(
      gpu,
      backwardKernel(C),
      [x, weight, stats, dy, dx, partials],
      [rows, Math.ceil(rows / chunks)],
      [workgroups, 1, 1],
    );
    const dw = allocate(gpu, [C]);
    const db = allocate(gpu, [C]);
    columnSums(gpu, partials, chunks, 2 * C, [dw, db], C);
    release(gpu, partials);
    return [dx, dw, db];
  },
});

tf.registerGradient({
  kernelName: FORWARD,
  inputsToSave: ["x", "weight"],
  outputsToSave: [false, true], // stats
  gradFunc: (dys, saved) => {
    const [x, weight, stats] = saved;
    const dy = (dys as tf.Tensor[])[0];
    const [dx, dw, db] = tf.engine().runKernel(
      BACKWARD,
      { x, weight, stats, dy },
      {},
    ) as tf.Tensor[];
    return { x: () => dx, weight: () => dw, bias: () => db };
  },
});

/**
 * PyTorch `nn.LayerNorm` over the last axis (biased variance), with its
 * gradient: x (..., C), weight and bias (C) → (..., C). Per row, with
 * x̂ = (x − mean)·rstd and g = dy·w:
 *
 *   y = x̂·w + b      dx = rstd·(g − mean(g) − x̂·mean(g·x̂))
 *   dw = Σ_rows dy·x̂   db = Σ_rows dy
 */
export function layerNorm(
  x: tf.Tensor,
  weight: tf.Tensor,
  bias: tf.Tensor,
  eps: number,
): tf.Tensor {
  return runKernelForResult(FORWARD, { x, weight, bias }, { eps }); // (..., C)
}
