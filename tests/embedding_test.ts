import { equal } from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { ConfigRequest_OperationSchema, SparkConnectService } from "@valise/protocol";
import { createValise } from "@valise/server";
import { createApp } from "../examples/embedding/app.ts";

Deno.test("the embedding example serves Valise inside Hono and Deno.serve, behind a token", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-embed-" });
  const valise = await createValise({ dataDir });
  const app = createApp(valise, "s3cret");
  const hono = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, app.fetch);
  const plain = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, valise.fetch);
  try {
    const op = create(ConfigRequest_OperationSchema, {
      opType: { case: "get", value: { keys: ["spark.sql.session.timeZone"] } },
    });
    const withToken = (token: string) => (next: (r: never) => never) => (req: never) => {
      (req as { header: Headers }).header.set("authorization", `Bearer ${token}`);
      return next(req);
    };
    const honoUrl = `http://127.0.0.1:${hono.addr.port}/valise`;
    for (const make of [createConnectTransport, createGrpcWebTransport]) {
      const ok = createClient(
        SparkConnectService,
        make({ baseUrl: honoUrl, interceptors: [withToken("s3cret") as never] }),
      );
      const res = await ok.config({ sessionId: crypto.randomUUID(), operation: op });
      equal(res.pairs[0]?.value, "UTC");
      const bad = createClient(
        SparkConnectService,
        make({ baseUrl: honoUrl, interceptors: [withToken("wrong") as never] }),
      );
      let code: Code | undefined;
      try {
        await bad.config({ sessionId: crypto.randomUUID(), operation: op });
      } catch (e) {
        code = ConnectError.from(e).code;
      }
      equal(code, Code.Unauthenticated);
    }
    // The host's own routes still answer.
    equal(await (await fetch(`http://127.0.0.1:${hono.addr.port}/healthz`)).text(), "ok");
    // And Valise mounts in plain Deno.serve as well.
    const direct = createClient(
      SparkConnectService,
      createConnectTransport({ baseUrl: `http://127.0.0.1:${plain.addr.port}` }),
    );
    equal(
      (await direct.config({ sessionId: crypto.randomUUID(), operation: op })).pairs[0]?.value,
      "UTC",
    );
  } finally {
    await hono.shutdown();
    await plain.shutdown();
    await valise.close();
    await Deno.remove(dataDir, { recursive: true });
  }
});
