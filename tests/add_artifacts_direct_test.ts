// Copyright 2026 the Valise authors. Apache-2.0 license.
// The server's direct AddArtifacts path (packages/server/_add_artifacts_direct.ts) against
// Connect's path on the same server, call by call: the same bodies, sent once as a plain gRPC call
// (the direct path) and once with a `grpc-timeout` (which only Connect's handler takes), get the
// same status, message and answer — good uploads, forged lengths, compressed flags, garbage, a
// body cut inside an envelope, no message, a bad name, a wrong CRC, a refused token. Then the
// attacks on the direct path: a body that never ends is ended by the idle limit, a client that
// never opens its window for the answer, a reset in the middle of an upload, a flood of forged
// lengths; the server keeps answering Health, commits nothing of a failed upload and its RSS
// stays bounded.
import { deepEqual, equal, ok } from "node:assert/strict";
import * as http2 from "node:http2";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  type AddArtifactsRequest,
  addArtifactsRequests,
  AddArtifactsRequestSchema,
  AddArtifactsResponseSchema,
  bytesArtifact,
  grpcEnvelope,
} from "@valise/protocol";
import { type ServerProcess, startServer } from "./_server.ts";
import { answered, serving } from "./_hostile.ts";

const PATH = "/spark.connect.SparkConnectService/AddArtifacts";
const MiB = 2 ** 20;
const GUARD_MS = 30_000;

interface Outcome {
  status: string | undefined;
  message: string | undefined;
  answer?: unknown;
}

/** Sends a body as one AddArtifacts call; `viaConnect` adds a deadline (Connect's path only). */
async function call(
  port: number,
  body: Uint8Array[],
  o: { viaConnect?: boolean; headers?: Record<string, string>; end?: boolean } = {},
): Promise<Outcome> {
  const client = http2.connect(`http://127.0.0.1:${port}`);
  client.on("error", () => {});
  try {
    const req = client.request({
      ":method": "POST",
      ":path": PATH,
      "content-type": "application/grpc",
      te: "trailers",
      ...(o.viaConnect ? { "grpc-timeout": "100S" } : {}),
      ...(o.headers ?? {}),
    });
    req.on("error", () => {});
    const chunks: Uint8Array[] = [];
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const done = new Promise<void>((resolve) => {
      req.on("response", (h) => (head = h));
      req.on("trailers", (t) => (trailers = t));
      req.on("data", (d: Uint8Array) => chunks.push(d));
      // Its end, or its close: a client that never ends its body gets its answer all the same.
      req.on("end", () => resolve());
      req.on("close", () => resolve());
    });
    for (const b of body) req.write(b);
    if (o.end !== false) req.end();
    await answered(done, "an AddArtifacts call", GUARD_MS);
    const status = trailers["grpc-status"] ?? head["grpc-status"];
    const message = trailers["grpc-message"] ?? head["grpc-message"];
    const out: Outcome = {
      status: status === undefined ? undefined : String(status),
      message: message === undefined ? undefined : decodeURIComponent(String(message)),
    };
    const bytes = concat(chunks);
    if (bytes.length >= 5) {
      const res = fromBinary(AddArtifactsResponseSchema, bytes.subarray(5));
      out.answer = res.artifacts.map((a) => [a.name, a.isCrcSuccessful]);
    }
    return out;
  } finally {
    client.close();
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) (out.set(p, at), at += p.length);
  return out;
}

async function encoded(
  sessionId: string,
  name: string,
  data: Uint8Array,
  chunkSize = 64 * 1024,
  edit?: (m: AddArtifactsRequest, i: number) => void,
): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  let i = 0;
  for await (
    const m of addArtifactsRequests([bytesArtifact(name, data)], {
      sessionId,
      userId: "u",
      chunkSize,
    })
  ) {
    edit?.(m, i++);
    out.push(grpcEnvelope(toBinary(AddArtifactsRequestSchema, m)));
  }
  return out;
}

function header(flags: number, length: number): Uint8Array {
  const h = new Uint8Array(5);
  h[0] = flags;
  new DataView(h.buffer).setUint32(1, length);
  return h;
}

/** The bodies both paths must answer alike, each for a fresh session. */
const BODIES: Record<string, (sessionId: string) => Promise<Uint8Array[]>> = {
  "a small file in a batch": (s) => encoded(s, "files/a.txt", new TextEncoder().encode("hello")),
  "a chunked file": (s) => encoded(s, "files/b.bin", new Uint8Array(300_000).fill(7)),
  "a wrong CRC": (s) =>
    encoded(s, "files/c.bin", new Uint8Array(200_000).fill(1), 64 * 1024, (m, i) => {
      if (i === 1 && m.payload.case === "chunk") m.payload.value.crc ^= 1n;
    }),
  "a forged 4 GiB length": async (s) => [
    ...(await encoded(s, "files/d.bin", new Uint8Array(100_000))).slice(0, 1),
    header(0, 0xffff_ffff),
  ],
  "a length just over the cap": () => Promise.resolve([header(0, 64 * MiB + 1)]),
  "a compressed flag": async (s) => {
    const [m] = await encoded(s, "files/e.txt", new Uint8Array(3));
    m![0] = 1;
    return [m!];
  },
  "garbage for a message": () =>
    Promise.resolve([grpcEnvelope(new Uint8Array([0xff, 0xff, 0xff, 0xff]))]),
  "a body cut inside an envelope (extra bytes)": async (s) => [
    ...(await encoded(s, "files/f.txt", new Uint8Array(10))),
    new Uint8Array([0, 0, 0]),
  ],
  "no message": () => Promise.resolve([]),
  "a bad artifact name": (s) => encoded(s, "../escape", new Uint8Array(10)),
  "chunks missing": async (s) =>
    (await encoded(s, "files/g.bin", new Uint8Array(300_000))).slice(0, 2),
  "a session id that is no UUID": () => encoded("not-a-uuid", "files/h.txt", new Uint8Array(1)),
};

async function withUploadServer(
  args: string[],
  fn: (s: ServerProcess, dataDir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "valise_add_direct_" });
  const dataDir = join(dir, "data");
  const s = await startServer({ dataDir, args: ["--quiet", ...args] });
  try {
    await fn(s, dataDir);
  } catch (e) {
    // Say how the server went: a crash of the runtime shows as its exit signal.
    const status = await s.stop();
    throw new Error(
      `${e instanceof Error ? e.message : e}\nserver exit: ${JSON.stringify(status)}`,
      {
        cause: e,
      },
    );
  } finally {
    await s.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("AddArtifacts: the direct path answers every body as Connect's path does", async () => {
  await withUploadServer([], async (s) => {
    for (const [name, body] of Object.entries(BODIES)) {
      const direct = await call(s.port, await body(crypto.randomUUID()));
      const viaConnect = await call(s.port, await body(crypto.randomUUID()), { viaConnect: true });
      deepEqual(direct, viaConnect, `${name}: ${JSON.stringify([direct, viaConnect])}`);
    }
    // And what was committed is the same: the good uploads are there, whole.
    const sessionId = crypto.randomUUID();
    const data = new Uint8Array(3 * MiB + 5).map((_, i) => i * 13);
    const ok1 = await call(s.port, await encoded(sessionId, "files/big.bin", data, MiB));
    deepEqual(ok1, { status: "0", message: undefined, answer: [["files/big.bin", true]] });
    const status = await s.clients.spark.artifactStatus({
      sessionId,
      userContext: { userId: "u" },
      names: ["files/big.bin"],
    });
    equal(status.statuses["files/big.bin"]?.exists, true);
  });
});

Deno.test("AddArtifacts: tokens and the users they are bound to, on both paths alike", async () => {
  const dir = await Deno.makeTempDir();
  const tokenFile = join(dir, "tokens");
  await Deno.writeTextFile(
    tokenFile,
    "token-of-u-1234567890 u\ntoken-of-alice-1234567 alice\ntoken-free-123456789\n",
  );
  try {
    await withUploadServer(["--token-file", tokenFile], async (s) => {
      // Small bodies (4 messages of 16 bytes): a refusal before the body ends races the end of a
      // large body, and the test's client may then see the reset without the status.
      const bodies: Record<string, () => Promise<Uint8Array[]>> = {
        "one user": () => encoded(crypto.randomUUID(), "files/a.bin", new Uint8Array(64), 16),
        // The binding holds for every message, not only the first.
        "another user in the third message": () =>
          encoded(
            crypto.randomUUID(),
            "files/b.bin",
            new Uint8Array(64),
            16,
            (m, i) => {
              if (i === 2) {
                m.userContext = {
                  $typeName: "spark.connect.UserContext",
                  userId: "x",
                  userName: "",
                  extensions: [],
                };
              }
            },
          ),
      };
      for (
        const auth of [
          undefined,
          "Bearer wrong",
          "Bearer token-of-u-1234567890",
          "Bearer token-of-alice-1234567",
          "Bearer token-free-123456789",
        ]
      ) {
        for (const [name, body] of Object.entries(bodies)) {
          const headers: Record<string, string> = auth ? { authorization: auth } : {};
          const direct = await call(s.port, await body(), { headers });
          const viaConnect = await call(s.port, await body(), { headers, viaConnect: true });
          deepEqual(direct, viaConnect, `${auth} ${name}: ${JSON.stringify([direct, viaConnect])}`);
          if (auth === "Bearer token-of-alice-1234567") {
            equal(direct.status, "7", JSON.stringify(direct));
          }
        }
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("AddArtifacts direct: a body that never ends is ended by the idle limit, nothing committed", async () => {
  await withUploadServer(["--stream-idle-timeout-s", "1"], async (s) => {
    const sessionId = crypto.randomUUID();
    const body = await encoded(sessionId, "files/slow.bin", new Uint8Array(300_000), 64 * 1024);
    const pending = call(s.port, body.slice(0, 2), { end: false });
    await serving(s, "Health while an upload stalls", GUARD_MS);
    const r = await pending;
    equal(r.status, "4", JSON.stringify(r)); // DEADLINE_EXCEEDED
    const status = await s.clients.spark.artifactStatus({
      sessionId,
      userContext: { userId: "u" },
      names: ["files/slow.bin"],
    });
    equal(status.statuses["files/slow.bin"]?.exists ?? false, false);
  });
});

Deno.test("AddArtifacts direct: window games, resets and forged lengths leave the server healthy and small", async () => {
  await withUploadServer([], async (s) => {
    // A client whose window for the answer is 0: the server cannot send it, and must not hang
    // on it; other calls go on.
    const stuck = http2.connect(`http://127.0.0.1:${s.port}`, {
      settings: { initialWindowSize: 0 },
    });
    stuck.on("error", () => {});
    const sessionId = crypto.randomUUID();
    const req = stuck.request({
      ":method": "POST",
      ":path": PATH,
      "content-type": "application/grpc",
    });
    req.on("error", () => {});
    req.on("response", () => {});
    const head = new Promise<void>((r) => req.once("response", () => r()));
    for (const b of await encoded(sessionId, "files/w.txt", new Uint8Array(10))) req.write(b);
    req.end();
    await answered(head, "the answer's headers to a client with a closed window", GUARD_MS);
    await serving(s, "Health beside a client with a closed window", GUARD_MS);
    stuck.destroy();

    const before = s.rss();
    // A reset in the middle of an upload: nothing of it is committed.
    const cut = http2.connect(`http://127.0.0.1:${s.port}`);
    cut.on("error", () => {});
    const r2 = cut.request({
      ":method": "POST",
      ":path": PATH,
      "content-type": "application/grpc",
    });
    r2.on("error", () => {});
    const cutSession = crypto.randomUUID();
    const body = await encoded(cutSession, "files/cut.bin", new Uint8Array(8 * MiB), MiB);
    for (const b of body.slice(0, 5)) r2.write(b);
    await new Promise<void>((r) => r2.write(new Uint8Array(0), () => r()));
    r2.close(http2.constants.NGHTTP2_CANCEL);
    cut.close();
    // Forged lengths just under the cap on many streams: nothing is kept until bytes come.
    const flood = http2.connect(`http://127.0.0.1:${s.port}`);
    flood.on("error", () => {});
    const streams: http2.ClientHttp2Stream[] = [];
    for (let i = 0; i < 50; i++) {
      const f = flood.request({
        ":method": "POST",
        ":path": PATH,
        "content-type": "application/grpc",
      });
      f.on("error", () => {});
      f.write(header(0, 64 * MiB - 1));
      f.write(new Uint8Array(1000));
      streams.push(f);
    }
    await serving(s, "Health during a flood of forged lengths", GUARD_MS);
    const grown = s.rss() - before;
    ok(
      grown < 64 * MiB,
      `RSS grew by ${(grown / MiB).toFixed(1)} MiB under 50 forged 64 MiB lengths`,
    );
    flood.destroy();
    const status = await s.clients.spark.artifactStatus({
      sessionId: cutSession,
      userContext: { userId: "u" },
      names: ["files/cut.bin"],
    });
    equal(status.statuses["files/cut.bin"]?.exists ?? false, false);
    // And an upload still goes through.
    const after = await call(
      s.port,
      await encoded(crypto.randomUUID(), "files/ok.bin", new Uint8Array(2 * MiB), MiB),
    );
    equal(after.status, "0");
  });
});

// A request type the direct path does not take still works: the message is Connect's.
Deno.test("AddArtifacts: a request built by create() is answered whole on the direct path", async () => {
  await withUploadServer([], async (s) => {
    const m = create(AddArtifactsRequestSchema, {
      sessionId: crypto.randomUUID(),
      userContext: { userId: "u" },
      payload: {
        case: "batch",
        value: {
          artifacts: [{ name: "files/x.txt", data: { data: new Uint8Array([1]), crc: 0n } }],
        },
      },
    });
    const r = await call(s.port, [grpcEnvelope(toBinary(AddArtifactsRequestSchema, m))]);
    deepEqual(r, { status: "0", message: undefined, answer: [["files/x.txt", false]] });
  });
});
