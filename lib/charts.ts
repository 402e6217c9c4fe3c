/**
 * Vega-Lite specs → SVG strings, rendered headless by Vega with text
 * measured as Helvetica/Arial draw it: the charts of `plot.ts` and of the
 * pictures that show a model's insides.
 *
 * @module
 */

import * as vega from "vega";
import * as vl from "vega-lite";
import type { TopLevelSpec } from "vega-lite";

/** Font used for every text of a chart; the metrics below are for it. */
export const FONT = "Helvetica, Arial, 'Liberation Sans', sans-serif";
/** Font for characters shown one by one (0.6 em each, as the metrics assume). */
export const MONO_FONT = "'DejaVu Sans Mono', Menlo, Consolas, 'Liberation Mono', monospace";

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

/**
 * Renders a Vega-Lite spec to a complete SVG document with Vega's headless
 * renderer and {@link vegaTextWidth}'s text metrics.
 */
export async function renderSpec(spec: TopLevelSpec): Promise<string> {
  installTextMetrics();
  const compiled = vl.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
