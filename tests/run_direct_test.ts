// Plain gRPC calls of WorkerService/Run take the server's direct path (packages/server/
// _run_direct.ts), past Connect's pipelines; calls with a deadline (`grpc-timeout`) still go
// through Connect. Against a real server and real Python: both paths answer the same requests
// with the same events, headers, trailers and error codes; and hostile bodies on the direct path
// (forged lengths, garbage, extra or compressed messages, a body that never ends) are refused
// with the right code while the server stays healthy and its memory bounded.
import { deepEqual, equal, ok } from "node:assert/strict";
import * as http2 from "node:http2";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { connect } from "@valise/client";
import {
  HealthCheckResponse_ServingStatus,
  RunEventSchema,
  RunRequestSchema,
  WorkerService,
} from "@valise/protocol";
import { startServer } from "./_server.ts";
import { removeTree, writeOrClosed } from "./_util.ts";

const MiB = 2 ** 20;
const OK = 0;
const RUN = "/valise.v1.WorkerService/Run";
/** What the Connect path's gRPC handler does with a deadline this long is nothing at all. */
const VIA_CONNECT = { "grpc-timeout": "600S" };

interface Answer {
  status: number;
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  body: Uint8Array;
  rstCode: number;
}

/**
 * A client connection. What each request got is asserted on the request; an error of the
 * connection itself (the server stopping under it at the end of a test) is not the subject, and
 * must not surface as an uncaught error of the next test.
 */
function connectH2(url: string): http2.ClientHttp2Session {
  const session = http2.connect(url);
  session.on("error", () => {});
  return session;
}

/** One call over a raw HTTP/2 stream; `body` is written in pieces as flow control allows. */
function call(
  session: http2.ClientHttp2Session,
  headers: Record<string, string>,
  body: Uint8Array,
  options: { keepSending?: number } = {},
): Promise<Answer> {
  return new Promise((resolve) => {
    const req = session.request({
      ":method": "POST",
      ":path": RUN,
      "content-type": "application/grpc",
      te: "trailers",
      ...headers,
    });
    const out: Answer = {
      status: 0,
      headers: {},
      trailers: {},
      body: new Uint8Array(),
      rstCode: 0,
    };
    const chunks: Uint8Array[] = [];
    req.on("response", (h) => {
      out.status = Number(h[":status"]);
      out.headers = h;
    });
    req.on("trailers", (t) => (out.trailers = t));
    req.on("data", (c: Uint8Array) => chunks.push(c));
    req.on("error", () => {/* the outcome is in rstCode */});
    req.on("close", () => {
      out.rstCode = req.rstCode ?? 0;
      out.body = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      let o = 0;
      for (const c of chunks) out.body.set(c, (o += c.length) - c.length);
      resolve(out);
    });
    (async () => {
      if (!req.write(body)) await new Promise((r) => req.once("drain", r));
      // A hostile caller goes on sending after its body's claimed end, never ending it.
      const piece = new Uint8Array(MiB).fill(0x41);
      for (let sent = 0; sent < (options.keepSending ?? 0); sent += piece.length) {
        if (req.closed || req.destroyed) return;
        await writeOrClosed(req, piece);
      }
      if (!req.closed && !req.destroyed) req.end();
    })().catch(() => {});
  });
}

function envelope(message: Uint8Array, flags = 0): Uint8Array {
  const out = new Uint8Array(5 + message.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) out.set(p, (o += p.length) - p.length);
  return out;
}

/** The run's events as they would be compared: pids and durations differ between runs. */
function eventsOf(body: Uint8Array): unknown[] {
  const out: unknown[] = [];
  for (let o = 0; o < body.length;) {
    const n = new DataView(body.buffer, body.byteOffset + o).getUint32(1);
    const ev = fromBinary(RunEventSchema, body.subarray(o + 5, o + 5 + n)).event;
    o += 5 + n;
    if (ev.case === "started") out.push({ started: ev.value.interpreter, cwd: ev.value.cwd });
    else if (ev.case === "stdout" || ev.case === "stderr") {
      const last = out.at(-1) as { kind?: string; text?: string } | undefined;
      const text = new TextDecoder().decode(ev.value);
      // Output may arrive in pieces of any size: what is compared is the text per stream.
      if (last?.kind === ev.case) last.text += text;
      else out.push({ kind: ev.case, text });
    } else if (ev.case === "exited") {
      const { exitCode, signal, timedOut, outputTruncated } = ev.value;
      out.push({ exitCode, signal, timedOut, outputTruncated });
    }
  }
  return out;
}

/** What must be equal between the two paths. */
function outcome(a: Answer): Record<string, unknown> {
  return {
    status: a.status,
    contentType: a.headers["content-type"],
    encoding: a.headers["grpc-encoding"],
    grpcStatus: a.trailers["grpc-status"],
    grpcMessage: decodeURIComponent(String(a.trailers["grpc-message"] ?? "")),
    details: a.trailers["grpc-status-details-bin"],
    events: eventsOf(a.body),
  };
}

function request(init: Parameters<typeof create<typeof RunRequestSchema>>[1]): Uint8Array {
  return toBinary(RunRequestSchema, create(RunRequestSchema, init));
}

Deno.test("a plain gRPC Run (direct path) and one with a deadline (Connect's) answer alike: events, headers, trailers, errors", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-direct-" });
  const server = await startServer({ dataDir: join(tmp, "data") });
  const h2 = connectH2(server.baseUrl);
  try {
    const sessionId = crypto.randomUUID();
    const userContext = { userId: "ada" };
    const ok1 = request({ sessionId, userContext, target: { case: "code", value: "print(1)" } });
    const mixed = request({
      sessionId,
      userContext,
      target: {
        case: "code",
        value: "import sys; print('out'); sys.stderr.write('err\\n'); sys.exit(3)",
      },
      args: ["a", "b"],
    });
    const cases: [string, Record<string, string>, Uint8Array][] = [
      ["print(1)", {}, envelope(ok1)],
      ["stdout, stderr, exit 3", {}, envelope(mixed)],
      ["response compression asked for", { "grpc-accept-encoding": "gzip,br" }, envelope(ok1)],
      ["no target", {}, envelope(request({ sessionId, userContext }))],
      [
        "a session id that is not a UUID",
        {},
        envelope(request({ sessionId: "not-a-uuid", target: { case: "code", value: "1" } })),
      ],
      ["no message", {}, new Uint8Array()],
      ["two messages", {}, concat(envelope(ok1), envelope(ok1))],
      ["a cut envelope", {}, envelope(ok1).subarray(0, 20)],
      ["garbage", {}, envelope(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f, 7, 7]))],
      ["a compressed message without an encoding", {}, envelope(ok1, 1)],
      ["a length over the cap", {}, new Uint8Array([0, 0xff, 0xff, 0xff, 0xf0, 1, 2, 3])],
    ];
    for (const [name, headers, body] of cases) {
      const direct = outcome(await call(h2, headers, body));
      const viaConnect = outcome(await call(h2, { ...headers, ...VIA_CONNECT }, body));
      deepEqual(direct, viaConnect, name);
    }
    // The codes themselves, as the Connect path defines them.
    const code = async (body: Uint8Array) =>
      Number((await call(h2, {}, body)).trailers["grpc-status"]);
    equal(await code(envelope(ok1)), OK);
    equal(await code(envelope(request({ sessionId, userContext }))), Code.InvalidArgument);
    equal(await code(new Uint8Array()), Code.Unimplemented);
    equal(await code(concat(envelope(ok1), envelope(ok1))), Code.Unimplemented);
    equal(await code(envelope(ok1).subarray(0, 20)), Code.InvalidArgument);
    equal(await code(envelope(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f]))), Code.Internal);
    equal(await code(envelope(ok1, 1)), Code.Internal);
    equal(await code(new Uint8Array([0, 0xff, 0xff, 0xff, 0xf0])), Code.ResourceExhausted);

    // Clients see the same: @valise/client (gRPC, the direct path) and a Connect-protocol client
    // (Connect's handler), each with the run's output and exit.
    const valise = connect(`sc://127.0.0.1:${server.port}/;user_id=ada;session_id=${sessionId}`);
    try {
      const viaClient = await valise.runCollect({ code: "import sys; print('x'); sys.exit(4)" });
      const worker = createClient(
        WorkerService,
        createConnectTransport({ baseUrl: server.baseUrl, httpVersion: "2" }),
      );
      let stdout = "";
      let exit = -1;
      for await (
        const ev of worker.run({
          sessionId,
          userContext,
          target: { case: "code", value: "import sys; print('x'); sys.exit(4)" },
        })
      ) {
        if (ev.event.case === "stdout") stdout += new TextDecoder().decode(ev.event.value);
        if (ev.event.case === "exited") exit = ev.event.value.exitCode;
      }
      deepEqual([viaClient.stdout, viaClient.exitCode], [stdout, exit]);
      deepEqual([stdout, exit], ["x\n", 4]);
    } finally {
      valise.close();
    }
    // Both paths count in the same metrics, by method and code.
    ok(server.log.some((l) => l.includes("rpc valise.v1.WorkerService/Run OK")), "logged");
    ok(
      server.log.some((l) => l.includes("rpc valise.v1.WorkerService/Run Unimplemented")),
      "errors logged",
    );
  } finally {
    h2.close();
    await server.stop();
    await removeTree(tmp);
  }
});

Deno.test("the direct Run path keeps the front door: a wrong token is refused, a bound token acts only as its user", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-direct-" });
  const tokens = join(tmp, "tokens");
  await Deno.writeTextFile(tokens, "tok-any-0f3c9a1e5b7d2c48\ntok-ada-7e21b9d04c6a3f15 ada\n");
  await Deno.chmod(tokens, 0o600);
  const server = await startServer({ dataDir: join(tmp, "data"), args: ["--token-file", tokens] });
  const h2 = connectH2(server.baseUrl);
  try {
    const sessionId = crypto.randomUUID();
    const asEve = envelope(request({
      sessionId,
      userContext: { userId: "eve" },
      target: { case: "code", value: "print(1)" },
    }));
    const asAda = envelope(request({
      sessionId,
      userContext: { userId: "ada" },
      target: { case: "code", value: "print(1)" },
    }));
    const ada = { authorization: "Bearer tok-ada-7e21b9d04c6a3f15" };
    for (const via of [{}, VIA_CONNECT]) {
      const none = await call(h2, via, asAda);
      equal(
        Number(none.trailers["grpc-status"] ?? none.headers["grpc-status"]),
        Code.Unauthenticated,
      );
      const eve = await call(h2, { ...ada, ...via }, asEve);
      equal(Number(eve.trailers["grpc-status"]), Code.PermissionDenied);
      ok(decodeURIComponent(String(eve.trailers["grpc-message"])).includes('bound to user "ada"'));
      const own = await call(h2, { ...ada, ...via }, asAda);
      equal(Number(own.trailers["grpc-status"]), OK);
      deepEqual(eventsOf(own.body).slice(1), [
        { kind: "stdout", text: "1\n" },
        { exitCode: 0, signal: "", timedOut: false, outputTruncated: false },
      ]);
    }
  } finally {
    h2.close();
    await server.stop();
    await removeTree(tmp);
  }
});

Deno.test("hostile bodies on the direct Run path: refused with the right code, the server healthy, memory bounded", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-direct-" });
  const server = await startServer({ dataDir: join(tmp, "data") });
  const h2 = connectH2(server.baseUrl);
  try {
    const sessionId = crypto.randomUUID();
    const ok1 = request({
      sessionId,
      userContext: { userId: "ada" },
      target: { case: "code", value: "print(1)" },
    });
    // Warm: the RSS baseline includes a session with its workers.
    equal(Number((await call(h2, {}, envelope(ok1))).trailers["grpc-status"]), OK);
    const before = server.rss();
    // Four callers at once, each claiming a 4 GiB message and then sending 48 MiB more without
    // ever ending their body; and four sending a second message (of 60 MiB, under the cap) after a good one.
    // On a connection of their own: a caller that keeps sending after its stream was cut off
    // gets its connection closed (GOAWAY), which is its own business.
    const attacker = http2.connect(server.baseUrl);
    attacker.on("error", () => {/* the hostile connection may be closed */});
    const hostile = Array.from(
      { length: 8 },
      (_, i) =>
        i < 4
          ? call(attacker, {}, new Uint8Array([0, 0xff, 0xff, 0xff, 0xf0]), {
            keepSending: 48 * MiB,
          })
          : call(attacker, {}, concat(envelope(ok1), new Uint8Array([0, 0x03, 0xc0, 0, 0])), {
            keepSending: 48 * MiB,
          }),
    );
    // Health answers while they are in flight.
    const health = createClient(
      (await import("@valise/protocol")).Health,
      createConnectTransport({ baseUrl: server.baseUrl, httpVersion: "2" }),
    );
    equal((await health.check({})).status, HealthCheckResponse_ServingStatus.SERVING);
    const answers = await Promise.all(hostile);
    attacker.destroy();
    for (const a of answers.slice(0, 4)) {
      equal(Number(a.trailers["grpc-status"]), Code.ResourceExhausted, JSON.stringify(a.trailers));
      ok(decodeURIComponent(String(a.trailers["grpc-message"])).includes("readMaxBytes"));
    }
    for (const a of answers.slice(4)) {
      equal(Number(a.trailers["grpc-status"]), Code.Unimplemented, JSON.stringify(a.trailers));
    }
    // What they sent was dropped, not kept: 8 callers × 48 MiB would be 384 MiB. What HTTP/2
    // flow control lets in before a refusal is dropped at once, but V8 frees dropped buffers
    // lazily (see front_door_test.ts).
    const growth = server.rss() - before;
    ok(growth < 160 * MiB, `RSS grew by ${(growth / MiB).toFixed(0)} MiB`);
    ok(server.peakRss() - before < 224 * MiB, "peak RSS bounded");
    // And the server still runs code for everyone.
    const fresh = connectH2(server.baseUrl);
    const after = await call(fresh, {}, envelope(ok1));
    fresh.close();
    equal(Number(after.trailers["grpc-status"]), OK);
    deepEqual(eventsOf(after.body)[1], { kind: "stdout", text: "1\n" });
  } finally {
    h2.close();
    await server.stop();
    await removeTree(tmp);
  }
});

Deno.test("a Run the client cancels mid-run is logged and counted as cancelled on both paths, its worker killed", async () => {
  for (const via of [{}, VIA_CONNECT]) {
    const tmp = await Deno.makeTempDir({ prefix: "valise-direct-" });
    const server = await startServer({ dataDir: join(tmp, "data") });
    const h2 = connectH2(server.baseUrl);
    try {
      const sessionId = crypto.randomUUID();
      const body = envelope(request({
        sessionId,
        userContext: { userId: "ada" },
        target: {
          case: "code",
          value: "import time\nprint('up', flush=True)\ntime.sleep(60)\nprint('never')",
        },
      }));
      // Cancelled (RST_STREAM CANCEL) once its first output arrived.
      const out = await new Promise<string>((resolve) => {
        const req = h2.request({
          ":method": "POST",
          ":path": RUN,
          "content-type": "application/grpc",
          te: "trailers",
          ...via,
        });
        let text = "";
        req.on("data", (c: Uint8Array) => {
          text += new TextDecoder().decode(c);
          if (text.includes("up")) req.close(http2.constants.NGHTTP2_CANCEL);
        });
        req.on("error", () => {});
        req.on("close", () => resolve(text));
        req.end(body);
      });
      ok(out.includes("up"), out);
      const line = await Promise.race([
        server.waitForLog(/rpc valise\.v1\.WorkerService\/Run Canceled/),
        new Promise<string>((r) => setTimeout(() => r("(no line within 30 s)"), 30_000)),
      ]);
      ok(line.includes("[CANCELLED]"), `${JSON.stringify(via)}: ${line}`);
      // The worker was killed: the session's next run starts and ends at once.
      const after = await call(
        h2,
        {},
        envelope(request({
          sessionId,
          userContext: { userId: "ada" },
          target: { case: "code", value: "print(2)" },
        })),
      );
      equal(Number(after.trailers["grpc-status"]), OK);
      h2.close();
      // The server did not crash on the way: it exits as SIGTERM asks.
      equal((await server.stop()).code, 0, server.log.slice(-20).join("\n"));
    } finally {
      h2.close();
      await server.stop();
      await removeTree(tmp);
    }
  }
});

Deno.test("clients that drop their connection at any point of a Run's end cannot take the server down", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-direct-" });
  const server = await startServer({ dataDir: join(tmp, "data") });
  try {
    const body = envelope(request({
      sessionId: crypto.randomUUID(),
      userContext: { userId: "ada" },
      target: { case: "code", value: "print(1)" },
    }));
    // Each drops its connection after its n-th piece of the answer (headers, events, trailers),
    // some while the server still holds the end of the answer back to send it in one write.
    for (let i = 0; i < 60; i++) {
      const drop = i % 4;
      const conn = http2.connect(server.baseUrl);
      conn.on("error", () => {/* dropped on purpose */});
      await new Promise<void>((resolve) => {
        const req = conn.request({
          ":method": "POST",
          ":path": RUN,
          "content-type": "application/grpc",
          te: "trailers",
        });
        let seen = 0;
        const cut = () => {
          if (seen++ === drop) conn.destroy();
        };
        req.on("response", cut);
        req.on("data", cut);
        req.on("trailers", cut);
        req.on("error", () => {});
        req.on("close", () => resolve());
        req.end(body);
      });
      conn.destroy();
    }
    // Still serving, runs included.
    const h2 = connectH2(server.baseUrl);
    const after = await call(h2, {}, body);
    h2.close();
    if (Number(after.trailers["grpc-status"]) !== OK) {
      // Say how the server went: a crash of the runtime shows as its exit signal.
      const status = await server.stop();
      throw new Error(
        `the server stopped serving: exit ${JSON.stringify(status)}, call ${
          JSON.stringify(after.trailers)
        } (rst ${after.rstCode})\n${server.log.slice(-20).join("\n")}`,
      );
    }
    equal((await server.stop()).code, 0, server.log.slice(-20).join("\n"));
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
});
