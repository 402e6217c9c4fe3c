/**
 * The one training the studio may run at a time: train.ts as a child with
 * the train task's permissions, its output read line by line into progress,
 * evaluations and samples, and Stop sending SIGINT, as Ctrl-C does.
 *
 * @module
 */
import { UsageError } from "../cli/errors.ts";
import { exists } from "../cli/files.ts";
import { PROGRESS_SECONDS_ENV } from "../cli/progress.ts";
import { parseTrainConfig } from "../run/config.ts";
import { Busy, eachLine, flagArgs, type Folders, spawnTask, type TaskCommand } from "./children.ts";
import { checkRelativePath, realPathInside, resolveRunFile } from "./paths.ts";

/** Progress as train.ts prints it between evaluations. */
export interface TrainProgress {
  iter: number;
  maxIters: number;
  loss: number;
  msPerStep: number;
  tokensPerSecond: number;
  eta: string;
}

/** One evaluation, with the sample printed after it when validation improved. */
export interface TrainEvaluation {
  iter: number;
  train: number;
  val: number;
  best: number;
  sample: string;
}

/** Where the studio's training stands. */
export interface TrainState {
  running: boolean;
  stopping: boolean;
  pid: number | null;
  args: string[];
  logFile: string | null;
  checkpoint: string | null;
  progress: TrainProgress | null;
  evaluations: TrainEvaluation[];
  /** The checkpoint Stop saved, to resume from, and when it stopped (`after step 212`). */
  resumeFrom: string | null;
  stoppedWhen: string | null;
  exitCode: number | null;
  /** The `error: …` line the training ended with, if any. */
  error: string | null;
  /** The latest output lines, oldest first. */
  lines: string[];
}

/** What the page hears about the training. */
export type TrainEvent =
  | { kind: "state"; state: TrainState }
  | { kind: "line"; text: string }
  | { kind: "progress"; progress: TrainProgress }
  | { kind: "evaluation"; evaluation: TrainEvaluation };

/** Lines and evaluations kept for a page that connects late: memory stays flat however long a run is. */
const KEPT_LINES = 200;
const KEPT_EVALUATIONS = 50;

const PROGRESS =
  /^iter (\d+)\/(\d+) \| loss ([\d.]+|NaN) \| ([\d.]+) ms\/step \| ([\d,]+) tok\/s \| ETA (\S+)$/;
const EVALUATION =
  /^>>> step (\d+): train loss ([\d.]+|NaN), val loss ([\d.]+|NaN), min loss ([\d.]+|NaN)/;

/** The one training the studio runs at a time. */
export class Trainer {
  #state: TrainState = idleState();
  #child: Deno.ChildProcess | null = null;
  #sampleLines: string[] | null = null;
  #done: Promise<void> = Promise.resolve();

  constructor(
    readonly folders: Folders,
    readonly task: TaskCommand,
    readonly prepareTask: TaskCommand,
    readonly emit: (event: TrainEvent) => void,
  ) {}

  /** A copy of where the training stands. */
  get state(): TrainState {
    return structuredClone(this.#state);
  }

  /**
   * Starts train.ts with the page's fields. The fields go through train.ts's
   * own flag parser and model checks first, and paths through the studio's
   * path checks, so a bad value is refused with the CLI's message.
   *
   * @throws {UsageError} for a value the CLI would refuse
   * @throws {RefusedPath} for a path outside the project folder
   * @throws {Busy} while a training runs
   */
  async start(fields: Record<string, unknown>): Promise<TrainState> {
    if (this.#state.running) {
      throw new Busy(
        `a training is already running (pid ${this.#state.pid}${
          this.#state.logFile ? `, logging to ${this.#state.logFile}` : ""
        }): stop it first`,
      );
    }
    const args = flagArgs(fields);
    const { config } = parseTrainConfig(args);
    checkRelativePath(config.out_dir);
    checkRelativePath(config.dataset);
    if (await exists(`${this.folders.project}/${config.out_dir}`)) {
      await realPathInside(this.folders.project, config.out_dir);
    }
    if (config.resume) {
      if (!config.ckpt_file) {
        throw new UsageError(
          "--resume=true needs --ckpt_file=PATH (a checkpoint saved by train.ts)",
        );
      }
      await resolveRunFile(this.folders.project, config.ckpt_file);
    }
    if (this.#state.running) throw new Busy("a training is already running: stop it first");
    // A fresh clone has the text but not its prepared form: prepare it first, as the demo does.
    const prepare = config.dataset === "shakespeare_char" &&
      !await exists(`${this.folders.project}/datas/${config.dataset}/meta.json`);
    this.#state = { ...idleState(), running: true, args };
    this.#emitState();
    this.#done = (async () => {
      let code = prepare ? await this.#run(this.prepareTask, []) : 0;
      if (code === 0 && !this.#state.stopping) {
        code = await this.#run(this.task, args, { [PROGRESS_SECONDS_ENV]: "1" });
      }
      this.#state.running = false;
      this.#state.stopping = false;
      this.#state.pid = null;
      this.#state.exitCode = code;
      this.#emitState();
    })();
    return this.state;
  }

  /** Runs one child to its end, reading its output; returns its exit code. */
  async #run(task: TaskCommand, args: string[], env: Record<string, string> = {}): Promise<number> {
    const child = spawnTask(this.folders, task, args, env);
    this.#child = child;
    this.#state.pid = child.pid;
    this.#emitState();
    const [status] = await Promise.all([
      child.status,
      eachLine(child.stdout, (line) => this.#line(line, "out")),
      eachLine(child.stderr, (line) => this.#line(line, "err")),
    ]);
    this.#child = null;
    return status.code;
  }

  /** Stops the training as Ctrl-C does: it finishes its step, saves, and says how to resume. */
  stop(): TrainState {
    if (this.#child && !this.#state.stopping) {
      this.#state.stopping = true;
      this.#child.kill("SIGINT");
      this.#emitState();
    }
    return this.state;
  }

  /** Resolves when the current training (if any) has ended and its output is read. */
  finished(): Promise<void> {
    return this.#done;
  }

  /** Reads one output line; samples come on stdout, between an evaluation and its save. */
  #line(text: string, from: "out" | "err"): void {
    const state = this.#state;
    state.lines.push(text);
    if (state.lines.length > KEPT_LINES) state.lines.splice(0, state.lines.length - KEPT_LINES);
    this.emit({ kind: "line", text });

    let match;
    if ((match = PROGRESS.exec(text))) {
      state.progress = {
        iter: Number(match[1]),
        maxIters: Number(match[2]),
        loss: Number(match[3]),
        msPerStep: Number(match[4]),
        tokensPerSecond: Number(match[5].replaceAll(",", "")),
        eta: match[6],
      };
      this.#sampleLines = null;
      this.emit({ kind: "progress", progress: state.progress });
    } else if ((match = EVALUATION.exec(text))) {
      this.#sampleLines = [];
      const evaluation = {
        iter: Number(match[1]),
        train: Number(match[2]),
        val: Number(match[3]),
        best: Number(match[4]),
        sample: "",
      };
      state.evaluations.push(evaluation);
      if (state.evaluations.length > KEPT_EVALUATIONS) state.evaluations.shift();
      this.emit({ kind: "evaluation", evaluation });
    } else if ((match = /^saving model (.+)$/.exec(text))) {
      const evaluation = state.evaluations.at(-1);
      if (evaluation && this.#sampleLines) {
        evaluation.sample = this.#sampleLines.join("\n");
        this.emit({ kind: "evaluation", evaluation });
      }
      this.#sampleLines = null;
      state.checkpoint = match[1];
      this.#emitState();
    } else if ((match = /^logging to (.+)$/.exec(text))) {
      state.logFile = match[1];
      this.#emitState();
    } else if ((match = /^stopped by \S+ (.+); resume with:$/.exec(text))) {
      state.stoppedWhen = match[1];
    } else if ((match = /--resume=true --ckpt_file=(\S+)$/.exec(text))) {
      state.resumeFrom = match[1];
      this.#emitState();
    } else if (text.startsWith("error: ")) {
      state.error = text;
      this.#emitState();
    } else if (this.#sampleLines && from === "out") {
      this.#sampleLines.push(text);
    }
  }

  #emitState(): void {
    this.emit({ kind: "state", state: this.state });
  }
}

function idleState(): TrainState {
  return {
    running: false,
    stopping: false,
    pid: null,
    args: [],
    logFile: null,
    checkpoint: null,
    progress: null,
    evaluations: [],
    resumeFrom: null,
    stoppedWhen: null,
    exitCode: null,
    error: null,
    lines: [],
  };
}
