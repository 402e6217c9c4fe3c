/**
 * File writes that never leave a torn file behind.
 *
 * @module
 */
import { basename, dirname, join } from "node:path";
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
  const dir = dirname(path);
  const rand = crypto.getRandomValues(new Uint32Array(2));
  const tmp = join(
    dir,
    `.${basename(path)}.tmp-${Deno.pid}-${rand[0].toString(36)}${rand[1].toString(36)}`,
  );
  let file: Deno.FsFile | undefined;
  let created = false;
  try {
    file = await Deno.open(tmp, { write: true, createNew: true });
    created = true;
    let written = 0;
    while (written < bytes.length) {
      written += await file.write(bytes.subarray(written));
    }
    await file.syncData();
    file.close();
    file = undefined;
    await Deno.rename(tmp, path);
    created = false;
  } catch (e) {
    try {
      file?.close();
    } catch { /* already closed */ }
    if (created) {
      try {
        await Deno.remove(tmp);
      } catch { /* best effort */ }
    }
    throw new UserError(`cannot write ${path}: ${causeOf(e)}`);
  }
  // Make the rename itself durable; not possible on every platform.
  try {
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  } catch { /* best effort */ }
}

/** Whether anything exists at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Creates `dir` if needed and checks that files can be written in it.
 *
 * @throws {UserError} naming the flag (`--<flag>`) to change.
 */
export async function ensureWritableDir(dir: string, flag: string): Promise<void> {
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
