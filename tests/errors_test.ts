/**
 * The "bad input" table: each case ends in one line naming the problem,
 * exit 2 for usage errors and 1 otherwise, and nothing saved is lost.
 */
import assert from "node:assert/strict";
import { assertOneLine, preparedWorkdir, runScript } from "./helpers.ts";

const TINY = ["--batch_size=8", "--block_size=16", "--eval_iters=2", "--backend=cpu"];

Deno.test("usage errors: model configs that cannot work", async () => {
  const dir = await preparedWorkdir();
  const cases: [string[], RegExp][] = [
    [["--model_name=mlpLM", "--char_encoding_len=7"], /char_encoding_len/],
    [["--model_name=mlpLM", "--char_encoding_len=6"], /char_encoding_len/], // C(6,3) = 20 < 65
    [
      ["--model_name=mlpLM", "--active_fn=tanh"],
      /--active_fn=tanh: expected one of relu, sigmoid, silu, swiglu/,
    ],
    [
      ["--model_name=gptLM", "--n_embd=30", "--n_head=4"],
      /n_embd \(30\) must be divisible by n_head \(4\)/,
    ],
    [["--eval_interval=0"], /--eval_interval=0: must be >= 1/],
    [["--eval_iters=-1"], /--eval_iters=-1: must be >= 1/],
    [["--max_iters=0"], /--max_iters=0: must be >= 1/],
    [["--learning_rate=inf"], /--learning_rate=inf: expected a number/],
    [["--resume=true"], /--resume=true needs --ckpt_file/],
    [["--model_name=moeLM", "--top_k=9"], /top_k \(9\) must not exceed num_experts \(8\)/],
    [
      ["--model_name=moa_moeLM", "--n_head=6", "--top_k=4"],
      /moa_moeLM needs n_head \(6\) divisible by top_k \(4\)/,
    ],
    [
      ["--model_name=moeLM", "--nn_init=uniform"],
      /--nn_init=uniform: expected one of kaiming_normal, xavier_normal/,
    ],
    [
      ["--model_name=block_wise_scaling_gptLM", "--qkv_multiplier_min=0"],
      /--qkv_multiplier_min=0: must be > 0/,
    ],
    [
      ["--model_name=block_wise_scaling_gptLM", "--ffn_multiplier_min=4.5"],
      /ffn_multiplier_min \(4\.5\) must not exceed ffn_multiplier_max \(4\)/,
    ],
  ];
  for (const [args, message] of cases) {
    // The case's flags come last: of a repeated flag, the last one counts.
    assertOneLine(
      await runScript("train.ts", [...TINY, ...args], { cwd: dir }),
      2,
      message,
      args.join(" "),
    );
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a diverging loss stops the run; the last good checkpoint stays", async () => {
  const dir = await preparedWorkdir();
  const r = await runScript(
    "train.ts",
    [
      "--model_name=bigramLM",
      "--learning_rate=1e38",
      "--weight_decay=0", // lr·wd >= 1 is refused before training
      "--max_iters=50",
      "--eval_interval=5",
      ...TINY,
    ],
    { cwd: dir },
  );
  assertOneLine(r, 1, /the loss is not finite at step \d+: lower --learning_rate/, "lr 1e38");
  const ckpt = [...Deno.readDirSync(`${dir}/out`)].find((e) =>
    e.name.endsWith("char.safetensors")
  )!;
  const ok = await runScript("eval.ts", [
    `--ckpt=out/${ckpt.name}`,
    "--max_windows=4",
    "--backend=cpu",
  ], { cwd: dir });
  assert.equal(ok.code, 0, ok.stderr);
  assert.ok(Number.isFinite(JSON.parse(ok.stdout).loss));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("unwritable out_dir, and a resume whose vocabulary differs, fail in one line", async () => {
  const dir = await preparedWorkdir();
  await Deno.writeTextFile(`${dir}/blocker`, "a file where a folder should be");
  assertOneLine(
    await runScript("train.ts", ["--model_name=bigramLM", "--out_dir=blocker/out", ...TINY], {
      cwd: dir,
    }),
    1,
    /cannot write to out_dir 'blocker\/out'/,
    "out_dir under a file",
  );
  const train = await runScript("train.ts", ["--model_name=bigramLM", "--max_iters=2", ...TINY], {
    cwd: dir,
  });
  assert.equal(train.code, 0, train.stderr);
  const ckpt =
    [...Deno.readDirSync(`${dir}/out`)].find((e) => e.name.endsWith("char.safetensors"))!.name;
  const meta = JSON.parse(await Deno.readTextFile(`${dir}/datas/shakespeare_char/meta.json`));
  [meta.itos["1"], meta.itos["2"]] = [meta.itos["2"], meta.itos["1"]];
  await Deno.writeTextFile(`${dir}/datas/shakespeare_char/meta.json`, JSON.stringify(meta));
  assertOneLine(
    await runScript("train.ts", ["--resume=true", `--ckpt_file=out/${ckpt}`], { cwd: dir }),
    1,
    /its vocabulary differs from datas\/shakespeare_char\/meta\.json's/,
    "vocabulary changed",
  );
  assertOneLine(
    await runScript("generate.ts", [`--ckpt=out/${ckpt}`, "--top_k=0"], { cwd: dir }),
    2,
    /--top_k=0: must be >= 1/,
    "top_k 0",
  );
  await Deno.remove(dir, { recursive: true });
});
