/**
 * A local web page to watch runs live, train, sample and look inside the
 * models, served from this folder with no network needed.
 *
 *   deno task studio [--port=8000] [--host=127.0.0.1]
 *
 * It listens on 127.0.0.1 only, unless `--host` says otherwise. Trainings
 * it starts run as `deno task train` runs them, in this folder.
 *
 * @module
 */
import { runMain, UserError } from "./cli/errors.ts";
import { parseFlags } from "./cli/flags.ts";
import { isLoopback, startStudio } from "./studio/server.ts";

/** The studio's flags. */
export const STUDIO_FLAGS = {
  port: { type: "int", default: 8000, min: 0, max: 65535, help: "port to listen on (0: any free)" },
  host: {
    type: "string",
    default: "127.0.0.1",
    help: "address to listen on; anything but 127.0.0.1/localhost exposes the studio",
  },
} as const;

export async function main(args: string[]): Promise<void> {
  const { values } = parseFlags(args, STUDIO_FLAGS);
  const code = new URL(".", import.meta.url).pathname.replace(/\/$/, "");
  let studio;
  try {
    studio = await startStudio({
      code,
      project: Deno.cwd(),
      hostname: values.host,
      port: values.port,
    });
  } catch (e) {
    if (e instanceof Deno.errors.NotCapable && e.message.includes("net access")) {
      throw new UserError(
        `--host=${values.host}: the studio task may listen only on 127.0.0.1, localhost or 0.0.0.0 (all addresses)`,
      );
    }
    throw e;
  }
  if (!isLoopback(values.host)) {
    console.error(
      [
        "",
        "!!! WARNING: the studio is listening on " + values.host + ", not only on this machine.",
        "!!! Anyone who can reach this address can start trainings and read the run files here.",
        "!!! Stop it (Ctrl-C) and run `deno task studio` without --host unless you mean this.",
        "",
      ].join("\n"),
    );
  }
  console.log(`studio: ${studio.url}  (open it in a browser; Ctrl-C stops the studio)`);

  let stopping = false;
  const onSignal = () => {
    if (stopping) Deno.exit(130); // a second Ctrl-C: stop now
    stopping = true;
    const training = studio.trainer.state.running;
    if (training) console.error("stopping the training (it saves a checkpoint to resume from)…");
    studio.shutdown().then(() => {
      const { resumeFrom } = studio.trainer.state;
      if (training && resumeFrom) {
        console.error(
          `saved ${resumeFrom}; resume it from the studio, or with:\n  deno task train --resume=true --ckpt_file=${resumeFrom}`,
        );
      }
      Deno.exit(0);
    });
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
}

if (import.meta.main) await runMain(() => main(Deno.args));
