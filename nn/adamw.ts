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
import { type AdamWStep, type AdamWTensors, fastPath } from "./fast_paths.ts";

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
    const { lr, weightDecay, beta1, beta2, eps, step } = this;
    const constants: AdamWStep = {
      beta1,
      beta2,
      eps,
      decay: 1 - lr * weightDecay,
      stepSize: lr / (1 - beta1 ** step),
      bc2Sqrt: Math.sqrt(1 - beta2 ** step),
    };
    const updates: AdamWTensors[] = [];
    for (const [param, { expAvg, expAvgSq }] of this.moments) {
      const grad = grads[param.name];
      // Like PyTorch: a parameter without gradient is left alone.
      if (grad) updates.push([param, grad, expAvg, expAvgSq]);
    }
    const fast = fastPath("adamwUpdate");
    if (fast) fast(updates, constants); // in place
    else for (const tensors of updates) update(tensors, constants);
  }

  /** Frees the moment tensors. */
  dispose(): void {
    for (const { expAvg, expAvgSq } of this.moments.values()) {
      expAvg.dispose();
      expAvgSq.dispose();
    }
  }
}

/** One parameter's update, as the formulas above: 13 elementwise ops. */
function update(
  [param, g, expAvg, expAvgSq]: AdamWTensors,
  { beta1, beta2, eps, decay, stepSize, bc2Sqrt }: AdamWStep,
): void {
  tf.tidy(() => {
    const m = expAvg.mul(beta1).add(g.mul(1 - beta1));
    const v = expAvgSq.mul(beta2).add(g.square().mul(1 - beta2));
    const denom = v.sqrt().div(bc2Sqrt).add(eps);
    param.assign(param.mul(decay).sub(m.div(denom).mul(stepSize)));
    expAvg.assign(m);
    expAvgSq.assign(v);
  });
}
