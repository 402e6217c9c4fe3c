/**
 * Causal multi-head self-attention, every (batch, head) at once, as one
 * WGSL dispatch forward and two backward, flash-attention style: the
 * (B, H, T, T) scores and weights never reach memory. tfjs's composition is
 * dozens of kernels a layer, most of them passes over (B, H, T, T) values.
 *
 * Heads are read in place from (B, T, C): head h is columns h·hs…(h+1)·hs.
 * Every dispatch is a grid of (⌈T/64⌉, B·H) workgroups, one thread per
 * query row (two per key row for dK/dV), the row's vectors in registers
 * (vec4 when hs is a multiple of 4; at most three of hs floats a thread),
 * and tiles of the other side's rows staged in shared memory for the
 * whole workgroup to read, two barriers a tile. Only tiles on or below the
 * diagonal are visited.
 *
 *   forward   y = softmax(q kᵀ·s + mask) v per row, online (running max
 *             and sum, one rescale per key tile); stores y and the row's
 *             logsumexp L (B, H, T)
 *   dQ        P = exp(q kᵀ·s − L), D = rowsum(dy ∘ y) (stored),
 *             dq = Σ_j P(dP − D)·s·k_j with dP = dy vᵀ
 *   dK, dV    per key row: dv = Σ_i P·dy_i, dk = Σ_i P(dP − D)·s·q_i
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

const FORWARD = "WebGPUCausalAttention";
const BACKWARD = "WebGPUCausalAttentionGrad";
/** Rows (threads) per workgroup. */
const ROWS = 64;
/** Floats of one (other-side) tile per operand staged in shared memory, at most (8 KB). */
const TILE_FLOATS = 2048;

/** The constants every attention shader for head size hs shares. */
function headConstants(hs: number): { tile: number; head: string } {
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
`,
  };
}

const UNIFORMS: Kernel["uniforms"] = [["T", "u32"], ["H", "u32"], ["CV", "u32"], ["scale", "f32"]];

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

function forwardKernel(hs: number): Kernel {
  const { head, tile } = headConstants(hs);
  return {
    key: `attention_hs${hs}`,
    uniforms: UNIFORMS,
    code: `${head}
@group(0) @binding(0) var<storage, read> q: array<V>;
@group(0) @binding(1) var<storage, read> k: array<V>;
@group(0) @binding(2) var<storage, read> v: array<V>;
@group(0) @binding(3) var<storage, read_write> y: array<V>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>; // (B, H, T)
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
          for (var d = 0u; d < HV; d++) { acc[d] += p * vTile[r * HV + d]; }
        }
      }
      rowMax = newMax;
    }
    workgroupBarrier();
  }
  if (valid) {
    for (var d = 0u; d < HV; d++) { y[base + i * u.CV + d] = acc[d] / rowSum; }
    lse[wid.y * u.T + i] = rowMax + log(rowSum);
  }
}
`,
  };
}

function queryGradKernel(hs: number): Kernel {
  const { head, tile } = headConstants(hs);
  const tileSize = tile * (hs / vectorWidth(hs));
  return {
    key: `attention_dq_hs${hs}`,
    uniforms: UNIFORMS,
    code: `${head}
@group(0) @binding(0) var<storage, read> q: array<V>;
@group(0) @binding(1) var<storage, read> k: array<V>;
@group(0) @binding(2) var<storage, read> v: array<V>;
@group(0) @binding(3) var<storage, read> y: array<V>;
@group(0) @binding(4) var<storage, read> dy: array<V>;
@group(0) @binding(5) var<storage, read> lse: array<f32>;
@group(0) @binding(6) var<storage, read_write> dq: array<V>;
@group(0) @binding(7) var<storage, read_write> rowDot: array<f32>; // (B, H, T): D = rowsum(dy ∘ y)
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
  if (valid) { L = lse[wid.y * u.T + i]; }
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
          let ds = p * (dp - D) * u.scale;
          for (var d = 0u; d < HV; d++) { acc[d] += ds * kTile[r * HV + d]; }
        }
      }
    }
    workgroupBarrier();
  }
  if (valid) {
    for (var d = 0u; d < HV; d++) { dq[base + i * u.CV + d] = acc[d]; }
    rowDot[wid.y * u.T + i] = D;
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
function keyValueGradKernel(hs: number): Kernel {
  const { head, tile } = headConstants(hs);
  const tileSize = tile * (hs / vectorWidth(hs));
  return {
    key: `attention_dkv_hs${hs}`,
    uniforms: UNIFORMS,
    code: `${head}
@group(0) @binding(0) var<storage, read> q: array<V>;
@group(0) @binding(1) var<storage, read> k: array<V>;
@group(0) @binding(2) var<storage, read> v: array<V>;
@group(0) @binding(3) var<storage, read> dy: array<V>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> rowDot: array<f32>;
@group(0) @binding(6) var<storage, read_write> dk: array<V>;
@group(0) @binding(7) var<storage, read_write> dv: array<V>;
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
        lseTile[lid] = lse[wid.y * u.T + i];
        dTile[lid] = rowDot[wid.y * u.T + i];
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
          if (forDk) {
            var dp = 0.0;
            for (var d = 0u; d < HV; d++) { dp += vdot(dyTile[r * HV + d], vj[d]); }
            let ds = p * (dp - dTile[r]) * u.scale;
            for (var d = 0u; d < HV; d++) { acc[d] += ds * qTile[r * HV + d]; }
          } else {
            for (var d = 0u; d < HV; d++) { acc[d] += p * dyTile[r * HV + d]; }
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
function layout(q: tf.TensorInfo, nHead: number) {
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
    uniforms: [T, nHead, C / vec, hs ** -0.5],
    grid: [Math.ceil(T / ROWS), B * nHead, 1] as [number, number, number],
  };
}

tf.registerKernel({
  kernelName: FORWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { q, k, v } = inputs as Record<string, tf.TensorInfo>;
    const { nHead } = attrs as unknown as { nHead: number };
    const gpu = internals(backend);
    const { B, T, hs, uniforms, grid } = layout(q, nHead);
    const y = allocate(gpu, q.shape);
    const lse = allocate(gpu, [B, nHead, T]);
    dispatch(gpu, forwardKernel(hs), [q, k, v, y, lse], uniforms, grid);
    return [y, lse];
  },
});

tf.registerKernel({
  kernelName: BACKWARD,
  backendName: "webgpu",
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { q, k, v, y, lse, dy } = inputs as Record<string, tf.TensorInfo>;
    const { nHead } = attrs as unknown as { nHead: number };
    const gpu = internals(backend);
    const { B, T, hs, uniforms, grid } = layout(q, nHead);
    const dq = allocate(gpu, q.shape);
    const rowDot = allocate(gpu, [B, nHead, T]);
    dispatch(gpu, queryGradKernel(hs), [q, k, v, y, dy, lse, dq, rowDot], uniforms, grid);
    const dk = allocate(gpu, q.shape);
    const dv = allocate(gpu, q.shape);
    dispatch(gpu, keyValueGradKernel(hs), [q, k, v, dy, lse, rowDot, dk, dv], uniforms, grid);
    release(gpu, rowDot);
    return [dq, dk, dv];
  },
});

/**
 * `softmax(q kᵀ / √hs + causal mask) v` for every head, heads side by
 * side, with its gradient: q, k, v (B, T, C), head h in columns
 * h·hs…(h+1)·hs → (B, T, C). No dropout on the attention weights.
 */
export function causalSelfAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  nHead: number,
): tf.Tensor3D {
  const op = tf.customGrad((qt, kt, vt, save) => {
    const inputs = { q: qt as tf.Tensor, k: kt as tf.Tensor, v: vt as tf.Tensor };
    const [y, lse] = tf.engine().runKernel(FORWARD, inputs, { nHead }) as tf.Tensor[];
    (save as tf.GradSaveFunc)([inputs.q, inputs.k, inputs.v, y, lse]);
    return {
      value: y, // (B, T, C)
      gradFunc: (dy, saved) => {
        const [sq, sk, sv, sy, slse] = saved as tf.Tensor[];
        return tf.engine().runKernel(
          BACKWARD,
          { q: sq, k: sk, v: sv, y: sy, lse: slse, dy: dy as tf.Tensor },
          { nHead },
        ) as tf.Tensor[]; // dq, dk, dv (B, T, C)
      },
    };
  }) as (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.Tensor;
  return op(q, k, v) as tf.Tensor3D;
}
