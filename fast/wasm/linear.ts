/**
 * Linear layers on our WASM product kernel (`matmul.ts`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { linearProduct, matMulWasm } from "./matmul.ts";
import { reluWasm } from "./relu_kernel.ts";

/**
 * `nn.Linear` (+ ReLU, differentiated by one kernel): one product whose
 * sums start from the bias. x (..., in), w (in, out) → (..., out), x's
 * leading axes read as rows where they are.
 */
export function linearWasm(
  x: tf.Tensor,
  w: tf.Tensor2D,
  b?: tf.Tensor1D,
  activation?: "relu",
): tf.Tensor {
  const y = linearProduct(x, w, b); // (..., out)
  return activation === "relu" ? reluWasm(y) : y;
}

/**
 * `x @ wᵀ + b` with w kept in PyTorch's [out, in] layout (mlpLM). tfjs's
 * own product repacks its right operand whenever that tensor is new (every
 * step, for a weight), and transposing a weight costs as much; so w is the
 * left operand in the forward pass, and only the small activations are
 * transposed:
 *
 *   y = (w @ xᵀ)ᵀ    dw = dyᵀ @ x    dx = dy @ w
 *
 * Our kernel reads a transposed operand in place. `inputIsData` (fc1, whose
 * input is the batch) skips dx altogether.
 */
export function linearOutInWasm(
  x: tf.Tensor2D,
  w: tf.Tensor2D,
  b: tf.Tensor1D,
  inputIsData: boolean,
): tf.Tensor2D {
  return (inputIsData ? dataProduct : hiddenProduct)(x, w).add(b);
}

function productWt(withInputGrad: boolean) {
  return tf.customGrad((x, w, save) => {
    const [xt, wt] = [x as tf.Tensor2D, w as tf.Tensor2D];
    // Only x is saved: saving clones, and a WASM clone copies. w is a
    // variable, which outlives the forward pass, so the closure keeps it.
    (save as tf.GradSaveFunc)([xt]);
    return {
      value: matMulWasm(wt, xt, false, true).transpose(), // (out, in) @ (in, N) -> (N, out)
      gradFunc: (dy, saved) => {
        const xs = saved[0] as tf.Tensor2D;
        const d = dy as tf.Tensor2D; // (N, out)
        return [
          withInputGrad ? matMulWasm(d, wt) : tf.zerosLike(xs), // (N, out) @ (out, in) -> (N, in)
          matMulWasm(d, xs, true, false), // (out, N) @ (N, in) -> (out, in)
        ];
      },
    };
  }) as (x: tf.Tensor2D, w: tf.Tensor2D) => tf.Tensor2D;
}

const dataProduct = productWt(false);
const hiddenProduct = productWt(true);
