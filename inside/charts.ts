/**
 * The Vega-Lite specs of the pictures `inspect` draws, each built from plain
 * numbers and characters (see `probe.ts` for where they come from), so they
 * render anywhere: `lib/charts.ts` turns them into SVG.
 *
 * Characters are drawn with space, newline and tab made visible (␣ ↵ ⇥).
 *
 * @module
 */
import type { TopLevelSpec } from "vega-lite";
import { CHAR_CLASSES, charClass, visibleChar } from "../lib/chars.ts";
import { estimateTextWidth, FONT, MONO_FONT } from "../lib/charts.ts";

const SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json";
const TITLE_SIZE = 15;
const SUBTITLE_SIZE = 12;
/** Fill of cells that hold no value: attention's future keys, text that is only context. */
const EMPTY_FILL = "#eeeeee";

/** What every picture's title says: what it shows, then which checkpoint and on what. */
export interface Heading {
  title: string;
  /** Lines under the title: the checkpoint, then details. */
  subtitle: string[];
}

/** The parts every spec shares: title, fonts, white background. */
function frame(heading: Heading) {
  return {
    $schema: SCHEMA,
    title: {
      text: heading.title,
      subtitle: heading.subtitle,
      anchor: "start" as const,
      fontSize: TITLE_SIZE,
      subtitleFontSize: SUBTITLE_SIZE,
      subtitleColor: "#444",
      offset: 12,
    },
    background: "white",
    padding: 16,
    config: {
      aria: false, // a label per cell ("k: 3; q: 5") would double the file and help no one
      font: FONT,
      axis: { labelFontSize: 11, titleFontSize: 12 },
      header: { labelFontSize: 12, titleFontSize: 12 },
      legend: { labelFontSize: 11, titleFontSize: 12 },
      view: { stroke: "#999" },
    },
  };
}

/** Width the title block needs, so a chart can be made at least that wide. */
function headingWidth(heading: Heading): number {
  return Math.max(
    estimateTextWidth(heading.title, TITLE_SIZE, true),
    ...heading.subtitle.map((line) => estimateTextWidth(line, SUBTITLE_SIZE)),
  );
}

/** A Vega expression that maps an index to one of `labels` (for axis labels). */
function labelLookup(labels: string[]): string {
  return `${JSON.stringify(labels)}[datum.value]`;
}

/** A probability as a short percentage: 62%, 9.5%, 0.4%, <0.1%. */
function percent(p: number): string {
  const pc = p * 100;
  if (pc >= 9.95) return `${pc.toFixed(0)}%`;
  if (pc >= 0.05) return `${pc.toFixed(1)}%`;
  return "<0.1%";
}

// ---------------------------------------------------------------------------
// Next-character probabilities

/** One position of the next-character view. */
export interface NextCharRow {
  /** The text up to and including this position (the model's context, or its end). */
  context: string;
  /** The character that actually came next; null at the end of the text. */
  actual: string | null;
  /** The model's probability of `actual` and its rank among all characters (1 = likeliest). */
  actualProb: number;
  actualRank: number;
  /** The likeliest next characters, most likely first. */
  top: { char: string; prob: number }[];
}

const CONTEXT_SHOWN = 14;

/**
 * A table with one row per position: the text so far (its end), the five
 * likeliest next characters with their probabilities (the cell's colour),
 * and the character that came next, outlined where it is among them.
 */
export function nextCharSpec(
  rows: NextCharRow[],
  heading: Heading,
  firstPosition = 0,
): TopLevelSpec {
  const columns = ["1st", "2nd", "3rd", "4th", "5th", "next"];
  const labels = rows.map((r, i) => {
    const chars = [...r.context];
    const tail = chars.slice(-CONTEXT_SHOWN).map(visibleChar).join("");
    const more = chars.length > CONTEXT_SHOWN ? "…" : " ";
    return `${String(firstPosition + i).padStart(3)} ${more}${tail}`;
  });
  const cells = rows.flatMap((r, i) => [
    ...r.top.map((t, rank) => ({
      row: i,
      column: columns[rank],
      text: `${visibleChar(t.char)} ${percent(t.prob)}`,
      prob: t.prob,
      actual: t.char === r.actual,
    })),
    ...(r.actual === null ? [] : [{
      row: i,
      column: "next",
      text: `${visibleChar(r.actual)} ${percent(r.actualProb)} #${r.actualRank}`,
      prob: r.actualProb,
      actual: false, // this column is the actual character
    }]),
  ]);
  const step = 19;
  const columnWidth = 80;
  const labelWidth = estimateTextWidth(labels[0] ?? "", 11, false, true);
  const width = Math.max(columns.length * columnWidth, headingWidth(heading) - labelWidth - 60);
  return {
    ...frame(heading),
    data: { values: cells },
    width,
    height: { step },
    encoding: {
      y: {
        field: "row",
        type: "ordinal",
        title: "position: the text so far",
        axis: {
          labelExpr: labelLookup(labels),
          labelFont: MONO_FONT,
          labelFontSize: 11,
          ticks: false,
          domain: false,
        },
      },
      x: {
        field: "column",
        type: "ordinal",
        sort: columns,
        title: "the five likeliest next characters, and the one that came next (#rank)",
        axis: { orient: "top", labelAngle: 0, ticks: false, domain: false },
      },
    },
    layer: [
      {
        mark: { type: "rect", stroke: "white", strokeWidth: 1 },
        encoding: {
          color: {
            field: "prob",
            type: "quantitative",
            title: "probability",
            scale: { scheme: "blues", domain: [0, 1] },
            legend: { format: ".0%", orient: "right", gradientLength: 200 },
          },
        },
      },
      {
        transform: [{ filter: "datum.actual" }],
        mark: { type: "rect", fillOpacity: 0, stroke: "#d62728", strokeWidth: 2.5 },
      },
      {
        mark: { type: "text", font: MONO_FONT, fontSize: 11 },
        encoding: {
          text: { field: "text" },
          color: {
            condition: { test: "datum.prob > 0.55", value: "white" },
            value: "black",
          },
        },
      },
    ],
  } as TopLevelSpec;
}

// ---------------------------------------------------------------------------
// Text grids: surprise and memorisation

/** One character of a text grid and the value that colours it (null: not coloured). */
export interface GridChar {
  char: string;
  value: number | string | null;
}

/** Lays text out as it reads: a new line after each newline and every `columns` characters. */
function layoutText(
  chars: GridChar[],
  columns: number,
): (GridChar & { column: number; line: number; shown: string })[] {
  let line = 0, column = 0;
  return chars.map((c) => {
    if (column >= columns) [line, column] = [line + 1, 0];
    const cell = { ...c, column, line, shown: visibleChar(c.char) };
    column++;
    if (c.char === "\n") [line, column] = [line + 1, 0];
    return cell;
  });
}

const GRID_COLUMNS = 64;
const GRID_CELL = { width: 15, height: 22 };

/**
 * The cells' rectangles and characters, with `color` for the coloured ones;
 * characters on cells whose value is above `whiteAbove` are white.
 */
function textGridLayers(color: Record<string, unknown>, whiteAbove?: number) {
  const x = {
    field: "column",
    type: "quantitative",
    scale: { domain: [0, GRID_COLUMNS] },
    axis: null,
  };
  const y = { field: "line", type: "ordinal", axis: null };
  return [
    {
      mark: { type: "rect", fill: EMPTY_FILL, stroke: "white", strokeWidth: 1 },
      encoding: { x, x2: { field: "columnEnd" }, y },
    },
    {
      transform: [{ filter: "datum.value !== null" }],
      mark: { type: "rect", stroke: "white", strokeWidth: 1 },
      encoding: { x, x2: { field: "columnEnd" }, y, color },
    },
    {
      mark: { type: "text", font: MONO_FONT, fontSize: 13 },
      encoding: {
        x: { ...x, field: "center" },
        y,
        text: { field: "shown" },
        color: whiteAbove === undefined
          ? { value: "black" }
          : { condition: { test: `datum.value > ${whiteAbove}`, value: "white" }, value: "black" },
      },
    },
  ];
}

/** Text grid data: the laid out cells with their right edges and centres. */
function gridValues(chars: GridChar[]) {
  return layoutText(chars, GRID_COLUMNS).map((c) => ({
    ...c,
    columnEnd: c.column + 1,
    center: c.column + 0.5,
  }));
}

/** Width of a text grid: a column per character, at least as wide as its heading. */
function gridWidth(heading: Heading): number {
  return Math.max(GRID_COLUMNS * GRID_CELL.width, headingWidth(heading) - 40);
}

/**
 * A passage with each character coloured by its surprise in bits (−log2 of
 * the probability the model gave it); characters given only as context are
 * grey.
 */
export function surpriseSpec(chars: GridChar[], heading: Heading): TopLevelSpec {
  const values = gridValues(chars);
  const bits = values.map((v) => v.value).filter((v): v is number => typeof v === "number");
  const top = Math.max(8, Math.ceil(Math.max(0, ...bits)));
  return {
    ...frame(heading),
    data: { values },
    width: gridWidth(heading),
    height: { step: GRID_CELL.height },
    layer: textGridLayers({
      field: "value",
      type: "quantitative",
      title: "surprise (bits)",
      scale: { scheme: "orangered", domain: [0, top] },
      legend: { orient: "bottom", direction: "horizontal", gradientLength: 300 },
    }, top * 0.6),
  } as TopLevelSpec;
}

/**
 * Texts with some characters marked: `value` names the category ("shared
 * with training text") of each marked character; unmarked ones are grey.
 * Several texts are stacked, each under its own label.
 */
export function markedTextSpec(
  texts: { label: string; chars: GridChar[] }[],
  categories: { name: string; color: string }[],
  heading: Heading,
): TopLevelSpec {
  const color = {
    field: "value",
    type: "nominal",
    title: null,
    scale: { domain: categories.map((c) => c.name), range: categories.map((c) => c.color) },
    legend: { orient: "bottom", direction: "horizontal", labelLimit: 0 },
  };
  const width = gridWidth(heading);
  return {
    ...frame(heading),
    vconcat: texts.map((t) => ({
      title: { text: t.label, anchor: "start", fontSize: 12, fontWeight: "normal", orient: "top" },
      data: { values: gridValues(t.chars) },
      width,
      height: { step: GRID_CELL.height },
      layer: textGridLayers(color),
    })),
    spacing: 18,
    resolve: { scale: { color: "shared" } },
  } as TopLevelSpec;
}

// ---------------------------------------------------------------------------
// The bigram table

/**
 * Two vocabulary × vocabulary heatmaps side by side, previous character
 * down, next character across: each cell the probability of the next given
 * the previous.
 */
export function transitionSpec(
  vocab: string[],
  tables: { label: string; rows: ArrayLike<number>[] }[],
  heading: Heading,
): TopLevelSpec {
  const V = vocab.length;
  const labels = vocab.map(visibleChar);
  const cell = V <= 40 ? 14 : V <= 70 ? 12 : 6;
  const axisFont = Math.min(11, cell - 2);
  return {
    ...frame(heading),
    hconcat: tables.map((table) => ({
      title: { text: table.label, fontSize: 13, anchor: "middle" },
      data: {
        values: table.rows.flatMap((row, a) =>
          Array.from({ length: V }, (_, b) => ({ prev: a, next: b, prob: row[b] }))
            .filter((c) => c.prob > 0)
        ),
      },
      width: { step: cell },
      height: { step: cell },
      mark: { type: "rect" },
      encoding: {
        x: {
          field: "next",
          type: "ordinal",
          scale: { domain: [...labels.keys()] },
          title: "next character",
          axis: {
            labelExpr: labelLookup(labels),
            labelFont: MONO_FONT,
            labelFontSize: axisFont,
            labelAngle: 0,
            orient: "top",
            ticks: false,
          },
        },
        y: {
          field: "prev",
          type: "ordinal",
          scale: { domain: [...labels.keys()] },
          title: "previous character",
          axis: {
            labelExpr: labelLookup(labels),
            labelFont: MONO_FONT,
            labelFontSize: axisFont,
            ticks: false,
          },
        },
        color: {
          field: "prob",
          type: "quantitative",
          title: "P(next | previous)",
          // From white, so the many near-zero probabilities stay out of sight.
          scale: {
            type: "sqrt",
            domain: [0, 1],
            range: ["#ffffff", "#6baed6", "#2171b5", "#08306b"],
            interpolate: "rgb",
          },
          legend: { format: ".0%", values: [0.01, 0.1, 0.25, 0.5, 1], gradientLength: 240 },
        },
      },
    })),
    spacing: 30,
    resolve: { scale: { color: "shared" } },
  } as TopLevelSpec;
}

// ---------------------------------------------------------------------------
// Attention

/**
 * One heatmap per layer (rows) and head (columns): query character down,
 * key character across, each cell how much the query attends to the key.
 * Keys after the query (the causal mask) are grey.
 */
export function attentionSpec(
  maps: number[][][][],
  chars: string[],
  heading: Heading,
): TopLevelSpec {
  const T = chars.length;
  const labels = chars.map(visibleChar);
  const cell = Math.max(5, Math.min(18, Math.floor(264 / T)));
  const showLabels = cell >= 9;
  const values = maps.flatMap((layer, l) =>
    layer.flatMap((head, h) =>
      head.flatMap((row, q) =>
        row.map((w, k) => ({ layer: l + 1, head: h + 1, q, k, w: k <= q ? w : null }))
      )
    )
  );
  const axis = (title: string, orient: "left" | "bottom") => ({
    title: showLabels ? title : `${title} (left to right: the text)`,
    labels: showLabels,
    labelExpr: labelLookup(labels),
    labelFont: MONO_FONT,
    labelFontSize: Math.min(11, cell - 2),
    labelAngle: 0,
    labelPadding: 2,
    ticks: false,
    domain: false,
    orient,
  });
  return {
    ...frame(heading),
    data: { values },
    facet: {
      row: {
        field: "layer",
        type: "ordinal",
        header: { labelExpr: "'layer ' + datum.value", labelAngle: 0, title: null },
      },
      column: {
        field: "head",
        type: "ordinal",
        header: { labelExpr: "'head ' + datum.value", title: null },
      },
    },
    spacing: 10,
    spec: {
      width: { step: cell },
      height: { step: cell },
      layer: [
        {
          mark: { type: "rect", fill: EMPTY_FILL },
          encoding: {
            x: {
              field: "k",
              type: "ordinal",
              scale: { domain: [...labels.keys()] },
              axis: axis("key", "bottom"),
            },
            y: {
              field: "q",
              type: "ordinal",
              scale: { domain: [...labels.keys()] },
              axis: axis("query", "left"),
            },
          },
        },
        {
          transform: [{ filter: "datum.w !== null" }],
          mark: { type: "rect" },
          encoding: {
            x: { field: "k", type: "ordinal" },
            y: { field: "q", type: "ordinal" },
            color: {
              field: "w",
              type: "quantitative",
              title: "attention weight",
              scale: { scheme: "purples", domain: [0, 1] },
              legend: { format: ".0%", orient: "right", gradientLength: 200 },
            },
          },
        },
      ],
    },
  } as TopLevelSpec;
}

// ---------------------------------------------------------------------------
// Embeddings

/** Characters placed at their 2-D coordinates, coloured by class. */
export function embeddingSpec(
  vocab: string[],
  coords: number[][],
  explained: number[],
  heading: Heading,
): TopLevelSpec {
  const values = vocab.map((ch, i) => ({
    label: visibleChar(ch),
    class: charClass(ch),
    x: coords[i][0],
    y: coords[i][1] ?? 0,
  }));
  const size = Math.max(520, headingWidth(heading) - 120);
  const pc = (j: number) =>
    `principal component ${j + 1} (${(explained[j] * 100).toFixed(0)}% of the variance)`;
  return {
    ...frame(heading),
    data: { values },
    width: size,
    height: 480,
    mark: { type: "text", font: MONO_FONT, fontSize: 15, fontWeight: "bold" },
    encoding: {
      x: { field: "x", type: "quantitative", title: pc(0), scale: { zero: false, nice: true } },
      y: { field: "y", type: "quantitative", title: pc(1), scale: { zero: false, nice: true } },
      text: { field: "label" },
      color: {
        field: "class",
        type: "nominal",
        title: "character",
        scale: {
          domain: [...CHAR_CLASSES],
          range: ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"],
        },
        legend: { orient: "right", symbolType: "square" },
      },
    },
  } as TopLevelSpec;
}

// ---------------------------------------------------------------------------
// Mixture of experts

/**
 * Two panels: the share of tokens each expert got in each routed layer, and
 * the expert each character of the text went to first.
 */
export function expertSpec(
  routing: { layers: string[]; experts: number; chosen: number[][]; load: number[][] },
  chars: string[],
  heading: Heading,
): TopLevelSpec {
  const labels = chars.map(visibleChar);
  const expertNames = Array.from({ length: routing.experts }, (_, e) => `expert ${e + 1}`);
  return {
    ...frame(heading),
    vconcat: [
      {
        title: { text: "load: share of the tokens each expert got", fontSize: 13, anchor: "start" },
        data: {
          values: routing.load.flatMap((row, l) =>
            row.map((share, e) => ({ layer: routing.layers[l], expert: expertNames[e], share }))
          ),
        },
        width: { step: 64 },
        height: { step: 24 },
        encoding: {
          x: {
            field: "expert",
            type: "ordinal",
            sort: expertNames,
            title: null,
            axis: { labelAngle: 0, orient: "top" },
          },
          y: { field: "layer", type: "ordinal", sort: routing.layers, title: null },
        },
        layer: [
          {
            mark: { type: "rect", stroke: "white" },
            encoding: {
              color: {
                field: "share",
                type: "quantitative",
                title: "share",
                scale: { scheme: "greens", domain: [0, 1] },
                legend: { format: ".0%" },
              },
            },
          },
          {
            mark: { type: "text", fontSize: 11 },
            encoding: { text: { field: "share", type: "quantitative", format: ".0%" } },
          },
        ],
      },
      {
        title: { text: "the expert each character went to first", fontSize: 13, anchor: "start" },
        data: {
          values: routing.chosen.flatMap((row, l) =>
            row.map((e, t) => ({
              layer: routing.layers[l],
              t,
              expert: expertNames[e],
              char: labels[t],
            }))
          ),
        },
        width: { step: 18 },
        height: { step: 24 },
        encoding: {
          x: {
            field: "t",
            type: "ordinal",
            title: "the text",
            axis: {
              labelExpr: labelLookup(labels),
              labelFont: MONO_FONT,
              labelAngle: 0,
              ticks: false,
            },
          },
          y: { field: "layer", type: "ordinal", sort: routing.layers, title: null },
        },
        layer: [
          {
            mark: { type: "rect", stroke: "white" },
            encoding: {
              color: {
                field: "expert",
                type: "nominal",
                title: "expert",
                scale: { domain: expertNames, scheme: "tableau10" },
              },
            },
          },
          {
            mark: { type: "text", font: MONO_FONT, fontSize: 11, color: "white" },
            encoding: { text: { field: "char" } },
          },
        ],
      },
    ],
    spacing: 24,
    resolve: { scale: { color: "independent" } },
  } as TopLevelSpec;
}
