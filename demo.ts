/**
 * The whole pipeline in a few minutes on a laptop CPU: prepare
 * tinyshakespeare (if needed), train each model with a small config, print
 * a sample from each, and plot their validation losses to `loss.svg`.
 *
 *   deno task demo [--backend=auto|webgpu|wasm|cpu]
 *
 * @module
 */
import { runMain } from "./cli/errors.ts";
import { parseFlags } from "./cli/flags.ts";
import { BACKEND_FLAG } from "./lib/backend.ts";
import { main as generate } from "./generate.ts";
import { main as plot } from "./plot.ts";
import { main as prepare } from "./prepare.ts";
import { main as train } from "./train.ts";

/** Small configs that each train in a minute or two on 2 CPU cores. */
export const DEMO_RUNS: { model: string; args: string[] }[] = [
  {
    model: "bigramLM",
    args: [
      "--learning_rate=1e-2",
      "--batch_size=32",
      "--block_size=64",
      "--max_iters=1000",
      "--eval_interval=200",
    ],
  },
  {
    model: "mlpLM",
    args: [
      "--block_size=32",
      "--max_hidden_nodes=512",
      "--learning_rate=1e-3",
      "--max_iters=1000",
      "--eval_interval=200",
    ],
  },
  {
    model: "gptLM",
    args: ["--config=cpu", "--learning_rate=1e-3", "--max_iters=500", "--eval_interval=100"],
  },
  // A small mixture of experts: 4 experts of which the router picks 2 per token.
  {
    model: "moeLM",
    args: [
      "--n_layer=2",
      "--n_head=4",
      "--n_embd=64",
      "--num_experts=4",
      "--block_size=32",
      "--batch_size=16",
      "--dropout=0",
      "--learning_rate=1e-3",
      "--max_iters=300",
      "--eval_interval=100",
    ],
  },
];

/** The demo's evaluations are short: 20 batches per split instead of 200. */
export const DEMO_EVAL_ITERS = "--eval_iters=20";

const FLAGS = {
  backend: BACKEND_FLAG,
  out_dir: { type: "string", default: "out/demo", help: "where the demo's checkpoints go" },
} as const;

function banner(text: string): void {
  console.log(`\n=== ${text} ${"=".repeat(Math.max(0, 70 - text.length))}`);
}

/** Runs the demo. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseFlags(args, FLAGS);
  const common = [`--backend=${values.backend}`, `--out_dir=${values.out_dir}`, DEMO_EVAL_ITERS];

  try {
    await Deno.stat("datas/shakespeare_char/meta.json");
  } catch {
    banner("prepare: tinyshakespeare → datas/shakespeare_char");
    await prepare([]);
  }

  const results: { model: string; logFile: string; checkpointPath: string }[] = [];
  for (const run of DEMO_RUNS) {
    banner(`train ${run.model}`);
    const result = await train([`--model_name=${run.model}`, ...run.args, ...common]);
    results.push({ model: run.model, ...result });
  }

  for (const { model, checkpointPath } of results) {
    banner(`sample from ${model}`);
    await generate([
      `--ckpt=${checkpointPath}`,
      "--max_new_tokens=300",
      "--seed=1337",
      `--backend=${values.backend}`,
    ]);
  }

  banner("plot");
  const svg = await plot([...results.map((r) => r.logFile), "--out=loss.svg"]);

  banner("done");
  for (const r of results) {
    console.log(`${r.model}: loss log ${r.logFile}, checkpoint ${r.checkpointPath}`);
  }
  console.log(`validation losses compared: ${svg}`);
  console.log(
    "next: deno task train --model_name=gptLM --config=cpu   (see README.md for every flag)",
  );
  console.log(`look inside a model: deno task inspect --ckpt=${results.at(-1)!.checkpointPath}`);
}

if (import.meta.main) await runMain(() => main(Deno.args));
