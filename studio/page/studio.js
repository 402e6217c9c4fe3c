// The studio page: plain JavaScript, no build step. It asks the server for
// state (/api/state), listens to its events (/api/events) and posts forms;
// every value is checked on the server by the scripts' own flag parser.

const $ = (id) => document.getElementById(id);

/** What /api/state said: flag specs, presets, demo settings. */
let info = null;
/** The runs as last listed. */
let runs = [];
/** Loss logs whose curves are drawn. */
const plotted = new Set();
/** The training as last heard of. */
let training = null;
let curveView = null;
let curveKey = "";

// ---------------------------------------------------------------------------
// Talking to the server

/** Sends a request; returns `{ ok, data }` where data is the parsed JSON. */
async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ error: `error: ${response.statusText}` }));
  return { ok: response.ok, data };
}

function listen() {
  const events = new EventSource("/api/events");
  events.onopen = () => ($("connection").textContent = "live: connected to the studio");
  events.onerror = () => ($("connection").textContent = "connection lost: reconnecting…");
  events.addEventListener("runs", (event) => {
    runs = JSON.parse(event.data);
    renderRuns();
  });
  events.addEventListener("train", (event) => onTrainEvent(JSON.parse(event.data)));
}

// ---------------------------------------------------------------------------
// Runs and curves

function formatParams(n) {
  if (n === null || n === undefined) return "";
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n.toLocaleString("en-US");
}

function formatLoss(x) {
  return Number.isFinite(x) && x < 10 ? x.toFixed(4) : "";
}

function renderRuns() {
  const body = $("runs-table").querySelector("tbody");
  body.replaceChildren();
  $("runs-empty").hidden = runs.length > 0;
  for (const run of runs) {
    const row = document.createElement("tr");
    const live = training?.running && training.logFile === run.log?.path;
    const ckpts = run.checkpoints;
    const params = ckpts.find((c) => c.params !== null)?.params ?? null;
    const steps = Math.max(run.log?.lastIter ?? 0, ...ckpts.map((c) => c.iter || 0));
    const best = run.log?.bestVal ?? Math.min(...ckpts.map((c) => c.bestVal));

    const plotCell = document.createElement("td");
    if (run.log) {
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = plotted.has(run.log.path);
      box.setAttribute("aria-label", `plot ${run.id}`);
      box.addEventListener("change", () => {
        if (box.checked) plotted.add(run.log.path);
        else plotted.delete(run.log.path);
        updateCurve();
      });
      plotCell.append(box);
    }
    row.append(plotCell);
    const idCell = cell(run.id, "run");
    if (live) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = " ● training";
      idCell.append(badge);
    }
    row.append(idCell);
    row.append(cell(run.model));
    row.append(cell(formatParams(params), "num"));
    row.append(cell(steps > 0 ? String(steps) : "", "num"));
    row.append(cell(formatLoss(best), "num"));
    const ckptCell = document.createElement("td");
    for (const c of ckpts) {
      const line = document.createElement("div");
      const link = document.createElement("a");
      link.href = `/runs/${c.path.split("/").map(encodeURIComponent).join("/")}`;
      link.textContent = c.path.split("/").pop().replace(
        /^.*?(\.last)?\.safetensors$/,
        (_, l) => l ? "stopped" : "best",
      );
      link.title = c.path;
      line.append(link, ` step ${c.iter}`);
      if (c.problem) line.append(` (${c.problem})`);
      if (c.last && c.resumable) {
        const resume = document.createElement("button");
        resume.type = "button";
        resume.className = "link";
        resume.textContent = "resume";
        resume.addEventListener(
          "click",
          () => startTraining({ resume: "true", ckpt_file: c.path }),
        );
        line.append(" ", resume);
      }
      ckptCell.append(line);
    }
    row.append(ckptCell);
    body.append(row);
  }
  if (plotted.size === 0 && runs[0]?.log) plotted.add(runs[0].log.path);
  for (const path of plotted) if (!runs.some((r) => r.log?.path === path)) plotted.delete(path);
  for (const box of body.querySelectorAll("input[type=checkbox]")) {
    const run = runs.find((r) => `plot ${r.id}` === box.getAttribute("aria-label"));
    box.checked = plotted.has(run?.log?.path);
  }
  updateSampleCheckpoints();
  updateCurve();
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

/** Redraws the curves when the plotted logs or their contents changed. */
async function updateCurve() {
  const logs = [...plotted].sort();
  const key = logs.map((path) => {
    const log = runs.find((r) => r.log?.path === path)?.log;
    return `${path}:${log?.evals}:${log?.lastIter}`;
  }).join("|") + $("curve-bpc").checked;
  if (key === curveKey) return;
  curveKey = key;
  const caption = $("curve-caption");
  if (logs.length === 0) {
    curveView?.finalize();
    curveView = null;
    $("curve").replaceChildren();
    caption.textContent = "";
    return;
  }
  const bpc = $("curve-bpc").checked ? "&bpc=1" : "";
  const query = logs.map((path) => `log=${encodeURIComponent(path)}`).join("&") + bpc;
  const { ok, data } = await api("GET", `/api/curve?${query}`);
  if (key !== curveKey) return; // a newer update is on its way
  if (!ok || !data.spec) {
    curveView?.finalize();
    curveView = null;
    $("curve").replaceChildren();
    caption.textContent = ok
      ? "no evaluation logged yet: the curve starts at the first one"
      : data.error;
    return;
  }
  const result = await vegaEmbed("#curve", data.spec, { actions: false, renderer: "svg" });
  curveView?.finalize();
  curveView = result.view;
  caption.textContent = `drawn with plot.ts's spec from ${logs.join(", ")}`;
}

// ---------------------------------------------------------------------------
// Train

/** Which flags go where in the form. */
const MAIN_FLAGS = [
  "model_name",
  "config",
  "max_iters",
  "eval_interval",
  "eval_iters",
  "learning_rate",
  "batch_size",
  "block_size",
  "dropout",
  "backend",
  "seed",
];
const GPT_FLAGS = ["n_layer", "n_head", "n_embd"];
const MOE_FLAGS = [...GPT_FLAGS, "num_experts", "top_k", "nn_init", "capacity_factor"];
const MODEL_FLAGS = {
  bigramLM: [],
  mlpLM: ["char_encoding_len", "use_batch_norm", "max_hidden_nodes", "active_fn"],
  gptLM: GPT_FLAGS,
  block_wise_scaling_gptLM: [
    ...GPT_FLAGS,
    "qkv_multiplier_min",
    "qkv_multiplier_max",
    "ffn_multiplier_min",
    "ffn_multiplier_max",
    "ffn_intermediate_divisor",
  ],
  moeLM: [...MOE_FLAGS, "original_bugs"],
  moa_moeLM: [...MOE_FLAGS, "aux_loss_coef", "original_bugs"],
};
/** Every model flag once (models share some). */
const ALL_MODEL_FLAGS = [...new Set(Object.values(MODEL_FLAGS).flat())];
const MORE_FLAGS = ["dataset", "weight_decay", "out_dir"];
/** Flags a resumed run may change (run/config.ts). */
const RESUMABLE = ["max_iters", "eval_interval", "eval_iters", "backend", "out_dir"];

/** A labelled input for one flag of `specs`; empty means "not given". */
function flagField(prefix, name, spec, always = false) {
  const wrap = document.createElement("div");
  wrap.className = "field";
  const id = `${prefix}-${name}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = name;
  let input;
  if (spec.choices || spec.type === "bool") {
    input = document.createElement("select");
    const values = spec.choices ?? ["true", "false"];
    if (!always) input.append(new Option(`(default: ${spec.default})`, ""));
    for (const value of values) input.append(new Option(value, value));
    if (always) input.value = String(spec.default);
  } else {
    input = document.createElement("input");
    input.type = "text";
    input.autocomplete = "off";
    input.spellcheck = false;
    if (spec.type === "int" || spec.type === "float") input.inputMode = "decimal";
    input.placeholder = String(spec.default);
  }
  input.id = id;
  input.name = name;
  const help = document.createElement("div");
  help.className = "help";
  help.id = `${id}-help`;
  help.textContent = spec.help;
  input.setAttribute("aria-describedby", help.id);
  wrap.append(label, input, help);
  return wrap;
}

function buildTrainForm() {
  const specs = info.trainFlags;
  for (const name of MAIN_FLAGS) {
    const always = name === "model_name" || name === "config";
    $("train-main").append(flagField("train", name, specs[name], always));
  }
  for (const name of ALL_MODEL_FLAGS) {
    $("train-model").append(flagField("train", name, specs[name]));
  }
  for (const name of MORE_FLAGS) $("train-more").append(flagField("train", name, specs[name]));
  $("train-model_name").addEventListener("change", showModelFields);
  $("train-config").addEventListener("change", showPresetDefaults);
  showModelFields();
  showPresetDefaults();
  for (const button of document.querySelectorAll("[data-demo]")) {
    button.addEventListener("click", () => fillDemo(button.dataset.demo));
  }
  $("train-form").addEventListener("submit", (event) => {
    event.preventDefault();
    startTraining(trainFields());
  });
  $("train-stop").addEventListener("click", async () => {
    const { ok, data } = await api("POST", "/api/train/stop", {});
    $("train-error").textContent = ok ? "" : data.error;
  });
  $("train-resume").addEventListener("click", () => {
    const fields = { resume: "true", ckpt_file: training.resumeFrom };
    for (const [name, value] of Object.entries(trainFields())) {
      if (RESUMABLE.includes(name)) fields[name] = value;
    }
    startTraining(fields);
  });
}

function showModelFields() {
  const model = $("train-model_name").value;
  $("model-legend").textContent = `${model} settings`;
  const own = MODEL_FLAGS[model] ?? [];
  for (const name of ALL_MODEL_FLAGS) {
    $(`train-${name}`).closest(".field").hidden = !own.includes(name);
  }
  if (own.length === 0) {
    $("model-legend").textContent = `${model} has no settings of its own`;
  }
}

/** Shows, as placeholders, the values an empty field takes under the chosen preset. */
function showPresetDefaults() {
  const preset = info.presets[$("train-config").value] ?? {};
  for (const [name, spec] of Object.entries(info.trainFlags)) {
    const input = $(`train-${name}`);
    if (input?.tagName === "INPUT") input.placeholder = String(preset[name] ?? spec.default);
  }
}

/** The fields the user filled in (hidden model fields of other models are not sent). */
function trainFields() {
  const fields = {};
  for (const input of $("train-form").querySelectorAll("input, select")) {
    if (input.value === "" || input.closest(".field").hidden) continue;
    fields[input.name] = input.value;
  }
  return fields;
}

function fillDemo(model) {
  for (const input of $("train-form").querySelectorAll("input, select")) {
    if (input.name !== "model_name" && input.name !== "config") input.value = "";
  }
  $("train-model_name").value = model;
  $("train-config").value = "default";
  for (const arg of info.demo[model]) {
    const [, name, value] = /^--([^=]+)=(.*)$/.exec(arg);
    $(`train-${name}`).value = value;
  }
  showModelFields();
  showPresetDefaults();
}

async function startTraining(fields) {
  $("train-error").textContent = "";
  const { ok, data } = await api("POST", "/api/train", fields);
  if (!ok) {
    $("train-error").textContent = data.error;
    return;
  }
  $("evaluations").replaceChildren();
  $("train-log").textContent = "";
  onTrainEvent({ kind: "state", state: data });
}

function onTrainEvent(event) {
  if (event.kind === "state") {
    const previousLog = training?.logFile;
    training = event.state;
    if (training.running && training.logFile && training.logFile !== previousLog) {
      plotted.clear();
      plotted.add(training.logFile);
      curveKey = "";
    }
    renderTraining();
    renderRuns();
  } else if (event.kind === "line") {
    appendLog(event.text);
  } else if (event.kind === "progress") {
    renderProgress(event.progress);
  } else if (event.kind === "evaluation") {
    renderEvaluation(event.evaluation);
  }
}

function renderTraining() {
  const t = training;
  const running = t?.running ?? false;
  $("train-start").disabled = running;
  $("train-stop").disabled = !running || t.stopping;
  $("train-resume").hidden = running || !t?.resumeFrom;
  let text = "No training started from this page.";
  if (t && running) {
    text = t.stopping
      ? "Stopping: finishing this step, then saving a checkpoint…"
      : `Training (pid ${t.pid})${t.logFile ? `, logging to ${t.logFile}` : ""}.`;
  } else if (t && t.exitCode !== null) {
    if (t.resumeFrom) {
      text = `Stopped ${t.stoppedWhen}; saved ${t.resumeFrom}. Resume continues it exactly.`;
    } else if (t.exitCode === 0) {
      text = `Finished: loss log ${t.logFile}, best checkpoint ${t.checkpoint}.`;
    } else {
      text = `Ended with exit code ${t.exitCode}.`;
    }
  }
  $("train-state").textContent = text;
  $("train-error").textContent = t?.error && !running ? t.error : $("train-error").textContent;
  if (t?.progress) renderProgress(t.progress);
  if (t && $("train-log").textContent === "" && t.lines.length > 0) {
    for (const line of t.lines) appendLog(line);
  }
  if (t && $("evaluations").childElementCount === 0) {
    for (const evaluation of t.evaluations) renderEvaluation(evaluation);
  }
}

function renderProgress(p) {
  $("train-bar").hidden = false;
  $("train-progress").hidden = false;
  $("train-bar").max = p.maxIters;
  $("train-bar").value = p.iter;
  $("p-step").textContent = `${p.iter} / ${p.maxIters}`;
  $("p-loss").textContent = p.loss.toFixed(4);
  $("p-tokens").textContent = Math.round(p.tokensPerSecond).toLocaleString("en-US");
  $("p-ms").textContent = p.msPerStep.toFixed(1);
  $("p-eta").textContent = p.eta;
}

function renderEvaluation(e) {
  const id = `eval-${e.iter}`;
  const item = $(id) ?? document.createElement("li");
  item.id = id;
  item.replaceChildren(
    `step ${e.iter}: train loss ${e.train.toFixed(4)}, val loss ${e.val.toFixed(4)}` +
      ` (best ${e.best.toFixed(4)})`,
  );
  if (e.sample) {
    const pre = document.createElement("pre");
    pre.textContent = e.sample;
    item.append(pre);
  }
  if (!item.isConnected) $("evaluations").prepend(item);
  while ($("evaluations").childElementCount > 50) $("evaluations").lastElementChild.remove();
}

function appendLog(text) {
  const log = $("train-log");
  log.append(`${text}\n`);
  while (log.childNodes.length > 400) log.firstChild.remove();
  log.scrollTop = log.scrollHeight;
}

// ---------------------------------------------------------------------------
// Sample and See inside: jobs whose results stream in as newline-delimited JSON

/** Reads a response of one JSON object a line, yielding each as it arrives. */
async function* jsonLines(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const lines = (pending + value).split("\n");
    pending = lines.pop();
    for (const line of lines) if (line) yield JSON.parse(line);
  }
}

/** Fields of generate.ts and inspect.ts the forms offer (the rest keep their defaults). */
const SAMPLE_FLAGS = ["ckpt", "prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed"];
const INSIDE_FLAGS = ["ckpt", "prompt", "pictures", "max_new_tokens", "seed"];

/** A form of `names` from `specs`: the checkpoint as a choice of the listed ones, the prompt wide. */
function buildJobForm(prefix, container, specs, names) {
  for (const name of [...names, "backend"]) {
    const field = flagField(prefix, name, specs[name]);
    if (name === "ckpt") {
      const select = document.createElement("select");
      select.id = `${prefix}-ckpt`;
      select.name = "ckpt";
      select.setAttribute("aria-describedby", `${prefix}-ckpt-help`);
      field.querySelector("input").replaceWith(select);
      field.querySelector(".help").textContent = "checkpoint to use (listed under Runs)";
      field.classList.add("wide");
    }
    if (name === "pictures") {
      const select = document.createElement("select");
      select.id = `${prefix}-pictures`;
      select.name = "pictures";
      select.setAttribute("aria-describedby", `${prefix}-pictures-help`);
      select.append(new Option("(all the model has)", ""));
      for (const picture of info.pictureNames) select.append(new Option(picture, picture));
      field.querySelector("input").replaceWith(select);
      field.querySelector(".help").textContent = "one picture, or all the model can show";
    }
    if (name === "prompt") {
      const area = document.createElement("textarea");
      area.id = `${prefix}-prompt`;
      area.name = "prompt";
      area.rows = 2;
      area.spellcheck = false;
      area.setAttribute("aria-describedby", `${prefix}-prompt-help`);
      field.querySelector("input").replaceWith(area);
      field.classList.add("wide");
    }
    container.append(field);
  }
}

/** Every model checkpoint listed, newest run first, into the checkpoint choices. */
function updateSampleCheckpoints() {
  const paths = runs.flatMap((run) => run.checkpoints.filter((c) => !c.problem).map((c) => c.path));
  for (const id of ["sample-ckpt", "inside-ckpt"]) {
    const select = $(id);
    if (!select) continue;
    const chosen = select.value;
    select.replaceChildren(...paths.map((path) => new Option(path, path)));
    if (paths.includes(chosen)) select.value = chosen;
  }
}

/** The non-empty fields of a form. */
function formFields(form) {
  const fields = {};
  for (const input of form.querySelectorAll("input, select, textarea")) {
    if (input.value !== "") fields[input.name] = input.value;
  }
  return fields;
}

/**
 * Runs one streamed job: posts the form's fields to `path` and hands each
 * object to `onItem`; errors go to `errorBox`, the state line to `stateBox`.
 */
function streamedJob({ form, path, start, stop, errorBox, stateBox, onStart, onItem }) {
  let controller = null;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.textContent = "";
    controller = new AbortController();
    start.disabled = true;
    stop.disabled = false;
    stateBox.textContent = "starting…";
    try {
      const response = await fetch(path, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(formFields(form)),
        signal: controller.signal,
      });
      if (!response.ok) {
        errorBox.textContent = (await response.json()).error;
        stateBox.textContent = "";
        return;
      }
      onStart();
      stateBox.textContent = "running…";
      for await (const item of jsonLines(response)) {
        if (item.error) errorBox.textContent = item.error;
        else if (item.done) stateBox.textContent = item.code === 0 ? "done" : "ended";
        else onItem(item);
      }
    } catch (e) {
      stateBox.textContent = e.name === "AbortError" ? "stopped" : `failed: ${e.message}`;
    } finally {
      start.disabled = false;
      stop.disabled = true;
    }
  });
  stop.addEventListener("click", () => controller?.abort());
}

function percent(p) {
  return `${(100 * p).toFixed(p < 0.001 ? 2 : 1)}%`;
}

/** One sampled character: its probability and the likeliest others. */
function describeChar(item) {
  const others = item.top.map((c) => `${c.label} ${percent(c.p)}`).join(", ");
  return `${item.label} had probability ${percent(item.p)}; likeliest others: ${others}`;
}

function buildSample() {
  buildJobForm("sample", $("sample-fields"), info.generateFlags, SAMPLE_FLAGS);
  const text = $("sample-text");
  text.tabIndex = 0;
  text.setAttribute("aria-label", "sampled text; arrow keys move between characters");
  let chars = [];
  let current = -1;
  const show = (i) => {
    if (i < 0 || i >= chars.length) return;
    chars[current]?.classList.remove("current");
    current = i;
    chars[i].classList.add("current");
    $("sample-detail").textContent = describeChar(chars[i].item);
  };
  text.addEventListener("mouseover", (event) => {
    if (event.target.item) show(chars.indexOf(event.target));
  });
  text.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight") show(current + 1);
    else if (event.key === "ArrowLeft") show(current - 1);
    else return;
    event.preventDefault();
  });
  streamedJob({
    form: $("sample-form"),
    path: "/api/sample",
    start: $("sample-start"),
    stop: $("sample-stop"),
    errorBox: $("sample-error"),
    stateBox: $("sample-state"),
    onStart: () => {
      const prompt = document.createElement("span");
      prompt.className = "prompt";
      prompt.textContent = $("sample-prompt").value;
      text.replaceChildren(prompt);
      chars = [];
      current = -1;
      $("sample-detail").textContent = "";
    },
    onItem: (item) => {
      const span = document.createElement("span");
      span.className = "ch";
      span.textContent = item.text;
      span.title = describeChar(item);
      span.item = item;
      chars.push(span);
      text.append(span);
    },
  });
}

function buildInside() {
  const body = $("inside-body");
  body.innerHTML = `
    <p class="muted">The pictures of <code>deno task inspect</code> for a checkpoint and a prompt
    (or, without one, a sample): the next-character probabilities, the surprise of each character,
    the bigram table, attention, embeddings, and what a sample shares with the training text.</p>
    <form id="inside-form"><div class="fields" id="inside-fields"></div>
      <div class="buttons"><button type="submit" id="inside-start">Show the pictures</button>
      <button type="button" id="inside-stop" disabled>Stop</button></div></form>
    <p id="inside-error" class="error" role="alert"></p>
    <p id="inside-state" class="muted" role="status" aria-live="polite"></p>
    <div id="inside-results" class="pictures"></div>`;
  buildJobForm("inside", $("inside-fields"), info.inspectFlags, INSIDE_FLAGS);
  streamedJob({
    form: $("inside-form"),
    path: "/api/inspect",
    start: $("inside-start"),
    stop: $("inside-stop"),
    errorBox: $("inside-error"),
    stateBox: $("inside-state"),
    onStart: () => {
      for (const img of $("inside-results").querySelectorAll("img")) URL.revokeObjectURL(img.src);
      $("inside-results").replaceChildren();
    },
    onItem: (item) => {
      if (item.note) {
        const note = document.createElement("p");
        note.className = "muted";
        note.textContent = item.note;
        $("inside-results").append(note);
        return;
      }
      // As an image, the SVG is shown but cannot run anything.
      const figure = document.createElement("figure");
      figure.dataset.name = item.name;
      const heading = document.createElement("h3");
      heading.textContent = item.title;
      const img = document.createElement("img");
      img.src = URL.createObjectURL(new Blob([item.svg], { type: "image/svg+xml" }));
      img.alt = `${item.title}: ${item.caption}`;
      const caption = document.createElement("figcaption");
      caption.textContent = item.caption;
      figure.append(heading, img, caption);
      $("inside-results").append(figure);
    },
  });
}

// ---------------------------------------------------------------------------

async function main() {
  const { data } = await api("GET", "/api/state");
  info = data;
  $("exposed").hidden = !info.exposed;
  runs = info.runs;
  $("curve-bpc").addEventListener("change", updateCurve);
  buildTrainForm();
  buildSample();
  buildInside();
  onTrainEvent({ kind: "state", state: info.training });
  listen();
}

main();
