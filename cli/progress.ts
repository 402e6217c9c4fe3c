/**
 * Training progress for people: step, loss, ms/step, tokens/s and ETA. One
 * live line on a terminal, a plain line every ten seconds otherwise (every
 * `SIMPLELM_PROGRESS_SECONDS` when set: the studio reads them as they come).
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";

const encoder = new TextEncoder();

/** Overrides the ten seconds between plain progress lines. */
export const PROGRESS_SECONDS_ENV = "SIMPLELM_PROGRESS_SECONDS";

/** Milliseconds between plain lines: ten seconds, or the environment's choice where readable. */
function plainInterval(): number {
  const permission = Deno.permissions.querySync({ name: "env", variable: PROGRESS_SECONDS_ENV });
  const seconds = permission.state === "granted" ? Number(Deno.env.get(PROGRESS_SECONDS_ENV)) : NaN;
  return seconds > 0 ? seconds * 1000 : 10_000;
}

/** Formats seconds as `1h02m`, `3m12s` or `42s`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) {
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }
  if (s >= 60) {
    return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  }
  return `${s}s`;
}

/** Tracks the steps since the last evaluation and prints progress lines. */
export class Progress {
  readonly #live = Deno.stdout.isTerminal();
  readonly #interval = this.#live ? 250 : plainInterval();
  #startTime = performance.now();
  #startIter = 0;
  #lastIter = 0;
  #lastPrint = performance.now();
  #lineShown = false;

  /** `tokensPerStep`: targets predicted per step, for tokens/s. */
  constructor(readonly maxIters: number, readonly tokensPerStep: number) {}

  /** Starts timing anew (after an evaluation, which is not a training step). */
  restart(iter: number): void {
    this.#startTime = performance.now();
    this.#startIter = this.#lastIter = iter;
  }

  /** Mean milliseconds per training step since {@link restart}. */
  msPerStep(): number {
    const steps = this.#lastIter - this.#startIter;
    return steps > 0 ? (performance.now() - this.#startTime) / steps : 0;
  }

  /**
   * Records that `itersDone` steps are finished. Reads `loss` when a line is
   * due, or every step unless `readLazily` (a GPU read forces a sync).
   * Returns the loss when it was read, else null.
   */
  async step(
    itersDone: number,
    loss: tf.Scalar,
    readLazily: boolean,
  ): Promise<number | null> {
    this.#lastIter = itersDone;
    const now = performance.now();
    const due = now - this.#lastPrint >= this.#interval;
    if (!due && readLazily) return null;
    const value = (await loss.data())[0];
    if (due) {
      this.#lastPrint = now;
      this.#print(itersDone, value);
    }
    return value;
  }

  #print(itersDone: number, loss: number): void {
    const ms = this.msPerStep();
    const tokensPerSecond = ms > 0 ? (this.tokensPerStep * 1000) / ms : 0;
    const eta = formatDuration(((this.maxIters - itersDone) * ms) / 1000);
    const line =
      `iter ${itersDone}/${this.maxIters} | loss ${loss.toFixed(4)} | ${ms.toFixed(1)} ms/step | ` +
      `${Math.round(tokensPerSecond).toLocaleString("en-US")} tok/s | ETA ${eta}`;
    if (this.#live) {
      Deno.stdout.writeSync(encoder.encode(`\r\x1b[K${line}`));
      this.#lineShown = true;
    } else {
      console.log(line);
    }
  }

  /** Removes the live line before other output. */
  clear(): void {
    if (this.#lineShown) Deno.stdout.writeSync(encoder.encode("\r\x1b[K"));
    this.#lineShown = false;
  }
}
