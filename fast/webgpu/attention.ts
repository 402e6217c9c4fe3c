/**
 * Causal multi-head self-attention, every (batch, head) at once, as one
 * tfjs kernel each way, flash-attention style: one WGSL dispatch forward
 * and two backward, and the (B, H, T, T) scores and weights never reach
 * memory. tfjs's composition is dozens of kernels a layer, most of them
 * passes over (B, H, T, T) values.
 *
 * Heads are read in place from (B, T, C): head h is columns h·hs…(h+1)·hs.
 * Every dispatch is a grid of (⌈T/64⌉, B·H) workgroups, one thread per
 * query row (two per key row for dK/dV), the row's vectors in registers
 * (vec4 when hs is a multiple of 4; at most three of hs floats a thread),
 * and tiles of the other side's rows staged in shared memory for the
 * whole workgroup to read, two barriers a tile. Only tiles on or below the
 * diagonal are visited.
 *
 *   forward   y = (softmax(q kᵀ·s + mask) ∘ M) v per row, online (running
 *             max and sum, one rescale per key tile); stores y and the
 *             row's logsumexp L in `stats` (B, H, T, 2)
 *   dQ        P = exp(q kᵀ·s − L), D = rowsum(dy ∘ y) (stored in stats),
 *             dq = Σ_j P(M·dP − D)·s·k_j with dP = dy vᵀ
 *   dK, dV    per key row: dv = Σ_i P·M·dy_i, dk = Σ_i P(M·dP − D)·s·q_i
 *
 * M is dropout's mask on the weights (B, H, T, T): 0 or 1/(1−p), read from
 * one bit a weight where dropout is on, and 1 (not read) where it is off.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { DropoutSpec } from "../../nn/fast_paths.ts";
import { keptBits } from "./dropout.ts";
import {
  allocate,
  dispatch,
  internals,
  type Kernel,
  runKernelForResult,
  vectorHelpers,
  vectorWidth,
} from "./kernel.ts";

const FORWARD = "WebGPUCausalAttention";
/** With dropout's mask on the weights as a fourth input. */
const FORWARD_DROPOUT = "WebGPUCausalAttentionDropout";
const BACKWARD = "WebGPUCausalAttentionGrad";
/** Rows (threads) per workgroup. */
const ROWS = 64;
/** Floats of one (other-side) tile per operand staged in shared memory, at most (8 KB). */
const TILE_FLOATS = 2048;

/**
 * The constants every attention shader for head size hs shares, and
 * `keep(i, j)`: the factor dropout multiplies weight (i, j) of this
 * workgroup's (batch, head) by.
 */
function headConstants(hs: number, dropout: boolean): { tile: number; head: string } {
  const vec = vectorWidth(hs);
  // Rows per staged tile: two operands of hs floats each, ≤ 16 KB of shared memory.
  const tile = Math.max(1, Math.min(16, Math.floor(TILE_FLOATS / hs)));
  return {
    tile,
    head: `${vectorHelpers(vec)}
const HV = ${hs / vec}u;  // head size in V
const ROWS = ${ROWS}u;
const TILE = ${tile}u;
const NEG = -3.0e38;      // below every score: the running max's start

// Element (b, t, head, d) of a (B, T, C) tensor in V: base(b, head) + t·CV + d.
fn headBase(bh: u32) -> u32 {
  return (bh / u.H) * u.T * u.CV + (bh % u.H) * HV;
}
${
      dropout
        ? `fn keep(bh: u32, i: u32, j: u32) -> f32 {
  let e = (bh * u.T + i) * u.T + j;
  return select(0.0, u.keep, ((mask[e >> 5u] >> (e & 31u)) & 1u) == 1u);
}`
        : "fn keep(bh: u32, i: u32, j: u32) -> f32 { return 1.0; }"
    }
`,
  };
}

const UNIFORMS: Kernel["uniforms"] = [
  ["T", "u32"],
  ["H", "u32"],
  ["CV", "u32"],
  ["scale", "f32"],
  ["keep", "f32"], // dropout's 1/(1−p) for a kept weight
];

/**
 * Stages rows j0…j0+TILE−1 (zeros past T) of two (B, T, C) tensors' head
 * into shared memory, with the workgroup's `threads` threads.
 */
function stageTile(a: string, b: string, aTile: string, bTile: string, threads = "ROWS"): string {
  return `for (var e = lid; e < TILE * HV; e += ${threads}) {
      let j = j0 + e / HV;
      var av = V(0.0);
      var bv = V(0.0);
      if (j < u.T) {
        av = ${a}[base + j * u.CV + e % HV];
        bv = ${b}[base + j * u.CV + e % HV];
      }
      ${aTile}[e] = av;
      ${bTile}[e] = bv;
    }`;
}

/** The mask's binding, where dropout is on. */
function maskBinding(dropout: boolean, binding: number): string {
  return dropout
    ? `@group(0) @binding(${binding}) var<storage, read> mask: array<u32>; // (B, H, T, T) bits: kept`
    : "";
}

function forwardKernel(hs: number, dropout: boolean): Kernel {
  const { head, tile } = headConstants(hs, dropout);
  return {
    key: `attention_hs${hs}${dropout ? "_dropout" : ""}`,
    uniforms: UNIFORMS,
    code: `${head}
@group(0) @binding(0) var<storage, read> q: array<V>;
@group(0) @binding(1) var<storage, read> k: array<V>;
@group(0) @binding(2) var<storage, read> v: array<V>;
@group(0) @binding(3) var<storage, read_write> y: array<V>;
@group(0) @binding(4) var<storage, read_write> stats: array<vec2<f32>>; // (B, H, T): L, and D later
${maskBinding(dropout, 5)}
var<workgroup> kTile: array<V, ${tile * (hs / vectorWidth(hs))}>;
var<workgroup> vTile: array<V, ${tile * (hs / vectorWidth(hs))}>;

@compute @workgroup_size(${ROWS})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let base = headBase(wid.y);
  let i = wid.x * ROWS + lid; // this thread's query row
  let valid = i < u.T;
  var qi: array<V, HV>;
  var acc: array<V, HV>;
  for (var d = 0u; d < HV; d++) {
    qi[d] = V(0.0);
    acc[d] = V(0.0);
    if (valid) { qi[d] = q[base + i * u.CV + d]; }
  }
  var rowMax = NEG;
  var rowSum = 0.0;
  let keys = min(wid.x * ROWS + ROWS, u.T); // the keys any row here may see
  for (var j0 = 0u; j0 < keys; j0 += TILE) {
    ${stageTile("k", "v", "kTile", "vTile")}
    workgroupBarrier();
    if (valid && j0 <= i) {
      var s: array<f32, TILE>;
      var tileMax = NEG;
      for (var r = 0u; r < TILE; r++) {
        s[r] = NEG;
        if (j0 + r <= i) { // the causal mask
          var dotp = 0.0;
          for (var d = 0u; d < HV; d++) { dotp += vdot(qi[d], kTile[r * HV + d]); }
          s[r] = dotp * u.scale;
          tileMax = max(tileMax, s[r]);
        }
      }
      let newMax = max(rowMax, tileMax);
      let rescale = exp(rowMax - newMax);
      rowSum *= rescale;
      for (var d = 0u; d < HV; d++) { acc[d] *= rescale; }
      for (var r = 0u; r < TILE; r++) {
        if (j0 + r <= i) {
          let p = exp(s[r] - newMax);
          rowSum += p;
          let pm = p * keep(wid.y, i, j0 + r);
          for (var d = 0u; d < HV; d++) { acc[d] += pm * vTile[r * HV + d]; }
        }
      }
      rowMax = newMax;
    }
    workgroupBarrier();
  }
  if (valid) {
    for (var d = 0u; d < HV; d++) { y[base + i * u.CV + d] = acc[d] / rowSum; }
    stats[wid.y * u.T + i] = vec2<f32>(rowMax + log(rowSum), 0.0);
  }
}
`,
  };
}

function queryGradKernel(hs: number, dropout: boolean): Kernel {
  const { head, tile } = headConstants(hs, dropout);
  const tileSize = tile * (hs / vectorWidth(hs));
  return {
    key: `attention_dq_hs${hs}${dropout ? "_dropout" : ""}`,
    uniforms: UNIFORMS,
    code: `${head}
@group(0) @binding(0) var<storage, read> q: array<V>;
@group(0) @binding(1) var<storage, read> k: array<V>;
@group(0) @binding(2) var<storage, read> v: array<V>;
@group(0) @binding(3) var<storage, read> y: array<V>;
@group(0) @binding(4) var<storage, read> dy: array<V>;
// (B, H, T): L from the forward; D = rowsum(dy ∘ y) written here for dK, dV.
@group(0) @binding(5) var<storage, read_write> stats: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> dq: array<V>;
${maskBinding(dropout, 7)}
var<workgroup> kTile: array<V, ${tileSize}>;
var<workgroup> vTile: array<V, ${tileSize}>;

@compute @workgroup_size(${ROWS})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let base = headBase(wid.y);
  let i = wid.x * ROWS + lid;
  let valid = i < u.T;
  var qi: array<V, HV>;
  var dyi: array<V, HV>;
  var acc: array<V, HV>;
  var D = 0.0;
  var L = 0.0;
  for (var d = 0u; d < HV; d++) {
    qi[d] = V(0.0);
    dyi[d] = V(0.0);
    acc[d] = V(0.0);
    if (valid) {
      qi[d] = q[base + i * u.CV + d];
      dyi[d] = dy[base + i * u.CV + d];
      D += vdot(dyi[d], y[base + i * u.CV + d]);
    }
  }
  if (valid) { L = stats[wid.y * u.T + i].x; }
  let keys = min(wid.x * ROWS + ROWS, u.T);
  for (var j0 = 0u; j0 < keys; j0 += TILE) {
    ${stageTile("k", "v", "kTile", "vTile")}
    workgroupBarrier();
    if (valid) {
      for (var r = 0u; r < TILE; r++) {
        if (j0 + r <= i) {
          var s = 0.0;
          var dp = 0.0;
          for (var d = 0u; d < HV; d++) {
            s += vdot(qi[d], kTile[r * HV + d]);
            dp += vdot(dyi[d], vTile[r * HV + d]);
          }
          let p = exp(s * u.scale - L);
          let ds = p * (keep(wid.y, i, j0 + r) * dp - D) * u.scale;
          for (var d = 0u; d < HV; d++) { acc[d] += ds * kTile[r * HV + d]; }
        }
      }
    }
    workgroupBarrier();
  }
  if (valid) {
    for (var d = 0u; d < HV; d++) { dq[base + i * u.CV + d] = acc[d]; }
    stats[wid.y * u.T + i] = vec2<f32>(L, D);
  }
}
`,
  };
}

/**
 * dK and dV: 64 key rows a workgroup, two threads a row, one accumulating
 * dk (needs k and v) and one dv (needs k only), so no thread holds more
 * than three head-sized vectors; the roles split at a warp boundary.
 */
function keyValueGradKernel(hs: number, dropout: boolean): Kernel {
  const { head, tile } = headConstants(hs, dropout);
  const tileSize = tile * (hs / vectorWidth(hs));
  return {
    key: `attention_dkv_hs${hs}${dropout ? "_dropout" : ""}`,
    uniforms: UNIFORMS,
    code: `${head}
@group(0) @binding(0) var<storage, read> q: array<V>;
@group(0) @binding(1) var<storage, read> k: array<V>;
@group(0) @binding(2) var<storage, read> v: array<V>;
@group(0) @binding(3) var<storage, read> dy: array<V>;
@group(0) @binding(4) var<storage, read> stats: array<vec2<f32>>; // (B, H, T): L, D
@group(0) @binding(5) var<storage, read_write> dk: array<V>;
@group(0) @binding(6) var<storage, read_write> dv: array<V>;
${maskBinding(dropout, 7)}
var<workgroup> qTile: array<V, ${tileSize}>;
var<workgroup> dyTile: array<V, ${tileSize}>;
var<workgroup> lseTile: array<f32, TILE>;
var<workgroup> dTile: array<f32, TILE>;

@compute @workgroup_size(${2 * ROWS})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let base = headBase(wid.y);
  let forDk = lid < ROWS; // else this thread accumulates dv
  let j = wid.x * ROWS + lid % ROWS; // this thread's key row
  let valid = j < u.T;
  var kj: array<V, HV>;
  var vj: array<V, HV>;
  var acc: array<V, HV>;
  for (var d = 0u; d < HV; d++) {
    kj[d] = V(0.0);
    vj[d] = V(0.0);
    acc[d] = V(0.0);
    if (valid) {
      kj[d] = k[base + j * u.CV + d];
      if (forDk) { vj[d] = v[base + j * u.CV + d]; }
    }
  }
  // Queries from this workgroup's first key row on: the rest see none of its keys.
  for (var j0 = (wid.x * ROWS / TILE) * TILE; j0 < u.T; j0 += TILE) {
    ${stageTile("q", "dy", "qTile", "dyTile", "2u * ROWS")}
    if (lid < TILE) {
      let i = j0 + lid;
      lseTile[lid] = 0.0;
      dTile[lid] = 0.0;
      if (i < u.T) {
        let st = stats[wid.y * u.T + i];
        lseTile[lid] = st.x;
        dTile[lid] = st.y;
      }
    }
    workgroupBarrier();
    if (valid) {
      for (var r = 0u; r < TILE; r++) {
        let i = j0 + r;
        if (j <= i && i < u.T) {
          var s = 0.0;
          for (var d = 0u; d < HV; d++) { s += vdot(qTile[r * HV + d], kj[d]); }
          let p = exp(s * u.scale - lseTile[r]);
          let m = keep(wid.y, i, j);
          if (forDk) {
            var dp = 0.0;
            for (var d = 0u; d < HV; d++) { dp += vdot(dyTile[r * HV + d], vj[d]); }
            let ds = p * (m * dp - dTile[r]) * u.scale;
            for (var d = 0u; d < HV; d++) { acc[d] += ds * qTile[r * HV + d]; }
          } else {
            let pm = p * m;
            for (var d = 0u; d < HV; d++) { acc[d] += pm * dyTile[r * HV + d]; }
          }
        }
      }
    }
    workgroupBarrier();
  }
  if (valid) {
    for (var d = 0u; d < HV; d++) {
      if (forDk) { dk[base + j * u.CV + d] = acc[d]; } else { dv[base + j * u.CV + d] = acc[d]; }
    }
  }
}
`,
  };
}

/** Shapes and uniforms shared by the three dispatches. */
function layout(q: tf.TensorInfo, nHead: number, keep = 1) {
  const [B, T, C] = q.shape;
  const hs = C / nHead;
  if (!Number.isInteger(hs)) {
    throw new Error(`attention: C (${C}) is not a multiple of nHead (${nHead})`);
  }
  const vec = vectorWidth(hs);
  return {
    B,
    T,
    hs,
    uniforms: [T, nHead, C / vec, hs ** -0.5, keep],
    grid: [Math.ceil(T / ROWS), B * nHead, 1] as [number, number, number],
  };
}

for (const [kernelName, dropout] of [[FORWARD, false], [FORWARD_DROPOUT, true]] as const) {
  tf.registerKernel({
    kernelName,
    backendName: "webgpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { q, k, v, mask } = inputs as Record<string, tf.TensorInfo>;
      const { nHead, keep } = attrs as unknown as { nHead: number; keep?: number };
      const gpu = internals(backend);
      const { B, T, hs, uniforms, grid } = layout(q, nHead, keep);
      const y = allocate(gpu, q.shape);
      const stats = allocate(gpu, [B, nHead, T, 2]);
      const buffers = [q, k, v, y, stats, ...(dropout ? [mask] : [])];
      dispatch(gpu, forwardKernel(hs, dropout), buffers, uniforms, grid);
      return [y, stats];
    },
  });
  tf.registerGradient({
    kernelName,
    inputsToSave: dropout ? ["q", "k", "v", "mask"] : ["q", "k", "v"],
    outputsToSave: [true, true], // y, stats
    gradFunc: (dys, saved, attrs) => {
      const [q, k, v, ...rest] = saved;
      const mask = dropout ? rest.shift()! : undefined;
      const [y, stats] = rest;
      const dy = (dys as tf.Tensor[])[0];
      const [dq, dk, dv] = tf.engine().runKernel(
        BACKWARD,
        { q, k, v, y, stats, dy, ...(mask ? { mask } : {}) },
        attrs as tf.NamedAttrMap,
      ) as tf.Tensor[];
      return { q: () => dq, k: () => dk, v: () => dv };
    },
  });
}

tf.registerKernel({
  kernelName: BACKWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { q, k, v, y, stats, dy, mask } = inputs as Record<string, tf.TensorInfo>;
    const { nHead, keep } = attrs as unknown as { nHead: number; keep?: number };
    const gpu = internals(backend);
    const { hs, uniforms, grid } = layout(q, nHead, keep);
    const dropout = mask !== undefined;
    const masks = dropout ? [mask] : [];
    const dq = allocate(gpu, q.shape);
    // Writes D next to L in stats: a scratch half of the saved forward output,
    // which nothing else reads.
    dispatch(
      gpu,
      queryGradKernel(hs, dropout),
      [q, k, v, y, dy, stats, dq, ...masks],
      uniforms,
      grid,
    );
    const dk = allocate(gpu, q.shape);
    const dv = allocate(gpu, q.shape);
    dispatch(
      gpu,
      keyValueGradKernel(hs, dropout),
      [q, k, v, dy, stats, dk, dv, ...masks],
      uniforms,
      grid,
    );
    return [dq, dk, dv];
  },
});

/**
 * `softmax(q kᵀ / √hs + causal mask) v` for every head, heads side by
 * side, with its gradient: q, k, v (B, T, C), head h in columns
 * h·hs…(h+1)·hs → (B, T, C). `weightsDropout`, given in training with
 * dropout, is dropout on the (B, H, T, T) weights: a mask of bits, one a
 * weight, drawn from the run's stream as the plain layer's call draws it;
 * the kernels multiply a kept weight by 1/(1−p).
 */
export function causalSelfAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  nHead: number,
  weightsDropout?: DropoutSpec,
): tf.Tensor {
  if (!weightsDropout) return runKernelForResult(FORWARD, { q, k, v }, { nHead }); // (B, T, C)
  const [B, T] = q.shape;
  const { p, rng } = weightsDropout;
  const mask = keptBits(rng, B * nHead * T * T, p); // (B, H, T, T) bits
  const y = runKernelForResult(FORWARD_DROPOUT, { q, k, v, mask }, { nHead, keep: 1 / (1 - p) }); // (B, T, C)
  mask.dispose(); // the gradient keeps its own reference to the mask
  return y;
}
