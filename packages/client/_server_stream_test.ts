// The client's direct server-streaming call (what Session.run uses) against a hostile HTTP/2
// server speaking gRPC: whatever it answers — forged lengths, compressed or garbage messages, a
// status in the headers, no status at all, an HTTP error, a body cut short — the call fails with
// the same code and message as Connect's gRPC transport gives for the same answer; and a forged
// length, which Connect's transport (up to 4 GiB a message) would try to hold, is refused before a
// byte of it is kept.
import { deepEqual, equal, ok } from "node:assert/strict";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { RunEventSchema, RunRequestSchema, WorkerService } from "@valise/protocol";
import { serverStream } from "./_server_stream.ts";

type Answer = (stream: http2.ServerHttp2Stream) => void;

function envelope(message: Uint8Array, flags = 0): Uint8Array {
  const out = new Uint8Array(5 + message.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

const STARTED = toBinary(
  RunEventSchema,
  create(RunEventSchema, { event: { case: "started", value: { pid: 7, interpreter: "py" } } }),
);

/** Answers with data, then trailers (or none), after reading the request. */
function withData(chunks: Uint8Array[], trailers: Record<string, string> | undefined): Answer {
  return (stream) => {
    stream.respond({ ":status": 200, "content-type": "application/grpc+proto" }, {
      waitForTrailers: trailers !== undefined,
    });
    if (trailers) stream.once("wantTrailers", () => stream.sendTrailers(trailers));
    for (const c of chunks) stream.write(c);
    stream.end();
  };
}

const ANSWERS: Record<string, Answer> = {
  "a good event and OK": withData([envelope(STARTED)], { "grpc-status": "0" }),
  "a forged 4 GiB length": withData([new Uint8Array([0, 0xff, 0xff, 0xff, 0xf0, 1, 2])], {
    "grpc-status": "0",
  }),
  "a compressed message": withData([envelope(STARTED, 1)], { "grpc-status": "0" }),
  "garbage for a message": withData([envelope(new Uint8Array([0xff, 0xff, 0xff]))], {
    "grpc-status": "0",
  }),
  "a body cut inside an envelope": withData([envelope(STARTED).subarray(0, 9)], {
    "grpc-status": "0",
  }),
  "no status at all": withData([envelope(STARTED)], undefined),
  "an error in the trailers": withData([envelope(STARTED)], {
    "grpc-status": String(Code.NotFound),
    "grpc-message": encodeURIComponent("no such session"),
  }),
  "a status in the headers": (stream) => {
    stream.respond({
      ":status": 200,
      "content-type": "application/grpc+proto",
      "grpc-status": String(Code.PermissionDenied),
      "grpc-message": "not yours",
    }, { endStream: true });
  },
  "an HTTP error": (stream) => {
    stream.respond({ ":status": 503, "content-type": "text/plain" });
    stream.end("busy");
  },
  "the wrong content type": (stream) => {
    stream.respond({ ":status": 200, "content-type": "text/html" });
    stream.end("<html>");
  },
  "a reset": (stream) => stream.close(http2.constants.NGHTTP2_REFUSED_STREAM),
};

async function outcome(events: AsyncIterable<unknown>): Promise<unknown> {
  const got: unknown[] = [];
  try {
    for await (const ev of events) got.push((ev as { event: { case: string } }).event.case);
    return { events: got };
  } catch (e) {
    const c = ConnectError.from(e);
    return { events: got, code: Code[c.code], message: c.rawMessage };
  }
}

Deno.test("serverStream answers a hostile server's replies as Connect's gRPC transport does", async () => {
  let answer: Answer = ANSWERS["a good event and OK"]!;
  const server = http2.createServer();
  server.on("stream", (stream: http2.ServerHttp2Stream) => {
    stream.on("error", () => {/* the client may reset */});
    stream.resume();
    stream.once("end", () => answer(stream));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const manager = new Http2SessionManager(baseUrl);
  const connect = createClient(WorkerService, createGrpcTransport({ baseUrl }));
  const req = create(RunRequestSchema, {
    sessionId: crypto.randomUUID(),
    target: { case: "code", value: "print(1)" },
  });
  try {
    for (const [name, a] of Object.entries(ANSWERS)) {
      // Connect's transport takes messages up to 4 GiB and would try to hold this one: the direct
      // call refuses it (below).
      if (name === "a forged 4 GiB length") continue;
      answer = a;
      const direct = await outcome(
        serverStream({ manager, baseUrl, interceptors: [] }, WorkerService.method.run, req),
      );
      const viaConnect = await outcome(connect.run(req));
      deepEqual(direct, viaConnect, name);
    }
    answer = ANSWERS["a forged 4 GiB length"]!;
    const forged = await outcome(
      serverStream({ manager, baseUrl, interceptors: [] }, WorkerService.method.run, req),
    ) as { code: string; message: string };
    equal(forged.code, "ResourceExhausted");
    ok(forged.message.includes("4294967280"), forged.message);
  } finally {
    manager.abort();
    await new Promise((r) => server.close(r));
  }
});

Deno.test("serverStream runs the session's interceptors around the call", async () => {
  let seen: string | undefined;
  const server = http2.createServer();
  server.on("stream", (stream: http2.ServerHttp2Stream, headers) => {
    seen = String(headers.authorization);
    stream.resume();
    stream.once("end", () => withData([envelope(STARTED)], { "grpc-status": "0" })(stream));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const manager = new Http2SessionManager(baseUrl);
  try {
    let trailer: string | null = "";
    const events = await outcome(serverStream(
      {
        manager,
        baseUrl,
        interceptors: [(next) => async (req) => {
          req.header.set("authorization", "Bearer t");
          const res = await next(req);
          if (!res.stream) return res;
          return {
            ...res,
            message: (async function* () {
              yield* res.message;
              trailer = res.trailer.get("grpc-status");
            })(),
          };
        }],
      },
      WorkerService.method.run,
      create(RunRequestSchema, {}),
    ));
    deepEqual(events, { events: ["started"] });
    equal(seen, "Bearer t");
    equal(trailer, "0");
  } finally {
    manager.abort();
    await new Promise((r) => server.close(r));
  }
});
