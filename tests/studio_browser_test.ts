/**
 * The studio in a real browser: Debian's headless chromium, driven through
 * puppeteer-core, loads the page, starts a tiny training, sees its curve
 * gain points, stops it, samples from the checkpoint and opens an attention
 * picture. CI installs chromium; this test never skips.
 */
import assert from "node:assert/strict";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { taskCommand } from "../studio/children.ts";
import { preparedWorkdir, ROOT } from "./helpers.ts";

const CHROMIUM = "/usr/bin/chromium";

/** `deno task studio --port=0` in `project`: the task's permissions, reading the code folder too. */
async function startStudio(project: string): Promise<{ url: string; child: Deno.ChildProcess }> {
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks;
  const flags = taskCommand(tasks, "studio").flags.map((flag) =>
    flag === "--allow-read=." ? `--allow-read=.,${ROOT}` : flag
  );
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...flags, "--config", `${ROOT}deno.json`, `${ROOT}studio.ts`, "--port=0"],
    cwd: project,
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!/studio: (\S+)/.test(text)) {
    const { value, done } = await lines.read();
    if (done) throw new Error(`the studio did not start: ${text}`);
    text += value;
  }
  lines.releaseLock();
  child.stdout.cancel().catch(() => {});
  return { url: /studio: (\S+)/.exec(text)![1], child };
}

async function setField(page: Page, id: string, value: string): Promise<void> {
  await page.$eval(`#${id}`, (element, v) => {
    (element as unknown as { value: string }).value = v;
    element.dispatchEvent(new Event("change"));
  }, value);
}

/** The points drawn on the curve (Vega draws each as a path in a symbol mark). */
const CURVE_POINTS = "#curve .mark-symbol path";

Deno.test("the studio in headless chromium: train, watch, stop, sample, look inside", async () => {
  try {
    await Deno.stat(CHROMIUM);
  } catch {
    throw new Error(`${CHROMIUM} not found: install it (apt-get install chromium)`);
  }
  const project = await preparedWorkdir();
  const studio = await startStudio(project);
  let browser: Browser | undefined;
  try {
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
      ],
    });
    const page = await browser.newPage();
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push((e as Error).message));
    await page.goto(studio.url, { waitUntil: "load" });
    await page.waitForSelector("#train-main select");

    // A tiny gptLM on the cpu backend, evaluated every 20 steps; long enough to stop by hand.
    await setField(page, "train-model_name", "gptLM");
    const fields = {
      n_layer: "1",
      n_head: "2",
      n_embd: "16",
      block_size: "16",
      batch_size: "4",
      max_iters: "100000",
      eval_interval: "20",
      eval_iters: "2",
      learning_rate: "3e-3",
      backend: "cpu",
    };
    for (const [name, value] of Object.entries(fields)) {
      await setField(page, `train-${name}`, value);
    }
    await page.click("#train-start");

    // The curve appears, then gains points while the training runs.
    const points = `document.querySelectorAll("${CURVE_POINTS}").length`;
    await page.waitForFunction(`${points} >= 2`, { timeout: 30_000 });
    const first = await page.$$eval(CURVE_POINTS, (paths) => paths.length);
    await page.waitForFunction(`${points} > ${first}`, { timeout: 30_000 });
    // The progress line comes on its own clock (once a second), maybe after the curve's points.
    await page.waitForFunction(
      '/^\\d+ \\/ 100000$/.test(document.querySelector("#p-step")?.textContent ?? "")',
      { timeout: 30_000 },
    );

    // A second start is refused with a message; Stop saves a checkpoint and offers to resume.
    const second = await page.evaluate(async () => {
      const response = await fetch("/api/train", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      });
      return { status: response.status, body: await response.json() };
    });
    assert.equal(second.status, 409);
    assert.match(second.body.error, /^error: a training is already running .*: stop it first$/);
    await page.click("#train-stop");
    await page.waitForSelector("#train-resume:not([hidden])", { timeout: 30_000 });
    const stopped = await page.$eval("#train-state", (e) => e.textContent!);
    const saved = /saved (out\/\S+\.last\.safetensors)/.exec(stopped)?.[1];
    assert.ok(saved, stopped);
    await Deno.stat(`${project}/${saved}`);

    // Sample from the stopped run's checkpoint: characters stream in, each with its probability.
    await page.waitForFunction(
      `[...document.querySelectorAll("#sample-ckpt option")].some((o) => o.value === "${saved}")`,
      { timeout: 10_000 },
    );
    await setField(page, "sample-ckpt", saved!);
    await setField(page, "sample-prompt", "ROMEO:");
    await setField(page, "sample-max_new_tokens", "40");
    await setField(page, "sample-seed", "7");
    await setField(page, "sample-backend", "cpu");
    await page.click("#sample-start");
    await page.waitForFunction(
      `document.querySelectorAll("#sample-text .ch").length === 40 &&
        document.querySelector("#sample-state").textContent === "done"`,
      { timeout: 30_000 },
    );
    assert.equal(await page.$eval("#sample-error", (e) => e.textContent), "");
    assert.equal(await page.$eval("#sample-text .prompt", (e) => e.textContent), "ROMEO:");
    await page.hover("#sample-text .ch:nth-of-type(3)");
    assert.match(
      await page.$eval("#sample-detail", (e) => e.textContent!),
      /^\S+ had probability \d+\.\d+%; likeliest others: (\S+ \d+\.\d+%, ){3}\S+ \d+\.\d+%$/,
    );

    // See inside: the attention picture for the same checkpoint and prompt.
    await setField(page, "inside-ckpt", saved!);
    await setField(page, "inside-prompt", "ROMEO: and JULIET");
    await setField(page, "inside-pictures", "attention");
    await setField(page, "inside-backend", "cpu");
    await page.click("#inside-start");
    await page.waitForFunction(
      `document.querySelector("#inside-state").textContent === "done"`,
      { timeout: 30_000 },
    );
    assert.equal(await page.$eval("#inside-error", (e) => e.textContent), "");
    const picture = await page.waitForFunction(
      `(() => { const img = document.querySelector('#inside-results figure[data-name="attention"] img');
        return img && img.complete && img.naturalWidth > 0 ? img : null; })()`,
      { timeout: 10_000 },
    );
    // Shown on the page, not merely loaded.
    const box = await picture.asElement()!.boundingBox();
    assert.ok(box && box.width > 100 && box.height > 100, JSON.stringify(box));
    assert.deepEqual(pageErrors, []);
  } finally {
    await browser?.close();
    studio.child.kill("SIGINT");
    await studio.child.status;
    await Deno.remove(project, { recursive: true });
  }
});
