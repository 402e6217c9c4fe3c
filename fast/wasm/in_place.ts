/**
 * tfjs-backend-wasm kernels that copy more than they must, replaced by ones
 * that share or read their input in place. The values are the same.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

/** The parts of tfjs-backend-wasm 4.22's `BackendWasm` these kernels use. */
interface Backend {
  incRef(dataId: object): void;
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): tf.TypedArray;
}

/** Replaces tfjs-backend-wasm's Identity, Slice, SplitV and Unpack kernels (once the backend has started). */
export function readInPlaceOnWasm(): void {
  shareIdentity();
  readSlicesInPlace();
}

/**
 * tfjs saves every tensor a gradient will need through its `Identity`
 * kernel. The cpu and WebGPU backends share the data there; the WASM one
 * copies it, hundreds of copies a step. Tensors are
 * immutable, so the WASM backend gets the sharing version too.
 */
function shareIdentity(): void {
  tf.unregisterKernel("Identity", "wasm");
  tf.registerKernel({
    kernelName: "Identity",
    backendName: "wasm",
    kernelFunc: ({ inputs, backend }) => {
      const x = inputs.x as tf.TensorInfo;
      (backend as unknown as Backend).incRef(x.dataId);
      return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
    },
  });
}

/**
 * tfjs-backend-wasm's Slice first copies its whole input out of the heap
 * (`readSync`), then copies the part it wants; its SplitV and Unpack slice
 * once per part, so splitting a tensor into E parts copies it E + 1 times.
 * A mixture of experts splits its rows by expert in every layer, both ways.
 * These read each part straight from the heap: one copy in all. Strings
 * keep tfjs's kernels.
 */
function readSlicesInPlace(): void {
  const original = (name: string) => tf.getKernel(name, "wasm")!.kernelFunc;
  const replace = (name: string, kernelFunc: tf.KernelFunc) => {
    const fallback = original(name);
    tf.unregisterKernel(name, "wasm");
    tf.registerKernel({
      kernelName: name,
      backendName: "wasm",
      kernelFunc: (args) =>
        (Object.values(args.inputs)[0] as tf.TensorInfo).dtype === "string"
          ? fallback(args)
          : kernelFunc(args),
    });
  };
  replace("Slice", ({ inputs, attrs, backend }) => {
    const x = inputs.x as tf.TensorInfo;
    const { begin, size } = attrs as unknown as { begin: number[]; size: number[] };
    const [from, count] = tf.slice_util.parseSliceParams(x as tf.Tensor, begin, size);
    return slice(backend as unknown as Backend, x, from, count);
  });
  replace("SplitV", ({ inputs, attrs, backend }) => {
    const x = inputs.x as tf.TensorInfo;
    const { numOrSizeSplits, axis } = attrs as unknown as {
      numOrSizeSplits: number | number[];
      axis: number;
    };
    const at = tf.util.parseAxisParam(axis, x.shape)[0];
    const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, numOrSizeSplits, at);
    const from = x.shape.map(() => 0);
    return sizes.map((s) => {
      const part = slice(backend as unknown as Backend, x, from, x.shape.with(at, s));
      from[at] += s;
      return part;
    });
  });
  replace("Unpack", ({ inputs, attrs, backend }) => {
    const x = inputs.value as tf.TensorInfo;
    const rank = x.shape.length;
    const at = ((attrs as unknown as { axis: number }).axis + rank) % rank;
    const partShape = x.shape.toSpliced(at, 1);
    return Array.from({ length: x.shape[at] }, (_, i) => {
      const from = x.shape.map((_, d) => d === at ? i : 0);
      const part = slice(backend as unknown as Backend, x, from, x.shape.with(at, 1));
      return { ...part, shape: partShape };
    });
  });
}

/**
 * The block of x at `from` of shape `size`, copied from the heap in runs:
 * the trailing axes the block spans whole are contiguous with the axis
 * before them (a block of whole rows is one run).
 */
function slice(backend: Backend, x: tf.TensorInfo, from: number[], size: number[]): tf.TensorInfo {
  const out = backend.makeOutput(size, x.dtype);
  // Viewed after makeOutput, which may have grown the heap.
  const source = backend.typedArrayFromHeap(x);
  const target = backend.typedArrayFromHeap(out);
  const rank = x.shape.length; // ≥ 1: tfjs does not slice scalars
  const strides = [...tf.util.computeStrides(x.shape), 1];
  let inner = rank - 1; // the run: axes inner… of the block
  while (inner > 0 && size[inner] === x.shape[inner]) inner--;
  const run = size.slice(inner).reduce((a, b) => a * b, 1);
  const at = new Array(inner).fill(0); // index of the current run among the outer axes
  for (let written = 0; written < target.length; written += run) {
    let offset = from[inner] * strides[inner];
    for (let d = 0; d < inner; d++) offset += (from[d] + at[d]) * strides[d];
    if (run < 16) { // a typed array per run would cost more than the copy
      for (let i = 0; i < run; i++) target[written + i] = source[offset + i];
    } else {
      target.set(source.subarray(offset, offset + run), written);
    }
    for (let d = inner - 1; d >= 0 && ++at[d] === size[d]; d--) at[d] = 0;
  }
  return out;
}
