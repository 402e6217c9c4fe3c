/**
 * The studio's server without a browser: what it refuses (paths out of the
 * project folder, large bodies, other origins, bad flag values, a busy
 * port) and how it lists runs.
 */
import assert from "node:assert/strict";
import { jsonLine } from "../generate.ts";
import { encodeSafetensors, f32Entry } from "../lib/safetensors.ts";
import { checkRelativePath, RefusedPath } from "../studio/paths.ts";
import { RunScanner } from "../studio/runs.ts";
import { MAX_BODY_BYTES, startStudio, type Studio } from "../studio/server.ts";
import { taskCommand } from "../studio/children.ts";
import { ROOT, runScript } from "./helpers.ts";

/** A studio on a free port over a scratch project folder. */
async function scratchStudio(): Promise<{ studio: Studio; project: string; port: number }> {
  const project = await Deno.realPath(await Deno.makeTempDir({ prefix: "simplelm-studio-" }));
  const studio = await startStudio({
    code: ROOT.replace(/\/$/, ""),
    project,
    hostname: "127.0.0.1",
    port: 0,
  });
  return { studio, project, port: Number(new URL(studio.url).port) };
}

/** Sends `request` as written (no URL normalisation on the way) and returns status and body. */
async function raw(port: number, request: string): Promise<{ status: number; body: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(request));
  const text = new TextDecoder().decode(
    (await new Response(conn.readable).arrayBuffer()) as ArrayBuffer,
  );
  return { status: Number(text.split(" ")[1]), body: text.slice(text.indexOf("\r\n\r\n") + 4) };
}

function get(port: number, path: string, host = `127.0.0.1:${port}`) {
  return raw(port, `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
}

Deno.test("checkRelativePath refuses absolute paths, '..', backslashes and escapes", () => {
  for (
    const bad of [
      "",
      "/etc/passwd",
      "C:/Windows",
      "../loss_a.txt",
      "out/../../etc/passwd",
      "out/..",
      "out\\..\\x",
      "%2e%2e/x",
      "a\0b",
    ]
  ) {
    assert.throws(() => checkRelativePath(bad), RefusedPath, bad);
  }
  assert.equal(checkRelativePath("./out//demo/x.safetensors"), "out/demo/x.safetensors");
});

Deno.test("the studio serves run files and refuses traversal, escapes and symlinks out", async () => {
  const { studio, project, port } = await scratchStudio();
  const outside = await Deno.makeTempDir({ prefix: "simplelm-outside-" });
  try {
    await Deno.writeTextFile(`${project}/loss_a.txt`, "10 4.1 4.2\n");
    await Deno.mkdir(`${project}/out`);
    await Deno.writeTextFile(`${outside}/secret.txt`, "SECRET");
    await Deno.writeTextFile(`${outside}/x.safetensors`, "SECRET");
    await Deno.symlink(`${outside}/secret.txt`, `${project}/loss_link.txt`);
    await Deno.symlink(outside, `${project}/out/ext`);
    await Deno.writeTextFile(`${project}/deno.json`, "SECRET");

    const ok = await get(port, "/runs/loss_a.txt");
    assert.equal(ok.status, 200);
    assert.equal(ok.body, "10 4.1 4.2\n");

    const refused = [
      "/runs/../../../../etc/passwd",
      "/runs/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
      "/runs/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
      "/runs/%252e%252e%252fsecret.txt",
      "/runs//etc/passwd",
      "/runs/%2Fetc%2Fpasswd",
      "/runs/loss_link.txt",
      "/runs/out/ext/x.safetensors",
      "/runs/deno.json",
      "/runs/%E0%A4%A",
      "/page/..%2F..%2Fdeno.json",
      "/vendor/..%2F..%2Fdeno.json",
    ];
    for (const path of refused) {
      const { status, body } = await get(port, path);
      assert.ok(status === 403 || status === 404, `${path}: status ${status}`);
      assert.ok(!body.includes("SECRET") && !body.includes("root:"), `${path} leaked: ${body}`);
    }
    assert.match((await get(port, "/runs/loss_link.txt")).body, /leads out of the project folder/);
    assert.match(
      (await get(port, "/runs/..%2Fsecret.txt")).body,
      /'\.\.' is refused; name a file inside the project folder/,
    );

    // Another host name (DNS rebinding) and another origin's writes are refused.
    assert.equal((await get(port, "/api/state", `evil.example:${port}`)).status, 403);
    const foreign = await fetch(`${studio.url}api/train`, {
      method: "POST",
      headers: { "content-type": "application/json", origin: "http://evil.example" },
      body: "{}",
    });
    assert.equal(foreign.status, 403);
    await foreign.body?.cancel();
  } finally {
    await studio.shutdown();
    await Deno.remove(project, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("the studio caps request bodies, declared or streamed", async () => {
  const { studio, project, port } = await scratchStudio();
  try {
    const big = JSON.stringify({ prompt: "x".repeat(MAX_BODY_BYTES) });
    const declared = await fetch(`${studio.url}api/train`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: big,
    });
    assert.equal(declared.status, 413);
    assert.match((await declared.json()).error, /^error: request body over 65536 bytes refused$/);

    // Chunked, so no length is declared: the server counts as it reads.
    const chunk = "x".repeat(16 * 1024);
    const chunked = [
      "POST /api/train HTTP/1.1",
      `Host: 127.0.0.1:${port}`,
      "Content-Type: application/json",
      "Transfer-Encoding: chunked",
      "Connection: close",
      "",
      ...Array(6).fill(`${chunk.length.toString(16)}\r\n${chunk}`),
      "0",
      "",
      "",
    ].join("\r\n");
    assert.equal((await raw(port, chunked)).status, 413);
  } finally {
    await studio.shutdown();
    await Deno.remove(project, { recursive: true });
  }
});

Deno.test("a bad value from the page gets train.ts's own one-line error", async () => {
  const { studio, project } = await scratchStudio();
  const post = async (fields: Record<string, string>) => {
    const response = await fetch(`${studio.url}api/train`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(fields),
    });
    return { status: response.status, error: (await response.json()).error };
  };
  try {
    const cli = await runScript("train.ts", ["--batch_size=abc"], { cwd: project });
    assert.equal(cli.code, 2);
    const page = await post({ batch_size: "abc" });
    assert.equal(page.status, 400);
    assert.equal(page.error, cli.stderr.trim());
    assert.equal(page.error, "error: --batch_size=abc: expected an integer");

    // The model's own checks, unknown flags and paths out of the folder.
    assert.match(
      (await post({ model_name: "gptLM", n_embd: "100", n_head: "3" })).error,
      /^error: n_embd \(100\) must be divisible by n_head \(3\)/,
    );
    assert.match((await post({ foo: "1" })).error, /^error: unknown flag '--foo'; valid flags: /);
    const escape = await post({ out_dir: "../elsewhere" });
    assert.equal(escape.status, 403);
    assert.match(escape.error, /'\.\.' is refused/);
    const resume = await post({ resume: "true", ckpt_file: "/etc/passwd" });
    assert.equal(resume.status, 403);
    assert.match(resume.error, /absolute paths are refused/);
  } finally {
    await studio.shutdown();
    await Deno.remove(project, { recursive: true });
  }
});

Deno.test("deno task studio on a busy port stops with one line naming the fix", async () => {
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (busy.addr as Deno.NetAddr).port;
  try {
    const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks;
    const { flags } = taskCommand(tasks, "studio");
    const result = await runScript("studio.ts", [`--port=${port}`], {
      cwd: ROOT,
      permissions: flags,
      timeoutMs: 60_000,
    });
    assert.equal(result.code, 1);
    assert.equal(
      result.stderr.trim(),
      `error: port ${port} on 127.0.0.1 is already in use (another studio?): stop that program, or pick another port with --port=${
        port + 1
      }`,
    );
  } finally {
    busy.close();
  }
});

Deno.test("runs are listed with model, parameters, steps and best val loss", async () => {
  const project = await Deno.makeTempDir({ prefix: "simplelm-studio-" });
  try {
    const id = "gptLM_BA-4_BL-8_PAR-0.00_V-65_LR-0.001_DR-0.0_shakespeare_char";
    await Deno.writeTextFile(`${project}/loss_${id}.txt`, "10 4.0 4.1\n20 3.5 3.6\n30 3.2 3.7\n");
    await Deno.writeTextFile(`${project}/loss_bigramLM_other.txt`, "");
    await Deno.mkdir(`${project}/out`);
    const weights = new Map([["w", f32Entry([3, 4], new Float32Array(12))]]);
    await Deno.writeFile(
      `${project}/out/${id}.last.safetensors`,
      encodeSafetensors(weights, {
        model_name: "gptLM",
        config: "{}",
        iter: "25",
        best_val: "3.6",
      }),
    );
    await Deno.writeFile(
      `${project}/out/${id}.last.optim.safetensors`,
      encodeSafetensors(
        new Map([
          ["w.exp_avg", f32Entry([3, 4], new Float32Array(12))],
          ["w.exp_avg_sq", f32Entry([3, 4], new Float32Array(12))],
        ]),
        { log_file: `loss_${id}.txt` },
      ),
    );
    const { runs } = await new RunScanner(project).scan();
    const run = runs.find((r) => r.id === id)!;
    assert.equal(run.model, "gptLM");
    assert.deepEqual(run.log, {
      path: `loss_${id}.txt`,
      evals: 3,
      lastIter: 30,
      bestVal: 3.6,
    });
    assert.equal(run.checkpoints.length, 1);
    const [ckpt] = run.checkpoints;
    assert.equal(ckpt.params, 12);
    assert.equal(ckpt.iter, 25);
    assert.equal(ckpt.last, true);
    assert.equal(ckpt.resumable, true);
    assert.deepEqual(runs.find((r) => r.id === "bigramLM_other")?.log?.evals, 0);
  } finally {
    await Deno.remove(project, { recursive: true });
  }
});

Deno.test("a loss log written by another process reaches the page as an event", async () => {
  const { studio, project } = await scratchStudio();
  const log = `${project}/loss_gptLM_elsewhere.txt`;
  await Deno.writeTextFile(log, "10 4.0 4.1\n");
  const response = await fetch(`${studio.url}api/events`);
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  /** Reads events until one says the log holds `evals` evaluations. */
  const untilEvals = async (evals: number) => {
    let text = "";
    while (true) {
      const { value, done } = await reader.read();
      if (done) throw new Error("events ended");
      text += value;
      for (const block of text.split("\n\n")) {
        const data = /^event: runs\ndata: (.*)$/m.exec(block)?.[1];
        const runs = data ? JSON.parse(data) : [];
        if (runs.some((r: { log: { evals: number } }) => r.log?.evals === evals)) return;
      }
    }
  };
  try {
    await untilEvals(1);
    await Deno.writeTextFile(log, "20 3.5 3.6\n", { append: true });
    await untilEvals(2);
  } finally {
    await reader.cancel();
    await studio.shutdown();
    await Deno.remove(project, { recursive: true });
  }
});

Deno.test("generate --json lines: the probability at the temperature and the likeliest others", () => {
  const logits = new Float32Array([0, Math.log(2), Math.log(3), Math.log(4)]);
  const vocab = ["a", "b", "c", "\n"];
  const line = JSON.parse(jsonLine(0, 1, logits, 1, vocab));
  assert.equal(line.text, "b");
  assert.ok(Math.abs(line.p - 0.2) < 1e-7);
  assert.deepEqual(line.top.map((c: { text: string }) => c.text), ["\n", "c", "a"]);
  assert.deepEqual(line.top[0].label, "↵");
  assert.ok(Math.abs(line.top[0].p - 0.4) < 1e-7);
  // At temperature 0.5 the weights are squared: 1, 4, 9, 16 out of 30.
  const sharp = JSON.parse(jsonLine(2, 0, logits, 0.5, vocab));
  assert.equal(sharp.row, 2);
  assert.ok(Math.abs(sharp.p - 1 / 30) < 1e-7);
  assert.ok(Math.abs(sharp.top[0].p - 16 / 30) < 1e-7);
});
