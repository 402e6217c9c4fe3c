/**
 * Reading and writing the safetensors format
 * (https://huggingface.co/docs/safetensors) in pure TypeScript.
 *
 * Layout: an 8-byte little-endian u64 header length `N`, then `N` bytes of
 * UTF-8 JSON header, then the data section. The header maps each tensor name
 * to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the
 * data section) and may hold a `__metadata__` object of string to string.
 * Tensor data is little-endian and row-major.
 *
 * This module only moves bytes: converting to and from tfjs tensors is the
 * caller's job. Every problem with a file is reported as a {@link UserError}
 * whose one-line message names the file.
 *
 * @module
 */

import { shown, UserError } from "../cli/errors.ts";
import { causeOf, checkRegularFile } from "../cli/files.ts";

/** Element types defined by the safetensors format. */
export type Dtype =
  | "F32"
  | "F64"
  | "F16"
  | "BF16"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U8"
  | "U16"
  | "U32"
  | "U64"
  | "BOOL";

/** Size in bytes of one element of each {@link Dtype}. */
export const DTYPE_SIZES: Readonly<Record<Dtype, number>> = Object.freeze({
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
});

/** Largest header accepted, as in the reference implementation (100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * One tensor: its element type, its shape and its raw little-endian,
 * row-major bytes (`data.length` must be `product(shape) * DTYPE_SIZES[dtype]`).
 */
export interface TensorEntry {
  /** Element type. */
  dtype: Dtype;
  /** Dimensions; `[]` is a scalar (one element). */
  shape: number[];
  /** Raw little-endian bytes. May be a view into a larger buffer. */
  data: Uint8Array;
}

/** What {@link decodeSafetensors} and {@link readSafetensorsFile} return. */
export interface SafetensorsContents {
  /** The `__metadata__` object, `{}` when the file has none. */
  metadata: Record<string, string>;
  /** Tensors in the order of their data in the file. */
  tensors: Map<string, TensorEntry>;
}

/** Returns true when `s` names a known {@link Dtype}. */
export function isDtype(s: unknown): s is Dtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_SIZES, s);
}

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function checkShape(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new RangeError(
        `shape ${JSON.stringify(shape)} must hold non-negative integers`,
      );
    }
    n *= d;
  }
  if (!Number.isSafeInteger(n)) {
    throw new RangeError(`shape ${JSON.stringify(shape)} is too large`);
  }
  return n;
}

/**
 * Builds an F32 entry from a Float32Array (copied, written little-endian).
 * Throws a RangeError when `values.length` does not match `shape`.
 */
export function f32Entry(shape: number[], values: Float32Array): TensorEntry {
  const n = checkShape(shape);
  if (values.length !== n) {
    throw new RangeError(
      `shape ${JSON.stringify(shape)} needs ${n} values, got ${values.length}`,
    );
  }
  const data = new Uint8Array(n * 4);
  if (HOST_LITTLE_ENDIAN) {
    data.set(new Uint8Array(values.buffer, values.byteOffset, n * 4));
  } else {
    const view = new DataView(data.buffer);
    for (let i = 0; i < n; i++) view.setFloat32(i * 4, values[i], true);
  }
  return { dtype: "F32", shape: [...shape], data };
}

/**
 * Builds an I64 entry from a BigInt64Array or an array of safe integers
 * (copied, written little-endian). Throws a RangeError when the length does
 * not match `shape` or a number is not a safe integer.
 */
export function i64Entry(
  shape: number[],
  values: BigInt64Array | number[],
): TensorEntry {
  const n = checkShape(shape);
  if (values.length !== n) {
    throw new RangeError(
      `shape ${JSON.stringify(shape)} needs ${n} values, got ${values.length}`,
    );
  }
  const data = new Uint8Array(n * 8);
  const view = new DataView(data.buffer);
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (typeof v === "number" && !Number.isSafeInteger(v)) {
      throw new RangeError(`value ${v} at index ${i} is not a safe integer`);
    }
    view.setBigInt64(i * 8, BigInt(v), true);
  }
  return { dtype: "I64", shape: [...shape], data };
}

function checkEntryLength(entry: TensorEntry, what: string): number {
  const size = DTYPE_SIZES[entry.dtype];
  const n = checkShape(entry.shape);
  if (entry.data.length !== n * size) {
    throw new UserError(
      `${what}: ${entry.dtype} tensor of shape ${JSON.stringify(entry.shape)} needs ${
        n * size
      } bytes, has ${entry.data.length}`,
    );
  }
  return n;
}

/**
 * Returns the values of an F32 entry as a new Float32Array. Throws a
 * {@link UserError} (prefixed with `what`) for any other dtype or a byte
 * length that does not match the shape.
 */
export function entryToFloat32(
  entry: TensorEntry,
  what = "tensor",
): Float32Array {
  if (entry.dtype !== "F32") {
    throw new UserError(`${what}: expected dtype F32, got ${entry.dtype}`);
  }
  const n = checkEntryLength(entry, what);
  const copy = entry.data.slice(); // fresh, aligned buffer
  if (HOST_LITTLE_ENDIAN) return new Float32Array(copy.buffer, 0, n);
  const view = new DataView(copy.buffer);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}

/**
 * Whether every value of an F32 entry is finite (no NaN, no ±Infinity). Reads
 * the file's bytes in place when they are aligned: a checkpoint is checked
 * without a second copy of its weights.
 */
export function allFinite(entry: TensorEntry, what = "tensor"): boolean {
  const n = checkEntryLength(entry, what);
  const { data } = entry;
  const values = HOST_LITTLE_ENDIAN && data.byteOffset % 4 === 0
    ? new Float32Array(data.buffer, data.byteOffset, n)
    : entryToFloat32(entry, what);
  // x · 0 is 0 for a finite x and NaN for NaN and ±Infinity: one sum, no branch per value.
  let sum = 0;
  for (let i = 0; i < n; i++) sum += values[i] * 0;
  return sum === 0;
}

/**
 * Returns the values of a (small) entry as plain numbers. Supports every
 * integer dtype, BOOL (0/1), F32 and F64; F16/BF16 are refused. 64-bit values
 * outside the safe-integer range, other dtypes and a byte length that does not
 * match the shape throw a {@link UserError} prefixed with `what`.
 */
export function entryToNumbers(entry: TensorEntry, what = "tensor"): number[] {
  const n = checkEntryLength(entry, what);
  const d = entry.data;
  const view = new DataView(d.buffer, d.byteOffset, d.byteLength);
  const out = new Array<number>(n);
  const big = (v: bigint, i: number): number => {
    const x = Number(v);
    if (!Number.isSafeInteger(x)) {
      throw new UserError(
        `${what}: ${entry.dtype} value ${v} at index ${i} is not a safe integer`,
      );
    }
    return x;
  };
  for (let i = 0; i < n; i++) {
    switch (entry.dtype) {
      case "I64":
        out[i] = big(view.getBigInt64(i * 8, true), i);
        break;
      case "U64":
        out[i] = big(view.getBigUint64(i * 8, true), i);
        break;
      case "I32":
        out[i] = view.getInt32(i * 4, true);
        break;
      case "U32":
        out[i] = view.getUint32(i * 4, true);
        break;
      case "I16":
        out[i] = view.getInt16(i * 2, true);
        break;
      case "U16":
        out[i] = view.getUint16(i * 2, true);
        break;
      case "I8":
        out[i] = view.getInt8(i);
        break;
      case "U8":
        out[i] = view.getUint8(i);
        break;
      case "BOOL":
        out[i] = view.getUint8(i) === 0 ? 0 : 1;
        break;
      case "F32":
        out[i] = view.getFloat32(i * 4, true);
        break;
      case "F64":
        out[i] = view.getFloat64(i * 8, true);
        break;
      default:
        throw new UserError(
          `${what}: cannot convert dtype ${entry.dtype} to numbers`,
        );
    }
  }
  return out;
}

/**
 * Serializes tensors (in the Map's insertion order, with contiguous data
 * offsets) and metadata to safetensors bytes. The header is padded with spaces
 * so that the data section starts on an 8-byte boundary; `__metadata__` is
 * written only when `metadata` is not empty. Throws a TypeError/RangeError for
 * caller mistakes (bad dtype, shape or byte length, reserved name, non-string
 * metadata value).
 */
export function encodeSafetensors(
  tensors: Map<string, TensorEntry>,
  metadata: Record<string, string> = {},
): Uint8Array {
  // The header is built by hand so that the key order is exactly the
  // insertion order (a JS object would put integer-like names first).
  const parts: string[] = [];
  const metaEntries = Object.entries(metadata);
  for (const [k, v] of metaEntries) {
    if (typeof v !== "string") {
      throw new TypeError(
        `metadata value for ${JSON.stringify(k)} is not a string`,
      );
    }
  }
  if (metaEntries.length > 0) {
    const meta = metaEntries
      .map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`)
      .join(",");
    parts.push(`"__metadata__":{${meta}}`);
  }
  let offset = 0;
  for (const [name, e] of tensors) {
    if (name === "__metadata__") {
      throw new TypeError(`"__metadata__" is not a valid tensor name`);
    }
    if (!isDtype(e.dtype)) {
      throw new TypeError(
        `tensor ${JSON.stringify(name)}: unknown dtype ${String(e.dtype)}`,
      );
    }
    const n = checkShape(e.shape);
    const len = n * DTYPE_SIZES[e.dtype];
    if (e.data.length !== len) {
      throw new RangeError(
        `tensor ${JSON.stringify(name)}: ${e.dtype} shape ${
          JSON.stringify(e.shape)
        } needs ${len} bytes, got ${e.data.length}`,
      );
    }
    const info = JSON.stringify({
      dtype: e.dtype,
      shape: e.shape,
      data_offsets: [offset, offset + len],
    });
    parts.push(`${JSON.stringify(name)}:${info}`);
    offset += len;
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const headerLen = Math.ceil(json.length / 8) * 8; // 8 + headerLen ≡ 0 mod 8
  const out = new Uint8Array(8 + headerLen + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLen);
  let pos = 8 + headerLen;
  for (const e of tensors.values()) {
    out.set(e.data, pos);
    pos += e.data.length;
  }
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isOffset(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/**
 * Parses and validates safetensors bytes. Tensor data are views into `bytes`
 * (no copy). The returned Map lists tensors in the order of their data. Every
 * problem throws a {@link UserError} whose one-line message names `fileName`:
 * too short, header length beyond the file or above {@link MAX_HEADER_BYTES},
 * header not UTF-8 JSON object, bad `__metadata__`, unknown dtype, bad shape,
 * bad or out-of-range `data_offsets`, byte length not matching the shape,
 * overlapping ranges, holes, or trailing bytes after the last tensor.
 * Nothing from the file is ever evaluated (only `JSON.parse`).
 */
export function decodeSafetensors(
  bytes: Uint8Array,
  fileName: string,
): SafetensorsContents {
  const fail = (problem: string): never => {
    throw new UserError(`invalid safetensors file ${fileName}: ${problem}`);
  };
  if (bytes.length < 8) {
    fail(
      bytes.length === 0
        ? "file is empty"
        : `file is only ${bytes.length} bytes, shorter than the 8-byte header length`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bigHeaderLen = view.getBigUint64(0, true);
  if (bigHeaderLen > BigInt(MAX_HEADER_BYTES)) {
    fail(
      `header length ${bigHeaderLen} exceeds the ${MAX_HEADER_BYTES}-byte limit`,
    );
  }
  const headerLen = Number(bigHeaderLen);
  if (8 + headerLen > bytes.length) {
    fail(
      `header length ${headerLen} is larger than the ${
        bytes.length - 8
      } bytes that follow (file truncated?)`,
    );
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })
      .decode(bytes.subarray(8, 8 + headerLen));
  } catch {
    return fail("header is not valid UTF-8");
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch {
    // JSON.parse's message quotes the text: never echo a file's contents.
    return fail("header is not valid JSON");
  }
  if (!isPlainObject(header)) fail("header is not a JSON object");
  const head = header as Record<string, unknown>;

  const metaEntries: [string, string][] = [];
  if (Object.hasOwn(head, "__metadata__")) {
    const meta = head["__metadata__"];
    if (!isPlainObject(meta)) fail(`"__metadata__" is not an object`);
    for (const [k, v] of Object.entries(meta as Record<string, unknown>)) {
      if (typeof v !== "string") {
        fail(`"__metadata__" value for ${shown(k)} is not a string`);
      }
      metaEntries.push([k, v as string]);
    }
  }

  const dataStart = 8 + headerLen;
  const dataLen = bytes.length - dataStart;
  const found: { name: string; begin: number; end: number; e: TensorEntry }[] = [];
  for (const [name, info] of Object.entries(head)) {
    if (name === "__metadata__") continue;
    const t = `tensor ${shown(name)}`;
    if (!isPlainObject(info)) fail(`${t}: entry is not an object`);
    const { dtype, shape, data_offsets: offs } = info as Record<
      string,
      unknown
    >;
    if (!isDtype(dtype)) fail(`${t}: unknown dtype ${shown(dtype)}`);
    if (!Array.isArray(shape) || !shape.every(isOffset)) {
      fail(
        `${t}: shape ${shown(shape)} is not an array of non-negative integers`,
      );
    }
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isOffset)) {
      fail(
        `${t}: data_offsets ${shown(offs)} is not two non-negative integers`,
      );
    }
    const [begin, end] = offs as [number, number];
    if (begin > end) {
      fail(`${t}: data_offsets [${begin}, ${end}] has begin > end`);
    }
    if (end > dataLen) {
      fail(
        `${t}: data_offsets [${begin}, ${end}] go past the end of the ${dataLen}-byte data section (file truncated?)`,
      );
    }
    const dt = dtype as Dtype;
    const dims = shape as number[];
    const want = dims.reduce((p, d) => p * BigInt(d), 1n) *
      BigInt(DTYPE_SIZES[dt]);
    if (want !== BigInt(end - begin)) {
      fail(
        `${t}: ${dt} shape ${
          shown(dims)
        } needs ${want} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`,
      );
    }
    found.push({
      name,
      begin,
      end,
      e: {
        dtype: dt,
        shape: [...dims],
        data: bytes.subarray(dataStart + begin, dataStart + end),
      },
    });
  }

  // The ranges must tile the data section exactly: no overlap, no hole.
  found.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev = "";
  for (const f of found) {
    if (f.begin < pos) {
      fail(
        `tensor ${shown(f.name)}: data_offsets [${f.begin}, ${f.end}] overlap tensor ${prev}`,
      );
    }
    if (f.begin > pos) {
      fail(
        `hole in the data section: bytes ${pos} to ${f.begin} belong to no tensor`,
      );
    }
    pos = f.end;
    prev = shown(f.name);
  }
  if (pos !== dataLen) {
    fail(
      `data section is ${dataLen} bytes but the tensors end at byte ${pos} (${
        dataLen - pos
      } trailing bytes)`,
    );
  }
  return {
    metadata: Object.fromEntries(metaEntries),
    tensors: new Map(found.map((f) => [f.name, f.e])),
  };
}

/**
 * Reads and decodes a safetensors file. Throws a {@link UserError}:
 * `checkpoint <path> not found`, `checkpoint <path> is a directory, not a
 * file` (or not a regular file: a FIFO is refused, not read),
 * `cannot read <path>: <cause>`, or any {@link decodeSafetensors} error.
 */
export async function readSafetensorsFile(
  path: string,
): Promise<SafetensorsContents> {
  let bytes: Uint8Array;
  try {
    await checkRegularFile(path, "checkpoint"); // a FIFO would block the read forever
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof UserError) throw e;
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`checkpoint ${path} not found`);
    }
    throw new UserError(`cannot read ${path}: ${causeOf(e)}`);
  }
  return decodeSafetensors(bytes, path);
}

/** A safetensors file's header alone: metadata and each tensor's dtype and shape. */
export interface SafetensorsHeader {
  metadata: Record<string, string>;
  shapes: Map<string, { dtype: Dtype; shape: number[] }>;
}

/**
 * Reads only the header of a safetensors file (a checkpoint's settings and
 * shapes without its weights), for listings that look at many files often.
 * Throws a {@link UserError} naming the file when the header cannot be read.
 */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const fail = (problem: string): never => {
    throw new UserError(`invalid safetensors file ${path}: ${problem}`);
  };
  let head: unknown;
  try {
    using file = await Deno.open(path, { read: true });
    const size = (await file.stat()).size;
    const lengthBytes = new Uint8Array(8);
    if (size < 8 || await file.read(lengthBytes) !== 8) return fail("file is shorter than 8 bytes");
    const length = new DataView(lengthBytes.buffer).getBigUint64(0, true);
    if (length > BigInt(Math.min(MAX_HEADER_BYTES, size - 8))) {
      return fail(`header length ${length} is larger than the file allows`);
    }
    const headerBytes = new Uint8Array(Number(length));
    let read = 0;
    while (read < headerBytes.length) {
      const n = await file.read(headerBytes.subarray(read));
      if (n === null) return fail("file truncated in its header");
      read += n;
    }
    head = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`cannot read ${path}: ${causeOf(e)}`);
  }
  if (!isPlainObject(head)) return fail("header is not a JSON object");
  const metadata: Record<string, string> = {};
  const shapes = new Map<string, { dtype: Dtype; shape: number[] }>();
  for (const [name, info] of Object.entries(head)) {
    if (name === "__metadata__") {
      if (!isPlainObject(info)) return fail(`"__metadata__" is not an object`);
      for (const [k, v] of Object.entries(info)) if (typeof v === "string") metadata[k] = v;
      continue;
    }
    if (!isPlainObject(info) || !isDtype(info.dtype) || !Array.isArray(info.shape)) {
      return fail(`tensor ${JSON.stringify(name)}: entry lacks a dtype or a shape`);
    }
    if (!info.shape.every(isOffset)) return fail(`tensor ${JSON.stringify(name)}: bad shape`);
    shapes.set(name, { dtype: info.dtype, shape: info.shape as number[] });
  }
  return { metadata, shapes };
}
