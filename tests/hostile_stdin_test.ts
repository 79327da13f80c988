// Attacks on RunInteractive against a real server process: a client that floods stdin into a
// worker that never reads it, one that never reads the output of a worker that floods it, an
// oversized message, and stdin (or no end of stream) after the worker exited. Each is blocked:
// the server's memory stays bounded, it answers health and serves another session meanwhile,
// and refusals carry the right gRPC code and error class.
import { equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type RunInput, RunInputSchema } from "@valise/protocol";
import { answered, serving } from "./_hostile.ts";
import { InteractiveCall } from "./_interactive.ts";
import { type ServerProcess, startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const GUARD_MS = 60_000;
const MiB = 1024 * 1024;

/** Turns a hang into a failure naming what hung. */
const within = <T>(p: Promise<T>, what: string): Promise<T> => answered(p, what, GUARD_MS);

async function withServer(fn: (s: ServerProcess) => Promise<void>): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-hostile-stdin-" });
  const server = await startServer({
    dataDir: join(tmp, "data"),
    args: ["--python", "/usr/bin/python3"],
  });
  try {
    await fn(server);
    await healthy(server, "health after the attack");
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
}

const healthy = (s: ServerProcess, what: string): Promise<void> => serving(s, what, GUARD_MS);

const code = (c: string, sessionId: string = crypto.randomUUID()) => ({
  sessionId,
  target: { case: "code" as const, value: c },
});

const UPPER = "import sys\nfor line in sys.stdin:\n    print(line.upper(), end='', flush=True)";

/** Another session's round trip: typed line in, answer out. */
async function victimAnswers(s: ServerProcess, sessionId: string): Promise<void> {
  const call = new InteractiveCall(s.clients.worker, code(UPPER, sessionId));
  call.send("victim\n");
  await within(call.waitFor("VICTIM\n"), "the victim's answer");
  call.end();
  await within(call.done, "the victim's run");
  equal(call.failure, undefined, call.failure?.message);
  equal(call.exit?.exitCode, 0);
}

Deno.test("a client flooding stdin into a worker that never reads is held back: server memory bounded, health and other sessions answer", async () => {
  await withServer(async (s) => {
    const victim = crypto.randomUUID();
    // Warm: the victim's fork server and the server's RunInteractive path are loaded.
    await victimAnswers(s, victim);
    const before = s.rss();
    let sent = 0;
    let reached!: () => void;
    const twoMiB = new Promise<void>((r) => reached = r);
    let up!: () => void;
    const isUp = new Promise<void>((r) => up = r);
    const chunk = new Uint8Array(64 * 1024).fill(120);
    async function* flood(): AsyncGenerator<RunInput, void, undefined> {
      yield create(RunInputSchema, {
        input: {
          case: "start",
          value: code("import time\nprint('up', flush=True)\ntime.sleep(3600)"),
        },
      });
      await isUp;
      while (true) {
        yield create(RunInputSchema, { input: { case: "stdin", value: chunk } });
        sent += chunk.length;
        if (sent >= 2 * MiB) reached();
      }
    }
    const ac = new AbortController();
    let failure: ConnectError | undefined;
    const call = (async () => {
      try {
        for await (const ev of s.clients.worker.runInteractive(flood(), { signal: ac.signal })) {
          if (ev.event.case === "stdout") up();
        }
      } catch (e) {
        failure = ConnectError.from(e);
      }
    })();
    await within(twoMiB, "the flood's first 2 MiB");
    // Meanwhile (the flood pushes as fast as it is let): health, another session's run.
    await healthy(s, "health during the flood");
    await victimAnswers(s, victim);
    await healthy(s, "health during the flood, again");
    const grown = s.rss() - before;
    // Without backpressure the flood would be at hundreds of MiB by now. With it, what is in
    // flight is the HTTP/2 windows, one message and the launcher's 1 MiB window.
    ok(sent < 24 * MiB, `the client could send ${sent} bytes into a worker that reads nothing`);
    ok(grown < 48 * MiB, `the server grew by ${grown} bytes during the flood`);
    ac.abort();
    await within(call, "the cancelled flood");
    equal(failure?.code, Code.Canceled);
  });
});

Deno.test("a client that does not read the output of a worker flooding stdout holds the worker back, not the server's memory", async () => {
  await withServer(async (s) => {
    const victim = crypto.randomUUID();
    await victimAnswers(s, victim);
    const before = s.rss();
    let resume!: () => void;
    const reading = new Promise<void>((r) => resume = r);
    let received = 0;
    let first!: () => void;
    const started = new Promise<void>((r) => first = r);
    const ac = new AbortController();
    const call = (async () => {
      try {
        const requests = (async function* (): AsyncGenerator<RunInput, void, undefined> {
          yield create(RunInputSchema, {
            input: {
              case: "start",
              value: code("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"),
            },
          });
          await new Promise(() => {});
        })();
        for await (const ev of s.clients.worker.runInteractive(requests, { signal: ac.signal })) {
          if (ev.event.case === "stdout") {
            received += ev.event.value.length;
            first();
            // The client stops reading here: the worker keeps writing.
            await reading;
          }
        }
      } catch {
        // cancelled below
      }
    })();
    await within(started, "the worker's first output");
    await healthy(s, "health while nobody reads the output");
    await victimAnswers(s, victim);
    await healthy(s, "health while nobody reads the output, again");
    const grown = s.rss() - before;
    ok(grown < 48 * MiB, `the server grew by ${grown} bytes while its output was not read`);
    ac.abort();
    resume();
    await within(call, "the cancelled call");
    ok(received > 0);
  });
});

Deno.test("an oversized stdin message is refused RESOURCE_EXHAUSTED (RUN_MESSAGE_TOO_LARGE) and the worker killed", async () => {
  await withServer(async (s) => {
    const call = new InteractiveCall(
      s.clients.worker,
      code("import sys\nprint('up', flush=True)\nsys.stdin.read()"),
    );
    await within(call.waitFor("up\n"), "the worker");
    call.send(new Uint8Array(2 * MiB));
    await within(call.done, "the refusal");
    equal(call.failure?.code, Code.ResourceExhausted, call.failure?.message);
    equal(call.errorClass, "RUN_MESSAGE_TOO_LARGE");
    match(call.failure!.message, /larger than configured readMaxBytes 1048576.*smaller pieces/);
    equal(call.exit?.signal, "SIGKILL");

    // A start message over the cap (its code) is refused the same way, before anything runs.
    const big = new InteractiveCall(s.clients.worker, code(`x = '${"y".repeat(2 * MiB)}'`));
    big.end();
    await within(big.done, "the refusal");
    equal(big.failure?.code, Code.ResourceExhausted);
    equal(big.errorClass, "RUN_MESSAGE_TOO_LARGE");
    equal(big.exit, undefined);
  });
});

Deno.test("stdin after the worker exited is dropped and the call ends cleanly; a client that never ends its stream is cut off", async () => {
  await withServer(async (s) => {
    const call = new InteractiveCall(s.clients.worker, code("print('bye')"));
    await within(call.until(() => call.exit !== undefined, "exited"), "the exit");
    for (let i = 0; i < 64; i++) call.send(new Uint8Array(64 * 1024));
    call.interrupt();
    call.closeStdin();
    call.end();
    await within(call.done, "the end of the call");
    equal(call.failure, undefined, call.failure?.message);
    equal(call.stdout, "bye\n");
    equal(call.exit?.exitCode, 0);
    equal(call.sentBytes, 64 * 64 * 1024, "every byte was taken (and dropped) by the server");

    // This one never ends its request stream: the server waits AFTER_EXIT_GRACE_MS (10 s), then
    // ends the call itself.
    const lingering = new InteractiveCall(s.clients.worker, code("print('bye')"));
    await within(lingering.done, "the call of a client that never ends its stream");
    equal(lingering.failure, undefined, lingering.failure?.message);
    equal(lingering.exit?.exitCode, 0);
  });
});
