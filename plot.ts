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
 * evaluation, `iter train val`, e.g. `500 2.4512 2.4987`.
 *
 * @module
 */

import * as vega from "vega";
import * as vl from "vega-lite";
import type { TopLevelSpec } from "vega-lite";
import { runMain, UsageError, UserError } from "./cli/errors.ts";
import { writeFileAtomic } from "./cli/files.ts";
import { parseFlags } from "./cli/flags.ts";

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
 *   file and the 1-based line number
 */
export function parseLossFile(text: string, name: string): LossRow[] {
  const rows: LossRow[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "") continue;
    const cols = line.split(/\s+/);
    if (cols.length !== 3 || !cols.every((c) => NUMBER.test(c))) {
      const shown = line.length > 60 ? `${line.slice(0, 57)}...` : line;
      throw new UserError(
        `${name}:${i + 1}: expected "iter train val" (3 numbers), got "${shown}"`,
      );
    }
    const [iter, train, val] = cols.map(Number);
    rows.push({ iter, train, val });
  }
  return rows;
}

// ---------------------------------------------------------------------------
// Text measurement

/**
 * Advance widths (1/1000 em) of ASCII 32..126 in Helvetica / Arial (the
 * Adobe core-font AFM metrics; Arial and Liberation Sans share them).
 */
// deno-fmt-ignore
const HELVETICA = [
  278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
  556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
  1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
  667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
  333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
  556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
];

/** Same for Helvetica Bold / Arial Bold. */
// deno-fmt-ignore
const HELVETICA_BOLD = [
  278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278,
  556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611,
  975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778,
  667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556,
  333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611,
  611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
];

/** True for code points drawn double width (CJK, Hangul, fullwidth forms). */
function isWide(cp: number): boolean {
  return (cp >= 0x1100 && cp <= 0x115f) ||
    (cp >= 0x2e80 && cp <= 0xa4cf) ||
    (cp >= 0xac00 && cp <= 0xd7a3) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0xfe30 && cp <= 0xfe4f) ||
    (cp >= 0xff00 && cp <= 0xff60) ||
    (cp >= 0xffe0 && cp <= 0xffe6) ||
    (cp >= 0x1f300 && cp <= 0x1faff) ||
    (cp >= 0x20000 && cp <= 0x3fffd);
}

/**
 * Estimates the rendered width in pixels of `text` in a Helvetica/Arial-like
 * sans-serif font (monospace fonts: 0.6 em per character).
 *
 * @param text the string to measure
 * @param fontSize font size in pixels
 * @param bold whether the font weight is bold (>= 600)
 * @param monospace whether the font family is monospace
 */
export function estimateTextWidth(
  text: string,
  fontSize: number,
  bold = false,
  monospace = false,
): number {
  const table = bold ? HELVETICA_BOLD : HELVETICA;
  let units = 0;
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (monospace) units += isWide(cp) ? 1200 : 600;
    else if (cp >= 32 && cp <= 126) units += table[cp - 32];
    else if (cp < 32 || (cp >= 0x300 && cp <= 0x36f) || cp === 0x200b) {
      // control characters, combining marks, zero-width space
    } else if (isWide(cp)) units += 1000;
    else units += bold ? 611 : 556; // a typical lower-case letter
  }
  return (units / 1000) * fontSize;
}

/** The part of a Vega text item that matters for measuring it. */
interface TextItem {
  fontSize?: number | string;
  fontWeight?: number | string;
  font?: string;
  limit?: number;
}

/** Vega's text metrics hook; present at runtime, absent from vega-typings. */
interface TextMetrics {
  width: (item: TextItem, text: unknown) => number;
  estimateWidth: (item: TextItem, text: unknown) => number;
}

/**
 * Vega's text metrics (vega-scenegraph `textMetrics`). Without a canvas Vega
 * falls back to `estimateWidth` (0.8 x length x fontSize, far too wide for
 * a proportional font); assigning `width` is the documented hook for custom
 * measurers (vl-convert does the same).
 */
export const textMetrics: TextMetrics =
  (vega as unknown as { textMetrics: TextMetrics }).textMetrics;

/** Width of a Vega text item's line, as Vega's `textMetrics.width` expects. */
export function vegaTextWidth(item: TextItem, text: unknown): number {
  const size = item.fontSize != null ? (+item.fontSize || 0) : 11;
  const s = text == null ? "" : String(text).trim();
  if (size <= 0 || s === "") return 0;
  const weight = String(item.fontWeight ?? "");
  const bold = weight === "bold" || weight === "bolder" || +weight >= 600;
  const mono = /mono|courier|consolas|menlo/i.test(item.font ?? "");
  const width = estimateTextWidth(s, size, bold, mono);
  // Vega truncates text longer than item.limit (with an ellipsis) using this
  // same function, so it must not truncate itself; the truncated text is at
  // most `limit` wide.
  const limit = item.limit ?? 0;
  return limit > 0 ? Math.min(width, limit) : width;
}

/** Makes Vega measure text with {@link vegaTextWidth}. Idempotent. */
export function installTextMetrics(): void {
  textMetrics.width = vegaTextWidth;
}

// ---------------------------------------------------------------------------
// Chart

/** Font used for every text of the chart; the metrics above are for it. */
const FONT = "Helvetica, Arial, 'Liberation Sans', sans-serif";
const TITLE_SIZE = 14;

/**
 * Builds the Vega-Lite spec (data inlined). One run: its training and
 * validation curves. Several runs: each run's validation curve.
 *
 * @param runs the runs to plot, in legend order; at least one
 */
export function buildSpec(runs: Run[]): TopLevelSpec {
  if (runs.length === 0) throw new Error("buildSpec: no runs");
  const single = runs.length === 1;
  const title = single
    ? `Training and Validation Loss - ${runs[0].name}`
    : "Validation Loss Comparison";
  const values: { iter: number; loss: number; series: string }[] = [];
  const series: string[] = [];
  if (single) {
    series.push("Training Loss", "Validation Loss");
    for (const r of runs[0].rows) {
      values.push({ iter: r.iter, loss: r.train, series: series[0] });
      values.push({ iter: r.iter, loss: r.val, series: series[1] });
    }
  } else {
    for (const run of runs) {
      const name = `Validation Loss - ${run.name}`;
      series.push(name);
      for (const r of run.rows) {
        values.push({ iter: r.iter, loss: r.val, series: name });
      }
    }
  }
  // Widen the plot so a long title (long file name) still fits above it.
  const titleWidth = estimateTextWidth(title, TITLE_SIZE, true);
  const width = Math.round(Math.min(1200, Math.max(600, titleWidth + 20)));
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: title, anchor: "middle", fontSize: TITLE_SIZE },
    width,
    height: 360,
    background: "white",
    padding: 16,
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
      y: {
        field: "loss",
        type: "quantitative",
        title: "Loss",
        scale: { zero: false },
      },
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
export async function renderSvg(runs: Run[]): Promise<string> {
  installTextMetrics();
  const compiled = vl.compile(buildSpec(runs)).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

// ---------------------------------------------------------------------------
// Command line

const USAGE = "usage: ls loss_*.txt | deno task plot [--out=PATH]" +
  "  or  deno task plot [--out=PATH] FILE...";

const FLAGS = {
  out: { type: "string", default: "loss.svg", help: "the SVG to write" },
} as const;

function basename(path: string): string {
  return path.replace(/[\\/]+$/, "").split(/[\\/]/).pop() || path;
}

/** Reads and parses the files; unreadable or empty ones are warned about. */
async function loadRuns(files: string[]): Promise<Run[]> {
  const unique = [...new Set(files)];
  const loaded: { path: string; rows: LossRow[] }[] = [];
  for (const path of unique) {
    let text;
    try {
      text = await Deno.readTextFile(path);
    } catch {
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
    const text = await new Response(Deno.stdin.readable).text();
    files = text.split(/\s+/).filter((f) => f !== "");
  }
  if (files.length === 0) {
    throw new UsageError(`no loss files given; ${USAGE}`);
  }
  const runs = await loadRuns(files);
  const svg = await renderSvg(runs);
  await writeFileAtomic(out, new TextEncoder().encode(svg));
  console.log(
    `wrote ${out} (${runs.length} ${runs.length === 1 ? "run" : "runs"})`,
  );
  return out;
}

if (import.meta.main) await runMain(() => main(Deno.args));
