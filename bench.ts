/**
 * Training speed: builds the model, batches and optimizer exactly as
 * `train.ts` does and times whole training steps (batch → forward →
 * backward → AdamW) after a warm-up. With `--sample=N`, sampling speed:
 * N characters from the start context, as `generate` and `train` sample.
 *
 *   deno task bench                                   # the suite, every backend
 *   deno task bench --model_name=gptLM --config=cpu --backend=wasm --steps=30
 *   deno task bench --json                            # one JSON object per line
 *   deno task bench --plain                           # with the fast paths off
 *   deno task bench --sample=500 --backend=wasm       # sampling: the suite and default gptLM
 *
 * A benchmark, not a test: it asserts nothing about speed.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { runMain, UsageError, UserError } from "./cli/errors.ts";
import { parseFlags } from "./cli/flags.ts";
import { decodeText, type PreparedData, tokenize } from "./lib/data.ts";
import { readProjectFile } from "./cli/files.ts";
import { fastPaths, setFastPaths } from "./nn/fast_paths.ts";
import { Rng } from "./lib/rng.ts";
import { disposeModel } from "./models/model.ts";
import { createModel } from "./models/registry.ts";
import { parseTrainConfig, type TrainConfig } from "./run/config.ts";
import { buildRun, type Run } from "./run/run.ts";
import { generateTokens } from "./run/sampling.ts";
import { startBackend, wasmProductCeiling } from "./run/start.ts";

const BENCH_FLAGS = {
  steps: { type: "int", default: 10, min: 1, help: "timed steps per model" },
  warmup: { type: "int", default: 3, min: 0, help: "untimed steps first" },
  json: { type: "bool", default: false, help: "one JSON object per line" },
  plain: {
    type: "bool",
    default: false,
    help: "fast paths off: tfjs's plain composition, the 'before'",
  },
  sample: {
    type: "int",
    default: 0,
    min: 0,
    help: "time sampling this many characters instead of training steps",
  },
} as const;

/** The suite run when no model is named: each model at its reference config. */
const SUITE: string[][] = [
  ["--model_name=bigramLM"],
  ["--model_name=mlpLM"],
  ["--model_name=gptLM", "--config=cpu"],
  ["--model_name=block_wise_scaling_gptLM", "--config=cpu"],
  ["--model_name=moeLM", "--config=cpu"],
  ["--model_name=moa_moeLM", "--config=cpu"],
];

/** Sampling's suite: the training suite and gptLM at the original's size. */
const SAMPLE_SUITE: string[][] = [...SUITE, ["--model_name=gptLM"]];

/** One benchmark's figures (the `--json` line). */
export interface BenchResult {
  model_name: string;
  backend: string;
  adapter: string;
  ms_per_step_median: number;
  ms_per_step_min: number;
  tokens_per_s: number;
  peak_rss_mb: number;
  steps: number;
  fast_paths: boolean;
  tensors_before: number;
  tensors_after: number;
  /** tfjs kernels one training step runs (`tf.profile`). */
  kernels_per_step: number;
  /** On WebGPU: compute-shader dispatches in one step (a kernel may dispatch more than once). */
  dispatches_per_step: number | null;
  /** On WebGPU: GPU→CPU reads inside one step (each one stalls the GPU); CPU-held tensors' reads not counted. */
  gpu_reads_per_step: number | null;
  /** Kernel time of one profiled step in matrix products and in everything else (null: no timings). */
  kernel_ms_products: number | null;
  kernel_ms_outside_products: number | null;
}

/** Kernels whose work is a matrix product. */
const PRODUCT_KERNELS = new Set(["BatchMatMul", "_FusedMatMul", "SimpleLMMatMul"]);

/**
 * On WebGPU tfjs times each program a kernel dispatches: its matrix
 * products (`MatMul…Program`, the bias and ReLU in their epilogue) are
 * counted as products wherever they run, also inside the WGSL fast paths'
 * linear kernels.
 */
const PRODUCT_PROGRAM = /^MatMul/;

/** A kernel's programs and their times, from tf.profile's `extraInfo` ("name: ms, …"), if listed. */
function programTimes(extraInfo: unknown): [string, number][] {
  if (typeof extraInfo !== "string" || extraInfo === "") return [];
  return extraInfo.split(", ").map((entry) => {
    const at = entry.lastIndexOf(": ");
    return [entry.slice(0, at), Number(entry.slice(at + 2))];
  });
}

/** What {@link watchWebGpu} has counted so far; `stop` puts the watched methods back. */
export interface GpuWatch {
  dispatches: number;
  reads: number;
  stop(): void;
}

/**
 * Counts, until `stop`, the compute dispatches and the GPU→CPU reads the
 * current WebGPU backend makes. A small tensor tfjs keeps on the CPU (its
 * values never uploaded) is read without the GPU, so it is not counted.
 */
export function watchWebGpu(): GpuWatch {
  const gpuBackend = tf.backend() as unknown as
    & Record<"read" | "readSync", (...a: unknown[]) => unknown>
    & { tensorMap: { get(dataId: unknown): { values: unknown } | undefined } };
  const restore: (() => void)[] = [];
  const watch: GpuWatch = {
    dispatches: 0,
    reads: 0,
    stop: () => restore.forEach((undo) => undo()),
  };
  const count = <T extends object>(
    target: T,
    key: keyof T & string,
    bump: (...a: unknown[]) => void,
  ) => {
    const original = target[key] as (...a: unknown[]) => unknown;
    (target as Record<string, unknown>)[key] = function (this: unknown, ...a: unknown[]) {
      bump(...a);
      return original.apply(this, a);
    };
    restore.push(() => (target as Record<string, unknown>)[key] = original);
  };
  const onGpu = (dataId: unknown) => gpuBackend.tensorMap.get(dataId)?.values == null;
  count(gpuBackend, "read", (dataId) => onGpu(dataId) && watch.reads++);
  count(gpuBackend, "readSync", (dataId) => onGpu(dataId) && watch.reads++);
  count(GPUComputePassEncoder.prototype, "dispatchWorkgroups", () => watch.dispatches++);
  return watch;
}

/** One training step under `tf.profile`, counting what it runs and, on WebGPU, dispatches and reads. */
async function profileStep(run: Run, data: PreparedData, backend: string) {
  const watch = backend === "webgpu" ? watchWebGpu() : undefined;
  let info: Awaited<ReturnType<typeof tf.profile>>;
  try {
    info = await tf.profile(() => run.step(data.train));
  } finally {
    watch?.stop();
  }
  (info.result as tf.Tensor).dispose();
  const timed = info.kernels.every((k) => typeof k.kernelTimeMs === "number");
  let products = 0;
  let outside = 0;
  for (const k of info.kernels) {
    const programs = programTimes(k.extraInfo);
    if (programs.length === 0) {
      if (PRODUCT_KERNELS.has(k.name)) products += k.kernelTimeMs as number;
      else outside += k.kernelTimeMs as number;
    }
    for (const [name, ms] of programs) {
      if (PRODUCT_PROGRAM.test(name)) products += ms;
      else outside += ms;
    }
  }
  return {
    kernels_per_step: info.kernels.length,
    dispatches_per_step: watch ? watch.dispatches : null,
    gpu_reads_per_step: watch ? watch.reads : null,
    kernel_ms_products: timed ? +products.toFixed(2) : null,
    kernel_ms_outside_products: timed ? +outside.toFixed(2) : null,
  };
}

async function benchOne(
  config: TrainConfig,
  data: PreparedData,
  steps: number,
  warmup: number,
): Promise<BenchResult> {
  const backend = await startBackend(config.backend);
  const run = buildRun(config, data.vocab.length, backend.name);
  let peakRss = Deno.memoryUsage().rss;
  const step = async () => {
    const loss = run.step(data.train);
    await loss.data(); // the step is done when its loss can be read
    loss.dispose();
    peakRss = Math.max(peakRss, Deno.memoryUsage().rss);
  };
  for (let i = 0; i < warmup; i++) await step();
  const profile = await profileStep(run, data, backend.name);
  const tensorsBefore = tf.memory().numTensors;
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const start = performance.now();
    await step();
    times.push(performance.now() - start);
  }
  const tensorsAfter = tf.memory().numTensors;
  run.dispose();
  times.sort((a, b) => a - b);
  const median = times[Math.floor(times.length / 2)];
  return {
    model_name: config.model_name,
    backend: backend.name,
    adapter: backend.adapter,
    ms_per_step_median: +median.toFixed(2),
    ms_per_step_min: +times[0].toFixed(2),
    tokens_per_s: Math.round((run.tokensPerStep * 1000) / median),
    peak_rss_mb: Math.round(peakRss / 2 ** 20),
    steps,
    fast_paths: fastPaths(),
    tensors_before: tensorsBefore,
    tensors_after: tensorsAfter,
    ...profile,
  };
}

/** One sampling benchmark's figures (the `--json` line of `--sample`). */
export interface SampleBenchResult {
  model_name: string;
  backend: string;
  adapter: string;
  chars: number;
  chars_per_s: number;
  ms_per_char: number;
  /** From the start context to the first character: the decoder's first forward. */
  first_char_ms: number;
  fast_paths: boolean;
  tensors_before: number;
  tensors_after: number;
}

/**
 * Samples `chars` characters from a model with the run's initial weights,
 * after a warm-up of a few characters, as `generate` does.
 */
async function benchSample(
  config: TrainConfig,
  vocabSize: number,
  chars: number,
): Promise<SampleBenchResult> {
  const backend = await startBackend(config.backend);
  const rng = new Rng(config.seed);
  const model = createModel(config.model_name, { ...config, vocab_size: vocabSize }, rng);
  await generateTokens(model, model.startContext, 5, {}, rng);
  const tensorsBefore = tf.memory().numTensors;
  const start = performance.now();
  let first = 0;
  await generateTokens(model, model.startContext, chars, {}, rng, () => {
    first ||= performance.now() - start;
  });
  const ms = performance.now() - start;
  const tensorsAfter = tf.memory().numTensors;
  disposeModel(model);
  return {
    model_name: config.model_name,
    backend: backend.name,
    adapter: backend.adapter,
    chars,
    chars_per_s: Math.round((chars * 1000) / ms),
    ms_per_char: +(ms / chars).toFixed(3),
    first_char_ms: +first.toFixed(1),
    fast_paths: fastPaths(),
    tensors_before: tensorsBefore,
    tensors_after: tensorsAfter,
  };
}

/** Runs the benchmarks `args` ask for and prints their figures. */
export async function main(args: string[]): Promise<(BenchResult | SampleBenchResult)[]> {
  // Bench flags and train flags share one command line.
  const isBench = (a: string) =>
    Object.keys(BENCH_FLAGS).some((k) => a === `--${k}` || a.startsWith(`--${k}=`));
  const { values } = parseFlags(args.filter(isBench), BENCH_FLAGS);
  const trainArgs = args.filter((a) => !isBench(a));
  const named = trainArgs.some((a) => a.startsWith("--model_name="));
  const backendGiven = trainArgs.find((a) => a.startsWith("--backend="));
  const backends = backendGiven
    ? [backendGiven.slice("--backend=".length)]
    : ["wasm", "webgpu", "cpu"];
  const suite = values.sample > 0 ? SAMPLE_SUITE : SUITE;
  const configs = named ? [trainArgs] : suite.map((s) => [...s, ...trainArgs]);
  const runs = configs.flatMap((c) =>
    backends.map((b) => parseTrainConfig([...c, `--backend=${b}`]).config)
  );
  if (trainArgs.some((a) => a.startsWith("--resume"))) {
    throw new UsageError("bench does not resume");
  }

  // tinyshakespeare as prepare tokenizes it, read once for every run.
  const text = "datas/tinyshakespeare.txt";
  const data = tokenize(decodeText(await readProjectFile(text, "text"), text));
  setFastPaths(!values.plain);
  if (values.sample > 0) {
    return await sampleSuite(runs, data.vocab.length, values.sample, values.json);
  }
  if (!values.json && fastPaths() && runs.some((c) => c.backend === "wasm")) {
    const { gflopsPerThread, threads, kernelGflopsPerThread } = wasmProductCeiling();
    console.log(
      `WebAssembly f32x4 multiply-adds here: ${gflopsPerThread.toFixed(1)} GFLOP/s a thread, ` +
        `${threads} threads (the ceiling of our matrix products on wasm); ` +
        `our product kernel alone: ${kernelGflopsPerThread.toFixed(1)} a thread (${
          Math.round(100 * kernelGflopsPerThread / gflopsPerThread)
        }%)`,
    );
  }
  return await eachRun(
    runs,
    (config) => benchOne(config, data, values.steps, values.warmup),
    (r) =>
      values.json
        ? JSON.stringify(r)
        : `${r.model_name.padEnd(24)} ${r.backend.padEnd(6)} median ${
          r.ms_per_step_median.toFixed(1).padStart(8)
        } ms/step` +
          `  min ${r.ms_per_step_min.toFixed(1).padStart(8)}  ${
            r.tokens_per_s.toLocaleString("en-US").padStart(9)
          } tok/s` +
          `  peak RSS ${r.peak_rss_mb} MB  tensors ${r.tensors_before}→${r.tensors_after}` +
          `  kernels ${r.kernels_per_step}` +
          (r.dispatches_per_step === null
            ? ""
            : ` (dispatches ${r.dispatches_per_step}, GPU reads ${r.gpu_reads_per_step})`) +
          `${r.fast_paths ? "" : "  plain"}  (${r.adapter})`,
  );
}

/**
 * Runs `one` for each config and prints each result's line. A run the
 * backend cannot do (the MoE models' plain path on WebGPU) is reported and
 * the rest go on; the failures end it with one error.
 */
async function eachRun<R>(
  runs: TrainConfig[],
  one: (config: TrainConfig) => Promise<R>,
  line: (r: R, config: TrainConfig) => string,
): Promise<R[]> {
  const results: R[] = [];
  const failed: string[] = [];
  for (const config of runs) {
    let r: R;
    try {
      r = await one(config);
    } catch (e) {
      failed.push(`${config.model_name} on ${config.backend}`);
      console.error(`${config.model_name} ${config.backend}: failed: ${(e as Error).message}`);
      continue;
    }
    results.push(r);
    console.log(line(r, config));
  }
  if (failed.length > 0) throw new UserError(`${failed.length} runs failed: ${failed.join(", ")}`);
  return results;
}

/** Runs and prints the sampling benchmarks. */
async function sampleSuite(
  runs: TrainConfig[],
  vocabSize: number,
  chars: number,
  json: boolean,
): Promise<SampleBenchResult[]> {
  return await eachRun(
    runs,
    (config) => benchSample(config, vocabSize, chars),
    (r, config) => {
      const size = config.model_name === "gptLM"
        ? ` C${config.n_embd} L${config.n_layer} T${config.block_size}`
        : "";
      return json
        ? JSON.stringify(r)
        : `${(r.model_name + size).padEnd(22)} ${r.backend.padEnd(6)} ${
          r.chars_per_s.toLocaleString("en-US").padStart(7)
        } chars/s  ${r.ms_per_char.toFixed(2).padStart(7)} ms/char  first ${
          r.first_char_ms.toFixed(1).padStart(7)
        } ms  tensors ${r.tensors_before}→${r.tensors_after}${
          r.fast_paths ? "" : "  plain"
        }  (${r.adapter})`;
    },
  );
}

if (import.meta.main) await runMain(() => main(Deno.args));
