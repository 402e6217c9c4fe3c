/**
 * The studio's web server: one page, its assets, Vega from the project's
 * npm packages, the project's run files, and a small JSON API. Plain
 * `Deno.serve`, no framework.
 *
 *   GET  /                      the page (studio/page/index.html)
 *   GET  /page/<file>           the page's scripts and styles
 *   GET  /vendor/<file>         vega, vega-lite and vega-embed's browser builds
 *   GET  /runs/<path>           a loss log or a checkpoint, as a file
 *   GET  /api/state             runs, training, and what the forms offer
 *   GET  /api/events            server-sent events: runs changed, training output
 *   GET  /api/curve?log=…       plot.ts's Vega-Lite spec for one or more loss logs (&bpc=1)
 *   POST /api/train             start a training ({fields}: train.ts's flags)
 *   POST /api/train/stop        stop it as Ctrl-C does
 *   POST /api/sample            sample ({fields}: generate.ts's flags), streamed as JSON lines
 *   POST /api/inspect           the pictures ({fields}: inspect.ts's flags), streamed likewise
 *
 * @module
 */
import { UsageError, UserError } from "../cli/errors.ts";
import { type FlagSpec, type FlagSpecs, parseFlags } from "../cli/flags.ts";
import { DEMO_EVAL_ITERS, DEMO_RUNS } from "../demo.ts";
import { FLAGS as GENERATE_FLAGS } from "../generate.ts";
import { PICTURE_NAMES } from "../inside/pictures.ts";
import { FLAGS as INSPECT_FLAGS } from "../inspect.ts";
import { PRESETS, TRAIN_FLAGS } from "../run/config.ts";
import { buildSpec, vocabSizeOf } from "../plot.ts";
import { RefusedPath, resolveRunFile } from "./paths.ts";
import { RunScanner, type RunSummary } from "./runs.ts";
import { Busy, flagArgs, type Folders, taskCommand } from "./children.ts";
import { StreamedJob } from "./jobs.ts";
import { Trainer } from "./training.ts";

/** Request bodies above this are refused: the page's forms are a few hundred bytes. */
export const MAX_BODY_BYTES = 64 * 1024;

/** How often the run files are looked at while a page listens. */
const SCAN_MS = 1000;

const PAGE_DIR = new URL("./page/", import.meta.url);

/** The browser builds the page loads, from the packages pinned in deno.json. */
const VENDOR: Record<string, string> = {
  "vega.min.js": "vega",
  "vega-lite.min.js": "vega-lite",
  "vega-embed.min.js": "vega-embed",
};

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  png: "image/png",
  svg: "image/svg+xml",
  txt: "text/plain; charset=utf-8",
  log: "text/plain; charset=utf-8",
};

/** What {@link startStudio} needs. */
export interface StudioOptions extends Folders {
  hostname: string;
  port: number;
}

/** A running studio. */
export interface Studio {
  /** The page's address. */
  url: string;
  trainer: Trainer;
  /** Stops a running training as Stop does, waits for it, and closes the server. */
  shutdown(): Promise<void>;
}

/**
 * Starts the studio's server.
 *
 * @throws {UserError} when the port is taken, naming the fix.
 */
export async function startStudio(options: StudioOptions): Promise<Studio> {
  const folders = { code: options.code, project: await Deno.realPath(options.project) };
  const tasks = JSON.parse(await Deno.readTextFile(`${folders.code}/deno.json`)).tasks;
  const events = new EventHub();
  const trainer = new Trainer(
    folders,
    taskCommand(tasks, "train"),
    taskCommand(tasks, "prepare"),
    (event) => {
      events.send("train", event);
      // A save or the end of a run changes the files: list them now rather than within a second.
      if (event.kind === "state") watcher.poke();
    },
  );
  const scanner = new RunScanner(folders.project);
  const watcher = new RunWatcher(scanner, events);
  const sampler = new StreamedJob(folders, taskCommand(tasks, "generate"), "sampling");
  const inspector = new StreamedJob(folders, taskCommand(tasks, "inspect"), "drawing pictures");
  events.onFirstClient = () => watcher.start();
  events.onLastClient = () => watcher.stop();

  const api: Record<string, (request: Request, url: URL) => Promise<Response>> = {
    "GET /api/state": async () =>
      json({
        runs: (await scanner.scan()).runs,
        training: trainer.state,
        trainFlags: TRAIN_FLAGS,
        generateFlags: GENERATE_FLAGS,
        inspectFlags: INSPECT_FLAGS,
        pictureNames: PICTURE_NAMES,
        presets: PRESETS,
        demo: Object.fromEntries(DEMO_RUNS.map((r) => [r.model, [...r.args, DEMO_EVAL_ITERS]])),
        exposed: !isLoopback(options.hostname),
      }),
    "GET /api/events": () => Promise.resolve(events.connect()),
    "GET /api/curve": async (_, url) => json({ spec: await curveSpec(scanner, url) }),
    "POST /api/train": async (request) => json(await trainer.start(await readFields(request))),
    "POST /api/train/stop": async (request) => {
      await readFields(request);
      return json(trainer.stop());
    },
    "POST /api/sample": async (request) => {
      const args = await checkedArgs(request, GENERATE_FLAGS, folders.project);
      return sampler.start([...args, "--json=true"]);
    },
    "POST /api/inspect": async (request) => {
      const args = await checkedArgs(request, INSPECT_FLAGS, folders.project);
      if (args.some((arg) => arg.startsWith("--out_dir="))) {
        throw new UsageError("--out_dir: the studio shows the pictures and writes no files");
      }
      return inspector.start([...args, "--json=true"]);
    },
  };

  const handler = async (request: Request): Promise<Response> => {
    const url = new URL(request.url);
    try {
      checkOrigin(request, url, options);
      const route = api[`${request.method} ${url.pathname}`];
      if (route) return await route(request, url);
      if (request.method !== "GET") {
        throw new HttpError(405, `${request.method} is not allowed here`);
      }
      if (url.pathname === "/") return await file(new URL("index.html", PAGE_DIR).pathname);
      if (url.pathname.startsWith("/page/")) return await pageAsset(url.pathname.slice(6));
      if (url.pathname.startsWith("/vendor/")) return await vendorFile(url.pathname.slice(8));
      if (url.pathname.startsWith("/runs/")) {
        const path = decodePath(url.pathname.slice(6));
        return await file(await resolveRunFile(folders.project, path));
      }
      throw new HttpError(404, `nothing at ${url.pathname}`);
    } catch (e) {
      return errorResponse(e);
    }
  };

  let server: Deno.HttpServer;
  try {
    server = Deno.serve({
      hostname: options.hostname,
      port: options.port,
      onListen: () => {},
    }, handler);
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) {
      throw new UserError(
        `port ${options.port} on ${options.hostname} is already in use (another studio?): stop that program, or pick another port with --port=${
          options.port + 1
        }`,
      );
    }
    if (e instanceof Deno.errors.AddrNotAvailable) {
      throw new UserError(`--host=${options.hostname}: no such address on this machine`);
    }
    throw e;
  }
  const { port } = server.addr as Deno.NetAddr;
  // Listening on every address: this machine reaches it at 127.0.0.1.
  const anyAddress = options.hostname === "0.0.0.0" || options.hostname === "::";
  const shownHost = anyAddress
    ? "127.0.0.1"
    : options.hostname.includes(":")
    ? `[${options.hostname}]`
    : options.hostname;
  return {
    url: `http://${shownHost}:${port}/`,
    trainer,
    async shutdown() {
      trainer.stop();
      await trainer.finished();
      watcher.stop();
      sampler.stop();
      inspector.stop();
      events.close();
      await server.shutdown();
    },
  };
}

/** Loopback names: the only hosts the studio binds to unless told otherwise. */
export function isLoopback(hostname: string): boolean {
  return ["127.0.0.1", "localhost", "::1"].includes(hostname);
}

/** An answer other than 200, with a one-line message. */
class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** Errors as the CLI prints them (`error: …`), with a status the page can tell apart. */
function errorResponse(e: unknown): Response {
  const status = e instanceof HttpError
    ? e.status
    : e instanceof UsageError
    ? 400
    : e instanceof RefusedPath
    ? 403
    : e instanceof Busy
    ? 409
    : e instanceof UserError
    ? 422
    : 500;
  const message = (e instanceof Error ? e.message : String(e)).split("\n")[0];
  if (status === 500) console.error(e);
  return json({ error: `error: ${message}` }, status);
}

function json(value: unknown, status = 200): Response {
  return new Response(JSON.stringify(value), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" },
  });
}

/**
 * Refuses requests meant for another host (DNS rebinding) and writes from
 * other origins (a web page elsewhere posting to the studio).
 */
function checkOrigin(request: Request, url: URL, options: StudioOptions): void {
  if (isLoopback(options.hostname) && !isLoopback(url.hostname.replace(/^\[|\]$/g, ""))) {
    throw new HttpError(403, `host ${url.host} refused: the studio answers only on localhost`);
  }
  const origin = request.headers.get("origin");
  if (request.method !== "GET" && origin !== null && origin !== url.origin) {
    throw new HttpError(403, `origin ${origin} refused: only the studio's own page may do this`);
  }
}

/**
 * A job's fields as arguments, judged by the script's own flag parser
 * (`specs`), with the checkpoint (required) inside the project folder.
 */
async function checkedArgs(
  request: Request,
  specs: { ckpt: FlagSpec } & FlagSpecs,
  project: string,
): Promise<string[]> {
  const fields = await readFields(request);
  delete fields.json;
  const args = flagArgs(fields);
  const { values } = parseFlags(args, specs);
  if (!values.ckpt) throw new UsageError("--ckpt: pick a checkpoint (train one first)");
  await resolveRunFile(project, String(values.ckpt));
  return args;
}

/** One URL-decoding of a path; a malformed escape is refused. */
function decodePath(path: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    throw new RefusedPath(`${JSON.stringify(path)}: malformed % escape`);
  }
}

/** The page's form fields: a JSON object of at most {@link MAX_BODY_BYTES}. */
async function readFields(request: Request): Promise<Record<string, unknown>> {
  if (!(request.headers.get("content-type") ?? "").startsWith("application/json")) {
    throw new HttpError(415, "send the fields as application/json");
  }
  const declared = Number(request.headers.get("content-length") ?? 0);
  if (declared > MAX_BODY_BYTES) throw tooLarge();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of request.body ?? new ReadableStream()) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw tooLarge();
    chunks.push(chunk);
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder().decode(concat(chunks)) || "{}");
  } catch {
    throw new HttpError(400, "the request body is not JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new HttpError(400, "the request body is not a JSON object");
  }
  return value as Record<string, unknown>;
}

function tooLarge(): HttpError {
  return new HttpError(413, `request body over ${MAX_BODY_BYTES} bytes refused`);
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

async function file(path: string): Promise<Response> {
  let data: Uint8Array<ArrayBuffer>;
  try {
    data = await Deno.readFile(path);
  } catch {
    throw new HttpError(404, `${path.split("/").pop()} not found`);
  }
  const type = TYPES[path.split(".").pop()!] ?? "application/octet-stream";
  return new Response(data, { headers: { "content-type": type, "cache-control": "no-cache" } });
}

/** A file of studio/page/ itself: a plain name, no folders. */
async function pageAsset(name: string): Promise<Response> {
  if (!/^[a-z0-9_-]+\.(js|css|png|svg)$/.test(name)) {
    throw new HttpError(404, `no page asset ${name}`);
  }
  return await file(new URL(name, PAGE_DIR).pathname);
}

/** A browser build from node_modules, next to the package's entry point that deno resolves. */
async function vendorFile(name: string): Promise<Response> {
  const pkg = VENDOR[name];
  if (!pkg) throw new HttpError(404, `no vendor file ${name}`);
  return await file(new URL(name, import.meta.resolve(pkg)).pathname);
}

/**
 * plot.ts's spec for the loss logs named by `log=` (one: train and val;
 * several: val compared), with the uniform-guess line as plot.ts draws it,
 * in bits per character with `bpc=1`.
 */
async function curveSpec(scanner: RunScanner, url: URL): Promise<unknown> {
  const logs = url.searchParams.getAll("log");
  if (logs.length === 0) throw new HttpError(400, "name at least one loss log: ?log=loss_….txt");
  const runs = [];
  for (const log of logs) {
    const path = await resolveRunFile(scanner.root, log);
    const rows = await scanner.rows(path.slice(scanner.root.length + 1));
    if (rows.length > 0) runs.push({ name: log, rows });
  }
  if (runs.length === 0) return null;
  const vocabSizes = (await Promise.all(runs.map((r) => vocabSizeOf(r.name))))
    .filter((v) => v !== null);
  return buildSpec(runs, { vocabSizes, bpc: url.searchParams.get("bpc") === "1" });
}

/** Server-sent events to every open page. */
class EventHub {
  #clients = new Set<ReadableStreamDefaultController<Uint8Array>>();
  #encoder = new TextEncoder();
  #keepAlive: ReturnType<typeof setInterval> | undefined;
  onFirstClient = () => {};
  onLastClient = () => {};

  connect(): Response {
    let self: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        self = controller;
        this.#clients.add(controller);
        controller.enqueue(this.#encoder.encode("retry: 2000\n\n"));
        if (this.#clients.size === 1) {
          this.#keepAlive = setInterval(() => this.#write(": keep-alive\n\n"), 15_000);
          this.onFirstClient();
        }
      },
      cancel: () => this.#drop(self),
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream",
        "cache-control": "no-store",
      },
    });
  }

  send(event: string, data: unknown): void {
    if (this.#clients.size > 0) this.#write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  close(): void {
    for (const client of this.#clients) {
      try {
        client.close();
      } catch { /* already closed */ }
      this.#drop(client);
    }
  }

  #write(text: string): void {
    const bytes = this.#encoder.encode(text);
    for (const client of this.#clients) {
      // A page that stopped reading is dropped instead of buffered without end.
      if ((client.desiredSize ?? 0) < -1_000_000) this.#drop(client);
      else client.enqueue(bytes);
    }
  }

  #drop(client: ReadableStreamDefaultController<Uint8Array>): void {
    if (!this.#clients.delete(client)) return;
    if (this.#clients.size === 0) {
      clearInterval(this.#keepAlive);
      this.onLastClient();
    }
  }
}

/** Looks at the run files every second while a page listens, and tells the pages when they change. */
class RunWatcher {
  #timer: ReturnType<typeof setInterval> | undefined;
  #signature = "";
  #scanning = false;

  constructor(readonly scanner: RunScanner, readonly events: EventHub) {}

  start(): void {
    this.#signature = "";
    this.#timer ??= setInterval(() => this.#tick(), SCAN_MS);
    this.#tick();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Looks now, if pages listen. */
  poke(): void {
    if (this.#timer !== undefined) this.#tick();
  }

  async #tick(): Promise<void> {
    if (this.#scanning) return;
    this.#scanning = true;
    try {
      const { runs, signature } = await this.scanner.scan();
      if (signature !== this.#signature) {
        this.#signature = signature;
        this.events.send("runs", runs satisfies RunSummary[]);
      }
    } catch (e) {
      console.error(`warning: cannot list runs: ${(e as Error).message}`);
    } finally {
      this.#scanning = false;
    }
  }
}
