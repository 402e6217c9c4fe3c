/**
 * The second round of bad input: crafted checkpoints, paths that lead out of
 * the folder, sizes that cannot fit, full disks, and the smaller things.
 * Each ends in one line naming the problem, before anything is built, and
 * nothing saved is lost. (Ctrl-C is tested in checkpoint_test.ts.)
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { UsageError, UserError } from "../cli/errors.ts";
import { loadDataset, metaJson, tokenize, uint16Bytes } from "../lib/data.ts";
import { Rng } from "../lib/rng.ts";
import { encodeSafetensors, f32Entry, readSafetensorsFile } from "../lib/safetensors.ts";
import {
  countParams,
  disposeModel,
  MODEL_NAMES,
  type ModelConfig,
  type ModelName,
} from "../models/model.ts";
import { createModel, MODELS } from "../models/registry.ts";
import {
  loadCheckpoint,
  modelFromCheckpoint,
  optimizerPath,
  saveCheckpoint,
} from "../run/checkpoint.ts";
import { parseTrainConfig } from "../run/config.ts";
import { buildRun, trainSettings } from "../run/run.ts";
import { sampleFromLogits } from "../run/sampling.ts";
import { startBackend } from "../run/start.ts";
import { assertOneLine, modelConfig, preparedWorkdir, runScript } from "./helpers.ts";

/** Runs `f` with the working directory (the project folder the scripts see) at `dir`. */
async function inFolder<T>(dir: string, f: () => Promise<T>): Promise<T> {
  const cwd = Deno.cwd();
  Deno.chdir(dir);
  try {
    return await f();
  } finally {
    Deno.chdir(cwd);
  }
}

const TINY_TRAIN = [
  "--model_name=bigramLM",
  "--batch_size=8",
  "--block_size=16",
  "--eval_interval=10",
  "--eval_iters=2",
  "--learning_rate=0.01",
  "--backend=cpu",
];

Deno.test("every model knows its sizes before it is built", async () => {
  await startBackend("cpu");
  const configs: [ModelName, Partial<ModelConfig>][] = [
    ["bigramLM", {}],
    ["mlpLM", { max_hidden_nodes: 32, char_encoding_len: 8 }],
    ["mlpLM", { max_hidden_nodes: 30, use_batch_norm: false }],
    ["gptLM", { n_layer: 2, n_head: 2, n_embd: 16, block_size: 8 }],
    ["gptLM", { n_layer: 1, n_head: 3, n_embd: 12, vocab_size: 7 }],
    [
      "block_wise_scaling_gptLM",
      { n_layer: 3, n_head: 4, n_embd: 16, block_size: 8, ffn_intermediate_divisor: 8 },
    ],
    ["moeLM", { n_layer: 2, n_head: 2, n_embd: 16, block_size: 8, num_experts: 3 }],
    ["moeLM", { n_layer: 1, n_head: 2, n_embd: 8, num_experts: 4, capacity_factor: 1 }],
    ["moa_moeLM", { n_layer: 2, n_head: 4, n_embd: 16, block_size: 8, num_experts: 3 }],
  ];
  for (const [name, overrides] of configs) {
    const config = modelConfig(overrides);
    const model = createModel(name, config, new Rng(1));
    const sizes = MODELS[name].sizes(config);
    assert.equal(sizes.params, countParams(model), `${name} params`);
    assert.equal(
      sizes.buffers,
      model.buffers.reduce((n, b) => n + b.tensor.size, 0),
      `${name} buffers`,
    );
    assert.equal(sizes.tensors, model.params.length + model.buffers.length, `${name} tensors`);
    assert.equal(sizes.splittable, model.bytesPerRow !== undefined, `${name} splittable`);
    if (model.bytesPerRow !== undefined) assert.equal(sizes.bytesPerRow, model.bytesPerRow);
    disposeModel(model);
  }
  // Every model is covered: a new one must know its sizes too.
  assert.deepEqual(new Set(configs.map(([name]) => name)), new Set(MODEL_NAMES));
});

Deno.test("sizes that cannot fit are refused before anything is built, in one line", async () => {
  // The issue's examples, each before a single tensor exists.
  const cases: [string[], string, RegExp][] = [
    [["--model_name=gptLM", "--n_embd=100000", "--n_head=4"], "cpu", /use a smaller --n_embd/],
    [["--model_name=bigramLM", "--batch_size=1000000000"], "cpu", /smaller --batch_size/],
    [["--model_name=mlpLM", "--max_hidden_nodes=1000000000"], "cpu", /--max_hidden_nodes/],
    [["--model_name=mlpLM", "--char_encoding_len=1000000000"], "cpu", /--char_encoding_len/],
    [["--model_name=gptLM", "--n_embd=16384", "--n_head=4"], "wasm", /--n_embd/],
    // Fits this machine, not WASM's 4 GB: ~300M parameters with AdamW's state.
    [
      ["--model_name=gptLM", "--n_embd=2048", "--n_head=4"],
      "wasm",
      /more than WASM's 4 GB: use a smaller --n_embd or --n_layer or --block_size, or --backend=cpu/,
    ],
  ];
  await startBackend("cpu");
  const tensors = tf.memory().numTensors;
  for (const [args, backend, message] of cases) {
    const { config } = parseTrainConfig(args);
    assert.throws(
      () => buildRun(config, 65, backend as "cpu" | "wasm"),
      (e) =>
        e instanceof UsageError && /needs about [\d,.]+ [GT]B/.test(e.message) &&
        message.test(e.message),
      args.join(" "),
    );
  }
  assert.equal(tf.memory().numTensors, tensors, "a model was built");
  // The same through the script: one line, exit 2, at once.
  const dir = await preparedWorkdir();
  assertOneLine(
    await runScript(
      "train.ts",
      ["--model_name=gptLM", "--n_embd=16384", "--n_head=4", "--backend=wasm"],
      { cwd: dir, timeoutMs: 30_000 },
    ),
    2,
    /^error: gptLM needs about [\d,.]+ [GT]B \(.* parameters .*\), more than /,
    "gptLM n_embd 16384 on wasm",
  );
  await Deno.remove(dir, { recursive: true });
});

/** A tiny gptLM's checkpoint pair, saved as train.ts saves it, in the current folder. */
async function saveTinyCheckpoint(path: string): Promise<string[]> {
  const { config } = parseTrainConfig([
    "--model_name=gptLM",
    "--n_layer=1",
    "--n_head=2",
    "--n_embd=8",
    "--block_size=8",
    "--backend=cpu",
  ]);
  const vocab = Array.from({ length: 65 }, (_, i) => String.fromCharCode(32 + i));
  const run = buildRun(config, vocab.length, "cpu");
  await saveCheckpoint(path, run.model, {
    config,
    vocab,
    state: { iter: 3, evalDone: true, bestVal: 4, logFile: "loss_x.txt", rng: run.rng.getState() },
  }, run.optimizer);
  run.dispose();
  return vocab;
}

/** Rewrites a safetensors file's metadata (and tensors) as `edit` says. */
async function craft(
  from: string,
  to: string,
  edit: (meta: Record<string, string>, tensors: Map<string, ReturnType<typeof f32Entry>>) => void,
): Promise<void> {
  const { metadata, tensors } = await readSafetensorsFile(from);
  const meta = { ...metadata };
  edit(meta, tensors);
  await Deno.writeFile(to, encodeSafetensors(tensors, meta));
}

/** Edits the `config` JSON inside a checkpoint's metadata. */
function editConfig(f: (config: Record<string, unknown>) => void) {
  return (meta: Record<string, string>) => {
    const config = JSON.parse(meta.config);
    f(config);
    meta.config = JSON.stringify(config);
  };
}

Deno.test("crafted checkpoints: every value is checked as a flag is, before the model is built", async () => {
  await startBackend("cpu");
  const dir = await Deno.makeTempDir();
  await inFolder(dir, async () => {
    await saveTinyCheckpoint("good.safetensors");
    const good = await loadCheckpoint("good.safetensors");
    disposeModel(modelFromCheckpoint(good));
    const cases: [string, Parameters<typeof craft>[2], RegExp][] = [
      [
        "n_embd 100000",
        editConfig((c) => c.n_embd = 100000),
        /its config describes a gptLM of [\d,]+ values, the file holds 2,161/,
      ],
      ["n_layer 1e7", editConfig((c) => c.n_layer = 1e7), /describes a gptLM of [\d,]+ values/],
      ["block_size 0", editConfig((c) => c.block_size = 0), /config block_size=0: must be >= 1/],
      ["no block_size", editConfig((c) => delete c.block_size), /config lacks block_size/],
      [
        "block_size text",
        editConfig((c) => c.block_size = "8"),
        /config block_size="8": expected an integer/,
      ],
      [
        "n_head not dividing",
        editConfig((c) => c.n_head = 3),
        /config: n_embd \(8\) must be divisible by n_head \(3\)/,
      ],
      [
        "dataset path",
        editConfig((c) => c.dataset = "../../etc"),
        /config dataset="..\/..\/etc": expected one folder name under datas\//,
      ],
      [
        "weight_decay 1e308",
        editConfig((c) => c.weight_decay = 1e308),
        /each step multiplies the weights by 1 - lr·wd/,
      ],
      [
        "model_name",
        editConfig((c) => c.model_name = "bigramLM"),
        /config model_name bigramLM differs from the file's gptLM/,
      ],
      ["config not JSON", (m) => m.config = "{", /metadata 'config' is not valid JSON/],
      ["empty vocabulary", (m) => m.itos = "[]", /metadata 'itos' is empty/],
      [
        "multi-character entry",
        (m) => m.itos = JSON.stringify(["ab", ...JSON.parse(m.itos).slice(1)]),
        /'itos' entry 0 is not a single character/,
      ],
      [
        "empty entry",
        (m) => m.itos = JSON.stringify(["", ...JSON.parse(m.itos).slice(1)]),
        /'itos' entry 0 is not a single character/,
      ],
      [
        "__proto__ entry",
        (m) => m.itos = JSON.stringify(["__proto__", ...JSON.parse(m.itos).slice(1)]),
        /'itos' entry 0 is not a single character/,
      ],
      [
        "duplicate entry",
        (m) => m.itos = JSON.stringify(["!", ...JSON.parse(m.itos).slice(1)]),
        /'itos' repeats the character "!" \(entry 1\)/,
      ],
      ["iter", (m) => m.iter = "3x", /metadata 'iter' is "3x", not a whole number/],
      ["best_val", (m) => m.best_val = "NaN", /'best_val' is "NaN", not a finite number/],
      [
        "NaN weights",
        (_, t) => {
          const e = t.get("lm_head.weight")!;
          t.set("lm_head.weight", f32Entry(e.shape, new Float32Array(65 * 8).fill(NaN)));
        },
        /tensor "lm_head.weight" holds NaN or infinite values/,
      ],
    ];
    const tensors = tf.memory().numTensors;
    for (const [what, edit, message] of cases) {
      await craft("good.safetensors", "bad.safetensors", edit);
      await assert.rejects(
        async () => disposeModel(modelFromCheckpoint(await loadCheckpoint("bad.safetensors"))),
        (e) =>
          e instanceof UserError && e.message.startsWith("checkpoint bad.safetensors") &&
          message.test(e.message),
        what,
      );
    }
    assert.equal(tf.memory().numTensors, tensors, "a refused checkpoint left tensors behind");
  });
  // Through the scripts: one line and exit 1, no `zzzz…`, no `{"loss": null}`, no endless loop.
  await craft(`${dir}/good.safetensors`, `${dir}/nan.safetensors`, (_, t) => {
    const e = t.get("ln_f.weight")!;
    t.set("ln_f.weight", f32Entry(e.shape, new Float32Array(8).fill(NaN)));
  });
  await craft(
    `${dir}/good.safetensors`,
    `${dir}/zero.safetensors`,
    editConfig((c) => {
      c.block_size = 0;
    }),
  );
  const [generate, evaluate] = await Promise.all([
    runScript("generate.ts", ["--ckpt=nan.safetensors", "--backend=cpu"], {
      cwd: dir,
      timeoutMs: 30_000,
    }),
    runScript("eval.ts", ["--ckpt=zero.safetensors", "--backend=cpu"], {
      cwd: dir,
      timeoutMs: 30_000,
    }),
  ]);
  assertOneLine(generate, 1, /holds NaN or infinite values/, "generate, NaN weights");
  assertOneLine(evaluate, 1, /config block_size=0: must be >= 1/, "eval, block_size 0");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("resume: the optimizer file is checked, its log_file never trusted; --out_dir and --ckpt_file honoured", async () => {
  const dir = await preparedWorkdir();
  const first = await runScript("train.ts", [...TINY_TRAIN, "--max_iters=11"], { cwd: dir });
  assert.equal(first.code, 0, first.stderr);
  const id = "bigramLM_BA-8_BL-16_PAR-0.00_V-65_LR-0.01_DR-0.2_shakespeare_char";
  const ckpt = `out/${id}.safetensors`;
  const optim = `${dir}/${optimizerPath(ckpt)}`;
  const saved = await Deno.readFile(optim);

  await craft(optim, optim, (m) => m.step = "ten");
  const [badStep, noResume] = await Promise.all([
    runScript("train.ts", ["--resume=true", `--ckpt_file=${ckpt}`], { cwd: dir }),
    runScript("train.ts", [...TINY_TRAIN, `--ckpt_file=${ckpt}`], { cwd: dir }),
  ]);
  assertOneLine(badStep, 1, /metadata 'step' is "ten", not a whole number/, "step not a number");
  assertOneLine(noResume, 2, /--ckpt_file=.* is read only with --resume=true/, "ckpt_file alone");

  // A log_file pointing at README.md: the log's name comes from the run id, never from the file.
  await Deno.writeFile(optim, saved);
  await craft(optim, optim, (m) => m.log_file = "README.md");
  await Deno.writeTextFile(`${dir}/README.md`, "keep me\n");
  const resumed = await runScript(
    "train.ts",
    ["--resume=true", `--ckpt_file=${ckpt}`, "--max_iters=21", "--out_dir=elsewhere"],
    { cwd: dir },
  );
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.equal(await Deno.readTextFile(`${dir}/README.md`), "keep me\n");
  assert.deepEqual(
    (await Deno.readTextFile(`${dir}/loss_${id}.txt`)).trim().split("\n").map((l) =>
      l.split(" ")[0]
    ),
    ["10", "20"],
  );
  // --out_dir on a resume: the new checkpoints go there, the old ones stay.
  assert.ok((await Deno.stat(`${dir}/elsewhere/${id}.safetensors`)).isFile);
  assert.match(resumed.stdout, new RegExp(`best checkpoint elsewhere/${id}\\.safetensors`));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("nothing is read or written outside the folder: links out, FIFOs, dataset names", async () => {
  const dir = await preparedWorkdir();
  const outside = await Deno.makeTempDir({ prefix: "simplelm-outside-" });
  await Deno.symlink(outside, `${dir}/link_out`);
  await Deno.symlink(outside, `${dir}/datas/foreign`);
  await Deno.symlink("/etc/passwd", `${dir}/passwd.txt`);
  await Deno.symlink("/etc/passwd", `${dir}/passwd.safetensors`);
  await Deno.mkdir(`${dir}/holder`);
  await Deno.symlink(outside, `${dir}/holder/out`);
  await Deno.copyFile(`${dir}/datas/shakespeare_char/meta.json`, `${outside}/meta.json`);
  await Deno.writeTextFile(`${dir}/loss_ok.txt`, "0 4 4\n");
  for (const fifo of ["fifo.safetensors", "loss_fifo.txt"]) {
    const made = await new Deno.Command("mkfifo", { args: [`${dir}/${fifo}`] }).output();
    assert.ok(made.success, "mkfifo");
  }
  const opts = { cwd: dir, timeoutMs: 30_000 };
  const cases: [string, string[], number, RegExp][] = [
    ["train.ts", [...TINY_TRAIN, "--out_dir=link_out"], 1, /--out_dir link_out leads outside/],
    ["train.ts", [...TINY_TRAIN, "--out_dir=link_out/sub"], 1, /--out_dir link_out\/sub leads/],
    ["train.ts", [...TINY_TRAIN, "--dataset=foreign"], 1, /datas\/foreign leads outside/],
    ["prepare.ts", ["--input=datas/tinyshakespeare.txt", "--dataset=foreign"], 1, /leads outside/],
    ["prepare.ts", ["--input=passwd.txt"], 1, /--input passwd\.txt leads outside .*\/etc\/passwd/],
    ["plot.ts", ["passwd.txt"], 1, /loss file passwd\.txt leads outside/],
    ["plot.ts", ["loss_fifo.txt"], 1, /loss_fifo\.txt is not a regular file/],
    ["plot.ts", ["loss_ok.txt", "--out=link_out/loss.svg"], 1, /--out link_out\/loss\.svg leads/],
    ["generate.ts", ["--ckpt=passwd.safetensors"], 1, /checkpoint passwd\.safetensors leads/],
    ["generate.ts", ["--ckpt=fifo.safetensors"], 1, /fifo\.safetensors is not a regular file/],
    ["eval.ts", ["--ckpt=fifo.safetensors"], 1, /fifo\.safetensors is not a regular file/],
    ["eval.ts", ["--ckpt=link_out/x.safetensors"], 1, /leads outside/],
    ["prepare.ts", ["--dataset="], 2, /--dataset=: expected one folder name under datas\//],
    ["prepare.ts", ["--dataset=a/b"], 2, /--dataset=a\/b: expected one folder name/],
    ["prepare.ts", ["--dataset=.."], 2, /--dataset=\.\.: expected one folder name/],
    ["train.ts", ["--dataset=a/b"], 2, /--dataset=a\/b: expected one folder name/],
  ];
  const results = await Promise.all(cases.map(([script, args]) => runScript(script, args, opts)));
  for (const [i, [script, args, code, message]] of cases.entries()) {
    assertOneLine(results[i], code, message, `${script} ${args.join(" ")}`);
    assert.doesNotMatch(results[i].stderr + results[i].stdout, /root:/, "passwd echoed");
  }
  // generate's default folder `out` leading out.
  await Deno.symlink(outside, `${dir}/out`);
  assertOneLine(
    await runScript("generate.ts", [], opts),
    1,
    /checkpoint folder out leads outside/,
    "out linked out",
  );
  assert.deepEqual([...Deno.readDirSync(outside)].map((e) => e.name), ["meta.json"]);
  await Deno.remove(dir, { recursive: true });
  await Deno.remove(outside, { recursive: true });
});

Deno.test("a full disk: prepare replaces all three files or none; the loss log fails in one line", async () => {
  const dir = await preparedWorkdir();
  const fixture = "tests/fixtures/disk_full.ts";
  const folder = `${dir}/datas/shakespeare_char`;
  const before = await Promise.all(
    ["train.bin", "val.bin", "meta.json"].map((f) => Deno.readFile(`${folder}/${f}`)),
  );
  await Deno.writeTextFile(`${dir}/other.txt`, "a different text, ".repeat(50));
  const [prepare, train] = await Promise.all([
    runScript(fixture, ["val.bin", "prepare.ts", "--input=other.txt"], { cwd: dir }),
    runScript(fixture, ["loss_", "train.ts", ...TINY_TRAIN, "--max_iters=11"], { cwd: dir }),
  ]);
  assertOneLine(
    prepare,
    1,
    /^error: cannot write datas\/shakespeare_char\/val\.bin: No space left on device/,
    "prepare, disk full at val.bin",
  );
  const after = await Promise.all(
    ["train.bin", "val.bin", "meta.json"].map((f) => Deno.readFile(`${folder}/${f}`)),
  );
  assert.deepEqual(after, before, "the dataset changed");
  assert.deepEqual(
    [...Deno.readDirSync(folder)].map((e) => e.name).sort(),
    ["meta.json", "train.bin", "val.bin"],
    "temporary files left",
  );
  assertOneLine(train, 1, /^error: cannot write loss_bigramLM_.*: No space left on device/, "log");
  assert.ok(
    [...Deno.readDirSync(`${dir}/out`)].some((e) => e.name.endsWith("char.safetensors")),
    "the checkpoint saved before the failure is kept",
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train refuses a dataset folder that mixes two preparations", async () => {
  const dir = await preparedWorkdir();
  await inFolder(dir, async () => {
    const other = tokenize("another text of the same alphabet? no: its own. ".repeat(40));
    await Deno.mkdir("datas/other");
    await Deno.writeFile("datas/other/train.bin", uint16Bytes(other.train));
    await Deno.writeFile("datas/other/val.bin", uint16Bytes(other.val));
    await Deno.writeTextFile("datas/other/meta.json", metaJson(other.vocab, other));
    await loadDataset("other");
    // The new train.bin beside the old val.bin and meta.json: what a full disk used to leave.
    const same = tokenize(
      "another text of the same alphabet? no: its own. ".repeat(40).replace("a", "n"),
    );
    await Deno.writeFile("datas/other/train.bin", uint16Bytes(same.train));
    await assert.rejects(
      loadDataset("other"),
      /datas\/other\/train\.bin holds other tokens than datas\/other\/meta\.json \(the folder mixes two preparations\)/,
    );
    await Deno.writeFile("datas/other/train.bin", uint16Bytes(same.train.subarray(1)));
    await assert.rejects(loadDataset("other"), /holds \d+ tokens, not the \d+ recorded in/);
  });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("smaller things: seeds beyond 2^53, weight decay, temperatures near 0, plot's stdin, --ckpt_file", async () => {
  for (const seed of ["9007199254740993", "1e300"]) {
    assert.throws(
      () => parseTrainConfig([`--seed=${seed}`]),
      (e) => e instanceof UsageError && /--seed=.*: expected an integer between/.test(e.message),
    );
  }
  assert.equal(parseTrainConfig(["--seed=9007199254740991"]).config.seed, 2 ** 53 - 1);
  assert.throws(
    () => parseTrainConfig(["--weight_decay=1e308"]),
    /--weight_decay=1e\+308 with --learning_rate=0\.0003: each step multiplies the weights by 1 - lr·wd = -3e\+304/,
  );
  await assert.rejects(
    trainSettings(["--ckpt_file=out/x.safetensors"]),
    /--ckpt_file=out\/x\.safetensors is read only with --resume=true/,
  );
  // A temperature too small to divide by is its limit: greedy decoding, never the last token.
  const logits = Float32Array.from([1, 3.5, 2, -4]);
  for (const temperature of [1e-320, 1e-300, 1e-30]) {
    for (let seed = 0; seed < 5; seed++) {
      assert.equal(sampleFromLogits(logits, { temperature }, new Rng(seed)), 1, `T=${temperature}`);
    }
  }

  // `ls loss_*.txt | deno task plot` with names holding spaces: one name per line.
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/loss a b.txt`, "0 4 4\n10 3 3.5\n");
  await Deno.writeTextFile(`${dir}/loss c.txt`, "0 4 4.2\n10 3 3.1\n");
  const r = await runScript("plot.ts", [], { cwd: dir, stdin: "loss a b.txt\nloss c.txt\n" });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "wrote loss.svg (2 runs)\n");
  assert.match(await Deno.readTextFile(`${dir}/loss.svg`), /loss a b\.txt/);
  await Deno.remove(dir, { recursive: true });
});
