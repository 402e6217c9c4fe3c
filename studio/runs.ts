/**
 * The project's runs as the studio lists them: every loss log in the
 * project folder and every checkpoint under `out/`, grouped by run, with
 * model, parameters, steps and best validation loss. Files are re-read only
 * when their size or time changes, so scanning every second costs a few
 * `stat` calls.
 *
 * @module
 */
import { MODEL_NAMES } from "../models/model.ts";
import { type LossRow, parseLossFile } from "../plot.ts";
import { readSafetensorsHeader } from "../lib/safetensors.ts";
import { optimizerPath } from "../run/checkpoint.ts";
import { LOSS_LOG } from "./paths.ts";

/** A loss log: its evaluations so far. */
export interface LogInfo {
  path: string;
  evals: number;
  lastIter: number | null;
  bestVal: number | null;
  /** Why the log could not be read, if it could not. */
  problem?: string;
}

/** A checkpoint's header facts, and whether its optimizer state is there to resume. */
export interface CheckpointInfo {
  path: string;
  model: string;
  /** Trainable values, counted from the optimizer state's shapes (null without it). */
  params: number | null;
  iter: number;
  bestVal: number;
  /** Saved by Ctrl-C / Stop (`<run>.last.safetensors`), not at an evaluation. */
  last: boolean;
  resumable: boolean;
  /** The training flags it was made with. */
  config: Record<string, unknown>;
  /** The loss log its run appends to (from the optimizer state; "" without it). */
  logFile: string;
  problem?: string;
}

/** One run: its loss log and checkpoints, the newest change first in a listing. */
export interface RunSummary {
  id: string;
  model: string;
  log: LogInfo | null;
  checkpoints: CheckpointInfo[];
  modified: number;
}

interface Cached<T> {
  key: string;
  value: T;
}

/** Lists runs under one project folder, caching what it read by file size and time. */
export class RunScanner {
  #logs = new Map<string, Cached<LogInfo & { rows: LossRow[] }>>();
  #checkpoints = new Map<string, Cached<CheckpointInfo>>();

  constructor(readonly root: string) {}

  /** The runs now, newest first, and a signature that changes whenever a file does. */
  async scan(): Promise<{ runs: RunSummary[]; signature: string }> {
    const files = await this.#files();
    const signature = files.map((f) => `${f.path}:${f.key}`).join("|");
    const runs = new Map<string, RunSummary>();
    const runOf = (id: string, modified: number) => {
      const run = runs.get(id) ??
        { id, model: modelOf(id), log: null, checkpoints: [], modified: 0 };
      run.modified = Math.max(run.modified, modified);
      runs.set(id, run);
      return run;
    };
    for (const file of files.filter((f) => LOSS_LOG.test(f.path))) {
      const { rows: _, ...log } = await this.#log(file.path, file.key);
      runOf(idOfLog(file.path), file.mtime).log = log;
    }
    const models = files.filter((f) =>
      !LOSS_LOG.test(f.path) && !f.path.endsWith(".optim.safetensors")
    );
    for (const file of models) {
      const info = await this.#checkpoint(file.path, file.key, files);
      const id = LOSS_LOG.test(info.logFile) ? idOfLog(info.logFile) : idOfCheckpoint(file.path);
      const run = runOf(id, file.mtime);
      run.checkpoints.push(info);
      if (MODEL_NAMES.includes(info.model as typeof MODEL_NAMES[number])) run.model = info.model;
    }
    const list = [...runs.values()].sort((a, b) => b.modified - a.modified);
    for (const run of list) run.checkpoints.sort((a, b) => Number(a.last) - Number(b.last));
    return { runs: list, signature };
  }

  /** A loss log's rows (for the curves), read again only when the file changed. */
  async rows(path: string): Promise<LossRow[]> {
    const stat = await Deno.stat(`${this.root}/${path}`);
    return (await this.#log(path, keyOf(stat))).rows;
  }

  /** Loss logs in the folder and model checkpoints under out/ (symlinks are not followed). */
  async #files(): Promise<{ path: string; key: string; mtime: number }[]> {
    const found: { path: string; key: string; mtime: number }[] = [];
    const add = async (path: string) => {
      const stat = await Deno.lstat(`${this.root}/${path}`).catch(() => null);
      if (stat?.isFile) found.push({ path, key: keyOf(stat), mtime: stat.mtime?.getTime() ?? 0 });
    };
    for await (const entry of Deno.readDir(this.root)) {
      if (entry.isFile && LOSS_LOG.test(entry.name)) await add(entry.name);
    }
    const visit = async (folder: string, depth: number) => {
      const entries = await Array.fromAsync(Deno.readDir(`${this.root}/${folder}`)).catch(() => []);
      for (const entry of entries) {
        const path = `${folder}/${entry.name}`;
        if (entry.isDirectory && depth < 4) await visit(path, depth + 1);
        if (entry.isFile && entry.name.endsWith(".safetensors")) await add(path);
      }
    };
    await visit("out", 0);
    return found.sort((a, b) => a.path < b.path ? -1 : 1);
  }

  async #log(path: string, key: string): Promise<LogInfo & { rows: LossRow[] }> {
    const cached = this.#logs.get(path);
    if (cached?.key === key) return cached.value;
    let value: LogInfo & { rows: LossRow[] };
    try {
      const rows = parseLossFile(await Deno.readTextFile(`${this.root}/${path}`), path);
      value = {
        path,
        rows,
        evals: rows.length,
        lastIter: rows.at(-1)?.iter ?? null,
        bestVal: rows.length > 0 ? Math.min(...rows.map((r) => r.val)) : null,
      };
    } catch (e) {
      value = { path, rows: [], evals: 0, lastIter: null, bestVal: null, problem: message(e) };
    }
    this.#logs.set(path, { key, value });
    return value;
  }

  /** A model checkpoint's facts; optimizer files are read only for the parameter count and log. */
  async #checkpoint(
    path: string,
    key: string,
    files: { path: string; key: string }[],
  ): Promise<CheckpointInfo> {
    const optim = files.find((f) => f.path === optimizerPath(path));
    const fullKey = `${key}/${optim?.key ?? "-"}`;
    const cached = this.#checkpoints.get(path);
    if (cached?.key === fullKey) return cached.value;
    let value: CheckpointInfo;
    try {
      const { metadata } = await readSafetensorsHeader(`${this.root}/${path}`);
      let params: number | null = null;
      let logFile = "";
      if (optim) {
        const header = await readSafetensorsHeader(`${this.root}/${optim.path}`);
        params = 0;
        for (const [name, { shape }] of header.shapes) {
          if (name.endsWith(".exp_avg")) params += shape.reduce((n, d) => n * d, 1);
        }
        logFile = header.metadata.log_file ?? "";
      }
      value = {
        path,
        model: metadata.model_name ?? "?",
        params,
        iter: Number(metadata.iter),
        bestVal: Number(metadata.best_val),
        last: path.endsWith(".last.safetensors"),
        resumable: optim !== undefined,
        config: JSON.parse(metadata.config ?? "{}"),
        logFile,
      };
    } catch (e) {
      value = {
        path,
        model: "?",
        params: null,
        iter: NaN,
        bestVal: NaN,
        last: false,
        resumable: false,
        config: {},
        logFile: "",
        problem: message(e),
      };
    }
    this.#checkpoints.set(path, { key: fullKey, value });
    return value;
  }
}

function keyOf(stat: Deno.FileInfo): string {
  return `${stat.size}@${stat.mtime?.getTime() ?? 0}`;
}

function message(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split("\n")[0];
}

/** `loss_<id>.txt` → `<id>`. */
function idOfLog(path: string): string {
  return path.replace(/^loss_/, "").replace(/\.(txt|log)$/, "");
}

/** `out/demo/<id>.last.safetensors` → `<id>`. */
function idOfCheckpoint(path: string): string {
  return path.split("/").pop()!.replace(/(\.last)?\.safetensors$/, "");
}

/** The model a run id starts with (`gptLM_BA-…`, `moa_moeLM_BA-…`), or `?`. */
function modelOf(id: string): string {
  return MODEL_NAMES.find((name) => id.startsWith(`${name}_BA-`)) ?? "?";
}
