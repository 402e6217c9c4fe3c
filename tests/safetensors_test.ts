import assert from "node:assert/strict";
import { join } from "node:path";
import { UserError } from "../cli/errors.ts";
import {
  allFinite,
  decodeSafetensors,
  DTYPE_SIZES,
  encodeSafetensors,
  entryToFloat32,
  entryToNumbers,
  f32Entry,
  i64Entry,
  readSafetensorsFile,
  type TensorEntry,
} from "../lib/safetensors.ts";
import { writeFileAtomic } from "../cli/files.ts";
import { makeVariant } from "./fixtures/atomic_writer.ts";

const enc = new TextEncoder();

function sample(): Map<string, TensorEntry> {
  return new Map<string, TensorEntry>([
    [
      "layer.weight",
      f32Entry([2, 3], new Float32Array([1, -2.5, 3, 0, 1e-7, -0])),
    ],
    ["step", i64Entry([], [1234567890123])],
    ["10", i64Entry([3], new BigInt64Array([-1n, 0n, 9007199254740991n]))],
    ["bytes", { dtype: "U8", shape: [3], data: new Uint8Array([0, 7, 255]) }],
    ["empty", f32Entry([0, 4], new Float32Array(0))],
    ["last", f32Entry([1], new Float32Array([42]))],
  ]);
}

/** Builds a file from a header object/text and raw data, padded like the encoder. */
function build(header: unknown, data = new Uint8Array(0)): Uint8Array {
  const json = enc.encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const n = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + n + data.length).fill(0x20, 8, 8 + n);
  new DataView(out.buffer).setBigUint64(0, BigInt(n), true);
  out.set(json, 8);
  out.set(data, 8 + n);
  return out;
}

function rejects(bytes: Uint8Array, pattern: RegExp): void {
  assert.throws(() => decodeSafetensors(bytes, "bad.safetensors"), (e) => {
    assert.ok(e instanceof UserError, `not a UserError: ${e}`);
    assert.match(e.message, /^invalid safetensors file bad\.safetensors: /);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes("\n"), "message must be one line");
    return true;
  });
}

Deno.test("round trip keeps dtypes, shapes, values, order and metadata", () => {
  const tensors = sample();
  const meta: Record<string, string> = Object.fromEntries([
    ["format", "pt"],
    ["note", 'ünïcödé "quoted"\n'],
    ["__proto__", "x"], // an own key, must not touch the prototype
  ]);
  const bytes = encodeSafetensors(tensors, meta);
  const back = decodeSafetensors(bytes, "rt.safetensors");
  assert.deepEqual(back.metadata, meta);
  assert.equal(Object.getPrototypeOf(back.metadata), Object.prototype);
  assert.deepEqual([...back.tensors.keys()], [...tensors.keys()]);
  for (const [name, e] of tensors) {
    const got = back.tensors.get(name)!;
    assert.equal(got.dtype, e.dtype);
    assert.deepEqual(got.shape, e.shape);
    assert.deepEqual([...got.data], [...e.data]);
  }
  assert.deepEqual(
    [...entryToFloat32(back.tensors.get("layer.weight")!)],
    [...new Float32Array([1, -2.5, 3, 0, 1e-7, -0])],
  );
  assert.deepEqual(entryToNumbers(back.tensors.get("step")!), [1234567890123]);
  assert.deepEqual(entryToNumbers(back.tensors.get("10")!), [
    -1,
    0,
    9007199254740991,
  ]);
  assert.deepEqual(entryToNumbers(back.tensors.get("bytes")!), [0, 7, 255]);
  assert.equal(entryToFloat32(back.tensors.get("empty")!).length, 0);
  // Without metadata: no __metadata__ key, decodes to {}.
  const plain = decodeSafetensors(encodeSafetensors(tensors, {}), "p");
  assert.deepEqual(plain.metadata, {});
});

Deno.test("helpers convert I32, U16, U8 and refuse wrong dtypes", () => {
  const i32 = new Uint8Array(new Int32Array([-5, 70000]).buffer);
  assert.deepEqual(entryToNumbers({ dtype: "I32", shape: [2], data: i32 }), [
    -5,
    70000,
  ]);
  const u16 = new Uint8Array([0x34, 0x12, 0xff, 0xff]);
  assert.deepEqual(entryToNumbers({ dtype: "U16", shape: [2], data: u16 }), [
    0x1234,
    65535,
  ]);
  assert.throws(
    () => entryToFloat32(i64Entry([1], [1]), "w"),
    /w: expected dtype F32, got I64/,
  );
  const huge = new Uint8Array(8).fill(0xff);
  huge[7] = 0x7f;
  assert.throws(
    () => entryToNumbers({ dtype: "I64", shape: [1], data: huge }),
    UserError,
  );
  assert.throws(
    () => entryToNumbers({ dtype: "F16", shape: [1], data: new Uint8Array(2) }),
    UserError,
  );
  assert.throws(
    () => entryToNumbers({ dtype: "I32", shape: [2], data: new Uint8Array(4) }),
    /needs 8 bytes/,
  );
  assert.throws(() => f32Entry([2, 2], new Float32Array(3)), RangeError);
  assert.throws(() => i64Entry([1], [0.5]), RangeError);
  assert.throws(() => i64Entry([1], [2 ** 60]), RangeError);
  assert.equal(DTYPE_SIZES.BF16, 2);
  assert.equal(DTYPE_SIZES.U64, 8);
  assert.equal(DTYPE_SIZES.BOOL, 1);
});

Deno.test("encoder refuses caller mistakes", () => {
  const bad = (e: TensorEntry) => encodeSafetensors(new Map([["t", e]]), {});
  assert.throws(
    () => bad({ dtype: "F32", shape: [2], data: new Uint8Array(4) }),
    RangeError,
  );
  assert.throws(
    () => bad({ dtype: "F8" as "F32", shape: [1], data: new Uint8Array(1) }),
    TypeError,
  );
  assert.throws(
    () => bad({ dtype: "U8", shape: [-1], data: new Uint8Array(0) }),
    RangeError,
  );
  assert.throws(
    () => encodeSafetensors(new Map([["__metadata__", i64Entry([1], [1])]]), {}),
    TypeError,
  );
  assert.throws(
    () => encodeSafetensors(new Map(), { a: 1 as unknown as string }),
    TypeError,
  );
});

Deno.test("an independent minimal reader reads what the encoder wrote", () => {
  const tensors = sample();
  const bytes = encodeSafetensors(tensors, { k: "v" });
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  assert.equal((8 + n) % 8, 0, "data section must start 8-byte aligned");
  const headerText = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  assert.match(headerText, /^\{.*\} *$/s);
  assert.ok(headerText.length - headerText.trimEnd().length < 8);
  const header = JSON.parse(headerText);
  assert.deepEqual(header.__metadata__, { k: "v" });
  // Key order in the text is the insertion order (JSON.parse would reorder "10").
  const order = [...headerText.matchAll(/"([^"]+)":\{"dtype"/g)].map((m) => m[1]);
  assert.deepEqual(order, [...tensors.keys()]);
  let expect = 0;
  for (const name of tensors.keys()) {
    const [b, e] = header[name].data_offsets;
    assert.equal(b, expect, `${name} must start where the previous ended`);
    expect = e;
  }
  assert.equal(bytes.length, 8 + n + expect);
  const w = header["layer.weight"];
  assert.deepEqual(w, { dtype: "F32", shape: [2, 3], data_offsets: [0, 24] });
  const start = 8 + n + w.data_offsets[0];
  const vals = [];
  for (let i = 0; i < 6; i++) vals.push(view.getFloat32(start + 4 * i, true));
  assert.deepEqual(vals, [...new Float32Array([1, -2.5, 3, 0, 1e-7, -0])]);
  const step = header.step;
  assert.deepEqual(step.shape, []);
  assert.equal(
    view.getBigInt64(8 + n + step.data_offsets[0], true),
    1234567890123n,
  );
});

Deno.test("each corruption is rejected with its own message", () => {
  const good = encodeSafetensors(sample(), { a: "b" });
  const f32 = (shape: number[], offs: unknown) => ({
    dtype: "F32",
    shape,
    data_offsets: offs,
  });
  const d12 = new Uint8Array(12);

  rejects(new Uint8Array(0), /file is empty/);
  rejects(
    good.subarray(0, 5),
    /only 5 bytes, shorter than the 8-byte header length/,
  );
  rejects(
    good.subarray(0, 30),
    /header length \d+ is larger than the 22 bytes that follow/,
  );
  rejects(
    good.subarray(0, good.length - 1),
    /"last": data_offsets \[\d+, \d+\] go past the end/,
  );
  const absurd = good.slice();
  new DataView(absurd.buffer).setBigUint64(0, 1n << 62n, true);
  rejects(
    absurd,
    /header length 4611686018427387904 exceeds the 100000000-byte limit/,
  );
  rejects(build(`{"a": {"dtype": "F32",`), /header is not valid JSON/);
  const notUtf8 = build("{}");
  notUtf8[8] = 0xff;
  rejects(notUtf8, /header is not valid UTF-8/);
  rejects(build("[1, 2]"), /header is not a JSON object/);
  rejects(build("null"), /header is not a JSON object/);
  rejects(
    build({ __metadata__: { a: 1 } }),
    /"__metadata__" value for "a" is not a string/,
  );
  rejects(build({ __metadata__: ["x"] }), /"__metadata__" is not an object/);
  rejects(build({ t: 5 }), /tensor "t": entry is not an object/);
  rejects(
    build({ t: { dtype: "F8_E4M3", shape: [1], data_offsets: [0, 1] } }, d12),
    /tensor "t": unknown dtype "F8_E4M3"/,
  );
  rejects(
    build({ t: { shape: [1], data_offsets: [0, 1] } }),
    /unknown dtype undefined/,
  );
  rejects(
    build({ t: f32([-1], [0, 4]) }, d12),
    /shape \[-1\] is not an array of non-negative integers/,
  );
  rejects(build({ t: f32([1.5], [0, 4]) }, d12), /shape \[1\.5\]/);
  rejects(
    build({ t: f32("3" as unknown as number[], [0, 4]) }, d12),
    /shape "3"/,
  );
  rejects(
    build({ t: f32([3], [0]) }, d12),
    /data_offsets \[0\] is not two non-negative integers/,
  );
  rejects(
    build({ t: f32([3], [0, "12"]) }, d12),
    /data_offsets \[0,"12"\] is not two/,
  );
  rejects(
    build({ t: f32([3], [-4, 8]) }, d12),
    /is not two non-negative integers/,
  );
  rejects(
    build({ t: f32([1], [8, 4]) }, d12),
    /data_offsets \[8, 4\] has begin > end/,
  );
  rejects(
    build({ t: f32([3], [1000, 1012]) }, d12),
    /data_offsets \[1000, 1012\] go past the end of the 12-byte data section/,
  );
  rejects(
    build({ t: f32([3], [0, 8]) }, d12),
    /F32 shape \[3\] needs 12 bytes but data_offsets \[0, 8\] span 8/,
  );
  rejects(
    build({ t: f32([2 ** 40, 2 ** 40], [0, 12]) }, d12),
    /needs 4835703278458516698824704 bytes/,
  );
  rejects(
    build({ a: f32([2], [0, 8]), b: f32([2], [4, 12]) }, d12),
    /tensor "b": data_offsets \[4, 12\] overlap tensor "a"/,
  );
  rejects(
    build({ a: f32([1], [0, 4]), b: f32([1], [8, 12]) }, d12),
    /hole in the data section: bytes 4 to 8 belong to no tensor/,
  );
  rejects(
    build({ a: f32([2], [0, 8]) }, d12),
    /data section is 12 bytes but the tensors end at byte 8 \(4 trailing bytes\)/,
  );
  // Zero-sized tensors may share an offset; the order of the data wins.
  const ok = decodeSafetensors(
    build(
      { b: f32([1], [4, 8]), z: f32([0], [4, 4]), a: f32([1], [0, 4]) },
      new Uint8Array(8),
    ),
    "ok",
  );
  assert.deepEqual([...ok.tensors.keys()], ["a", "z", "b"]);
});

Deno.test("readSafetensorsFile: reads, and names missing files and directories", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "x.safetensors");
    await Deno.writeFile(path, encodeSafetensors(sample(), { m: "1" }));
    const got = await readSafetensorsFile(path);
    assert.deepEqual(got.metadata, { m: "1" });
    assert.equal(got.tensors.size, 6);
    await assert.rejects(
      readSafetensorsFile(join(dir, "nope.safetensors")),
      (e) => {
        assert.ok(e instanceof UserError);
        assert.equal(
          e.message,
          `checkpoint ${join(dir, "nope.safetensors")} not found`,
        );
        return true;
      },
    );
    await assert.rejects(readSafetensorsFile(dir), (e) => {
      assert.ok(e instanceof UserError);
      assert.equal(e.message, `checkpoint ${dir} is a directory, not a file`);
      return true;
    });
    await Deno.writeFile(path, new Uint8Array(3));
    await assert.rejects(readSafetensorsFile(path), (e) => {
      assert.ok(e instanceof UserError);
      assert.match(e.message, new RegExp(`file ${path}: file is only 3 bytes`));
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function listDir(dir: string): Promise<string[]> {
  const names = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

Deno.test("writeFileAtomic replaces the file and leaves no temp files", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "out.safetensors");
    await writeFileAtomic(path, makeVariant("A"));
    await writeFileAtomic(path, makeVariant("B"));
    assert.deepEqual(await Deno.readFile(path), makeVariant("B"));
    await writeFileAtomic(path, new Uint8Array(0));
    assert.equal((await Deno.stat(path)).size, 0);
    assert.deepEqual(await listDir(dir), ["out.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomic failures keep the old file and clean up", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // The temp name ".<base>.tmp-..." exceeds NAME_MAX although <base> fits.
    const long = join(dir, "c".repeat(240));
    await Deno.writeFile(long, enc.encode("old"));
    await assert.rejects(writeFileAtomic(long, enc.encode("new")), (e) => {
      assert.ok(e instanceof UserError);
      assert.equal(
        e.message,
        `cannot write ${long}: File name too long (os error 36)`,
      );
      return true;
    });
    assert.equal(await Deno.readTextFile(long), "old");

    // Rename over a non-empty directory fails after the temp file was written.
    const asDir = join(dir, "d.safetensors");
    await Deno.mkdir(asDir);
    await Deno.writeFile(join(asDir, "keep"), enc.encode("kept"));
    await assert.rejects(writeFileAtomic(asDir, enc.encode("new")), (e) => {
      assert.ok(e instanceof UserError);
      assert.match(
        e.message,
        new RegExp(`^cannot write ${asDir}: [^\\n]*\\(os error \\d+\\)$`),
      );
      return true;
    });
    assert.equal(await Deno.readTextFile(join(asDir, "keep")), "kept");

    // Missing folder.
    await assert.rejects(
      writeFileAtomic(join(dir, "no", "x.safetensors"), enc.encode("new")),
      /^UserError: cannot write .*no\/x\.safetensors: No such file or directory \(os error 2\)$/,
    );
    assert.deepEqual(
      await listDir(dir),
      [long.slice(dir.length + 1), "d.safetensors"].sort(),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "writeFileAtomic into a read-only folder keeps the old file",
  ignore: Deno.build.os === "windows" || Deno.uid() === 0, // root ignores modes
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const path = join(dir, "x.safetensors");
    try {
      await Deno.writeFile(path, enc.encode("old"));
      await Deno.chmod(dir, 0o555);
      await assert.rejects(
        writeFileAtomic(path, enc.encode("new")),
        /Permission denied/,
      );
      assert.equal(await Deno.readTextFile(path), "old");
    } finally {
      await Deno.chmod(dir, 0o755);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("kill -9 during writeFileAtomic always leaves A or B on disk", async () => {
  const a = makeVariant("A");
  const b = makeVariant("B");
  const same = (x: Uint8Array, y: Uint8Array) =>
    x.length === y.length && x.every((v, i) => v === y[i]);
  const fixture = new URL("./fixtures/atomic_writer.ts", import.meta.url).pathname;
  const dir = await Deno.makeTempDir();
  const path = join(dir, "ckpt.safetensors");
  const seen = { A: 0, B: 0 };
  let tornTemps = 0;
  try {
    for (let round = 0; round < 20; round++) {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "--quiet", "--no-lock", "-A", fixture, path],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      const reader = child.stdout.getReader();
      let out = "";
      while (!out.includes("ready\n")) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`writer exited early: ${out}`);
        out += new TextDecoder().decode(value);
      }
      await new Promise((r) => setTimeout(r, Math.random() * 60));
      child.kill("SIGKILL");
      const status = await child.status;
      await reader.cancel();
      for (const name of await listDir(dir)) {
        if (name !== "ckpt.safetensors") { // a temp file: killed mid-write
          tornTemps++;
          await Deno.remove(join(dir, name));
        }
      }
      assert.equal(status.signal, "SIGKILL");
      const bytes = await Deno.readFile(path);
      const { metadata } = decodeSafetensors(bytes, path);
      const which = metadata.variant as "A" | "B";
      assert.ok(
        same(bytes, which === "A" ? a : b),
        `round ${round}: torn file`,
      );
      seen[which]++;
    }
    // Both variants were observed, so the kills really hit the write loop.
    assert.ok(seen.A > 0 && seen.B > 0, `seen ${JSON.stringify(seen)}`);
    console.log(`seen ${JSON.stringify(seen)}, killed mid-write ${tornTemps}x`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("allFinite: NaN and ±Infinity anywhere, at aligned and unaligned offsets", () => {
  for (const bad of [NaN, Infinity, -Infinity]) {
    for (const at of [0, 4, 8]) {
      const values = new Float32Array(9).fill(1.5);
      values[at] = bad;
      assert.equal(allFinite(f32Entry([9], values)), false, `${bad} at ${at}`);
      // the same bytes one byte into a buffer: read through a copy
      const shifted = new Uint8Array(37);
      shifted.set(new Uint8Array(values.buffer), 1);
      const entry: TensorEntry = { dtype: "F32", shape: [9], data: shifted.subarray(1) };
      assert.equal(allFinite(entry), false, `${bad} at ${at}, unaligned`);
    }
  }
  assert.equal(allFinite(f32Entry([3], new Float32Array([-3.4e38, 0, 3.4e38]))), true);
  assert.equal(allFinite(f32Entry([0], new Float32Array(0))), true);
});
