/**
 * Shared test helpers: running a project script as a user would, and a
 * scratch folder with tinyshakespeare prepared in it.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { metaJson, tokenize, uint16Bytes } from "../lib/data.ts";
import { setFastPaths } from "../nn/fast_paths.ts";
import { parseTrainConfig } from "../run/config.ts";
import type { LanguageModel, ModelConfig } from "../models/model.ts";
import { startDecoding } from "../run/sampling.ts";

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

/** A script running as a child process, its output collected as it comes. */
export interface RunningScript {
  child: Deno.ChildProcess;
  /** Resolves when the child has exited and its output is read. */
  done: Promise<ScriptResult>;
  /** Output so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves once the output so far matches `pattern`; rejects if the child exits first or `ms` pass. */
  waitFor(stream: "stdout" | "stderr", pattern: RegExp, ms?: number): Promise<void>;
}

/** Starts `deno run -A <ROOT>/<script> ...args` in `cwd`, for tests that signal it. */
export function startScript(script: string, args: string[], cwd: string): RunningScript {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", CONFIG, `${ROOT}${script}`, ...args],
    cwd,
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const text = { stdout: "", stderr: "" };
  let exited = false;
  const collect = async (stream: "stdout" | "stderr") => {
    for await (const chunk of child[stream].pipeThrough(new TextDecoderStream())) {
      text[stream] += chunk;
    }
  };
  const done = Promise.all([collect("stdout"), collect("stderr"), child.status]).then(
    ([, , status]) => {
      exited = true;
      return { code: status.code, stdout: text.stdout, stderr: text.stderr };
    },
  );
  return {
    child,
    done,
    stdout: () => text.stdout,
    stderr: () => text.stderr,
    async waitFor(stream, pattern, ms = 30_000) {
      const deadline = Date.now() + ms;
      while (!pattern.test(text[stream])) {
        if (exited || Date.now() > deadline) {
          throw new Error(`no ${pattern} from ${script}: ${text.stdout}\n${text.stderr}`);
        }
        await new Promise((r) => setTimeout(r, 10));
      }
    },
  };
}

/** Asserts that a script failed as expected failures do: exit `code`, one line matching `message`, no stack trace. */
export function assertOneLine(
  r: { code: number; stderr: string },
  code: number,
  message: RegExp,
  what: string,
): void {
  // Deno's own note when processes started together wait for one another, not the script's.
  const stderr = r.stderr.replace(/^Blocking waiting for file lock on .*\n/gm, "");
  assert.equal(r.code, code, `${what}: exit ${r.code}: ${stderr}`);
  assert.match(stderr, message, what);
  assert.equal(stderr.trim().split("\n").length, 1, `${what}: ${stderr}`);
  assert.doesNotMatch(stderr, /^\s+at /m, `${what}: stack trace`);
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
  await Deno.writeTextFile(`${dir}/datas/shakespeare_char/meta.json`, metaJson(data.vocab, data));
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

/**
 * Feeds `steps` tokens to the model's decoder for three rows that start
 * from `context` and then differ, and checks its logits at every step
 * against `nextTokenLogits` of each row's whole context (a full forward
 * over the last block_size tokens). Returns the largest difference.
 */
export async function decoderVsFullForward(
  model: LanguageModel,
  context: number[],
  steps: number,
): Promise<number> {
  const rows = 3;
  const V = model.config.vocab_size;
  const contexts = Array.from({ length: rows }, () => [...context]);
  const decoder = startDecoding(model, context, rows);
  let worst = 0;
  for (let step = 0; step <= steps; step++) {
    const cached = await decoder.logits.data();
    assert.equal(cached.length, rows * V);
    for (let r = 0; r < rows; r++) {
      const full = tf.tidy(() => model.nextTokenLogits(contexts[r]));
      const expected = await full.data();
      full.dispose();
      for (let i = 0; i < V; i++) {
        const diff = Math.abs(cached[r * V + i] - expected[i]);
        assert.ok(
          diff <= 1e-5,
          `step ${step}, row ${r}, logit ${i}: ${cached[r * V + i]} vs ${expected[i]}`,
        );
        worst = Math.max(worst, diff);
      }
    }
    const next = contexts.map((_, r) => (7 * step + 3 * r + 1) % V); // rows apart from the first push
    contexts.forEach((c, r) => c.push(next[r]));
    decoder.push(next);
  }
  decoder.dispose();
  return worst;
}
