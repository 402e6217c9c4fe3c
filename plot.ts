/**
 * Plots training/validation loss curves from `loss_*.txt` (or the original
 * PyTorch project's `loss_*.log`) files into an SVG.
 *
 * ```sh
 * ls loss_*.txt | deno task plot            # file names on stdin
 * deno run -A plot.ts a.txt b.txt --out=cmp.svg
 * ```
 *
 * One file: its training and validation curves. Several files: each file's
 * validation curve, for comparison. Each loss file has one line per
 * evaluation, `iter train val`, e.g. `500 2.4512 2.4987`. A dashed line
 * marks ln(vocab_size), the loss of a uniform guess; `--bpc` shows bits per
 * character instead of nats.
 *
 * @module
 */

import type { TopLevelSpec } from "vega-lite";
import { runMain, UsageError, UserError } from "./cli/errors.ts";
import { checkRegularFile, insideProject, writeFileAtomic } from "./cli/files.ts";
import { parseFlags } from "./cli/flags.ts";
import { estimateTextWidth, FONT, renderSpec } from "./lib/charts.ts";
import { datasetDir } from "./lib/data.ts";

/** One evaluation: iteration number, training loss and validation loss. */
export interface LossRow {
  iter: number;
  train: number;
  val: number;
}

/** A parsed loss file: the name shown in titles/legends and its rows. */
export interface Run {
  name: string;
  rows: LossRow[];
}

const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/**
 * Parses the text of a loss file: one `iter train val` line per evaluation,
 * whitespace separated; blank lines are ignored.
 *
 * @param text the file contents
 * @param name the file name, used in error messages
 * @returns the rows in file order (possibly empty)
 * @throws {UserError} on a line without exactly three numbers, naming the
 *   file and the 1-based line number (never quoting the line)
 */
export function parseLossFile(text: string, name: string): LossRow[] {
  const rows: LossRow[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "") continue;
    const cols = line.split(/\s+/);
    const bad = cols.findIndex((c) => !NUMBER.test(c));
    if (cols.length !== 3 || bad >= 0) {
      // Described, not quoted: the file may not be a loss log at all.
      throw new UserError(
        `${name}:${i + 1}: expected "iter train val" (3 numbers), got ${
          cols.length !== 3
            ? `${cols.length} field${cols.length === 1 ? "" : "s"}`
            : `a field ${bad + 1} that is not a number`
        }`,
      );
    }
    const [iter, train, val] = cols.map(Number);
    rows.push({ iter, train, val });
  }
  return rows;
}

// ---------------------------------------------------------------------------
// Chart

const TITLE_SIZE = 14;

/** How to draw the curves. */
export interface PlotOptions {
  /**
   * Vocabulary sizes to mark with a dashed line at ln(V) (log2(V) in bits):
   * the loss of a uniform guess, where an untrained model starts.
   */
  vocabSizes?: number[];
  /** Bits per character (loss / ln 2) instead of nats. */
  bpc?: boolean;
}

/**
 * Builds the Vega-Lite spec (data inlined). One run: its training and
 * validation curves. Several runs: each run's validation curve.
 *
 * @param runs the runs to plot, in legend order; at least one
 */
export function buildSpec(runs: Run[], options: PlotOptions = {}): TopLevelSpec {
  if (runs.length === 0) throw new Error("buildSpec: no runs");
  const single = runs.length === 1;
  const title = single
    ? `Training and Validation Loss - ${runs[0].name}`
    : "Validation Loss Comparison";
  const unit = options.bpc ? 1 / Math.LN2 : 1; // nats → bits
  const values: { iter: number; loss: number; series: string }[] = [];
  const series: string[] = [];
  if (single) {
    series.push("Training Loss", "Validation Loss");
    for (const r of runs[0].rows) {
      values.push({ iter: r.iter, loss: r.train * unit, series: series[0] });
      values.push({ iter: r.iter, loss: r.val * unit, series: series[1] });
    }
  } else {
    for (const run of runs) {
      const name = `Validation Loss - ${run.name}`;
      series.push(name);
      for (const r of run.rows) {
        values.push({ iter: r.iter, loss: r.val * unit, series: name });
      }
    }
  }
  const references = [...new Set(options.vocabSizes ?? [])].map((v) => ({
    loss: Math.log(v) * unit,
    label: options.bpc
      ? `uniform guess: log2 ${v} = ${Math.log2(v).toFixed(2)} bits`
      : `uniform guess: ln ${v} = ${Math.log(v).toFixed(2)}`,
  }));
  // Widen the plot so a long title (long file name) still fits above it.
  const titleWidth = estimateTextWidth(title, TITLE_SIZE, true);
  const width = Math.round(Math.min(1200, Math.max(600, titleWidth + 20)));
  const y = {
    field: "loss",
    type: "quantitative" as const,
    title: options.bpc ? "Bits per character" : "Loss",
    scale: { zero: false },
  };
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: title, anchor: "middle", fontSize: TITLE_SIZE },
    width,
    height: 360,
    background: "white",
    padding: 16,
    layer: [
      {
        data: { values },
        mark: {
          type: "line",
          strokeWidth: 1.5,
          point: { filled: true, size: 30 },
        },
        encoding: {
          x: {
            field: "iter",
            type: "quantitative",
            title: "Iteration",
            axis: { format: "~r" },
          },
          y,
          color: {
            field: "series",
            type: "nominal",
            scale: { domain: series },
            legend: {
              title: null,
              orient: "bottom",
              direction: "vertical",
              labelLimit: 0,
              labelFontSize: 12,
            },
          },
        },
      },
      ...(references.length === 0 ? [] : [
        {
          data: { values: references },
          mark: { type: "rule" as const, strokeDash: [6, 4], color: "#555", strokeWidth: 1.2 },
          encoding: { y },
        },
        {
          data: { values: references },
          mark: {
            type: "text" as const,
            x: "width" as const,
            align: "right" as const,
            baseline: "top" as const, // below the line: losses fall away from it
            dx: -4,
            dy: 4,
            color: "#333",
            fontSize: 11,
          },
          encoding: { y, text: { field: "label" } },
        },
      ]),
    ],
    config: {
      font: FONT,
      axis: { labelFontSize: 11, titleFontSize: 12, grid: true },
      view: { stroke: "#888" },
    },
  };
}

/**
 * Renders runs to an SVG string (see {@link buildSpec}) with Vega's headless
 * renderer and Helvetica/Arial text metrics.
 *
 * @param runs the runs to plot; at least one
 * @returns the complete SVG document
 */
export async function renderSvg(runs: Run[], options: PlotOptions = {}): Promise<string> {
  return await renderSpec(buildSpec(runs, options));
}

// ---------------------------------------------------------------------------
// Command line

const USAGE = "usage: ls loss_*.txt | deno task plot [--out=PATH] [--bpc]" +
  "  or  deno task plot [--out=PATH] [--bpc] FILE...";

const FLAGS = {
  out: { type: "string", default: "loss.svg", help: "the SVG to write" },
  vocab_size: {
    type: "int",
    default: 0,
    min: 1,
    help: "vocabulary size for the uniform-guess line (default: the file names' V-N field)",
  },
  bpc: { type: "bool", default: false, help: "bits per character instead of nats" },
} as const;

function basename(path: string): string {
  return path.replace(/[\\/]+$/, "").split(/[\\/]/).pop() || path;
}

/**
 * The vocabulary size of a loss file's run: its run id's `V-N` field (`V:N`
 * in the original's names), else `vocab_size` in the meta.json of the
 * dataset its run id ends with; null when neither is there.
 */
export async function vocabSizeOf(file: string): Promise<number | null> {
  const name = basename(file);
  const field = /(?:^|_)V[-:](\d+)(?=[_.]|$)/.exec(name);
  if (field) return Number(field[1]);
  const dataset = /_DR[-:][0-9.e+-]+_(.+?)(?:_\d+)?\.(?:txt|log)$/.exec(name)?.[1];
  if (!dataset) return null;
  try {
    const meta = JSON.parse(await Deno.readTextFile(`${datasetDir(dataset)}/meta.json`));
    return Number.isInteger(meta.vocab_size) ? meta.vocab_size : null;
  } catch {
    return null;
  }
}

/** Reads and parses the files; unreadable or empty ones are warned about. */
async function loadRuns(files: string[]): Promise<Run[]> {
  const unique = [...new Set(files)];
  const loaded: { path: string; rows: LossRow[] }[] = [];
  for (const path of unique) {
    await insideProject(path, "loss file");
    let text;
    try {
      await checkRegularFile(path, "loss file"); // a FIFO would block the read forever
      text = await Deno.readTextFile(path);
    } catch (e) {
      if (e instanceof UserError) throw e;
      if (unique.length === 1) {
        throw new UserError(`${path} not found or cannot be read`);
      }
      console.error(`warning: ${path} not found or cannot be read, skipped`);
      continue;
    }
    const rows = parseLossFile(text, path);
    if (rows.length === 0) {
      if (unique.length === 1) throw new UserError(`${path} has no data`);
      console.error(`warning: ${path} has no data, skipped`);
      continue;
    }
    loaded.push({ path, rows });
  }
  if (loaded.length === 0) {
    throw new UserError(
      `none of the ${unique.length} loss files could be read`,
    );
  }
  // Label runs by base name, unless two share one: then by the path given.
  const counts = new Map<string, number>();
  for (const { path } of loaded) {
    counts.set(basename(path), (counts.get(basename(path)) ?? 0) + 1);
  }
  return loaded.map(({ path, rows }) => ({
    name: counts.get(basename(path))! > 1 ? path : basename(path),
    rows,
  }));
}

/**
 * Plots the loss files named in `args` (or, with none, on standard input)
 * into one SVG. Returns the path written.
 */
export async function main(args: string[]): Promise<string> {
  const { values, positionals: fromArgs } = parseFlags(args, FLAGS, { allowPositionals: true });
  const out = values.out;
  if (out === "") throw new UsageError("--out= needs a path");
  let files = fromArgs;
  if (files.length === 0 && !Deno.stdin.isTerminal()) {
    // One name per line, as `ls` writes them: a name may hold spaces.
    const text = await new Response(Deno.stdin.readable).text();
    files = text.split(/\r?\n/).filter((f) => f.trim() !== "");
  }
  if (files.length === 0) {
    throw new UsageError(`no loss files given; ${USAGE}`);
  }
  await insideProject(out, "--out");
  const runs = await loadRuns(files);
  const vocabSizes = values.vocab_size > 0
    ? [values.vocab_size]
    : (await Promise.all(runs.map((r) => vocabSizeOf(r.name)))).filter((v) => v !== null);
  if (vocabSizes.length === 0) {
    console.error(
      "note: no vocabulary size in the file names: pass --vocab_size=N to draw the uniform-guess line",
    );
  }
  const svg = await renderSvg(runs, { vocabSizes, bpc: values.bpc });
  await writeFileAtomic(out, new TextEncoder().encode(svg));
  console.log(
    `wrote ${out} (${runs.length} ${runs.length === 1 ? "run" : "runs"})`,
  );
  return out;
}

if (import.meta.main) await runMain(() => main(Deno.args));
