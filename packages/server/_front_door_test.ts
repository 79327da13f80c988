// Copyright 2026 the Valise authors. Apache-2.0 license.
import { equal, ok } from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  ConfigRequestSchema,
  SparkConnectService,
  StoreService,
  WorkerService,
} from "@valise/protocol";
import { methodReadMaxBytes } from "./_front_door.ts";
import { createValise } from "./valise.ts";

const MiB = 2 ** 20;

/** A request body that counts what is pulled from it and holds nothing in advance. */
function countedBody(
  bytes: Uint8Array,
): { body: ReadableStream<Uint8Array>; pulled: () => number } {
  let offset = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(c) {
      if (offset >= bytes.length) return c.close();
      const piece = bytes.subarray(offset, offset + 64 * 1024);
      offset += piece.length;
      c.enqueue(piece);
    },
  }, { highWaterMark: 0 });
  return { body, pulled: () => offset };
}

function envelope(message: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

Deno.test("fetch: a call without a valid token is refused in its protocol's form before any body byte is read", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-door-" });
  const valise = await createValise({ dataDir, tokens: [{ token: "t0k" }] });
  try {
    const url = "http://in-process/spark.connect.SparkConnectService/Config";
    const config = toBinary(
      ConfigRequestSchema,
      create(ConfigRequestSchema, { sessionId: "x".repeat(8 * MiB) }),
    );

    // Connect: HTTP 401 with a JSON error.
    const c = countedBody(config);
    const connect = await valise.fetch(
      new Request(url, {
        method: "POST",
        headers: { "content-type": "application/proto", "connect-protocol-version": "1" },
        body: c.body,
      }),
    );
    equal(connect.status, 401);
    const json = await connect.json();
    equal(json.code, "unauthenticated");
    ok(json.message.includes("has none"), json.message);
    equal(c.pulled(), 0);

    // gRPC-web: HTTP 200, grpc-status 16 in the trailer frame.
    const w = countedBody(envelope(config));
    const web = await valise.fetch(
      new Request(url, {
        method: "POST",
        headers: {
          "content-type": "application/grpc-web+proto",
          authorization: "Bearer wrong",
        },
        body: w.body,
      }),
    );
    equal(web.status, 200);
    const frame = new Uint8Array(await web.arrayBuffer());
    equal(frame[0], 0x80);
    const trailer = new TextDecoder().decode(frame.subarray(5));
    ok(trailer.includes("grpc-status: 16"), trailer);
    ok(decodeURIComponent(trailer).includes("token is wrong"), trailer);
    equal(w.pulled(), 0);

    // Health stays open; the right token passes.
    const health = await valise.fetch(
      new Request("http://in-process/grpc.health.v1.Health/Check", {
        method: "POST",
        headers: { "content-type": "application/json", "connect-protocol-version": "1" },
        body: "{}",
      }),
    );
    equal(health.status, 200);
    equal((await health.json()).status, "SERVING");
    const ok200 = await valise.fetch(
      new Request(url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "connect-protocol-version": "1",
          authorization: "Bearer t0k",
        },
        body: JSON.stringify({
          sessionId: crypto.randomUUID(),
          operation: { get: { keys: ["spark.sql.session.timeZone"] } },
        }),
      }),
    );
    equal(ok200.status, 200);
    equal((await ok200.json()).pairs[0].value, "UTC");
    // Paths the instance does not serve are left to the host, token or not.
    equal(
      await valise.handle(new Request("http://in-process/other", { method: "POST" })),
      undefined,
    );
  } finally {
    await valise.close();
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("methodReadMaxBytes(): small caps for small requests, the server-wide maximum for data", () => {
  const m = (
    s: typeof SparkConnectService | typeof StoreService | typeof WorkerService,
    n: string,
  ) => methodReadMaxBytes(s.methods.find((x) => x.name === n)!, 64 * MiB);
  equal(m(SparkConnectService, "Config"), 4 * MiB);
  equal(m(SparkConnectService, "ArtifactStatus"), 4 * MiB);
  equal(m(SparkConnectService, "ReleaseSession"), 64 * 1024);
  equal(m(StoreService, "HasBlobs"), 4 * MiB);
  equal(m(StoreService, "AttachArtifacts"), 16 * MiB);
  equal(m(SparkConnectService, "AddArtifacts"), 64 * MiB);
  equal(m(WorkerService, "Run"), 64 * MiB);
  equal(m(WorkerService, "Apply"), 64 * MiB);
  // Never above the server-wide maximum.
  equal(
    methodReadMaxBytes(StoreService.methods.find((x) => x.name === "AttachArtifacts")!, MiB),
    MiB,
  );
});
