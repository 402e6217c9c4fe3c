/**
 * Shared test helpers: running a project script as a user would, and a
 * scratch folder with tinyshakespeare prepared in it.
 *
 * @module
 */
import { metaJson, tokenize, uint16Bytes } from "../lib/data.ts";
import { setFastPaths } from "../nn/fast_paths.ts";
import { parseTrainConfig } from "../run/config.ts";
import type { ModelConfig } from "../models/model.ts";

/** The project's root folder. */
export const ROOT = new URL("..", import.meta.url).pathname;
const CONFIG = `${ROOT}deno.json`;

/** What a finished script printed and returned. */
export interface ScriptResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `deno run <permissions> <ROOT>/<script> ...args` in `cwd`, optionally
 * feeding `stdin`, with the environment's extras in `env`.
 */
export async function runScript(
  script: string,
  args: string[],
  opts: {
    cwd: string;
    stdin?: string;
    permissions?: string[];
    env?: Record<string, string>;
    timeoutMs?: number;
  },
): Promise<ScriptResult> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...(opts.permissions ?? ["-A"]), "--config", CONFIG, `${ROOT}${script}`, ...args],
    cwd: opts.cwd,
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1", ...opts.env },
    stdin: opts.stdin === undefined ? "null" : "piped",
    // A script that hangs fails its test instead of stalling the suite.
    signal: AbortSignal.timeout(opts.timeoutMs ?? 300_000),
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(opts.stdin));
    await writer.close();
  }
  const { code, stdout, stderr } = await child.output();
  const text = new TextDecoder();
  return { code, stdout: text.decode(stdout), stderr: text.decode(stderr) };
}

let shakespeare: ReturnType<typeof tokenize> | null = null;

/** tinyshakespeare tokenized as `prepare` does it (cached per test process). */
export async function shakespeareData(): Promise<ReturnType<typeof tokenize>> {
  shakespeare ??= tokenize(await Deno.readTextFile(`${ROOT}datas/tinyshakespeare.txt`));
  return shakespeare;
}

/** A new temporary folder holding `datas/shakespeare_char/` as `prepare` writes it. */
export async function preparedWorkdir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "simplelm-test-" });
  const data = await shakespeareData();
  await Deno.mkdir(`${dir}/datas/shakespeare_char`, { recursive: true });
  await Deno.writeFile(`${dir}/datas/shakespeare_char/train.bin`, uint16Bytes(data.train));
  await Deno.writeFile(`${dir}/datas/shakespeare_char/val.bin`, uint16Bytes(data.val));
  await Deno.writeTextFile(`${dir}/datas/shakespeare_char/meta.json`, metaJson(data.vocab));
  return dir;
}

/** The original's defaults as a model config for tinyshakespeare (65 characters), with `overrides` on top. */
export function modelConfig(overrides: Partial<ModelConfig> = {}): ModelConfig {
  return { ...parseTrainConfig([]).config, vocab_size: 65, ...overrides };
}

/** Runs `f` with the fast paths on or off, then puts them back on. */
export async function withFastPaths<T>(on: boolean, f: () => Promise<T>): Promise<T> {
  setFastPaths(on);
  try {
    return await f();
  } finally {
    setFastPaths(true);
  }
}
