// The client's direct client-streaming call (what addArtifacts uses) against a hostile HTTP/2
// server speaking gRPC: whatever it answers — an error before the body ends, a status in the
// headers, no status, an HTTP error, the wrong content type, no or two messages, a reset in the
// middle of the body — the call fails with the same code and message as Connect's gRPC transport
// and client give; a forged response length is refused before a byte of it is kept; a server
// that never answers is left by the caller's signal; the file the messages read is closed however
// the call ends (the test's resource sanitizer fails otherwise).
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  type AddArtifactsRequest,
  addArtifactsRequests,
  AddArtifactsResponseSchema,
  bytesArtifact,
  SparkConnectService,
} from "@valise/protocol";
import { clientStream, MAX_IN_FLIGHT_BYTES } from "./_client_stream.ts";
import { uploadMessages } from "./_client_stream_upload.ts";
import type { StreamCallTarget } from "./_server_stream.ts";

type Answer = (stream: http2.ServerHttp2Stream, body: Promise<number>) => void;

function envelope(message: Uint8Array, flags = 0): Uint8Array {
  const out = new Uint8Array(5 + message.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

const SESSION = "6d0f4c37-5b1c-4b4e-9b39-0a8b56f1d2a1";
const RESPONSE = toBinary(
  AddArtifactsResponseSchema,
  create(AddArtifactsResponseSchema, {
    sessionId: SESSION,
    serverSideSessionId: "s",
    artifacts: [{ name: "files/a", isCrcSuccessful: true }],
  }),
);
const GRPC = { ":status": 200, "content-type": "application/grpc+proto" };

/** Answers once the body ended, with data, then trailers (or none). */
function afterBody(chunks: Uint8Array[], trailers: Record<string, string> | undefined): Answer {
  return (stream, body) => {
    body.then(() => {
      if (stream.closed) return;
      stream.respond(GRPC, { waitForTrailers: trailers !== undefined });
      if (trailers) stream.once("wantTrailers", () => stream.sendTrailers(trailers));
      for (const c of chunks) stream.write(c);
      stream.end();
    });
  };
}

const ANSWERS: Record<string, Answer> = {
  "a response and OK": afterBody([envelope(RESPONSE)], { "grpc-status": "0" }),
  "two responses": afterBody([envelope(RESPONSE), envelope(RESPONSE)], { "grpc-status": "0" }),
  "no response and OK": afterBody([], { "grpc-status": "0" }),
  "a compressed response": afterBody([envelope(RESPONSE, 1)], { "grpc-status": "0" }),
  "garbage for a response": afterBody([envelope(new Uint8Array([0xff, 0xff, 0xff]))], {
    "grpc-status": "0",
  }),
  "a body cut inside an envelope": afterBody([envelope(RESPONSE).subarray(0, 9)], {
    "grpc-status": "0",
  }),
  "no status at all": afterBody([envelope(RESPONSE)], undefined),
  "an error in the trailers": afterBody([], {
    "grpc-status": String(Code.PermissionDenied),
    "grpc-message": encodeURIComponent("not yours"),
  }),
  // A gRPC server may refuse an upload at its first message, before the body ends.
  "an error before the body ends": (stream) => {
    stream.respond(
      { ...GRPC, "grpc-status": String(Code.ResourceExhausted), "grpc-message": "x" },
      {
        endStream: true,
      },
    );
  },
  "a status in the headers": (stream, body) => {
    body.then(() => {
      stream.respond({ ...GRPC, "grpc-status": String(Code.NotFound), "grpc-message": "gone" }, {
        endStream: true,
      });
    });
  },
  "an HTTP error": (stream, body) => {
    body.then(() => {
      stream.respond({ ":status": 503, "content-type": "text/plain" });
      stream.end("busy");
    });
  },
  "the wrong content type": (stream, body) => {
    body.then(() => {
      stream.respond({ ":status": 200, "content-type": "text/html" });
      stream.end("<html>");
    });
  },
  "a reset in the middle of the body": (stream) => {
    let seen = 0;
    stream.on("data", (d: Uint8Array) => {
      seen += d.length;
      if (seen > 100_000 && !stream.closed) stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
    });
  },
};

/** A hostile server: answers each call with the current answer, counting the body's bytes. */
async function hostile(): Promise<{
  target: StreamCallTarget;
  baseUrl: string;
  set(a: Answer): void;
  close(): Promise<void>;
}> {
  let answer: Answer = ANSWERS["a response and OK"]!;
  const server = http2.createServer();
  server.on("stream", (stream: http2.ServerHttp2Stream) => {
    stream.on("error", () => {/* the client may reset */});
    let n = 0;
    const body = new Promise<number>((resolve) => {
      stream.on("data", (d: Uint8Array) => (n += d.length));
      stream.once("end", () => resolve(n));
    });
    answer(stream, body);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const manager = new Http2SessionManager(baseUrl);
  return {
    target: { manager, baseUrl, interceptors: [] },
    baseUrl,
    set: (a) => (answer = a),
    async close() {
      manager.abort();
      await new Promise((r) => server.close(r));
    },
  };
}

async function outcome(call: Promise<unknown>): Promise<unknown> {
  try {
    const res = await call as { artifacts: unknown[] };
    return { artifacts: res.artifacts.length };
  } catch (e) {
    const c = ConnectError.from(e);
    return { code: Code[c.code], message: c.rawMessage };
  }
}

function requests(): AsyncGenerator<AddArtifactsRequest> {
  return addArtifactsRequests([bytesArtifact("files/a", new Uint8Array(3 * 2 ** 20 + 7))], {
    sessionId: SESSION,
    chunkSize: 2 ** 20,
  });
}

Deno.test("clientStream answers a hostile server's replies as Connect's gRPC transport does", async () => {
  const h = await hostile();
  const connect = createClient(SparkConnectService, createGrpcTransport({ baseUrl: h.baseUrl }));
  try {
    for (const [name, a] of Object.entries(ANSWERS)) {
      h.set(a);
      const direct = await outcome(
        clientStream(h.target, SparkConnectService.method.addArtifacts, requests()),
      );
      const viaConnect = await outcome(connect.addArtifacts(requests()));
      deepEqual(direct, viaConnect, `${name}: ${JSON.stringify([direct, viaConnect])}`);
    }
  } finally {
    await h.close();
  }
});

Deno.test("clientStream refuses a forged response length before keeping its bytes", async () => {
  const h = await hostile();
  try {
    h.set(afterBody([new Uint8Array([0, 0xff, 0xff, 0xff, 0xf0, 1, 2])], { "grpc-status": "0" }));
    const forged = await outcome(
      clientStream(h.target, SparkConnectService.method.addArtifacts, requests()),
    ) as { code: string; message: string };
    equal(forged.code, "ResourceExhausted");
    ok(forged.message.includes("4294967280"), forged.message);
  } finally {
    await h.close();
  }
});

Deno.test("clientStream: a server that never answers is left by the signal, the file closed", async () => {
  const h = await hostile();
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f");
    const data = new Uint8Array(8 * 2 ** 20).map((_, i) => i * 7);
    await Deno.writeFile(path, data);
    const sha256 = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", data)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    // Reads the body, never answers: the client's messages wait on flow control, then on nothing.
    h.set((stream) => stream.resume());
    let sent = 0;
    const abort = new AbortController();
    const call = clientStream(
      h.target,
      SparkConnectService.method.addArtifacts,
      uploadMessages(
        { name: "files/f", path, size: data.length, sha256 },
        {
          sessionId: SESSION,
        },
        2 ** 20,
        (n) => {
          sent = n;
          if (n === data.length) abort.abort();
        },
      ),
      abort.signal,
    );
    const r = await outcome(call) as { code: string };
    equal(r.code, "Canceled");
    equal(sent, data.length);
    // A file that changed since it was hashed: its own error, the file closed too.
    h.set(ANSWERS["a response and OK"]!);
    await rejects(
      clientStream(
        h.target,
        SparkConnectService.method.addArtifacts,
        uploadMessages(
          { name: "files/f", path, size: data.length, sha256: "0".repeat(64) },
          {
            sessionId: SESSION,
          },
          2 ** 20,
          () => {},
        ),
      ),
      (e: Error) => /the file changed while it was being added/.test(e.message),
    );
  } finally {
    await h.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("clientStream runs the session's interceptors around the call", async () => {
  const h = await hostile();
  let seen: string | undefined;
  let messages = 0;
  const manager = h.target.manager;
  try {
    const res = await clientStream(
      {
        manager,
        baseUrl: h.baseUrl,
        interceptors: [(next) => (req) => {
          req.header.set("authorization", "Bearer t");
          seen = req.header.get("authorization") ?? undefined;
          if (!req.stream) return next(req);
          const inner = req.message;
          return next({
            ...req,
            message: (async function* () {
              for await (const m of inner) {
                messages++;
                yield m;
              }
            })(),
          });
        }],
      },
      SparkConnectService.method.addArtifacts,
      requests(),
    );
    equal(res.sessionId, SESSION);
    equal(seen, "Bearer t");
    equal(messages, 4);
  } finally {
    await h.close();
  }
});

Deno.test("clientStream: a server that reads nothing holds the file's reading at the in-flight bound", async () => {
  const h = await hostile();
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f");
    const data = new Uint8Array(64 * 2 ** 20);
    await Deno.writeFile(path, data);
    const sha256 = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", data)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    // Never reads: HTTP/2 flow control lets 64 KiB through, then holds the client.
    h.set((stream) => stream.pause());
    let sent = 0;
    const abort = new AbortController();
    const call = clientStream(
      h.target,
      SparkConnectService.method.addArtifacts,
      uploadMessages(
        { name: "files/f", path, size: data.length, sha256 },
        {
          sessionId: SESSION,
        },
        2 ** 20,
        (n) => (sent = n),
      ),
      abort.signal,
    );
    // However long it is given (a slow machine reads less, never more), the file is read at most
    // the in-flight bound, a chunk in hand and the windows ahead.
    await new Promise((r) => setTimeout(r, 1000));
    abort.abort();
    equal((await outcome(call) as { code: string }).code, "Canceled");
    ok(sent <= MAX_IN_FLIGHT_BYTES + 2 * 2 ** 20, `read ${sent} bytes of a stalled upload`);
  } finally {
    await h.close();
    await Deno.remove(dir, { recursive: true });
  }
});
