// Reference values produced with CPython 3.11.7 (`random.Random`); Python is
// not needed to run these tests.
import assert from "node:assert/strict";
import { PyRandom } from "../lib/pyrandom.ts";
import { UsageError } from "../cli/errors.ts";
import { genCodingPatterns, patternsToFloat32 } from "../models/mlp_patterns.ts";

Deno.test("getrandbits(32) matches Python for seed 1234", () => {
  const r = new PyRandom(1234);
  assert.deepEqual(
    [r.getrandbits(32), r.getrandbits(32), r.getrandbits(32)],
    [4150886329, 3342196574, 1892932127],
  );
});

Deno.test("randrange(10) matches Python for seed 1234", () => {
  const r = new PyRandom(1234);
  assert.deepEqual(
    Array.from({ length: 5 }, () => r.randrange(10)),
    [7, 1, 0, 1, 9],
  );
});

Deno.test("seeding matches Python for 0, 1, negative and multi-word seeds", () => {
  const cases: [number | bigint, number[]][] = [
    [0, [3626764237, 1654615998]],
    [1, [577090037, 2444712010]],
    [-1234, [4150886329, 3342196574]],
    [2 ** 32 + 5, [675479763, 2085189291]],
    [Number.MAX_SAFE_INTEGER, [404802386, 2407860725]],
    [2n ** 64n + 3n, [3921169615, 2134766284]],
  ];
  for (const [seed, want] of cases) {
    const r = new PyRandom(seed);
    assert.deepEqual(
      [r.getrandbits(32), r.getrandbits(32)],
      want,
      `seed ${seed}`,
    );
  }
  assert.throws(() => new PyRandom(1.5), RangeError);
});

Deno.test("getrandbits(k < 32), random(), randint, randrange(a, b) match Python", () => {
  let r = new PyRandom(7);
  assert.deepEqual(
    [0, 1, 5, 17, 31, 32].map((k) => r.getrandbits(k)),
    [0, 0, 30, 19772, 847876999, 2795742288],
  );
  r = new PyRandom(42);
  assert.deepEqual(
    [r.random(), r.random(), r.random()],
    [0.6394267984578837, 0.025010755222666936, 0.27502931836911926],
  );
  r = new PyRandom(7);
  assert.deepEqual(
    Array.from({ length: 8 }, () => r.randint(-5, 5)),
    [0, -3, 1, 5, -5, -4, 3, -4],
  );
  assert.deepEqual(
    Array.from({ length: 4 }, () => r.randrange(3, 1000)),
    [377, 599, 62, 934],
  );
  assert.equal(r.randrange(2 ** 32 - 1), 2179419893);
  assert.throws(() => r.getrandbits(33), RangeError);
  assert.throws(() => r.randrange(0), RangeError);
  assert.throws(() => r.randrange(5, 5), RangeError);
});

Deno.test("shuffle matches Python", () => {
  const r = new PyRandom(99);
  const x = Array.from({ length: 20 }, (_, i) => i);
  assert.equal(r.shuffle(x), x);
  assert.deepEqual(
    x,
    [9, 0, 13, 16, 15, 14, 10, 11, 8, 17, 4, 1, 18, 2, 3, 7, 5, 6, 19, 12],
  );
});

Deno.test("getstate matches Python's and setstate continues the sequence", () => {
  const r = new PyRandom(5);
  for (let i = 0; i < 700; i++) r.random();
  const state = r.getstate();
  // Python: random.Random(5); 700 × random(); getstate()[1]
  assert.equal(state.mt.length, 624);
  assert.equal(state.index, 152);
  assert.deepEqual(state.mt.slice(0, 3), [3844576290, 2695805260, 832681243]);
  assert.equal(
    [...state.mt, state.index].reduce((s, w) => (s + w) % 2 ** 32, 0),
    1363902110,
  );
  const saved = JSON.parse(JSON.stringify(state));
  const want = [4109901898, 1291032534, 3853239788];
  assert.deepEqual([0, 1, 2].map(() => r.getrandbits(32)), want);

  const other = new PyRandom(1);
  other.setstate(saved);
  assert.deepEqual([0, 1, 2].map(() => other.getrandbits(32)), want);
  // continuing past a regeneration stays in lockstep
  r.setstate(saved);
  const a = new PyRandom(0);
  a.setstate(r.getstate());
  for (let i = 0; i < 1000; i++) assert.equal(a.random(), r.random());

  assert.throws(() => other.setstate({ mt: [1, 2], index: 0 }), RangeError);
  assert.throws(
    () => other.setstate({ mt: new Array(624).fill(0), index: 625 }),
    RangeError,
  );
  assert.throws(
    () => other.setstate({ mt: new Array(624).fill(-1), index: 0 }),
    RangeError,
  );
});

const str = (rows: number[][]) => rows.map((r) => r.join(""));

async function sha256Hex(text: string): Promise<string> {
  const buf = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(text),
  );
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0"))
    .join("");
}

Deno.test("coding patterns n=12, vocab 65 match the original", () => {
  const rows = str(genCodingPatterns(12, 65));
  assert.equal(rows.length, 65);
  assert.equal(rows[0], "010010110011");
  assert.equal(rows[1], "100010110110");
  assert.equal(rows[2], "110011000101");
  assert.equal(rows[64], "011000111001");
});

Deno.test("coding patterns n=6, vocab 20 (every pattern) match the original", () => {
  assert.deepEqual(str(genCodingPatterns(6, 20)), [
    "101001",
    "100011",
    "000111",
    "101100",
    "110100",
    "011100",
    "111000",
    "110001",
    "001110",
    "011010",
    "010011",
    "010101",
    "001101",
    "001011",
    "100110",
    "101010",
    "100101",
    "110010",
    "010110",
    "011001",
  ]);
  assert.deepEqual(str(genCodingPatterns(2, 2)), ["01", "10"]);
});

Deno.test("coding patterns n=14 vocab 100 and n=8 vocab 70: checksums match the original", async () => {
  // python: sha256("\n".join(string_lists))
  const t14 = str(genCodingPatterns(14, 100));
  assert.equal(t14[0], "01101001010110");
  assert.equal(t14[99], "01100000101111");
  assert.equal(
    await sha256Hex(t14.join("\n")),
    "d26c7b7f41e5d9b441fcef2838dfd12c99d59ba255124c730517616127cb6233",
  );
  assert.equal(
    await sha256Hex(str(genCodingPatterns(8, 70)).join("\n")),
    "431c0ed6d9e648b3c31b824ae57011ebd78f78718419548bad592f1f9f4e2179",
  );
});

Deno.test("every row has n/2 ones, only 0/1, and all rows are distinct", () => {
  for (const [n, vocab] of [[12, 65], [6, 20], [14, 100], [16, 500]]) {
    const rows = genCodingPatterns(n, vocab);
    assert.equal(rows.length, vocab);
    for (const row of rows) {
      assert.equal(row.length, n);
      assert.ok(row.every((v) => v === 0 || v === 1));
      assert.equal(row.reduce<number>((s, v) => s + v, 0), n / 2);
    }
    assert.equal(new Set(str(rows)).size, vocab);
  }
});

Deno.test("patternsToFloat32 is row-major vocab × n", () => {
  const rows = genCodingPatterns(6, 20);
  const f = patternsToFloat32(rows);
  assert.equal(f.length, 20 * 6);
  assert.deepEqual(Array.from(f.subarray(6, 12)), rows[1]);
  assert.deepEqual(Array.from(f), rows.flat());
  assert.throws(() => patternsToFloat32([[0, 1], [1]]), RangeError);
});

Deno.test("bad char_encoding_len or vocab size throws a one-line UsageError", () => {
  const check = (n: number, vocab: number, re: RegExp) =>
    assert.throws(() => genCodingPatterns(n, vocab), (e: unknown) => {
      assert.ok(e instanceof UsageError);
      assert.match(e.message, re);
      assert.ok(!e.message.includes("\n"));
      return true;
    });
  check(7, 20, /char_encoding_len.*got 7.*use 6 or 8/);
  check(7, 65, /char_encoding_len.*got 7.*use 8$/);
  check(3, 65, /char_encoding_len.*got 3.*use an even integer such as 8$/);
  check(0, 65, /char_encoding_len.*got 0.*use an even integer such as 8$/);
  check(-2, 65, /char_encoding_len.*got -2/);
  check(1.5, 65, /char_encoding_len.*got 1\.5/);
  check(
    6,
    21,
    /char_encoding_len 6 .*\b20\b.*vocabulary size 21.*use char_encoding_len 8/,
  );
  check(10, 300, /252.*300.*use char_encoding_len 12/);
  check(12, 0, /vocabulary size must be a positive integer, got 0/);
});
