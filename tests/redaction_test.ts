// Error messages a client receives name the client's own things, never the server's paths; the
// server's log keeps the full messages. Provoked against a real `serve` process: a bad
// interpreter inside the session, an artifact colliding with a file a run wrote, archives that
// fail to unpack.
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import {
  addArtifactsRequests,
  bytesArtifact,
  ConfigRequest_OperationSchema,
  ErrorInfoSchema,
} from "@valise/protocol";
import { makeTar } from "../packages/archive/testdata/archive_writers.ts";
import { startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

async function failure(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    return ConnectError.from(e);
  }
  throw new Error("expected the call to fail");
}

/** Everything of an error a client can read: message, ErrorInfo reason and metadata. */
function clientVisible(e: ConnectError): string {
  const info = e.findDetails(ErrorInfoSchema)[0];
  return [e.rawMessage, info?.reason ?? "", ...Object.values(info?.metadata ?? {})].join("\n");
}

Deno.test("errors sent to clients hide the data directory; the server log keeps it", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-redact-" });
  const dataDir = join(tmp, "data");
  const server = await startServer({ dataDir });
  const { spark, worker } = server.clients;
  const run = (sessionId: string, code: string) =>
    Array.fromAsync(worker.run({ sessionId, target: { case: "code", value: code } }));
  const setConf = (sessionId: string, key: string, value: string) =>
    spark.config({
      sessionId,
      operation: create(ConfigRequest_OperationSchema, {
        opType: { case: "set", value: { pairs: [{ key, value }] } },
      }),
    });
  const add = (sessionId: string, name: string, bytes: Uint8Array) =>
    spark.addArtifacts(addArtifactsRequests([bytesArtifact(name, bytes)], { sessionId }));
  try {
    // Each failure, and the error class its server-side log line carries.
    const errors: { what: string; errorClass: string; e: ConnectError; path?: boolean }[] = [];

    // An interpreter path inside the session that does not exist.
    const a = crypto.randomUUID();
    await setConf(a, "spark.sql.execution.pyspark.python", "env/bin/python");
    const missing = await failure(run(a, "print(1)"));
    errors.push({ what: "missing interpreter", errorClass: "NOT_FOUND", e: missing });
    ok(missing.rawMessage.includes("./env/bin/python"), missing.rawMessage);

    // An interpreter inside the session that exists but dies before it is ready.
    const b = crypto.randomUUID();
    await run(
      b,
      "import os\n" +
        "open('fakepy', 'w').write('#!/bin/sh\\necho cannot start \"$0\" in \"$PWD\" >&2\\nexit 3\\n')\n" +
        "os.chmod('fakepy', 0o755)",
    );
    await setConf(b, "spark.sql.execution.pyspark.python", "fakepy");
    const broken = await failure(run(b, "print(1)"));
    errors.push({ what: "broken interpreter", errorClass: "PYTHON_INTERPRETER.FAILED", e: broken });
    ok(broken.rawMessage.includes("cannot start"), broken.rawMessage);

    // An artifact colliding with a file a run wrote in the working directory.
    const c = crypto.randomUUID();
    await run(c, "open('taken.txt', 'w').write('mine')");
    const collision = await failure(add(c, "files/taken.txt", new TextEncoder().encode("x")));
    // Its message names only the session's own names: no path to keep in the log either.
    errors.push({
      what: "collision",
      errorClass: "ARTIFACT_ALREADY_EXISTS",
      e: collision,
      path: false,
    });
    ok(collision.rawMessage.includes("./taken.txt"), collision.rawMessage);

    // A conda-pack environment whose conda-unpack cannot run (it has no bin/python).
    const d = crypto.randomUUID();
    const conda = makeTar([{ name: "bin/conda-unpack", data: "print('unpacked')\n", mode: 0o755 }]);
    const unpack = await failure(add(d, "archives/env.tar#env", conda));
    errors.push({ what: "failed unpack", errorClass: "ARTIFACT_UNPACK_FAILED", e: unpack });
    ok(unpack.rawMessage.includes("conda"), unpack.rawMessage);

    for (const { what, errorClass, e, path = true } of errors) {
      const text = clientVisible(e);
      ok(!text.includes(tmp), `${what}: the client sees a server path: ${text}`);
      ok(!text.includes(dataDir), `${what}: the client sees the data directory: ${text}`);
      // The server's log has the full message, path included.
      ok(
        server.log.some((l) => l.includes(errorClass) && (!path || l.includes(dataDir))),
        `${what}: no log line with ${errorClass} and the data directory:\n${server.log.join("\n")}`,
      );
    }
    equal(errors.length, 4);
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
});
