import assert from "node:assert/strict";
import {
  buildVocab,
  decode,
  decodeText,
  encode,
  loadDataset,
  metaJson,
  sampleWindows,
  stoiOf,
  tokenize,
  uint16Bytes,
} from "../lib/data.ts";
import { UserError } from "../cli/errors.ts";
import { preparedWorkdir, ROOT, runScript, shakespeareData } from "./helpers.ts";

Deno.test("vocabulary is sorted by code point, emoji and CJK stay whole", () => {
  // U+FF01 (fullwidth !) sorts before U+1F600 by code point but after it by UTF-16 unit.
  const text = "b😀a！红楼梦a\n";
  const vocab = buildVocab(text);
  assert.deepEqual(vocab, ["\n", "a", "b", "梦", "楼", "红", "！", "😀"]);
  const ids = encode(text, stoiOf(vocab));
  assert.equal(ids.length, [...text].length);
  assert.equal(decode(ids, vocab), text);
});

Deno.test("encode names the characters it does not know", () => {
  assert.throws(
    () => encode("ab€", stoiOf(["a", "b"])),
    (e: Error) => e instanceof UserError && /"€"/.test(e.message),
  );
});

Deno.test("text is read like Python: universal newlines, BOM kept, invalid UTF-8 refused", () => {
  const bytes = new Uint8Array([0xef, 0xbb, 0xbf, 0x61, 0x0d, 0x0a, 0x62, 0x0d, 0x63]);
  assert.equal(decodeText(bytes, "x.txt"), "\ufeffa\nb\nc");
  assert.throws(
    () => decodeText(new Uint8Array([0x61, 0xff]), "bad.txt"),
    /bad\.txt is not valid UTF-8/,
  );
});

Deno.test("tinyshakespeare: 65 characters, 1,003,854 train and 111,540 val tokens", async () => {
  const data = await shakespeareData();
  assert.equal(data.vocab.length, 65);
  assert.equal(
    data.vocab.join(""),
    "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
  );
  assert.equal(data.train.length, 1003854);
  assert.equal(data.val.length, 111540);
});

Deno.test(".bin files are little-endian uint16, as numpy's tofile", () => {
  const bytes = uint16Bytes(Uint16Array.from([1, 258, 65535]));
  assert.deepEqual([...bytes], [1, 0, 2, 1, 255, 255]);
});

Deno.test("split is data[:int(n*0.9)] in characters, not UTF-16 units", () => {
  const data = tokenize("😀".repeat(9) + "ab");
  assert.equal(data.length, 11);
  assert.equal(data.train.length, 9);
  assert.deepEqual([...data.val], [0, 1]); // a, b: both sort before 😀
});

Deno.test("prepare writes the original's files and statistics", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.copyFile(`${ROOT}datas/tinyshakespeare.txt`, `${dir}/input.txt`);
  const r = await runScript("prepare.ts", ["--input=input.txt"], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /length of dataset in characters: 1,115,394/);
  assert.match(r.stdout, /vocab size: 65\n/);
  assert.match(r.stdout, /train has 1,003,854 tokens/);
  assert.match(r.stdout, /val has 111,540 tokens/);
  const expected = await shakespeareData();
  assert.deepEqual(
    await Deno.readFile(`${dir}/datas/shakespeare_char/val.bin`),
    uint16Bytes(expected.val),
  );
  const meta = JSON.parse(await Deno.readTextFile(`${dir}/datas/shakespeare_char/meta.json`));
  assert.equal(meta.vocab_size, 65);
  assert.equal(meta.itos["0"], "\n");
  assert.equal(meta.stoi["a"], 39);
  const loaded = await (async () => {
    const cwd = Deno.cwd();
    Deno.chdir(dir);
    try {
      return await loadDataset("shakespeare_char");
    } finally {
      Deno.chdir(cwd);
    }
  })();
  assert.deepEqual(loaded.vocab, expected.vocab);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("prepare handles emoji and CJK text, and refuses bad input in one line", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/book.txt`, "红楼梦😀\n".repeat(20));
  const ok = await runScript("prepare.ts", ["--input=book.txt", "--dataset=book_char"], {
    cwd: dir,
  });
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /vocab size: 5\n/);

  await Deno.writeFile(`${dir}/bad.txt`, new Uint8Array([0x61, 0xc3, 0x28]));
  await Deno.writeTextFile(`${dir}/empty.txt`, "");
  const cases: [string[], number, RegExp][] = [
    [["--input=missing.txt"], 1, /input file missing\.txt not found/],
    [["--input=bad.txt"], 1, /bad\.txt is not valid UTF-8/],
    [["--input=empty.txt"], 1, /empty\.txt is empty/],
    [[`--input=${dir}`], 1, /is a directory/],
    [["--inptu=x"], 2, /unknown flag '--inptu'/],
  ];
  for (const [args, code, message] of cases) {
    const r = await runScript("prepare.ts", args, { cwd: dir });
    assert.equal(r.code, code, `${args}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("loading names a missing, truncated or inconsistent dataset", async () => {
  const dir = await preparedWorkdir();
  const cwd = Deno.cwd();
  Deno.chdir(dir);
  try {
    await assert.rejects(loadDataset("nope"), /run `deno task prepare --dataset=nope` first/);
    const train = await Deno.readFile("datas/shakespeare_char/train.bin");
    await Deno.writeFile("datas/shakespeare_char/train.bin", train.subarray(0, 11));
    await assert.rejects(loadDataset("shakespeare_char"), /odd byte count/);
    // A meta.json from before token counts were recorded still loads, its ids still checked.
    const { vocab } = await shakespeareData();
    await Deno.writeTextFile("datas/shakespeare_char/meta.json", metaJson(vocab));
    await Deno.writeFile("datas/shakespeare_char/train.bin", train);
    assert.equal((await loadDataset("shakespeare_char")).train.length, 1_003_854);
    await Deno.writeFile("datas/shakespeare_char/train.bin", new Uint8Array([70, 0]));
    await assert.rejects(loadDataset("shakespeare_char"), /token id 70 .* vocab_size is 65/);
    await Deno.writeTextFile("datas/shakespeare_char/meta.json", "{oops");
    await assert.rejects(loadDataset("shakespeare_char"), /meta\.json is not valid JSON/);
  } finally {
    Deno.chdir(cwd);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("batch windows are block_size+1 tokens from random starts", () => {
  const data = Uint16Array.from({ length: 20 }, (_, i) => i);
  const starts = [0, 14, 7];
  const windows = sampleWindows(data, 5, 3, (n) => {
    assert.equal(n, 15); // len(data) - block_size
    return starts.shift()!;
  });
  assert.deepEqual([...windows], [0, 1, 2, 3, 4, 5, 14, 15, 16, 17, 18, 19, 7, 8, 9, 10, 11, 12]);
});
