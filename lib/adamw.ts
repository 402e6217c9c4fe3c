/**
 * PyTorch's `torch.optim.AdamW`, step for step: betas (0.9, 0.999), eps 1e-8,
 * bias correction, and weight decay decoupled from the gradient and applied
 * to every parameter (the original passes `model.parameters()` whole).
 *
 *   p ← p − lr·wd·p
 *   m ← β1·m + (1−β1)·g          v ← β2·v + (1−β2)·g²
 *   p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps)
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { fastPaths } from "./fast_paths.ts";

/** AdamW settings; names follow PyTorch. */
export interface AdamWOptions {
  lr: number;
  weightDecay: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
}

/** First and second moments of one parameter. */
export interface Moments {
  expAvg: tf.Variable;
  expAvgSq: tf.Variable;
}

/** AdamW over a fixed list of variables. */
export class AdamW {
  readonly lr: number;
  readonly weightDecay: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  /** Steps taken so far (PyTorch's `state["step"]`). */
  step = 0;
  /** Moments by variable, in the order the variables were given. */
  readonly moments: Map<tf.Variable, Moments>;

  constructor(variables: tf.Variable[], options: AdamWOptions) {
    this.lr = options.lr;
    this.weightDecay = options.weightDecay;
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    // Inside tidy the zeros' handles are freed; each moment owns its memory.
    this.moments = new Map(variables.map((v) => [
      v,
      tf.tidy(() => ({
        expAvg: tf.variable(tf.zerosLike(v), false),
        expAvgSq: tf.variable(tf.zerosLike(v), false),
      })),
    ]));
  }

  /** Applies one update from gradients keyed by variable name. */
  applyGradients(grads: Record<string, tf.Tensor>): void {
    this.step++;
    const hostMemory = fastPaths() ? hostMemoryOf() : null;
    for (const [param, moments] of this.moments) {
      const grad = grads[param.name];
      if (!grad) continue; // like PyTorch: a parameter without gradient is left alone
      if (hostMemory) this.#updateOnHost(param, grad, moments, hostMemory);
      else this.#updateWithOps(param, grad, moments);
    }
  }

  /** The update as tensor ops: 13 elementwise kernels, fine on a GPU. */
  #updateWithOps(param: tf.Variable, g: tf.Tensor, { expAvg, expAvgSq }: Moments): void {
    const { lr, weightDecay, beta1, beta2, eps, step } = this;
    const stepSize = lr / (1 - beta1 ** step);
    const bc2Sqrt = Math.sqrt(1 - beta2 ** step);
    tf.tidy(() => {
      const m = expAvg.mul(beta1).add(g.mul(1 - beta1));
      const v = expAvgSq.mul(beta2).add(g.square().mul(1 - beta2));
      const denom = v.sqrt().div(bc2Sqrt).add(eps);
      param.assign(param.mul(1 - lr * weightDecay).sub(m.div(denom).mul(stepSize)));
      expAvg.assign(m);
      expAvgSq.assign(v);
    });
  }

  /**
   * The same update as one loop over the backend's own memory (WASM heap or
   * CPU arrays): an order of magnitude faster there than 13 kernels, each a
   * pass over every parameter. Moments change in place. The parameter gets a
   * new tensor: the WASM matMul caches packed weights by tensor, so writing a
   * weight in place would leave that cache stale.
   */
  #updateOnHost(param: tf.Variable, grad: tf.Tensor, moments: Moments, memory: HostMemory): void {
    const { lr, weightDecay, beta1, beta2, eps, step } = this;
    const stepSize = lr / (1 - beta1 ** step);
    const bc2Sqrt = Math.sqrt(1 - beta2 ** step);
    const decay = 1 - lr * weightDecay;
    const next = tf.zerosLike(param);
    const [p, g, m, v, out] = [param, grad, moments.expAvg, moments.expAvgSq, next].map(memory);
    for (let i = 0; i < p.length; i++) {
      const gi = g[i];
      const mi = m[i] = beta1 * m[i] + (1 - beta1) * gi;
      const vi = v[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
      out[i] = p[i] * decay - (stepSize * mi) / (Math.sqrt(vi) / bc2Sqrt + eps);
    }
    param.assign(next);
    next.dispose();
  }

  /** Frees the moment tensors. */
  dispose(): void {
    for (const { expAvg, expAvgSq } of this.moments.values()) {
      expAvg.dispose();
      expAvgSq.dispose();
    }
  }
}

/** A tensor's values as a view of the memory the backend keeps them in. */
type HostMemory = (t: tf.Tensor) => Float32Array;

/** Views into backend memory on `wasm` and `cpu`; null on WebGPU (GPU memory). */
function hostMemoryOf(): HostMemory | null {
  const backend = tf.backend() as unknown as {
    typedArrayFromHeap?: (t: tf.Tensor) => Float32Array;
    data: { get(id: object): { values: Float32Array } };
  };
  switch (tf.getBackend()) {
    case "wasm":
      return (t) => backend.typedArrayFromHeap!(t);
    case "cpu":
      return (t) => backend.data.get(t.dataId).values;
    default:
      return null;
  }
}
