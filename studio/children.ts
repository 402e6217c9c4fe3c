/**
 * Starting the scripts as children: each runs as `deno task <name>` would run
 * it (the permissions are read from that task in `deno.json`), in the
 * project folder, in its own process group.
 *
 * @module
 */

/** A script and the permission flags its `deno.json` task gives it. */
export interface TaskCommand {
  flags: string[];
  script: string;
}

/**
 * Reads task `name` of the form `deno run <flags> <script>.ts` from
 * `deno.json`'s tasks, so a child gets exactly the task's permissions.
 */
export function taskCommand(tasks: Record<string, string>, name: string): TaskCommand {
  const words = (tasks[name] ?? "").trim().split(/\s+/);
  const script = words.at(-1) ?? "";
  if (words[0] !== "deno" || words[1] !== "run" || !script.endsWith(".ts")) {
    throw new Error(`deno.json task '${name}' is not 'deno run <flags> <script>.ts'`);
  }
  return { flags: words.slice(2, -1), script };
}

/**
 * The deno binary for children: this process's own when it may run it,
 * else `deno` from PATH (the only program the studio task may run).
 */
export function denoBinary(): string {
  const own = Deno.permissions.querySync({ name: "run", command: Deno.execPath() });
  return own.state === "granted" ? Deno.execPath() : "deno";
}

/** Where the code is and where the runs are. */
export interface Folders {
  /** The folder holding deno.json and the scripts. */
  code: string;
  /** The project folder: the children's working folder, with datas/, out/ and the loss logs. */
  project: string;
}

/**
 * Starts `task` with `args` in the project folder, in its own process group
 * (a Ctrl-C in the studio's terminal reaches the studio, which then stops
 * the child once, rather than the child directly).
 */
export function spawnTask(
  folders: Folders,
  task: TaskCommand,
  args: string[],
  env: Record<string, string> = {},
): Deno.ChildProcess {
  return new Deno.Command(denoBinary(), {
    args: [
      "run",
      ...task.flags,
      "--config",
      `${folders.code}/deno.json`,
      `${folders.code}/${task.script}`,
      ...args,
    ],
    cwd: folders.project,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    detached: true,
  }).spawn();
}

/** Form fields → `--key=value` arguments (the page sends strings; the parser judges them). */
export function flagArgs(fields: Record<string, unknown>): string[] {
  return Object.entries(fields).map(([key, value]) => `--${key}=${String(value)}`);
}

/** A second start of a job while one runs. */
export class Busy extends Error {
  override name = "Busy";
}

/** Calls `onLine` with each line of `stream` as it arrives. */
export async function eachLine(
  stream: ReadableStream<Uint8Array>,
  onLine: (line: string) => void,
): Promise<void> {
  let pending = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    const lines = (pending + chunk).split("\n");
    pending = lines.pop()!;
    for (const line of lines) onLine(line);
  }
  if (pending) onLine(pending);
}
