/**
 * An `Identity` kernel for WASM that shares data instead of copying it.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

/**
 * tfjs saves every tensor a gradient will need through its `Identity`
 * kernel. The cpu and WebGPU backends share the data there; the WASM one
 * copies it, hundreds of copies a step. Tensors are
 * immutable, so the WASM backend gets the sharing version too.
 */
export function shareIdentityOnWasm(): void {
  tf.unregisterKernel("Identity", "wasm");
  tf.registerKernel({
    kernelName: "Identity",
    backendName: "wasm",
    kernelFunc: ({ inputs, backend }) => {
      const x = inputs.x as tf.TensorInfo;
      (backend as unknown as { incRef(dataId: object): void }).incRef(x.dataId);
      return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
    },
  });
}
