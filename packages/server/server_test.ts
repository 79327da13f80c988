// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, notEqual, ok } from "node:assert/strict";
import * as http2 from "node:http2";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  createConnectTransport as createWebConnectTransport,
  createGrpcWebTransport as createWebGrpcTransport,
} from "@connectrpc/connect-web";
import {
  addArtifactsRequests,
  type ArtifactSource,
  bytesArtifact,
  ConfigRequest_OperationSchema,
  ErrorInfoSchema,
  Health,
  HealthCheckResponse_ServingStatus,
  SparkConnectService,
  StoreService,
} from "@valise/protocol";
import { serve } from "./serve.ts";
import { createValise } from "./valise.ts";

async function withServer(
  fn: (
    ctx: { port: number; dataDir: string; lines: string[]; url: string },
  ) => Promise<void>,
  opts: { token?: string } = {},
): Promise<void> {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-srv-" });
  const lines: string[] = [];
  const server = await serve({
    dataDir,
    port: 0,
    log: (l) => lines.push(l),
    ...(opts.token ? { token: opts.token } : {}),
  });
  try {
    await fn({ port: server.port, dataDir, lines, url: `http://127.0.0.1:${server.port}` });
  } finally {
    await server.close();
    await new Deno.Command("chmod", { args: ["-R", "u+w", dataDir] }).output();
    await Deno.remove(dataDir, { recursive: true });
  }
}

function grpcClient(url: string, headers: Record<string, string> = {}) {
  const transport = createGrpcTransport({
    baseUrl: url,
    interceptors: [(next) => (req) => {
      for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
      return next(req);
    }],
  });
  return createClient(SparkConnectService, transport);
}

async function* each<T>(items: T[]): AsyncGenerator<T> {
  yield* items;
}

function errorInfo(e: unknown): Record<string, string> {
  const err = ConnectError.from(e);
  const [info] = err.findDetails(ErrorInfoSchema);
  return { code: Code[err.code], message: err.rawMessage, ...(info?.metadata ?? {}) };
}

async function fails(p: Promise<unknown>): Promise<Record<string, string>> {
  try {
    await p;
  } catch (e) {
    return errorInfo(e);
  }
  throw new Error("expected the call to fail");
}

function sessionDir(dataDir: string): Promise<string> {
  return (async () => {
    const users = await Array.fromAsync(Deno.readDir(join(dataDir, "sessions")));
    const u = join(dataDir, "sessions", users[0]!.name);
    const sessions = await Array.fromAsync(Deno.readDir(u));
    return join(u, sessions[0]!.name);
  })();
}

Deno.test("AddArtifacts over gRPC stores every byte, batched and chunked like PySpark", async () => {
  await withServer(async ({ url, dataDir, lines }) => {
    const client = grpcClient(url);
    const sessionId = crypto.randomUUID();
    const big = new Uint8Array(300_000).map((_, i) => (i * 131) & 0xff);
    const res = await client.addArtifacts(addArtifactsRequests([
      bytesArtifact("pyfiles/mylib.py", new TextEncoder().encode("VERSION = 2\n")),
      bytesArtifact("files/empty", new Uint8Array(0)),
      bytesArtifact("files/big.bin", big),
    ], { sessionId, userId: "ada" }));
    equal(res.sessionId, sessionId);
    notEqual(res.serverSideSessionId, "");
    deepEqual(res.artifacts.map((a) => [a.name, a.isCrcSuccessful]), [
      ["pyfiles/mylib.py", true],
      ["files/empty", true],
      ["files/big.bin", true],
    ]);
    const dir = await sessionDir(dataDir);
    equal(await Deno.readTextFile(join(dir, "root/mylib.py")), "VERSION = 2\n");
    deepEqual(await Deno.readFile(join(dir, "root/big.bin")), big);
    equal((await Deno.readFile(join(dir, "root/empty"))).length, 0);
    ok(lines.some((l) => l.startsWith("rpc spark.connect.SparkConnectService/AddArtifacts OK")));
  });
});

Deno.test("AddArtifacts reports CRC failures and keeps the bad artifact out", async () => {
  await withServer(async ({ url, dataDir }) => {
    const client = grpcClient(url);
    const sessionId = crypto.randomUUID();
    const reqs = [];
    for await (
      const r of addArtifactsRequests([bytesArtifact("files/a", new Uint8Array([1, 2, 3]))], {
        sessionId,
      })
    ) reqs.push(r);
    if (reqs[0]!.payload.case === "batch") reqs[0]!.payload.value.artifacts[0]!.data!.crc = 1n;
    const res = await client.addArtifacts(each(reqs));
    deepEqual(res.artifacts.map((a) => a.isCrcSuccessful), [false]);
    const dir = await sessionDir(dataDir);
    deepEqual(await Array.fromAsync(Deno.readDir(join(dir, "root"))), []);
  });
});

Deno.test("AddArtifacts errors carry Spark's error class, the right code and ErrorInfo", async () => {
  await withServer(async ({ url, dataDir }) => {
    const client = grpcClient(url);
    const sessionId = crypto.randomUUID();
    const add = (name: string, text: string) =>
      client.addArtifacts(addArtifactsRequests(
        [bytesArtifact(name, new TextEncoder().encode(text))],
        { sessionId },
      ));
    await add("pyfiles/m.py", "one");
    const dup = await fails(add("pyfiles/m.py", "two"));
    equal(dup.code, "AlreadyExists");
    equal(dup.errorClass, "ARTIFACT_ALREADY_EXISTS");
    equal(dup.sqlState, "42713");
    equal(dup.messageParameters, JSON.stringify({ normalizedRemoteRelativePath: "pyfiles/m.py" }));
    ok(
      dup.message!.startsWith("[ARTIFACT_ALREADY_EXISTS] The artifact pyfiles/m.py already exists"),
    );
    const escape = await fails(add("../../etc/passwd", "x"));
    equal(escape.code, "InvalidArgument");
    equal(escape.errorClass, "INVALID_ARTIFACT_PATH");
    const badId = await fails(
      client.addArtifacts(
        addArtifactsRequests([bytesArtifact("files/x", new Uint8Array(1))], { sessionId: "x" }),
      ),
    );
    equal(badId.errorClass, "INVALID_HANDLE.FORMAT");
    // Chunk without begin: the stream fails and leaves nothing behind.
    const orphan = await fails(client.addArtifacts(each([{
      sessionId,
      payload: { case: "chunk", value: { data: new Uint8Array(5), crc: 0n } },
    } as never])));
    equal(orphan.errorClass, "INVALID_ARTIFACT_STREAM");
    const empty = await fails(client.addArtifacts(each([])));
    equal(empty.errorClass, "INVALID_ARTIFACT_STREAM");
    deepEqual(await Array.fromAsync(Deno.readDir(join(dataDir, "staging"))), []);
    const dir = await sessionDir(dataDir);
    equal(await Deno.readTextFile(join(dir, "root/m.py")), "one");
  });
});

Deno.test("A broken upload stream leaves no half-written artifact", async () => {
  await withServer(async ({ url, dataDir }) => {
    const client = grpcClient(url);
    const sessionId = crypto.randomUUID();
    const ac = new AbortController();
    const source: ArtifactSource = {
      name: "files/huge.bin",
      size: 10_000_000,
      async *read() {
        for (let i = 0; i < 100; i++) {
          yield new Uint8Array(32768);
          if (i === 20) {
            // Give the server time to write what it got, then break the stream.
            await new Promise((r) => setTimeout(r, 100));
            ac.abort();
          }
        }
      },
    };
    await fails(client.addArtifacts(addArtifactsRequests([source], { sessionId }), {
      signal: ac.signal,
    }));
    // The server notices the reset asynchronously.
    for (let i = 0; i < 50; i++) {
      const left = await Array.fromAsync(Deno.readDir(join(dataDir, "staging")));
      if (left.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    deepEqual(await Array.fromAsync(Deno.readDir(join(dataDir, "staging"))), []);
    const dir = await sessionDir(dataDir);
    deepEqual(await Array.fromAsync(Deno.readDir(join(dir, "root"))), []);
    deepEqual(await Array.fromAsync(Deno.readDir(join(dataDir, "blobs/sha256"))), []);
  });
});

Deno.test("ArtifactStatus reports cache blobs and the session's own artifacts only", async () => {
  await withServer(async ({ url }) => {
    const client = grpcClient(url);
    const sessionId = crypto.randomUUID();
    const blob = new TextEncoder().encode("arrow-bytes");
    const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", blob)))
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    const name = `cache/${digest}`;
    let st = await client.artifactStatus({ sessionId, names: [name] });
    equal(st.statuses[name]?.exists, false);
    await client.addArtifacts(addArtifactsRequests([bytesArtifact(name, blob)], { sessionId }));
    st = await client.artifactStatus({ sessionId, names: [name, "files/nope"] });
    equal(st.statuses[name]?.exists, true);
    equal(st.statuses["files/nope"]?.exists, false);
    // Another user with the same session id sees another, empty session.
    st = await client.artifactStatus({ sessionId, names: [name], userContext: { userId: "eve" } });
    equal(st.statuses[name]?.exists, false);
  });
});

Deno.test("Config follows Spark: Set/Get/GetOption/GetAll/Unset/IsModifiable", async () => {
  await withServer(async ({ url }) => {
    const client = grpcClient(url);
    const sessionId = crypto.randomUUID();
    const op = (o: object) => create(ConfigRequest_OperationSchema, { opType: o as never });
    const first = await client.config({
      sessionId,
      operation: op({
        case: "set",
        value: { pairs: [{ key: "spark.sql.execution.pyspark.python", value: "env/bin/python" }] },
      }),
    });
    notEqual(first.serverSideSessionId, "");
    equal(first.sessionId, sessionId);
    const got = await client.config({
      sessionId,
      clientObservedServerSideSessionId: first.serverSideSessionId,
      operation: op({ case: "get", value: { keys: ["spark.sql.execution.pyspark.python"] } }),
    });
    equal(got.pairs[0]?.value, "env/bin/python");
    equal(got.serverSideSessionId, first.serverSideSessionId);
    const missing = await fails(client.config({
      sessionId,
      operation: op({ case: "get", value: { keys: ["spark.nope"] } }),
    }));
    equal(missing.errorClass, "SQL_CONF_NOT_FOUND");
    const option = await client.config({
      sessionId,
      operation: op({ case: "getOption", value: { keys: ["spark.nope"] } }),
    });
    equal(option.pairs[0]?.key, "spark.nope");
    equal(option.pairs[0]?.value, undefined);
    const withDefault = await client.config({
      sessionId,
      operation: op({
        case: "getWithDefault",
        value: { pairs: [{ key: "spark.nope", value: "d" }] },
      }),
    });
    equal(withDefault.pairs[0]?.value, "d");
    const all = await client.config({
      sessionId,
      operation: op({ case: "getAll", value: { prefix: "spark.sql.execution.pyspark." } }),
    });
    deepEqual(all.pairs.map((p) => [p.key, p.value]), [["python", "env/bin/python"]]);
    const silent = await client.config({
      sessionId,
      operation: op({
        case: "set",
        value: {
          pairs: [{ key: "spark.connect.grpc.binding.port", value: "1" }, {
            key: "spark.a",
            value: "b",
          }],
          silent: true,
        },
      }),
    });
    equal(silent.warnings.length, 1);
    ok(silent.warnings[0]!.startsWith("Failed to set spark.connect.grpc.binding.port to Some(1)"));
    await client.config({
      sessionId,
      operation: op({ case: "unset", value: { keys: ["spark.a"] } }),
    });
    const gone = await fails(client.config({
      sessionId,
      operation: op({ case: "get", value: { keys: ["spark.a"] } }),
    }));
    equal(gone.errorClass, "SQL_CONF_NOT_FOUND");
    const mod = await client.config({
      sessionId,
      operation: op({
        case: "isModifiable",
        value: { keys: ["spark.sql.ansi.enabled", "spark.connect.x"] },
      }),
    });
    deepEqual(mod.pairs.map((p) => p.value), ["true", "false"]);
    const changed = await fails(client.config({
      sessionId,
      clientObservedServerSideSessionId: crypto.randomUUID(),
      operation: op({ case: "get", value: { keys: ["spark.sql.session.timeZone"] } }),
    }));
    equal(changed.errorClass, "INVALID_HANDLE.SESSION_CHANGED");
  });
});

Deno.test("ReleaseSession deletes the session's files and closes it", async () => {
  await withServer(async ({ url, dataDir }) => {
    const client = grpcClient(url);
    const sessionId = crypto.randomUUID();
    const added = await client.addArtifacts(addArtifactsRequests([
      bytesArtifact("pyfiles/m.py", new Uint8Array([1])),
    ], { sessionId }));
    const dir = await sessionDir(dataDir);
    const rel = await client.releaseSession({ sessionId });
    equal(rel.sessionId, sessionId);
    equal(rel.serverSideSessionId, added.serverSideSessionId);
    let exists = true;
    await Deno.stat(dir).catch(() => (exists = false));
    equal(exists, false);
    const closed = await fails(client.artifactStatus({ sessionId, names: [] }));
    equal(closed.errorClass, "INVALID_HANDLE.SESSION_CLOSED");
    const unknown = await client.releaseSession({ sessionId: crypto.randomUUID() });
    equal(unknown.serverSideSessionId, "");
  });
});

Deno.test("Unknown methods answer UNIMPLEMENTED; health answers SERVING", async () => {
  await withServer(async ({ url }) => {
    const session = http2.connect(url);
    try {
      const status = await new Promise<string>((resolve, reject) => {
        const req = session.request({
          ":method": "POST",
          ":path": "/spark.connect.SparkConnectService/GetStatus",
          "content-type": "application/grpc",
          te: "trailers",
        });
        req.on("trailers", (t) => resolve(String(t["grpc-status"])));
        req.on("response", (h) => {
          if (h["grpc-status"]) resolve(String(h["grpc-status"]));
        });
        req.on("error", reject);
        req.resume();
        req.end(new Uint8Array(5));
      });
      equal(status, String(Code.Unimplemented));
    } finally {
      session.close();
    }
    const health = createClient(Health, createGrpcTransport({ baseUrl: url }));
    equal(
      (await health.check({ service: "spark.connect.SparkConnectService" })).status,
      HealthCheckResponse_ServingStatus.SERVING,
    );
  });
});

Deno.test("With a token, every RPC needs the bearer header", async () => {
  await withServer(async ({ url }) => {
    const sessionId = crypto.randomUUID();
    const anon = await fails(grpcClient(url).artifactStatus({ sessionId, names: [] }));
    equal(anon.code, "Unauthenticated");
    const wrong = await fails(
      grpcClient(url, { authorization: "Bearer nope" }).artifactStatus({ sessionId, names: [] }),
    );
    equal(wrong.code, "Unauthenticated");
    const res = await grpcClient(url, { authorization: "Bearer s3cret" }).artifactStatus({
      sessionId,
      names: [],
    });
    equal(res.sessionId, sessionId);
  }, { token: "s3cret" });
});

Deno.test("StoreService attaches blobs the server holds, by digest, without bytes", async () => {
  await withServer(async ({ url, dataDir }) => {
    const transport = createGrpcTransport({ baseUrl: url });
    const spark = createClient(SparkConnectService, transport);
    const storeClient = createClient(StoreService, transport);
    const bytes = new TextEncoder().encode("shared env bytes");
    const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)))
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    const a = crypto.randomUUID();
    const b = crypto.randomUUID();
    equal((await storeClient.hasBlobs({ sessionId: a, sha256: [digest] })).present.length, 0);
    await spark.addArtifacts(
      addArtifactsRequests([bytesArtifact("files/x", bytes)], { sessionId: a }),
    );
    deepEqual(
      (await storeClient.hasBlobs({ sessionId: b, sha256: [digest, "0".repeat(64)] })).present,
      [
        digest,
      ],
    );
    const att = await storeClient.attachArtifacts({
      sessionId: b,
      artifacts: [{ name: "files/y", sha256: digest }],
    });
    deepEqual(att.attached, ["files/y"]);
    const missing = await fails(storeClient.attachArtifacts({
      sessionId: b,
      artifacts: [{ name: "files/z", sha256: "1".repeat(64) }],
    }));
    equal(missing.errorClass, "BLOB_NOT_FOUND");
    const st = await spark.artifactStatus({ sessionId: b, names: ["files/y"] });
    equal(st.statuses["files/y"]?.exists, true);
    const users = await Array.fromAsync(Deno.readDir(join(dataDir, "sessions")));
    const udir = join(dataDir, "sessions", users[0]!.name);
    const yPath = join(udir, b, "root/y");
    equal(await Deno.readTextFile(yPath), "shared env bytes");
  });
});

Deno.test("createValise().fetch serves the Connect and gRPC-web protocols", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-fetch-" });
  const valise = await createValise({ dataDir });
  try {
    const fetch = (input: RequestInfo | URL, init?: RequestInit) =>
      valise.fetch(new Request(input, init));
    for (
      const transport of [
        createWebConnectTransport({ baseUrl: "http://in-process", fetch }),
        createWebGrpcTransport({ baseUrl: "http://in-process", fetch }),
      ]
    ) {
      const client = createClient(SparkConnectService, transport);
      const sessionId = crypto.randomUUID();
      const res = await client.config({
        sessionId,
        operation: create(ConfigRequest_OperationSchema, {
          opType: { case: "get", value: { keys: ["spark.sql.session.timeZone"] } },
        }),
      });
      equal(res.pairs[0]?.value, "UTC");
      const err = await fails(client.config({
        sessionId: "bad",
        operation: create(ConfigRequest_OperationSchema, {
          opType: { case: "get", value: { keys: ["x"] } },
        }),
      }));
      equal(err.errorClass, "INVALID_HANDLE.FORMAT");
    }
    equal((await valise.fetch(new Request("http://x/nope", { method: "POST" }))).status, 404);
    equal(await valise.handle(new Request("http://x/nope", { method: "POST" })), undefined);
  } finally {
    await valise.close();
    await Deno.remove(dataDir, { recursive: true });
  }
});
