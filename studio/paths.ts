/**
 * Which files the studio may touch: paths the page names are checked here
 * before anything opens them. A path must be relative, stay inside the
 * project folder once symlinks are followed, and name a run file (a loss log
 * in the folder, a checkpoint under `out/`).
 *
 * @module
 */
import { join } from "node:path";

/** A path the studio refuses to open; the message says why, in one line. */
export class RefusedPath extends Error {
  override name = "RefusedPath";
}

/** A loss log as train.ts writes it (or the original's `.log`), in the project folder. */
export const LOSS_LOG = /^loss_[^/]+\.(txt|log)$/;
/** A checkpoint (or its optimizer state) anywhere under `out/`. */
export const CHECKPOINT = /^out\/(.+\/)?[^/]+\.safetensors$/;

/**
 * Checks a relative path from the page and returns it normalised (no `.`
 * segments, `/` separators). Refuses, before touching the disk: empty or
 * absolute paths, drive letters, backslashes, NUL, `..` segments and any `%`
 * (a path that still holds an escape after the URL was decoded once was
 * encoded twice, the shape of an encoded traversal).
 */
export function checkRelativePath(requested: string): string {
  const refuse = (why: string): never => {
    throw new RefusedPath(`${JSON.stringify(requested)}: ${why}`);
  };
  if (requested === "") refuse("empty path");
  if (requested.startsWith("/") || /^[A-Za-z]:/.test(requested)) {
    refuse("absolute paths are refused; name a file inside the project folder");
  }
  if (/[\\\0%]/.test(requested)) refuse("backslashes, NUL and % escapes are refused");
  const segments = requested.split("/").filter((s) => s !== "" && s !== ".");
  if (segments.includes("..")) refuse("'..' is refused; name a file inside the project folder");
  return segments.join("/");
}

/**
 * Resolves a run file the page asked for to its real path inside `root`
 * (itself a real path). Refuses what {@link checkRelativePath} refuses,
 * anything that is not a loss log or a checkpoint, missing files, and paths
 * that leave `root` through a symlink.
 */
export async function resolveRunFile(root: string, requested: string): Promise<string> {
  const path = checkRelativePath(requested);
  if (!LOSS_LOG.test(path) && !CHECKPOINT.test(path)) {
    throw new RefusedPath(
      `${
        JSON.stringify(requested)
      }: only loss logs (loss_*.txt) and checkpoints under out/ are served`,
    );
  }
  return await realPathInside(root, path);
}

/** The real path of `root/path`, which must exist and stay inside `root` once symlinks are followed. */
export async function realPathInside(root: string, path: string): Promise<string> {
  let real: string;
  try {
    real = await Deno.realPath(join(root, path));
  } catch {
    throw new RefusedPath(`${JSON.stringify(path)}: no such file in the project folder`);
  }
  if (!real.startsWith(root + "/")) {
    throw new RefusedPath(`${JSON.stringify(path)}: leads out of the project folder (symlink)`);
  }
  return real;
}
