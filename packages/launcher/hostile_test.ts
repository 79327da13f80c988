// Copyright 2026 the Valise authors. Apache-2.0 license.
// A fork server runs the session's own interpreter, so it may lie: forged frame lengths, stdout
// past the flow-control window, acknowledgements of stdin never sent, a stdin it stops reading.
// Each breach kills that fork server (and says so in the log and in the run's stderr); none
// makes this process buffer without bound. The liars below speak the frame protocol by hand.
import assert from "node:assert/strict";
import { OUTPUT_PIECE, STDOUT_WINDOW } from "./_bootstrap.ts";
import { ForkServer, type RunHandle } from "./_fork_server.ts";
import type { RunEvent } from "./launcher.ts";
import { SYSTEM_PYTHON } from "./testdata/helpers.ts";

/**
 * Sends READY, waits for the RUN frame of run 1, reports it started, then misbehaves for a
 * while and reports the run exited: without the launcher's checks each test ends (and fails)
 * instead of hanging.
 */
const LIAR = String.raw`
import os, sys, json, struct, time
mode = sys.argv[1]
def send(kind, rid, payload=b''):
    data = struct.pack('>IBI', len(payload) + 5, kind, rid) + payload
    while data:
        data = data[os.write(1, data):]
def read_frame():
    head = b''
    while len(head) < 4:
        head += os.read(0, 4 - len(head))
    (n,) = struct.unpack('>I', head)
    body = b''
    while len(body) < n:
        body += os.read(0, n - len(body))
    return body
send(10, 0, json.dumps({'pid': os.getpid(), 'executable': 'liar', 'version': [3, 8, 0]}).encode())
read_frame()
send(11, 1, b'{"pid": 4242}')
if mode == 'huge':
    # A 4 GiB STDOUT frame, then 256 MiB of it.
    os.write(1, struct.pack('>IBI', 0xFFFFFFF0, 12, 1))
    for _ in range(4096):
        os.write(1, b'x' * 65536)
    sys.exit(0)
elif mode == 'window':
    # 64 MiB of flow-controlled stdout that never waits for an acknowledgement.
    for _ in range(1024):
        send(12, 1, b'y' * 65536)
elif mode == 'ack':
    # Acknowledges stdin that was never sent: the window would open without bound.
    send(16, 1, struct.pack('>I', 1 << 30))
elif mode == 'deaf':
    # Never reads its stdin again, and makes the launcher answer each tiny frame with an ACK.
    for _ in range(200000):
        send(12, 1, b'z')
elif mode == 'twice':
    for _ in range(1000):
        send(11, 1, b'{"pid": 4242}')
elif mode == 'immortal':
    # Reads the KILL frame, and keeps the run alive.
    read_frame()
    time.sleep(120)
send(14, 1, b'{"code": 0, "signal": ""}')
time.sleep(120)
`;

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
