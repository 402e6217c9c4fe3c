/**
 * mlpLM's BatchNorm1d as one tfjs kernel and one WGSL dispatch each way: forward (statistics, the
 * normalised output and, in training, the running statistics updated in
 * place) and one backward, where tfjs's composition is dozens of kernels.
 *
 * Layout: a workgroup of 256 threads is 64 columns (vec4 when C is a
 * multiple of 4) × 4 row slices, so consecutive threads read consecutive
 * columns of a row; the slices' column sums meet in shared memory, one
 * barrier per sum. A column's rows all belong to one workgroup, so the
 * batch statistics need no second dispatch.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { BatchNormState } from "../../nn/fast_paths.ts";
import {
  allocate,
  dispatch,
  internals,
  type Kernel,
  runKernelForResult,
  vectorHelpers,
  vectorWidth,
  writtenInPlace,
} from "./kernel.ts";

const FORWARD = "WebGPUBatchNorm";
const BACKWARD = "WebGPUBatchNormGrad";
const LANES = 64;
const SLICES = 4;

/**
 * What both shaders share: column constants, and for each named
 * workgroup array of the four slices' values, `<name>Total(lane)`: this
 * column's total, added in slice order.
 */
function columnConstants(C: number, arrays: string[]): string {
  const vec = vectorWidth(C);
  const totals = arrays.map((name) =>
    `var<workgroup> ${name}: array<V, ${LANES * SLICES}>;
fn ${name}Total(lane: u32) -> V {
  var total = V(0.0);
  for (var s = 0u; s < SLICES; s++) { total += ${name}[s * LANES + lane]; }
  return total;
}
`
  );
  return `${vectorHelpers(vec)}
const CV = ${C / vec}u; // columns in V
const LANES = ${LANES}u;
const SLICES = ${SLICES}u;
${totals.join("")}`;
}

function forwardKernel(C: number, training: boolean): Kernel {
  const statistics = training
    ? `var s = V(0.0);
  if (valid) { for (var r = slice; r < u.rows; r += SLICES) { s += x[r * CV + col]; } }
  sums[lid] = s;
  workgroupBarrier();
  let mean = sumsTotal(lane) / f32(u.rows);
  var q = V(0.0);
  if (valid) {
    for (var r = slice; r < u.rows; r += SLICES) { let d = x[r * CV + col] - mean; q += d * d; }
  }
  squares[lid] = q;
  workgroupBarrier();
  let variance = squaresTotal(lane) / f32(u.rows); // biased
  let rstd = inverseSqrt(variance + u.eps);
  if (valid) {
    for (var r = slice; r < u.rows; r += SLICES) {
      y[r * CV + col] = (x[r * CV + col] - mean) * rstd * w[col] + b[col];
    }
    if (slice == 0u) {
      runningMean[col] = runningMean[col] * u.keep + mean * u.momentum;
      runningVar[col] = runningVar[col] * u.keep + variance * u.unbiasedMomentum;
      stats[col] = mean;
      stats[CV + col] = rstd;
    }
  }
  if (lid == 0u && wid.x == 0u) { tracked[0] += 1; }`
    : `if (valid) {
    let mean = runningMean[col];
    let rstd = inverseSqrt(runningVar[col] + u.eps);
    let scale = w[col] * rstd;
    for (var r = slice; r < u.rows; r += SLICES) {
      y[r * CV + col] = (x[r * CV + col] - mean) * scale + b[col];
    }
    if (slice == 0u) {
      stats[col] = mean;
      stats[CV + col] = rstd;
    }
  }`;
  const running = training ? "read_write" : "read";
  return {
    key: `batch_norm_c${C}${training ? "_train" : "_eval"}`,
    uniforms: [
      ["rows", "u32"],
      ["eps", "f32"],
      ["momentum", "f32"],
      ["keep", "f32"],
      ["unbiasedMomentum", "f32"],
    ],
    code: `${columnConstants(C, ["sums", "squares"])}
@group(0) @binding(0) var<storage, read> x: array<V>;
@group(0) @binding(1) var<storage, read> w: array<V>;
@group(0) @binding(2) var<storage, read> b: array<V>;
@group(0) @binding(3) var<storage, ${running}> runningMean: array<V>;
@group(0) @binding(4) var<storage, ${running}> runningVar: array<V>;
@group(0) @binding(5) var<storage, read_write> y: array<V>;
@group(0) @binding(6) var<storage, read_write> stats: array<V>; // (2, C): mean, rstd
${training ? "@group(0) @binding(7) var<storage, read_write> tracked: array<i32>;" : ""}

@compute @workgroup_size(${LANES * SLICES})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let lane = lid % LANES;
  let slice = lid / LANES;
  let col = wid.x * LANES + lane;
  let valid = col < CV;
  ${statistics}
}
`,
  };
}

function backwardKernel(C: number, training: boolean): Kernel {
  return {
    key: `batch_norm_grad_c${C}${training ? "_train" : "_eval"}`,
    uniforms: [["rows", "u32"]],
    code: `${columnConstants(C, ["dySums", "dyxSums"])}
@group(0) @binding(0) var<storage, read> x: array<V>;
@group(0) @binding(1) var<storage, read> dy: array<V>;
@group(0) @binding(2) var<storage, read> w: array<V>;
@group(0) @binding(3) var<storage, read> stats: array<V>;
@group(0) @binding(4) var<storage, read_write> dx: array<V>;
@group(0) @binding(5) var<storage, read_write> dw: array<V>;
@group(0) @binding(6) var<storage, read_write> db: array<V>;

@compute @workgroup_size(${LANES * SLICES})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let lane = lid % LANES;
  let slice = lid / LANES;
  let col = wid.x * LANES + lane;
  let valid = col < CV;
  var mean = V(0.0);
  var rstd = V(0.0);
  var s = V(0.0);
  var sx = V(0.0);
  if (valid) {
    mean = stats[col];
    rstd = stats[CV + col];
    for (var r = slice; r < u.rows; r += SLICES) {
      let d = dy[r * CV + col];
      s += d;
      sx += d * ((x[r * CV + col] - mean) * rstd);
    }
  }
  dySums[lid] = s;
  dyxSums[lid] = sx;
  workgroupBarrier();
  let dySum = dySumsTotal(lane);   // db
  let dyxSum = dyxSumsTotal(lane); // dw: Σ dy·x̂
  if (valid) {
    if (slice == 0u) {
      dw[col] = dyxSum;
      db[col] = dySum;
    }
    let wc = w[col];
    ${
      training
        // With g = dy·w: dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), the means over the batch.
        ? `let n = f32(u.rows);
    let gMean = wc * dySum / n;
    let gxMean = wc * dyxSum / n;
    for (var r = slice; r < u.rows; r += SLICES) {
      let xHat = (x[r * CV + col] - mean) * rstd;
      dx[r * CV + col] = rstd * (dy[r * CV + col] * wc - gMean - xHat * gxMean);
    }`
        : `let scale = wc * rstd; // evaluation: y is affine in x
    for (var r = slice; r < u.rows; r += SLICES) { dx[r * CV + col] = dy[r * CV + col] * scale; }`
    }
  }
}
`,
  };
}

interface BatchNormAttrs {
  training: boolean;
  eps: number;
  momentum: number;
}

tf.registerKernel({
  kernelName: FORWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { x, weight, bias, runningMean, runningVar, numBatchesTracked } = inputs as Record<
      string,
      tf.TensorInfo
    >;
    const { training, eps, momentum } = attrs as unknown as BatchNormAttrs;
    const gpu = internals(backend);
    const [N, C] = x.shape;
    const y = allocate(gpu, x.shape);
    const stats = allocate(gpu, [2, C]);
    const buffers = [x, weight, bias, runningMean, runningVar, y, stats];
    if (training) buffers.push(numBatchesTracked);
    dispatch(
      gpu,
      forwardKernel(C, training),
      buffers,
      [N, eps, momentum, 1 - momentum, (momentum * N) / (N - 1)], // as PyTorch: unbiased running var
      [Math.ceil(C / vectorWidth(C) / LANES), 1, 1],
    );
    if (training) {
      for (const t of [runningMean, runningVar, numBatchesTracked]) writtenInPlace(gpu, t);
    }
    return [y, stats];
  },
});

tf.registerKernel({
  kernelName: BACKWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { x, dy, weight, stats } = inputs as Record<string, tf.TensorInfo>;
    const { training } = attrs as unknown as BatchNormAttrs;
    const gpu = internals(backend);
    const [N, C] = x.shape;
    const dx = allocate(gpu, x.shape);
    const dw = allocate(gpu, [C]);
    const db = allocate(gpu, [C]);
    dispatch(
      gpu,
      backwardKernel(C, training),
      [x, dy, weight, stats, dx, dw, db],
      [N],
      [Math.ceil(C / vectorWidth(C) / LANES), 1, 1],
    );
    return [dx, dw, db];
  },
});

tf.registerGradient({
  kernelName: FORWARD,
  inputsToSave: ["x", "weight"],
  outputsToSave: [false, true], // stats
  gradFunc: (dys, saved, attrs) => {
    const [x, weight, stats] = saved;
    const dy = (dys as tf.Tensor[])[0];
    const [dx, dw, db] = tf.engine().runKernel(
      BACKWARD,
      { x, dy, weight, stats },
      attrs as tf.NamedAttrMap,
    ) as tf.Tensor[];
    return { x: () => dx, weight: () => dw, bias: () => db };
  },
});

/**
 * PyTorch `nn.BatchNorm1d` on x (N, C) with `bn`'s weight and bias (C),
 * with its gradient. Training normalises with the batch's biased variance
 * and moves `bn`'s running statistics in place (the unbiased variance, as
 * PyTorch):
 *
 *   running_mean ← (1−momentum)·running_mean + momentum·mean
 *   running_var  ← (1−momentum)·running_var + momentum·var·N/(N−1)
 *   num_batches_tracked ← num_batches_tracked + 1
 *
 * Evaluation normalises with the running statistics.
 */
export function batchNorm1d(
  x: tf.Tensor2D,
  bn: BatchNormState,
  training: boolean,
  eps: number,
  momentum: number,
): tf.Tensor2D {
  const { weight, bias, runningMean, runningVar, numBatchesTracked } = bn;
  return runKernelForResult(
    FORWARD,
    { x, weight, bias, runningMean, runningVar, numBatchesTracked },
    { training, eps, momentum },
  ) as tf.Tensor2D;
}
