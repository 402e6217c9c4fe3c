import assert from "node:assert/strict";
import { UserError } from "../cli/errors.ts";
import { runScript, type ScriptResult } from "./helpers.ts";
import { estimateTextWidth, installTextMetrics, textMetrics } from "../lib/charts.ts";
import { parseLossFile, renderSvg, type Run, vocabSizeOf } from "../plot.ts";

const LONG_A = "loss_gptLM_BA-64_BL-256_PAR-10.79_V-65_LR-0.0003_DR-0.2_shakespeare_char.txt";
const LONG_B = "loss_gptLM_BA-32_BL-128_PAR-2.5_V-65_LR-0.001_DR-0.1_shakespeare_char.txt";

function lossText(n: number, offset = 0): string {
  const lines = [];
  for (let i = 0; i < n; i++) {
    const t = 4 - i * 0.3 + offset;
    lines.push(`${i * 500} ${t.toFixed(4)} ${(t + 0.1).toFixed(4)}`);
  }
  return lines.join("\n") + "\n";
}

function run(name: string, n = 5, offset = 0): Run {
  return { name, rows: parseLossFile(lossText(n, offset), name) };
}

// --- parsing ---------------------------------------------------------------

Deno.test("parseLossFile reads rows, skipping blank lines", () => {
  const text = "\n0 4.1 4.2\r\n\n  500\t2.4512   2.4987  \n\n1000 1e0 .5\n";
  assert.deepEqual(parseLossFile(text, "loss_a.txt"), [
    { iter: 0, train: 4.1, val: 4.2 },
    { iter: 500, train: 2.4512, val: 2.4987 },
    { iter: 1000, train: 1, val: 0.5 },
  ]);
});

Deno.test("parseLossFile accepts a single line, with or without newline", () => {
  const want = [{ iter: 500, train: 2.4512, val: 2.4987 }];
  assert.deepEqual(parseLossFile("500 2.4512 2.4987", "a"), want);
  assert.deepEqual(parseLossFile("500 2.4512 2.4987\n", "a"), want);
  assert.deepEqual(parseLossFile("\n\n", "a"), []);
});

Deno.test("parseLossFile names file and line of a malformed line, and never quotes it", () => {
  const cases: [string, string][] = [
    ["500 2.4 2.5 9", "got 4 fields"],
    ["500 2.4", "got 2 fields"],
    ["500 abc 2.5", "got a field 2 that is not a number"],
    ["500 2.4 0x10", "got a field 3 that is not a number"],
    ["root:x:0:0:root:/root:/bin/bash", "got 1 field"],
  ];
  for (const [bad, why] of cases) {
    assert.throws(
      () => parseLossFile(`0 4 4\n\n${bad}\n`, "loss_x.txt"),
      (e: unknown) =>
        e instanceof UserError &&
        e.message === `loss_x.txt:3: expected "iter train val" (3 numbers), ${why}` &&
        !e.message.includes(bad),
    );
  }
});

// --- rendering -------------------------------------------------------------

Deno.test("renderSvg of one run has title and both series", async () => {
  const svg = await renderSvg([run(LONG_A)]);
  assert.match(svg, /^<svg[^>]*width="\d+"/);
  assert.ok(svg.includes(`Training and Validation Loss - ${LONG_A}`));
  assert.ok(svg.includes(">Training Loss<"));
  assert.ok(svg.includes(">Validation Loss<"));
  assert.ok(svg.includes(">Iteration<") && svg.includes(">Loss<"));
});

Deno.test("renderSvg of one single-line run works", async () => {
  const svg = await renderSvg([run("loss_one.txt", 1)]);
  assert.ok(svg.includes("Training and Validation Loss - loss_one.txt"));
  assert.ok(svg.includes(">Validation Loss<"));
});

Deno.test("renderSvg of several runs compares validation curves", async () => {
  const svg = await renderSvg([run(LONG_A), run(LONG_B, 5, 0.2), run("c", 1)]);
  assert.ok(svg.includes("Validation Loss Comparison"));
  for (const name of [LONG_A, LONG_B, "c"]) {
    assert.ok(svg.includes(`>Validation Loss - ${name}<`), name);
  }
  assert.ok(!svg.includes("Training Loss"));
});

Deno.test("a dashed line marks ln(vocab_size), the uniform guess; --bpc shows bits", async () => {
  const nats = await renderSvg([run(LONG_A)], { vocabSizes: [65] });
  assert.ok(nats.includes(">uniform guess: ln 65 = 4.17<"));
  assert.match(nats, /stroke-dasharray="6,4"/);
  assert.ok(nats.includes(">Loss<"));
  const bits = await renderSvg([run(LONG_A)], { vocabSizes: [65], bpc: true });
  assert.ok(bits.includes(">uniform guess: log2 65 = 6.02 bits<"));
  assert.ok(bits.includes(">Bits per character<"));
  const none = await renderSvg([run(LONG_A)]);
  assert.ok(!none.includes("uniform guess") && !/stroke-dasharray/.test(none));
});

Deno.test("vocabSizeOf reads the run id's V field, else the dataset's meta.json", async () => {
  assert.equal(await vocabSizeOf(`runs/${LONG_A}`), 65);
  assert.equal(
    await vocabSizeOf("loss_gptLM_BA:64_BL:256_PAR:10.79_V:65_LR:0.0003_DR:0.2_x.log"),
    65,
  );
  assert.equal(await vocabSizeOf("loss_single.log"), null);
  const dir = await Deno.makeTempDir({ prefix: "plot_test_" });
  const cwd = Deno.cwd();
  try {
    await Deno.mkdir(`${dir}/datas/tiny`, { recursive: true });
    await Deno.writeTextFile(`${dir}/datas/tiny/meta.json`, JSON.stringify({ vocab_size: 12 }));
    Deno.chdir(dir);
    assert.equal(await vocabSizeOf("loss_newLM_BA-4_BL-8_PAR-0.01_LR-0.001_DR-0.0_tiny_2.txt"), 12);
    assert.equal(await vocabSizeOf("loss_newLM_BA-4_BL-8_PAR-0.01_LR-0.001_DR-0.0_none.txt"), null);
  } finally {
    Deno.chdir(cwd);
    await Deno.remove(dir, { recursive: true });
  }
});

// --- text width --------------------------------------------------------------

// Widths measured with canvas measureText in Chromium, Arial (Liberation Sans).
const REFERENCE: [string, number, boolean, number][] = [
  ["Validation Loss Comparison", 14, true, 188.25],
  [`Validation Loss - ${LONG_A}`, 12, false, 561.9],
  [`Training and Validation Loss - ${LONG_A}`, 14, true, 771.6],
  ["Iteration 0123456789", 11, false, 103.98],
];

Deno.test("estimateTextWidth is close to real Arial widths", () => {
  for (const [text, size, bold, real] of REFERENCE) {
    const ratio = estimateTextWidth(text, size, bold) / real;
    assert.ok(ratio > 0.97 && ratio < 1.03, `${text}: ratio ${ratio}`);
  }
  assert.equal(estimateTextWidth("日本", 10), 20);
  assert.equal(estimateTextWidth("", 10), 0);
});

Deno.test("Vega measures text with the estimator, not its default", async () => {
  await renderSvg([run("a")]);
  for (const [text, size, bold, real] of REFERENCE) {
    const item = { fontSize: size, fontWeight: bold ? "bold" : undefined };
    const ours = textMetrics.width(item, text) / real;
    const vegas = textMetrics.estimateWidth(item, text) / real;
    assert.ok(ours > 0.97 && ours < 1.03, `${text}: ratio ${ours}`);
    assert.ok(vegas > 1.3, `default estimate would be ok?! ${vegas}`);
  }
  // Truncation (item.limit) still works and stays within the limit.
  assert.equal(
    textMetrics.width({ fontSize: 10, limit: 50 }, "x".repeat(99)),
    50,
  );
  installTextMetrics(); // idempotent
  assert.ok(textMetrics.width({ fontSize: 10 }, "  ") === 0);
});

Deno.test("long legend labels do not widen or get truncated", async () => {
  const svg = await renderSvg([run(LONG_A), run(LONG_B, 5, 0.2)]);
  const width = Number(/^<svg[^>]*width="(\d+)"/.exec(svg)![1]);
  // Plot is 600 wide; the legend (~570px of real text) fits under it. With
  // Vega's default estimate (0.8 em/char) the legend would be ~900px wide.
  assert.ok(width < 720, `svg width ${width}`);
  assert.ok(!svg.includes("\u2026"), "a label was truncated");
});

// --- command line ----------------------------------------------------------

/** Runs plot.ts as the plot task does: read and write permissions only. */
function plot(args: string[], opts: { cwd: string; stdin?: string }): Promise<ScriptResult> {
  return runScript("plot.ts", args, { ...opts, permissions: ["--allow-read", "--allow-write"] });
}

async function withLossFiles(
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "plot_test_" });
  try {
    await Deno.writeTextFile(`${dir}/${LONG_A}`, lossText(6));
    await Deno.writeTextFile(`${dir}/${LONG_B}`, lossText(6, 0.2));
    await Deno.writeTextFile(`${dir}/loss_single.log`, "500 2.4512 2.4987\n");
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("cli: file names on stdin", async () => {
  await withLossFiles(async (dir) => {
    const r = await plot(["--out=out.svg"], {
      cwd: dir,
      stdin: `${LONG_A}\n${LONG_B}\nloss_single.log\n`,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "wrote out.svg (3 runs)\n");
    assert.equal(r.stderr, "");
    const svg = await Deno.readTextFile(`${dir}/out.svg`);
    assert.ok(svg.startsWith("<svg") && svg.trimEnd().endsWith("</svg>"));
    assert.ok(svg.includes("Validation Loss Comparison"));
    assert.ok(svg.includes("loss_single.log"));
  });
});

Deno.test("cli: --bpc and --vocab_size", async () => {
  await withLossFiles(async (dir) => {
    const r = await plot(["loss_single.log", "--bpc", "--vocab_size=100"], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    const svg = await Deno.readTextFile(`${dir}/loss.svg`);
    assert.ok(svg.includes(">uniform guess: log2 100 = 6.64 bits<"));
    const none = await plot(["loss_single.log"], { cwd: dir });
    assert.match(none.stderr, /^note: no vocabulary size .*--vocab_size=N/);
  });
});

Deno.test("cli: one file as argument, default output loss.svg", async () => {
  await withLossFiles(async (dir) => {
    const r = await plot(["loss_single.log"], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "wrote loss.svg (1 run)\n");
    const svg = await Deno.readTextFile(`${dir}/loss.svg`);
    assert.ok(svg.includes("Training and Validation Loss - loss_single.log"));
  });
});

Deno.test("cli: a missing file among several is skipped", async () => {
  await withLossFiles(async (dir) => {
    const r = await plot(
      [LONG_A, "loss_missing.txt", `--out=${dir}/cmp.svg`],
      { cwd: dir },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      r.stderr,
      "warning: loss_missing.txt not found or cannot be read, skipped\n",
    );
    assert.match(r.stdout, /^wrote .*cmp\.svg \(1 run\)\n$/);
    assert.ok((await Deno.stat(`${dir}/cmp.svg`)).isFile);
  });
});

Deno.test("cli: no readable file at all fails", async () => {
  await withLossFiles(async (dir) => {
    const r = await plot(["nope1.txt", "nope2.txt"], { cwd: dir });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /warning: nope1\.txt not found/);
    assert.match(
      r.stderr,
      /\nerror: none of the 2 loss files could be read\n$/,
    );
  });
});

Deno.test("cli: no file names is a usage error", async () => {
  await withLossFiles(async (dir) => {
    const r = await plot([], { cwd: dir, stdin: "  \n" });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^error: no loss files given; usage: .*plot/);
    assert.equal(r.stderr.trimEnd().split("\n").length, 1);
    assert.equal(r.stdout, "");
  });
});

Deno.test("cli: unknown or malformed option is a usage error", async () => {
  await withLossFiles(async (dir) => {
    for (const bad of ["--output=x.svg", "--out", "-o"]) {
      const r = await plot([bad, LONG_A], { cwd: dir });
      assert.equal(r.code, 2, bad);
      assert.match(r.stderr, /^error: .*valid flags: --out/, bad);
      assert.equal(r.stderr.trimEnd().split("\n").length, 1, bad);
    }
  });
});

Deno.test("cli: unwritable output path fails in one line", async () => {
  await withLossFiles(async (dir) => {
    const out = `${dir}/no/such/dir/loss.svg`;
    const r = await plot([LONG_A, `--out=${out}`], { cwd: dir });
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr,
      `error: cannot write ${out}: No such file or directory (os error 2)\n`,
    );
    assert.equal(r.stdout, "");
    assert.deepEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
      [LONG_B, LONG_A, "loss_single.log"].sort(),
    );
  });
});

Deno.test("cli: malformed line names file and line", async () => {
  await withLossFiles(async (dir) => {
    await Deno.writeTextFile(`${dir}/loss_bad.txt`, "0 4 4\n500 2.4 oops\n");
    const r = await plot(["loss_bad.txt", LONG_A], { cwd: dir });
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr,
      'error: loss_bad.txt:2: expected "iter train val" (3 numbers), got a field 3 that is not a number\n',
    );
  });
});
