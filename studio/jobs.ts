/**
 * Short jobs whose results stream into the page as they come: sampling
 * (`generate.ts --json`) and the pictures (`inspect.ts --json`). Each runs as
 * a child with its task's permissions; its stdout is one JSON object a line,
 * passed on as is; its `error: …` line and its end are added. One job of a
 * kind at a time; a page that goes away stops its job.
 *
 * @module
 */
import { Busy, eachLine, type Folders, spawnTask, type TaskCommand } from "./children.ts";

/** One kind of streamed job (sampling, pictures). */
export class StreamedJob {
  #child: Deno.ChildProcess | null = null;

  constructor(
    readonly folders: Folders,
    readonly task: TaskCommand,
    /** What the job does, for the busy message ("sampling"). */
    readonly doing: string,
  ) {}

  /**
   * Runs the task with `args` (already checked by its flag parser) and
   * answers with its output as newline-delimited JSON: the child's objects,
   * then `{"error": "error: …"}` if it failed, then `{"done": true, "code": N}`.
   *
   * @throws {Busy} while a job of this kind runs
   */
  start(args: string[]): Response {
    if (this.#child) throw new Busy(`${this.doing} is already running: stop it first`);
    const child = spawnTask(this.folders, this.task, args);
    this.#child = child;
    const stop = () => {
      try {
        child.kill("SIGTERM");
      } catch { /* already ended */ }
    };
    const encoder = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      start: async (controller) => {
        const send = (line: string) => {
          try {
            controller.enqueue(encoder.encode(line + "\n"));
          } catch { /* the page went away */ }
        };
        const [status] = await Promise.all([
          child.status,
          eachLine(child.stdout, (line) => {
            if (line.startsWith("{")) send(line);
          }),
          eachLine(child.stderr, (line) => {
            if (line.startsWith("error: ")) send(JSON.stringify({ error: line }));
          }),
        ]);
        this.#child = null;
        send(JSON.stringify({ done: true, code: status.code }));
        try {
          controller.close();
        } catch { /* cancelled */ }
      },
      cancel: stop, // the page stopped reading: Stop, or the page went away
    });
    return new Response(body, {
      headers: { "content-type": "application/x-ndjson", "cache-control": "no-store" },
    });
  }

  /** Stops the running job, if any. */
  stop(): void {
    try {
      this.#child?.kill("SIGTERM");
    } catch { /* already ended */ }
  }
}
