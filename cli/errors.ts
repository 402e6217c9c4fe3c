/**
 * Errors a user can cause and fix, and the one place that turns them into a
 * one-line message and an exit code.
 *
 * @module
 */

/** A mistake in how a command was called: bad flag, bad value. Exits 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Anything else the user can fix: missing file, corrupt data, full disk. Exits 1. */
export class UserError extends Error {
  override name = "UserError";
}

/**
 * Runs a script's main function. Expected failures ({@link UsageError},
 * {@link UserError}, a missing Deno permission) print `error: <message>` on
 * one line and exit 2 or 1; anything else is a bug and keeps its stack trace.
 */
export async function runMain(main: () => Promise<unknown> | unknown): Promise<void> {
  try {
    await main();
  } catch (e) {
    if (e instanceof UsageError || e instanceof UserError) {
      console.error(`error: ${e.message}`);
      Deno.exit(e instanceof UsageError ? 2 : 1);
    }
    if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
      // Deno's own message names the permission and the flag that grants it.
      console.error(`error: ${(e as Error).message.split("\n")[0]}`);
      Deno.exit(1);
    }
    throw e;
  }
}

/**
 * A value read from a file, as an error message may show it: JSON-quoted
 * (no control characters reach the terminal) and cut to `max` characters.
 */
export function shown(value: unknown, max = 40): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
