/**
 * Ctrl-C (SIGINT) and SIGTERM as a request to stop at the next safe point:
 * a long job asks after each step of work, finishes it, saves, and exits
 * 130. A second signal stops at once, except while a checkpoint is being
 * written: then the files are completed first, so a pair is never torn.
 *
 * @module
 */
import { setImmediate } from "node:timers";

const SIGNALS = ["SIGINT", "SIGTERM"] as const;

/** Listens for the stop signals from construction until {@link StopRequest.dispose}. */
export class StopRequest {
  /** The first signal received, or null. */
  signal: Deno.Signal | null = null;
  /** True when a second signal came while saving: stop as soon as the files are complete. */
  forced = false;
  #saving = false;
  readonly #listeners = SIGNALS.map((signal) => () => this.#received(signal));

  constructor() {
    SIGNALS.forEach((signal, i) => Deno.addSignalListener(signal, this.#listeners[i]));
  }

  #received(signal: Deno.Signal): void {
    if (this.signal === null) {
      this.signal = signal;
      console.error(`\n${signal}: finishing this step, then saving…`);
    } else if (this.#saving) {
      this.forced = true;
      console.error(`${signal}: a checkpoint is being written; stopping once it is complete`);
    } else {
      console.error(`${signal} again: stopping now; the checkpoints saved so far are kept`);
      Deno.exit(130);
    }
  }

  /**
   * Whether a stop was asked for. First lets the event loop turn once:
   * signals are delivered only then, and a loop of synchronous steps would
   * otherwise see them only at its next file write.
   */
  async requested(): Promise<boolean> {
    await new Promise((resolve) => setImmediate(resolve));
    return this.signal !== null;
  }

  /** Runs `write` with further signals held back (see {@link forced}) until it is done. */
  async whileSaving(write: () => Promise<void>): Promise<void> {
    this.#saving = true;
    try {
      await write();
    } finally {
      this.#saving = false;
    }
  }

  /** Stops listening. */
  dispose(): void {
    SIGNALS.forEach((signal, i) => Deno.removeSignalListener(signal, this.#listeners[i]));
  }
}
