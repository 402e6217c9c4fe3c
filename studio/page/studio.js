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
  }).join("|");
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
  const query = logs.map((path) => `log=${encodeURIComponent(path)}`).join("&");
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
const MODEL_FLAGS = {
  bigramLM: [],
  mlpLM: ["char_encoding_len", "use_batch_norm", "max_hidden_nodes", "active_fn"],
  gptLM: ["n_layer", "n_head", "n_embd"],
};
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
  for (const names of Object.values(MODEL_FLAGS)) {
    for (const name of names) $("train-model").append(flagField("train", name, specs[name]));
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
  for (const [owner, names] of Object.entries(MODEL_FLAGS)) {
    for (const name of names) $(`train-${name}`).closest(".field").hidden = owner !== model;
  }
  if (MODEL_FLAGS[model].length === 0) {
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
      text = `Stopped after step ${
        t.progress?.iter ?? "?"
      }; saved ${t.resumeFrom}. Resume continues it exactly.`;
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
// Sample

function updateSampleCheckpoints() {}

// ---------------------------------------------------------------------------

async function main() {
  const { data } = await api("GET", "/api/state");
  info = data;
  $("exposed").hidden = !info.exposed;
  runs = info.runs;
  buildTrainForm();
  onTrainEvent({ kind: "state", state: info.training });
  listen();
}

main();
