// End-to-end RunInteractive against a real server process (node:http2 front door, bubblewrap
// sandbox when it works, tokens): stdin streamed line by line with each answer seen before the
// next line is sent, end of file, Python's console with interrupts, the interactive time limit,
// and the front door's rules (auth, the user a token is bound to, malformed streams).
import { equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  ConfigRequest_OperationSchema,
  RunInputSchema,
  RunRequestSchema,
  WorkerService,
} from "@valise/protocol";
import { answered } from "./_hostile.ts";
import { InteractiveCall } from "./_interactive.ts";
import { type ServerProcess, startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const GUARD_MS = 60_000;

/** Turns a hang into a failure naming what hung. */
const within = <T>(p: Promise<T>, what: string): Promise<T> => answered(p, what, GUARD_MS);

async function withServer(
  fn: (s: ServerProcess) => Promise<void>,
  options: { args?: string[]; headers?: Record<string, string>; files?: Record<string, string> } =
    {},
): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-interactive-" });
  const args = [...(options.args ?? [])];
  for (const [name, text] of Object.entries(options.files ?? {})) {
    await Deno.writeTextFile(join(tmp, name), text);
    args.push(`--${name}`, join(tmp, name));
  }
  const server = await startServer({
    dataDir: join(tmp, "data"),
    args: ["--python", "/usr/bin/python3", ...args],
    ...(options.headers ? { headers: options.headers } : {}),
  });
  try {
    await fn(server);
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
}

const code = (c: string, sessionId: string) => ({
  sessionId,
  target: { case: "code" as const, value: c },
});

const UPPER = "import sys\nfor line in sys.stdin:\n    print(line.upper(), end='', flush=True)\n" +
  "print('eof', flush=True)";

Deno.test("RunInteractive streams stdin: each line's answer arrives before the next line is sent; ending the stream is EOF", async () => {
  await withServer(async (s) => {
    const call = new InteractiveCall(s.clients.worker, code(UPPER, crypto.randomUUID()));
    let at = 0;
    for (const word of ["alpha", "beta", "gamma"]) {
      // The next line is only sent once this one's answer is back: a server that read all of
      // stdin first would never answer, and the guard would fail the test.
      call.send(`${word}\n`);
      at = await within(call.waitFor(`${word.toUpperCase()}\n`, at), `the answer to ${word}`);
    }
    call.end();
    await within(call.done, "the end of the run");
    equal(call.failure, undefined, call.failure?.message);
    equal(call.stdout, "ALPHA\nBETA\nGAMMA\neof\n");
    equal(call.exit?.exitCode, 0);
  });
});

Deno.test("close_stdin ends the program's stdin while the call stays open", async () => {
  await withServer(async (s) => {
    const call = new InteractiveCall(s.clients.worker, {
      ...code(
        "import sys\ndata = sys.stdin.read()\nprint(len(data), repr(data[:5]))",
        crypto.randomUUID(),
      ),
      stdin: new TextEncoder().encode("first "),
    });
    call.send("second");
    call.closeStdin();
    await within(call.until(() => call.exit !== undefined, "exited"), "exited");
    equal(call.stdout, "12 'first'\n");
    // The server waits for the client's end of stream, then ends the call cleanly.
    call.end();
    await within(call.done, "the end of the call");
    equal(call.failure, undefined, call.failure?.message);
    equal(call.exit?.exitCode, 0);
  });
});

Deno.test("Python's console over RunInteractive: prompts, answers in order, an interrupt, Ctrl-D", async () => {
  await withServer(async (s) => {
    const call = new InteractiveCall(s.clients.worker, {
      sessionId: crypto.randomUUID(),
      repl: true,
    });
    let at = await within(call.waitFor(">>> "), "the first prompt");
    match(call.stdout, /^Python 3\./);
    call.send("x = 6\n");
    at = await within(call.waitFor(">>> ", at), "the second prompt");
    call.send("x * 7\n");
    at = await within(call.waitFor("42\n>>> ", at), "42");
    call.send("exec(\"print('spinning', flush=True)\\nwhile True: pass\")\n");
    at = await within(call.waitFor("spinning\n", at), "the loop");
    call.interrupt();
    at = await within(call.waitFor("KeyboardInterrupt\n>>> ", at), "the interrupt");
    call.send("x\n");
    at = await within(call.waitFor("6\n>>> ", at), "x after the interrupt");
    call.closeStdin();
    await within(call.until(() => call.exit !== undefined, "exited"), "exited");
    call.end();
    await within(call.done, "the end");
    equal(call.failure, undefined, call.failure?.message);
    equal(call.exit?.exitCode, 0);
  });
});

Deno.test("interactive runs have --interactive-timeout-ms, not --worker-timeout-ms; a session lowers it", async () => {
  // A 1 ms limit for runs: a plain Run that blocks is always killed by it. (Not one that reads
  // stdin: a plain Run's stdin is empty, so the read returns and the program may end first.)
  await withServer(async (s) => {
    const sessionId = crypto.randomUUID();
    let timedOut = false;
    for await (
      const ev of s.clients.worker.run(
        create(RunRequestSchema, code("import threading; threading.Event().wait()", sessionId)),
      )
    ) {
      if (ev.event.case === "exited") timedOut = ev.event.value.timedOut;
    }
    ok(timedOut, "Run is held to --worker-timeout-ms");

    const call = new InteractiveCall(s.clients.worker, code(UPPER, sessionId));
    call.send("still here\n");
    await within(call.waitFor("STILL HERE\n"), "the answer");
    call.end();
    await within(call.done, "the end");
    equal(call.exit?.timedOut, false);
    equal(call.exit?.exitCode, 0);

    await s.clients.spark.config({
      sessionId,
      operation: create(ConfigRequest_OperationSchema, {
        opType: {
          case: "set",
          value: { pairs: [{ key: "spark.valise.worker.interactiveTimeoutMs", value: "1" }] },
        },
      }),
    });
    const lowered = new InteractiveCall(s.clients.worker, code(UPPER, sessionId));
    await within(lowered.until(() => lowered.exit !== undefined, "exited"), "the time limit");
    equal(lowered.exit?.timedOut, true);
    lowered.end();
    await within(lowered.done, "the end");
  }, { args: ["--worker-timeout-ms", "1", "--interactive-timeout-ms", "600000"] });
});

Deno.test("RunInteractive passes the front door: no token is UNAUTHENTICATED, another user's start is PERMISSION_DENIED", async () => {
  await withServer(async (s) => {
    const ada = crypto.randomUUID();
    const mine = new InteractiveCall(s.clients.worker, {
      ...code(UPPER, ada),
      userContext: { userId: "ada" },
    });
    mine.send("ok\n");
    await within(mine.waitFor("OK\n"), "ada's own run");
    mine.end();
    await within(mine.done, "the end");
    equal(mine.failure, undefined, mine.failure?.message);

    const eve = new InteractiveCall(s.clients.worker, {
      ...code(UPPER, crypto.randomUUID()),
      userContext: { userId: "eve" },
    });
    eve.end();
    await within(eve.done, "the refusal");
    equal(eve.failure?.code, Code.PermissionDenied, eve.failure?.message);
    equal(eve.exit, undefined);

    const anonymous = createClient(
      WorkerService,
      createGrpcTransport({ baseUrl: s.baseUrl }),
    );
    const none = new InteractiveCall(anonymous, {
      ...code(UPPER, crypto.randomUUID()),
      userContext: { userId: "ada" },
    });
    none.send("x\n");
    none.end();
    await within(none.done, "the refusal");
    equal(none.failure?.code, Code.Unauthenticated, none.failure?.message);
  }, { headers: { authorization: "Bearer tok-ada" }, files: { "token-file": "tok-ada ada\n" } });
});

Deno.test("malformed RunInteractive streams fail INVALID_ARGUMENT (INVALID_RUN_REQUEST) and the worker is killed", async () => {
  await withServer(async (s) => {
    // Nothing to run and no console.
    const empty = new InteractiveCall(s.clients.worker, { sessionId: crypto.randomUUID() });
    empty.end();
    await within(empty.done, "the refusal");
    equal(empty.failure?.code, Code.InvalidArgument);
    equal(empty.errorClass, "INVALID_RUN_REQUEST");
    match(empty.failure!.message, /names no code, module or script/);

    // A second start.
    const twice = new InteractiveCall(s.clients.worker, code(UPPER, crypto.randomUUID()));
    twice.send("one\n");
    await within(twice.waitFor("ONE\n"), "the first answer");
    twice.push({ case: "start", value: code("print('again')", crypto.randomUUID()) });
    await within(twice.done, "the refusal");
    equal(twice.failure?.code, Code.InvalidArgument);
    equal(twice.errorClass, "INVALID_RUN_REQUEST");
    match(twice.failure!.message, /`start` may only be the first message/);
    equal(twice.exit?.signal, "SIGKILL", "the worker was killed");

    // Stdin after close_stdin.
    const after = new InteractiveCall(
      s.clients.worker,
      code(
        "import sys, time\nsys.stdin.read()\nprint('read', flush=True)\ntime.sleep(60)",
        crypto.randomUUID(),
      ),
    );
    after.closeStdin();
    await within(after.waitFor("read\n"), "the end of stdin");
    after.send("more");
    await within(after.done, "the refusal");
    equal(after.errorClass, "INVALID_RUN_REQUEST");
    match(after.failure!.message, /closed it \(close_stdin\)/);

    // A first message that is not start.
    const responses = s.clients.worker.runInteractive((async function* () {
      yield create(RunInputSchema, { input: { case: "stdin", value: new Uint8Array(3) } });
    })());
    let failure: ConnectError | undefined;
    try {
      for await (const _ of responses) { /* nothing comes */ }
    } catch (e) {
      failure = ConnectError.from(e);
    }
    equal(failure?.code, Code.InvalidArgument);
    match(failure!.message, /first message of RunInteractive must be `start`/);
  });
});
