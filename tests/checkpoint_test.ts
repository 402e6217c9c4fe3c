import assert from "node:assert/strict";
import { preparedWorkdir, type RunningScript, runScript, startScript } from "./helpers.ts";

/** Reads a safetensors header by hand: what a PyTorch user's few lines of Python do. */
function readHeader(
  bytes: Uint8Array,
): Record<string, { dtype: string; shape: number[]; data_offsets: number[] }> {
  const length = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length)));
}

const TINY = {
  bigramLM: [],
  mlpLM: ["--max_hidden_nodes=32", "--char_encoding_len=8"],
  gptLM: ["--n_layer=2", "--n_head=2", "--n_embd=16"],
  moa_moeLM: ["--n_layer=1", "--n_head=2", "--n_embd=16", "--num_experts=4", "--dropout=0.1"],
} as const;

/** Training flags small enough to run in a second or two on the cpu backend. */
function tinyArgs(model: keyof typeof TINY, extra: string[] = []): string[] {
  return [
    `--model_name=${model}`,
    ...TINY[model],
    "--batch_size=8",
    "--block_size=16",
    "--eval_interval=10",
    "--eval_iters=2",
    "--learning_rate=0.01",
    "--backend=cpu",
    ...extra,
  ];
}

async function lossLog(dir: string): Promise<string> {
  for await (const entry of Deno.readDir(dir)) {
    if (entry.name.startsWith("loss_") && entry.name.endsWith(".txt")) {
      return await Deno.readTextFile(`${dir}/${entry.name}`);
    }
  }
  throw new Error(`no loss log in ${dir}`);
}

/** The run's one best checkpoint in `dir/out`. */
function onlyCheckpoint(dir: string): string {
  const names = [...Deno.readDirSync(`${dir}/out`)].map((e) => e.name)
    .filter((n) => n.endsWith(".safetensors") && !n.includes(".optim.") && !n.includes(".last."));
  assert.equal(names.length, 1, names.join(", "));
  return `${dir}/out/${names[0]}`;
}

const EXPECTED_NAMES: Record<keyof typeof TINY, [string, number[]][]> = {
  bigramLM: [["logits.weight", [65, 65]]],
  mlpLM: [
    ["fc1.weight", [32, 16 * 8]],
    ["fc1.bias", [32]],
    ["bn1.running_var", [32]],
    ["bn1.num_batches_tracked", []],
    ["fc5.weight", [65, 8]],
  ],
  gptLM: [
    ["token_embedding_table.weight", [65, 16]],
    ["position_embedding_table.weight", [16, 16]],
    ["blocks.1.sa.heads.1.key.weight", [8, 16]],
    ["blocks.0.sa.heads.0.tril", [16, 16]],
    ["blocks.0.ffwd.net.0.weight", [64, 16]],
    ["lm_head.weight", [65, 16]],
  ],
  moa_moeLM: [
    ["blocks.0.sa.p_reduce_bias", [16]],
    ["blocks.0.sa.tril", [16, 16]],
    ["blocks.0.sa.input_linear.weight", [4, 8, 16]],
    ["blocks.0.sa.output_linear.weight", [4, 16, 8]],
    ["blocks.0.sa.router.noise_linear.weight", [4, 16]],
    ["blocks.0.smoe.experts.3.net.0.weight", [64, 16]],
  ],
};

for (const model of Object.keys(TINY) as (keyof typeof TINY)[]) {
  Deno.test(`${model}: checkpoint has PyTorch names and shapes, generate and eval read it`, async () => {
    const dir = await preparedWorkdir();
    const train = await runScript("train.ts", tinyArgs(model, ["--max_iters=11"]), { cwd: dir });
    assert.equal(train.code, 0, train.stderr);
    const path = onlyCheckpoint(dir);
    const header = readHeader(await Deno.readFile(path));
    for (const [name, shape] of EXPECTED_NAMES[model]) {
      assert.ok(header[name], `${name} missing`);
      assert.deepEqual(header[name].shape, shape, name);
    }
    if (model === "mlpLM") assert.equal(header["bn1.num_batches_tracked"].dtype, "I64");
    const meta = header.__metadata__ as unknown as Record<string, string>;
    assert.equal(meta.model_name, model);
    assert.equal(JSON.parse(meta.itos).length, 65);

    const evals = await Promise.all(
      ["cpu", "wasm", "webgpu"].map((backend) =>
        runScript("eval.ts", [`--ckpt=${path}`, "--max_windows=40", `--backend=${backend}`], {
          cwd: dir,
        })
      ),
    );
    const [cpu, wasm, webgpu] = evals.map((r) => {
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout.trim().split("\n").pop()!);
    });
    assert.equal(cpu.model_name, model);
    assert.equal(cpu.windows, 40);
    assert.equal(cpu.tokens, model === "mlpLM" ? 40 : 640);
    assert.ok(cpu.loss > 1 && cpu.loss < 5, `${cpu.loss}`);
    for (const other of [wasm, webgpu]) {
      assert.ok(Math.abs(cpu.loss - other.loss) < 1e-4, `cpu ${cpu.loss} vs ${other.loss}`);
    }

    const sample = await runScript("generate.ts", [
      `--ckpt=${path}`,
      "--max_new_tokens=30",
      "--seed=1",
      "--prompt=ROMEO:",
    ], {
      cwd: dir,
    });
    assert.equal(sample.code, 0, sample.stderr);
    assert.ok(sample.stdout.startsWith("ROMEO:"));
    assert.equal([...sample.stdout.trimEnd()].length >= 30, true);
    await Deno.remove(dir, { recursive: true });
  });

  Deno.test(`${model}: a resumed run reproduces the uninterrupted one exactly`, async () => {
    const straight = await preparedWorkdir();
    const a = await runScript("train.ts", tinyArgs(model, ["--max_iters=21"]), { cwd: straight });
    assert.equal(a.code, 0, a.stderr);

    const split = await preparedWorkdir();
    const b1 = await runScript("train.ts", tinyArgs(model, ["--max_iters=11"]), { cwd: split });
    assert.equal(b1.code, 0, b1.stderr);
    const ckpt = onlyCheckpoint(split);
    const b2 = await runScript("train.ts", [
      "--resume=true",
      `--ckpt_file=${ckpt}`,
      "--max_iters=21",
    ], { cwd: split });
    assert.equal(b2.code, 0, b2.stderr);
    assert.match(b2.stdout, /resuming .* at iteration 10/);

    assert.equal(await lossLog(split), await lossLog(straight));
    // The last best checkpoints hold the same weights, bit for bit.
    const [x, y] = [onlyCheckpoint(straight), onlyCheckpoint(split)];
    const [hx, hy] = [readHeader(await Deno.readFile(x)), readHeader(await Deno.readFile(y))];
    const iterOf = (h: ReturnType<typeof readHeader>) =>
      (h.__metadata__ as unknown as Record<string, string>).iter;
    assert.equal(iterOf(hx), iterOf(hy));
    const dataOf = (bytes: Uint8Array) =>
      bytes.subarray(8 + Number(new DataView(bytes.buffer).getBigUint64(0, true)));
    assert.deepEqual(dataOf(await Deno.readFile(x)), dataOf(await Deno.readFile(y)));
    await Deno.remove(straight, { recursive: true });
    await Deno.remove(split, { recursive: true });
  });
}

Deno.test("SIGINT finishes the step, saves, says how to resume; resuming completes the run", async () => {
  const straight = await preparedWorkdir();
  const args = tinyArgs("bigramLM", ["--max_iters=600", "--eval_interval=1000"]);
  const a = await runScript("train.ts", args, { cwd: straight });
  assert.equal(a.code, 0, a.stderr);

  const dir = await preparedWorkdir();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--config",
      new URL("../deno.json", import.meta.url).pathname,
      new URL("../train.ts", import.meta.url).pathname,
      ...args,
    ],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Wait until training is under way, then interrupt.
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("saving model")) seen += (await reader.read()).value ?? "";
  await new Promise((r) => setTimeout(r, 300));
  child.kill("SIGINT");
  while (true) {
    const { done } = await reader.read();
    if (done) break;
  }
  const status = await child.status;
  const stderr = await new Response(child.stderr).text();
  assert.equal(status.code, 130, stderr);
  const resume = /--resume=true --ckpt_file=(\S+)/.exec(stderr);
  assert.ok(resume, stderr);
  const b = await runScript("train.ts", ["--resume=true", `--ckpt_file=${resume[1]}`], {
    cwd: dir,
  });
  assert.equal(b.code, 0, b.stderr);
  assert.equal(await lossLog(dir), await lossLog(straight));
  await Deno.remove(straight, { recursive: true });
  await Deno.remove(dir, { recursive: true });
});

/** Waits for `running` to exit, at most `ms` milliseconds (then kills it and fails). */
async function exitWithin(running: RunningScript, ms: number, what: string) {
  const timer = setTimeout(() => running.child.kill("SIGKILL"), ms);
  const result = await running.done;
  clearTimeout(timer);
  assert.notEqual(result.code, 137, `${what}: still running after ${ms} ms:\n${result.stderr}`);
  return result;
}

/** The save_id of a checkpoint pair's two files, read as any safetensors reader would. */
async function saveIds(path: string): Promise<string[]> {
  return await Promise.all(
    [path, path.replace(/\.safetensors$/, ".optim.safetensors")].map(async (p) =>
      (readHeader(await Deno.readFile(p)).__metadata__ as unknown as Record<string, string>)
        .save_id
    ),
  );
}

Deno.test("Ctrl-C stops within a step, mid-training or mid-evaluation; a second one waits for the pair", async () => {
  // (a) Between evaluations that are 100,000 steps apart.
  const steps = await preparedWorkdir();
  const stepArgs = [
    "--model_name=gptLM",
    "--max_iters=1000000",
    "--eval_interval=100000",
    "--eval_iters=1",
    "--batch_size=2",
    "--block_size=8",
    "--backend=cpu",
    "--n_layer=1",
    "--n_head=1",
    "--n_embd=8",
  ];
  // (b) In an evaluation of 10 million batches.
  const evaluating = await preparedWorkdir();
  const evalArgs = [...tinyArgs("bigramLM", ["--max_iters=100", "--eval_iters=10000000"])];
  // (c) Stopped in an evaluation too, but with mlpLM's default size: 10M parameters, a
  // ~120 MB pair that takes a while to write, time for a second Ctrl-C to arrive meanwhile.
  const big = await preparedWorkdir();
  const bigArgs = [
    "--model_name=mlpLM",
    "--max_iters=100",
    "--eval_iters=1000000",
    "--batch_size=4",
    "--backend=wasm",
  ];

  const [a, b, c] = [
    startScript("train.ts", stepArgs, steps),
    startScript("train.ts", evalArgs, evaluating),
    startScript("train.ts", bigArgs, big),
  ];
  const interrupt = async (run: RunningScript, ready: RegExp) => {
    await run.waitFor("stdout", ready);
    await new Promise((r) => setTimeout(r, 300));
    run.child.kill("SIGINT");
  };
  const twice = async () => {
    await interrupt(c, /logging to/);
    await c.waitFor("stderr", /finishing this step, then saving/);
    for (let i = 0; i < 3; i++) {
      c.child.kill("SIGINT");
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const signalled = Promise.all([
    interrupt(a, /saving model/),
    interrupt(b, /logging to/),
    twice(),
  ]);
  signalled.catch(() => {}); // reported below, once every child has exited
  const [ra, rb, rc] = await Promise.all([
    exitWithin(a, 20_000, "mid-training"),
    exitWithin(b, 20_000, "mid-evaluation"),
    exitWithin(c, 40_000, "second Ctrl-C"),
  ]);
  await signalled;

  assert.equal(ra.code, 130, ra.stderr);
  const stoppedAt =
    /stopped by SIGINT after step (\d+); resume with:\n\s+deno task train --resume=true --ckpt_file=(\S+)/
      .exec(ra.stderr);
  assert.ok(stoppedAt && Number(stoppedAt[1]) > 0, ra.stderr);
  assert.equal(rb.code, 130, rb.stderr);
  const duringEval =
    /stopped by SIGINT during the evaluation at step 0; resume with:\n\s+\S+ task train --resume=true --ckpt_file=(\S+)/
      .exec(rb.stderr);
  assert.ok(duringEval, rb.stderr);
  assert.equal(rc.code, 130, rc.stderr);
  assert.match(rc.stderr, /a checkpoint is being written; stopping once it is complete/);
  const last = /--ckpt_file=(\S+)/.exec(rc.stderr)![1];
  const [modelId, optimId] = await saveIds(`${big}/${last}`);
  assert.equal(modelId, optimId, "the .last pair is torn");

  // Each saved state resumes.
  const resumes = await Promise.all([
    runScript("train.ts", [
      "--resume=true",
      `--ckpt_file=${stoppedAt[2]}`,
      `--max_iters=${Number(stoppedAt[1]) + 3}`,
    ], { cwd: steps }),
    runScript("train.ts", [
      "--resume=true",
      `--ckpt_file=${duringEval[1]}`,
      "--eval_iters=2",
      "--max_iters=3",
    ], { cwd: evaluating }),
  ]);
  for (const r of resumes) assert.equal(r.code, 0, r.stderr);
  assert.match(resumes[1].stdout, /resuming .* at iteration 0/);
  assert.match(resumes[1].stdout, />>> step 0: /);
  for (const dir of [steps, evaluating, big]) await Deno.remove(dir, { recursive: true });
});

Deno.test("damaged or mismatched checkpoints are refused in one line", async () => {
  const dir = await preparedWorkdir();
  const train = await runScript("train.ts", tinyArgs("bigramLM", ["--max_iters=2"]), { cwd: dir });
  assert.equal(train.code, 0, train.stderr);
  const good = await Deno.readFile(onlyCheckpoint(dir));
  const cases: [string, Uint8Array, RegExp][] = [
    ["empty", new Uint8Array(0), /empty\.safetensors/],
    ["truncated", good.subarray(0, good.length - 10), /truncated\.safetensors/],
    [
      "absurd",
      (() => {
        const b = good.slice();
        new DataView(b.buffer).setBigUint64(0, 1n << 40n, true);
        return b;
      })(),
      /absurd\.safetensors/,
    ],
  ];
  for (const [name, bytes, message] of cases) {
    await Deno.writeFile(`${dir}/${name}.safetensors`, bytes);
    for (const script of ["generate.ts", "eval.ts"]) {
      const r = await runScript(script, [`--ckpt=${name}.safetensors`, "--backend=cpu"], {
        cwd: dir,
      });
      assert.equal(r.code, 1, `${script} ${name}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
  }
  const missing = await runScript("generate.ts", ["--ckpt=nope.safetensors"], { cwd: dir });
  assert.match(missing.stderr, /checkpoint nope\.safetensors not found/);
  const wrongModel = await runScript(
    "train.ts",
    ["--resume=true", `--ckpt_file=${onlyCheckpoint(dir)}`, "--model_name=gptLM"],
    { cwd: dir },
  );
  assert.equal(wrongModel.code, 2);
  assert.match(wrongModel.stderr, /--model_name=gptLM differs from .*model_name=bigramLM/);
  await Deno.remove(dir, { recursive: true });
});
