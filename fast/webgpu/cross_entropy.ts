/**
 * Softmax cross-entropy losses over rows of logits, one pass each way:
 *
 * - target mode (`crossEntropy`): row i has one target t_i,
 *   loss_i = logsumexp(row) − row[t_i];
 * - counts mode (bigramLM's counted loss, `bigram_loss.ts`): row a has a
 *   count c_ab per column, loss_a = n_a·logsumexp(row) − Σ_b c_ab·row[b]
 *   with n_a = Σ_b c_ab.
 *
 * Each is one tfjs kernel each way. Forward is two dispatches: per-row logsumexp and loss with per-workgroup
 * partial sums, then their sum divided by N. Backward is one, rebuilding
 * the softmax from the saved logsumexp: (n·softmax − c)·dy/N, where in
 * target mode n = 1 and c is one-hot.
 *
 * Forward layout: a workgroup of 256 threads is 8 row groups of 32 lanes;
 * each lane keeps a running (max, Σexp) over its stretch of the row (vec4
 * loads when V is a multiple of 4), and the 32 runs are merged through
 * shared memory with one barrier per row.
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
  type WebGPUBackendInternals,
} from "./kernel.ts";
import { sumToScalar } from "./reduce.ts";

const FORWARD = "WebGPUCrossEntropy";
const BACKWARD = "WebGPUCrossEntropyGrad";
const LANES = 32;
const GROUPS = 8;
/** Forward workgroups at most: each leaves one partial sum. */
const MAX_WORKGROUPS = 1024;

/** Where a row's targets come from. */
export type TargetMode = "target" | "counts";

/** The vocabulary's constants, and the `counts` binding's vector type `CU`. */
function vocabularyConstants(V: number): string {
  const vec = vectorWidth(V);
  return `${vectorHelpers(vec)}
alias CU = ${vec === 4 ? "vec4<u32>" : "u32"};
const VOCAB = ${V}u;
const VV = ${V / vec}u; // row width in V
fn hmax(v: V) -> f32 { return ${vec === 4 ? "max(max(v.x, v.y), max(v.z, v.w))" : "v"}; }
`;
}

function forwardKernel(V: number, mode: TargetMode): Kernel {
  const counted = mode === "counts";
  const vec = vectorWidth(V);
  // Per lane: running max, Σexp, and in counts mode Σc and Σc·x.
  const lanePass = counted
    ? `let c = V(counts[row * VV + col]);
        n += hsum(c);
        picked += hsum(c * x);`
    : "";
  const rowLoss = counted
    ? `rowCounts[row] = total.z;
      loss += total.z * L - total.w;`
    : `let t = targets[row];
      // A target outside the vocabulary picks nothing, as the one-hot product does.
      if (t >= 0 && u32(t) < VOCAB) {
        let at = row * VOCAB + u32(t);
        loss += L - ${vec === 4 ? "logits[at / 4u][at % 4u]" : "logits[at]"};
      }`;
  return {
    key: `softmax_loss_v${V}_${mode}`,
    uniforms: [["rows", "u32"], ["rowsPerGroup", "u32"]],
    code: `${vocabularyConstants(V)}
@group(0) @binding(0) var<storage, read> logits: array<V>; // (N, V)
${
      counted
        ? `@group(0) @binding(1) var<storage, read> counts: array<CU>;       // (N, V)
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;       // (N)
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;  // (workgroups)
@group(0) @binding(4) var<storage, read_write> rowCounts: array<f32>; // (N)`
        : `@group(0) @binding(1) var<storage, read> targets: array<i32>;      // (N)
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;       // (N)
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;  // (workgroups)`
    }
// Each lane's run, double-buffered by row parity: one barrier per row.
var<workgroup> runs: array<vec4<f32>, ${2 * LANES * GROUPS}>;
var<workgroup> groupLoss: array<f32, ${GROUPS}>;

@compute @workgroup_size(${LANES * GROUPS})
fn main(@builtin(local_invocation_index) lid: u32,
        @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
  let lane = lid % ${LANES}u;
  let group = lid / ${LANES}u;
  var loss = 0.0;
  for (var it = 0u; it < u.rowsPerGroup; it++) {
    let row = (it * groups.x + wid.x) * ${GROUPS}u + group;
    let valid = row < u.rows;
    var runMax = -3.0e38;
    var runSum = 0.0;
    var n = 0.0;
    var picked = 0.0;
    if (valid) {
      for (var col = lane; col < VV; col += ${LANES}u) {
        let x = logits[row * VV + col];
        let newMax = max(runMax, hmax(x));
        runSum = runSum * exp(runMax - newMax) + hsum(exp(x - newMax));
        runMax = newMax;
        ${lanePass}
      }
    }
    let slot = (it % 2u) * ${LANES * GROUPS}u + lid - lane;
    runs[slot + lane] = vec4<f32>(runMax, runSum, n, picked);
    workgroupBarrier();
    var rowMax = -3.0e38;
    for (var l = 0u; l < ${LANES}u; l++) { rowMax = max(rowMax, runs[slot + l].x); }
    var total = vec4<f32>(0.0);
    for (var l = 0u; l < ${LANES}u; l++) {
      let run = runs[slot + l];
      total += vec4<f32>(0.0, run.y * exp(run.x - rowMax), run.z, run.w);
    }
    if (valid && lane == 0u) {
      let L = rowMax + log(total.y);
      lse[row] = L;
      ${rowLoss}
    }
  }
  if (lane == 0u) { groupLoss[group] = loss; }
  workgroupBarrier();
  if (lid == 0u) {
    var sum = 0.0;
    for (var g = 0u; g < ${GROUPS}u; g++) { sum += groupLoss[g]; }
    partials[wid.x] = sum;
  }
}
`,
  };
}

const BACKWARD_WORKGROUP = 256;

function backwardKernel(V: number, mode: TargetMode): Kernel {
  const vec = vectorWidth(V);
  const counted = mode === "counts";
  const onehot = vec === 4
    ? "select(V(0.0), V(1.0), vec4<u32>(c, c + 1u, c + 2u, c + 3u) == vec4<u32>(u32(t)))"
    : "select(0.0, 1.0, c == u32(t))";
  return {
    key: `softmax_loss_grad_v${V}_${mode}`,
    uniforms: [["rows", "u32"], ["divisor", "f32"]],
    code: `${vocabularyConstants(V)}
@group(0) @binding(0) var<storage, read> logits: array<V>;
${
      counted
        ? `@group(0) @binding(1) var<storage, read> counts: array<CU>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>; // the loss's gradient, a scalar
@group(0) @binding(4) var<storage, read_write> dlogits: array<V>;
@group(0) @binding(5) var<storage, read> rowCounts: array<f32>;`
        : `@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>; // the loss's gradient, a scalar
@group(0) @binding(4) var<storage, read_write> dlogits: array<V>;`
    }

@compute @workgroup_size(${BACKWARD_WORKGROUP})
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let scale = dy[0] / u.divisor;
  for (var e = id.x; e < u.rows * VV; e += groups.x * ${BACKWARD_WORKGROUP}u) {
    let row = e / VV;
    let softmax = exp(logits[e] - lse[row]);
    ${
      counted
        ? "dlogits[e] = (rowCounts[row] * softmax - V(counts[e])) * scale;"
        : `let c = (e % VV) * ${vec}u;
    let t = targets[row];
    var grad = V(0.0);
    if (t >= 0 && u32(t) < VOCAB) { grad = (softmax - ${onehot}) * scale; }
    dlogits[e] = grad;`
    }
  }
}
`,
  };
}

/**
 * The forward dispatches: logits (N, V) and targets (N) int32 or counts
 * (N, V) int32 → [Σ loss / divisor (scalar), lse (N), and in counts mode
 * n (N)].
 */
export function softmaxLoss(
  gpu: WebGPUBackendInternals,
  logits: tf.TensorInfo,
  targets: tf.TensorInfo,
  mode: TargetMode,
  divisor: number,
): tf.TensorInfo[] {
  const [N, V] = logits.shape;
  const workgroups = Math.min(capWorkgroups(gpu, Math.ceil(N / GROUPS)), MAX_WORKGROUPS);
  const lse = allocate(gpu, [N]);
  const partials = allocate(gpu, [workgroups]);
  const rowCounts = mode === "counts" ? [allocate(gpu, [N])] : [];
  dispatch(
    gpu,
    forwardKernel(V, mode),
    [logits, targets, lse, partials, ...rowCounts],
    [N, Math.ceil(N / (workgroups * GROUPS))],
    [workgroups, 1, 1],
  );
  const loss = sumToScalar(gpu, partials, workgroups, divisor);
  release(gpu, partials);
  return [loss, lse, ...rowCounts];
}

/**
 * The backward dispatch: (n·softmax − c)·dy/divisor (N, V) from the
 * forward's lse (and n in counts mode).
 */
export function softmaxLossGrad(
  gpu: WebGPUBackendInternals,
  logits: tf.TensorInfo,
  targets: tf.TensorInfo,
  mode: TargetMode,
  divisor: number,
  lse: tf.TensorInfo,
  dy: tf.TensorInfo,
  rowCounts?: tf.TensorInfo,
): tf.TensorInfo {
  const [N, V] = logits.shape;
  const dlogits = allocate(gpu, logits.shape);
  const workgroups = capWorkgroups(gpu, Math.ceil((N * V) / vectorWidth(V) / BACKWARD_WORKGROUP));
  dispatch(
    gpu,
    backwardKernel(V, mode),
    [logits, targets, lse, dy, dlogits, ...(rowCounts ? [rowCounts] : [])],
    [N, divisor],
    [workgroups, 1, 1],
  );
  return dlogits;
}

tf.registerKernel({
  kernelName: FORWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, backend }) => {
    const { logits, targets } = inputs as Record<string, tf.TensorInfo>;
    return softmaxLoss(internals(backend), logits, targets, "target", logits.shape[0]);
  },
});

tf.registerKernel({
  kernelName: BACKWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, backend }) => {
    const { logits, targets, lse, dy } = inputs as Record<string, tf.TensorInfo>;
    return softmaxLossGrad(
      internals(backend),
      logits,
      targets,
      "target",
      logits.shape[0],
      lse,
      dy,
    );
  },
});

tf.registerGradient({
  kernelName: FORWARD,
  inputsToSave: ["logits", "targets"],
  outputsToSave: [false, true], // lse
  gradFunc: (dys, saved) => {
    const [logits, targets, lse] = saved;
    const dy = (dys as tf.Tensor[])[0];
    const dlogits = tf.engine().runKernel(BACKWARD, { logits, targets, lse, dy }) as tf.Tensor;
    return { logits: () => dlogits }; // (N, V)
  },
});

/**
 * PyTorch `F.cross_entropy(logits, targets)` with mean reduction, with its
 * gradient: logits (N, V), targets (N) int32 → scalar. Per row,
 * loss = logsumexp(row) − row[target].
 */
export function crossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
  return runKernelForResult(FORWARD, { logits, targets }) as tf.Scalar;
}
