// Copyright 2026 the Valise authors. Apache-2.0 license.
// A fork server runs the session's own interpreter, so it may lie: forged frame lengths, stdout
// past the flow-control window, acknowledgements of stdin never sent, a stdin it stops reading.
// Each breach kills that fork server (and says so in the log and in the run's stderr); none
// makes this process buffer without bound. The liars below speak the frame protocol by hand.
import assert from "node:assert/strict";
import { OUTPUT_PIECE, STDOUT_WINDOW } from "./_bootstrap.ts";
import { ForkServer, type RunHandle } from "./_fork_server.ts";
import type { RunEvent } from "./types.ts";
import { SYSTEM_PYTHON } from "./testdata/helpers.ts";

/** The liar's source (see testdata/liar.py). */
const LIAR = await Deno.readTextFile(new URL("./testdata/liar.py", import.meta.url));

function liar(
  mode: string,
  lines: string[],
  limits: { sendQueueBytes?: number; killGraceMs?: number } = {},
): ForkServer {
  return new ForkServer({
    command: [SYSTEM_PYTHON, "-c", LIAR, mode],
    env: {},
    cwd: "/",
    interpreter: `liar-${mode}`,
    log: (level, message) => lines.push(`${level}: ${message}`),
    startTimeoutMs: 30_000,
    ...limits,
  });
}

function start(server: ForkServer, flow: boolean): RunHandle {
  return server.start(
    { kind: "code", target: "", args: [], cwd: "/", path: [], memoryBytes: 0, flow },
    new Uint8Array(),
    {
      outputBytes: 1 << 20,
      streamBytes: 2 ** 40,
      interpreter: "liar",
      cwd: "/",
      onExit: () => {},
      flow,
    },
  );
}

/** Takes every event (acknowledging flow stdout as a consumer does); what they said. */
async function drain(h: RunHandle, flow: boolean): Promise<{ stderr: string; stdout: number }> {
  let stderr = "";
  let stdout = 0;
  let exited: RunEvent | undefined;
  for (let ev = await h.events.next(); ev !== undefined; ev = await h.events.next()) {
    if (ev.kind === "stderr") stderr += new TextDecoder().decode(ev.data);
    if (ev.kind === "stdout") {
      stdout += ev.data.length;
      if (flow) h.ack(ev.data.length);
    }
    if (ev.kind === "exited") exited = ev;
  }
  assert.ok(exited?.kind === "exited" && exited.signal === "SIGKILL", JSON.stringify(exited));
  return { stderr, stdout };
}

async function expectKilled(
  server: ForkServer,
  h: RunHandle,
  flow: boolean,
  lines: string[],
  why: RegExp,
): Promise<{ stdout: number }> {
  const { stderr, stdout } = await drain(h, flow);
  await server.done;
  assert.ok(server.dead);
  assert.match(stderr, /the worker's fork server broke the protocol and was killed/);
  assert.match(stderr, why);
  const logged = lines.find((l) => l.startsWith("error: ") && l.includes("broke the protocol"));
  assert.ok(logged, lines.join("\n"));
  assert.match(logged, why);
  return { stdout };
}

Deno.test("a fork server that forges a 4 GiB frame is killed at its header", async () => {
  const lines: string[] = [];
  const server = liar("huge", lines);
  await server.ready;
  const { stdout } = await expectKilled(
    server,
    start(server, false),
    false,
    lines,
    /4294967284 bytes is larger than the limit of 1048585 bytes/,
  );
  assert.equal(stdout, 0);
});

Deno.test("a fork server that ignores the stdout window is killed past window + one read", async () => {
  const lines: string[] = [];
  const server = liar("window", lines);
  await server.ready;
  const h = start(server, true);
  // The consumer takes nothing until the fork server is gone: every byte sent is unacknowledged.
  await server.done;
  const { stdout } = await expectKilled(server, h, true, lines, /unacknowledged, window 1048576/);
  assert.ok(stdout <= STDOUT_WINDOW + OUTPUT_PIECE, `${stdout} bytes were queued`);
});

Deno.test("a fork server that acknowledges stdin never sent is killed", async () => {
  const lines: string[] = [];
  const server = liar("ack", lines);
  await server.ready;
  await expectKilled(
    server,
    start(server, false),
    false,
    lines,
    /1073741824 bytes of stdin acknowledged, 0 in flight/,
  );
});

Deno.test("a fork server that stops reading its stdin is killed once the queue to it is full", async () => {
  const lines: string[] = [];
  const server = liar("deaf", lines, { sendQueueBytes: 4096 });
  await server.ready;
  await expectKilled(
    server,
    start(server, true),
    true,
    lines,
    /stopped reading its input \(\d+ bytes waiting, limit 4096\)/,
  );
});

Deno.test("a fork server that reports a run started twice is killed", async () => {
  const lines: string[] = [];
  const server = liar("twice", lines);
  await server.ready;
  await expectKilled(server, start(server, false), false, lines, /reported started twice/);
});

Deno.test("a fork server that keeps a killed run alive is killed after the grace time", async () => {
  const lines: string[] = [];
  const server = liar("immortal", lines, { killGraceMs: 200 });
  await server.ready;
  const h = start(server, false);
  assert.equal((await h.events.next())?.kind, "started");
  h.kill(false);
  await expectKilled(server, h, false, lines, /run 1 was still running 400 ms after it was killed/);
});

Deno.test("a fork server that floods its stderr gets a bounded part of it logged", async () => {
  const lines: string[] = [];
  const server = liar("shout", lines);
  await server.ready;
  const h = start(server, false);
  // The liar writes 64 MiB to stderr, then reports the run exited.
  for (let ev = await h.events.next(); ev !== undefined; ev = await h.events.next()) {
    if (ev.kind === "exited") break;
  }
  await server.stop();
  const logged = lines.filter((l) => l.includes("fork server: "));
  const chars = logged.reduce((n, l) => n + l.length, 0);
  assert.ok(chars < 80 * 1024, `${chars} characters of stderr logged`);
  assert.ok(logged.some((l) => l.includes("more of its stderr is not logged")), logged.join("\n"));
});
