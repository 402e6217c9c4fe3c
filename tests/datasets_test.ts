import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { addAccuracy } from "../eval.ts";
import { adderData, adderProblems, encodeAdder } from "../lib/adder.ts";
import { torchRandperm } from "../lib/torch_random.ts";
import { genCodingPatterns } from "../models/mlp_patterns.ts";
import { startBackend } from "../run/start.ts";
import { runScript } from "./helpers.ts";

Deno.test("torchRandperm equals PyTorch 1.13's torch.randperm after manual_seed", () => {
  // torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
  assert.deepEqual(Array.from(torchRandperm(10, 1337)), [5, 0, 6, 1, 9, 8, 4, 2, 3, 7]);
  assert.deepEqual(Array.from(torchRandperm(7, 0)), [4, 0, 5, 3, 2, 6, 1]);
  const perm = torchRandperm(10000, 1337);
  assert.deepEqual(
    Array.from(perm.subarray(0, 12)),
    [7415, 7727, 8828, 1002, 2307, 598, 5379, 8217, 674, 7800, 8922, 6621],
  );
  assert.deepEqual(Array.from(perm.subarray(-4)), [543, 9788, 1912, 8414]);
  // A seed above 2^32: PyTorch keeps its low 32 bits.
  assert.deepEqual(
    Array.from(torchRandperm(10000, 4294967301).subarray(0, 12)),
    [3411, 517, 4871, 7365, 7290, 9580, 2460, 981, 9600, 5921, 9929, 7185],
  );
  assert.deepEqual(Array.from(torchRandperm(0, 1)), []);
  assert.deepEqual(Array.from(torchRandperm(1, 1)), [0]);
});

Deno.test("adder problems are encoded as the original's encode_adder", () => {
  // 85 + 50 = 135 -> "8550531" (the original's docstring); 6 + 39 = 45 -> "0639540" (its
  // docstring says "0639054", the sum unreversed; its code reverses it)
  assert.deepEqual(Array.from(encodeAdder([8550, 639], 2)), [
    ...[8, 5, 5, 0, 5, 3, 1],
    ...[0, 6, 3, 9, 5, 4, 0],
  ]);
  const problems = adderProblems(encodeAdder([8550, 639], 2), 2);
  assert.deepEqual(problems, [
    { prompt: [8, 5, 5, 0], answer: [5, 3, 1] },
    { prompt: [0, 6, 3, 9], answer: [5, 4, 0] },
  ]);
});

Deno.test("add_accuracy counts a problem only when every greedy digit of its sum is right", async () => {
  await startBackend("cpu");
  const problems = adderProblems(adderData(2).val, 2);
  // A model that adds, wrong whenever a + b is a multiple of 7 (its last answer digit off by one).
  const oracle = {
    nextTokenLogits(context: number[]) {
      const [a1, a0, b1, b0] = context;
      const sum = 10 * (a1 + b1) + a0 + b0;
      const digits = [...String(sum).padStart(3, "0")].reverse().map(Number);
      let digit = digits[context.length - 4];
      if (context.length === 6 && sum % 7 === 0) digit = (digit + 1) % 10;
      return tf.oneHot(tf.tensor1d([digit], "int32"), 10).reshape([10]).mul(5) as tf.Tensor1D;
    },
  };
  const multiplesOf7 =
    problems.filter(({ prompt: [a1, a0, b1, b0] }) => (10 * (a1 + b1) + a0 + b0) % 7 === 0).length;
  assert.ok(multiplesOf7 > 50 && multiplesOf7 < 100, `${multiplesOf7}`);
  assert.equal(await addAccuracy(oracle, problems), 500 - multiplesOf7);
});

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("prepare --dataset=adder_int writes the original's files byte for byte; train and add_accuracy run on them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "simplelm-adder-" });
  const prepared = await runScript("prepare.ts", ["--dataset=adder_int"], { cwd: dir });
  assert.equal(prepared.code, 0, prepared.stderr);
  const data = adderData(2);
  assert.equal(data.train.length, 9500 * 7);
  assert.equal(data.val.length, 500 * 7);
  // SHA-256 of train.bin and val.bin as the original's datasets/adder_int/prepare.py writes them.
  assert.equal(
    await sha256(await Deno.readFile(`${dir}/datas/adder_int/train.bin`)),
    "733758d5151f4a983c0620718923360d49e3d79fded17bc25f8f0af544ea76e4",
  );
  assert.equal(
    await sha256(await Deno.readFile(`${dir}/datas/adder_int/val.bin`)),
    "a9834cd6792ddf8baf17477ed266cbac5c461625a5fca5e90aba7f951a8d61de",
  );
  const meta = JSON.parse(await Deno.readTextFile(`${dir}/datas/adder_int/meta.json`));
  assert.deepEqual([meta.vocab_size, meta.ndigit, meta.block_size], [10, 2, 6]);
  // The first val problem: 74 + 15 = 89.
  assert.deepEqual(Array.from(data.val.subarray(0, 7)), [7, 4, 1, 5, 9, 8, 0]);

  const withInput = await runScript("prepare.ts", ["--dataset=adder_int", "--input=x.txt"], {
    cwd: dir,
  });
  assert.equal(withInput.code, 2);
  assert.match(
    withInput.stderr,
    /^error: --dataset=adder_int is generated, not read: drop --input\n$/,
  );

  // The original's train.py crashes here (meta[block_size]); ours takes block_size 6 from meta.json.
  const flags = [
    "--dataset=adder_int",
    "--n_embd=8",
    "--n_head=2",
    "--n_layer=1",
    "--batch_size=4",
    "--max_iters=2",
    "--eval_iters=1",
    "--backend=cpu",
  ];
  const train = await runScript("train.ts", flags, { cwd: dir });
  assert.equal(train.code, 0, train.stderr);
  assert.match(train.stdout, /found block_size = 6 \(inside datas\/adder_int\/meta\.json\)/);
  const ckpt = /best checkpoint (\S+\.safetensors)/.exec(train.stdout)![1];
  assert.match(ckpt, /_BL-6_/);
  const tooLong = await runScript("train.ts", [...flags, "--block_size=8"], { cwd: dir });
  assert.equal(tooLong.code, 2);
  assert.match(tooLong.stderr, /--block_size=8 differs from .*block_size 6.*: drop --block_size/);

  const evaluated = await runScript(
    "eval.ts",
    [`--ckpt=${ckpt}`, "--metric=add_accuracy", "--backend=cpu"],
    { cwd: dir },
  );
  assert.equal(evaluated.code, 0, evaluated.stderr);
  const result = JSON.parse(evaluated.stdout);
  assert.equal(result.problems, 500);
  assert.equal(result.add_accuracy, result.correct / 500);
  assert.ok(result.correct >= 0 && result.correct <= 500);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a Chinese novel's ~4,400 characters prepare through --input; mlpLM's error asks for char_encoding_len 16", async () => {
  const dir = await Deno.makeTempDir({ prefix: "simplelm-cjk-" });
  // 4,434 CJK ideographs and the newline: hongloumeng_char's 4,435 distinct characters.
  const ideographs = Array.from({ length: 4434 }, (_, i) => String.fromCodePoint(0x4e00 + i));
  const text = Array.from({ length: 3 }, () => ideographs.join("") + "\n").join("");
  await Deno.writeTextFile(`${dir}/novel.txt`, text);
  const prepared = await runScript(
    "prepare.ts",
    ["--input=novel.txt", "--dataset=hongloumeng_char"],
    { cwd: dir },
  );
  assert.equal(prepared.code, 0, prepared.stderr);
  assert.match(prepared.stdout, /vocab size: 4,435/);
  const train = await runScript(
    "train.ts",
    ["--dataset=hongloumeng_char", "--model_name=mlpLM", "--block_size=8", "--max_iters=1"],
    { cwd: dir },
  );
  assert.equal(train.code, 2);
  assert.match(
    train.stderr,
    /^error: char_encoding_len 12 gives only 924 patterns \(C\(12, 6\)\), fewer than the vocabulary size 4435; use char_encoding_len 16 or more\n$/,
  );
  assert.equal(genCodingPatterns(16, 4435).length, 4435);
  assert.throws(() => genCodingPatterns(14, 4435), /only 3432 patterns/);
  await Deno.remove(dir, { recursive: true });
});
