/**
 * Files: writes that never leave a torn file (or a torn set of files)
 * behind, and the one rule for where the scripts may read and write: inside
 * the project folder, once symbolic links are followed.
 *
 * @module
 */
import { basename, dirname, join, resolve, sep } from "node:path";
import { UserError } from "./errors.ts";

/** First line of an error's message, without Deno's `: op 'path'` suffix. */
export function causeOf(e: unknown): string {
  const msg = (e instanceof Error ? e.message : String(e)).split("\n")[0];
  return msg.replace(/: [a-z_]+ '[^']*'( -> '[^']*')?$/, "");
}

/**
 * Writes `bytes` to `path` atomically: writes a temporary file
 * `.<base>.tmp-<pid>-<random>` in the same folder, flushes it to disk, closes
 * it, then renames it over `path` (and flushes the folder where supported).
 * Readers see either the old file or the complete new one, even if the process
 * is killed. On failure the temporary file is removed, the old file is left
 * intact and a {@link UserError} `cannot write <path>: <cause>` is thrown.
 */
export async function writeFileAtomic(
  path: string,
  bytes: Uint8Array,
): Promise<void> {
  await writeFilesAtomic([[path, bytes]]);
}

/**
 * Writes several files as one: each to a temporary file as
 * {@link writeFileAtomic} does, and only when every one of them is complete
 * on disk are they renamed over their paths, in the order given. A failure
 * while writing (a full disk) leaves every old file as it was and no
 * temporary file behind; only a crash between the renames, a moment, can
 * leave some replaced and some not.
 *
 * @throws {UserError} `cannot write <path>: <cause>` naming the file that failed.
 */
export async function writeFilesAtomic(files: [path: string, bytes: Uint8Array][]): Promise<void> {
  const temps: string[] = [];
  let current = files[0]?.[0];
  try {
    for (const [path, bytes] of files) {
      current = path;
      const rand = crypto.getRandomValues(new Uint32Array(2));
      const tmp = join(
        dirname(path),
        `.${basename(path)}.tmp-${Deno.pid}-${rand[0].toString(36)}${rand[1].toString(36)}`,
      );
      const file = await Deno.open(tmp, { write: true, createNew: true });
      temps.push(tmp);
      try {
        let written = 0;
        while (written < bytes.length) {
          written += await file.write(bytes.subarray(written));
        }
        await file.syncData();
      } finally {
        file.close();
      }
    }
    for (const [i, [path]] of files.entries()) {
      current = path;
      await Deno.rename(temps[i], path);
      temps[i] = "";
    }
  } catch (e) {
    for (const tmp of temps.filter(Boolean)) {
      try {
        await Deno.remove(tmp);
      } catch { /* best effort */ }
    }
    throw new UserError(`cannot write ${current}: ${causeOf(e)}`);
  }
  // Make the renames themselves durable; not possible on every platform.
  for (const dir of new Set(files.map(([path]) => dirname(path)))) {
    try {
      const d = await Deno.open(dir, { read: true });
      try {
        await d.sync();
      } finally {
        d.close();
      }
    } catch { /* best effort */ }
  }
}

/**
 * Appends `text` to the file at `path` (created if missing).
 *
 * @throws {UserError} `cannot write <path>: <cause>` (a full disk, say).
 */
export async function appendText(path: string, text: string): Promise<void> {
  try {
    await Deno.writeTextFile(path, text, { append: true });
  } catch (e) {
    throw new UserError(`cannot write ${path}: ${causeOf(e)}`);
  }
}

/** Whether anything exists at `path`: a file, a folder, or a link, even one that leads nowhere. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Where `path` really is, following every symbolic link, also when the path
 * or the end of a link does not exist yet (what a write there would create).
 */
async function realLocation(path: string, depth = 0): Promise<string> {
  try {
    return await Deno.realPath(path);
  } catch (e) {
    // Beyond what this process may read: outside the folder the tasks grant.
    if (e instanceof Deno.errors.NotCapable) return path;
    // Missing, or under a file: where it would be is its parent's place.
    if (!(e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory)) throw e;
  }
  let link = false;
  try {
    link = (await Deno.lstat(path)).isSymlink;
  } catch { /* nothing there yet */ }
  if (link) {
    if (depth > 40) throw new UserError(`${path}: too many levels of symbolic links`);
    return await realLocation(resolve(dirname(path), await Deno.readLink(path)), depth + 1);
  }
  const parent = dirname(path);
  if (parent === path) return path;
  return join(await realLocation(parent, depth), basename(path));
}

/**
 * Refuses a path that leads outside the project folder (the working
 * directory, where `deno task` runs) once symbolic links are followed:
 * Deno's `--allow-read=.`/`--allow-write=.` check a path as it is written,
 * not where a link takes it. The path need not exist yet. Every script
 * checks every file or folder it reads or writes this way.
 *
 * @param what names the path in the message, e.g. `--out_dir` or `checkpoint`.
 * @throws {UserError} `<what> <path> leads outside this folder (to <real path>)…`
 */
export async function insideProject(path: string, what: string): Promise<void> {
  const root = await Deno.realPath(Deno.cwd());
  let real: string;
  try {
    real = await realLocation(resolve(path));
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`${what} ${path}: ${causeOf(e)}`);
  }
  if (real !== root && !real.startsWith(root.endsWith(sep) ? root : root + sep)) {
    throw new UserError(
      `${what} ${path} leads outside this folder (to ${real}): keep data, checkpoints and logs inside ${root}`,
    );
  }
}

/**
 * Refuses anything at `path` but a regular file, without opening it: a
 * folder, or a FIFO or device that would block or never end. A missing
 * file throws Deno's `NotFound`, for the caller to explain.
 *
 * @throws {UserError} `<what> <path> is a directory, not a file` or `… is not a regular file …`
 */
export async function checkRegularFile(path: string, what: string): Promise<void> {
  const info = await Deno.stat(path);
  if (info.isDirectory) throw new UserError(`${what} ${path} is a directory, not a file`);
  if (!info.isFile) {
    throw new UserError(
      `${what} ${path} is not a regular file (a FIFO, socket or device): give a file`,
    );
  }
}

/**
 * Reads a regular file inside the project folder ({@link insideProject},
 * {@link checkRegularFile}). A missing file throws Deno's `NotFound`, for
 * the caller to say what would create it.
 *
 * @throws {UserError} for a path outside the folder, a file that is not a
 *   regular file, or `cannot read <path>: <cause>`.
 */
export async function readProjectFile(path: string, what: string): Promise<Uint8Array> {
  await insideProject(path, what);
  try {
    await checkRegularFile(path, what);
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof UserError) throw e;
    throw new UserError(`cannot read ${path}: ${causeOf(e)}`);
  }
}

/**
 * Creates `dir` if needed and checks that files can be written in it and
 * that it is inside the project folder.
 *
 * @throws {UserError} naming the flag (`--<flag>`) to change.
 */
export async function ensureWritableDir(dir: string, flag: string): Promise<void> {
  await insideProject(dir, `--${flag}`);
  try {
    await Deno.mkdir(dir, { recursive: true });
    const probe = `${dir}/.write-test-${Deno.pid}`;
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
  } catch (e) {
    throw new UserError(
      `cannot write to ${flag} '${dir}': ${(e as Error).message}; pick another --${flag}`,
    );
  }
}
