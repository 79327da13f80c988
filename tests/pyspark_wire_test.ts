// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The real PySpark client (`pyspark.sql.SparkSession.builder.remote`, from the project's
 * `.venv/`) against a Valise server on a loopback port: what it adds ends up on disk byte for
 * byte, its config calls behave as with Spark, what Valise does not serve (queries) fails with a
 * clear error class, `spark.stop()` releases the session. Broken upload streams (a bad CRC, a
 * stream that ends mid-artifact) are sent with the grpcio stand-in `spark_artifacts.py`, since
 * the real client never sends them.
 *
 * @module
 */
import { deepEqual, equal, notEqual, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { serve } from "@valise/server";
import { makeVenvPack } from "./fixtures/envs.ts";
import { needsVenv, VENV_PYTHON } from "./_python.ts";
import { removeTree } from "./_util.ts";

const OPS = new URL("./python/pyspark_ops.py", import.meta.url).pathname;
const STAND_IN = new URL("./python/spark_artifacts.py", import.meta.url).pathname;
const PY = "spark.sql.execution.pyspark.python";
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

interface PySparkError {
  type: string;
  errorClass: string | null;
  sqlState: string | null;
  grpcCode?: string;
  message: string;
}
type OpResult = { ok: true; value: unknown } | { ok: false; error: PySparkError };

/** Runs `pyspark_ops.py` (real PySpark) with these operations; one result per operation. */
async function pyspark(remote: string, ops: Record<string, unknown>[]): Promise<OpResult[]> {
  const out = await new Deno.Command(VENV_PYTHON, {
    args: [OPS, "--remote", remote, JSON.stringify(ops)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  try {
    return (JSON.parse(text) as { results: OpResult[] }).results;
  } catch {
    throw new Error(
      `pyspark_ops.py printed no JSON: ${text}\n${new TextDecoder().decode(out.stderr)}`,
    );
  }
}

function value(r: OpResult | undefined): unknown {
  ok(r?.ok, JSON.stringify(r));
  return r.value;
}

function failure(r: OpResult | undefined): PySparkError {
  ok(r && !r.ok, `expected an error, got ${JSON.stringify(r)}`);
  return r.error;
}

function wireTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ ...needsVenv(name), fn });
}

wireTest(
  "real PySpark: addArtifacts of .py, .zip, archive#alias and files lands byte for byte",
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-pyspark-" });
    const server = await serve({ dataDir: join(tmp, "data"), port: 0 });
    try {
      const files = join(tmp, "files");
      await Deno.mkdir(join(files, "zipped", "ziplib"), { recursive: true });
      await Deno.writeTextFile(join(files, "mylib.py"), "VERSION = 2\n");
      await Deno.writeTextFile(join(files, "zipped", "ziplib", "__init__.py"), "Z = 7\n");
      const zip = await new Deno.Command("zip", {
        args: ["-q", "-r", join(files, "ziplib.zip"), "ziplib"],
        cwd: join(files, "zipped"),
      }).output();
      ok(zip.success);
      // One file above PySpark's 32 KiB chunk size (sent in chunks), one of exactly one chunk.
      const big = new Uint8Array(200_000).map((_, i) => (i * 7 + 3) & 0xff);
      await Deno.writeFile(join(files, "data.bin"), big);
      await Deno.writeFile(join(files, "edge.bin"), big.subarray(0, 32768));
      const { archive } = await makeVenvPack(join(tmp, "fx"), { packages: { envlib: "X = 1\n" } });
      const sessionId = crypto.randomUUID();
      const remote = `sc://127.0.0.1:${server.port}/;user_id=ada;session_id=${sessionId}`;

      const r = await pyspark(remote, [
        { op: "add", paths: [join(files, "mylib.py")], pyfile: true },
        { op: "add", paths: [join(files, "ziplib.zip")], pyfile: true },
        { op: "add", paths: [join(files, "data.bin"), join(files, "edge.bin")], file: true },
        { op: "add", paths: [`${archive}#environment`], archive: true },
        { op: "cache", data: "a local relation" },
        { op: "is_cached", data: "a local relation" },
        { op: "is_cached", data: "never sent" },
        // The same bytes again: a no-op, as with Spark 4.
        { op: "add", paths: [join(files, "mylib.py")], pyfile: true },
        { op: "ids" },
      ]);
      for (const [i, x] of r.entries()) ok(x.ok, `operation ${i}: ${JSON.stringify(x)}`);
      equal(value(r[4]), sha(new TextEncoder().encode("a local relation")));
      equal(value(r[5]), true);
      equal(value(r[6]), false);
      const ids = value(r[8]) as { session_id: string; server_side_session_id: string };
      equal(ids.session_id, sessionId);

      const s = server.valise.store.find("ada", sessionId)!;
      equal(s.serverSideSessionId, ids.server_side_session_id);
      equal(await Deno.readTextFile(join(s.root, "mylib.py")), "VERSION = 2\n");
      deepEqual(
        await Deno.readFile(join(s.root, "ziplib.zip")),
        await Deno.readFile(join(files, "ziplib.zip")),
      );
      deepEqual(await Deno.readFile(join(s.root, "data.bin")), big);
      deepEqual(await Deno.readFile(join(s.root, "edge.bin")), big.subarray(0, 32768));
      deepEqual(
        await Deno.readFile(
          join(s.artifactsDir, `archives/${archive.split("/").pop()}#environment`),
        ),
        await Deno.readFile(archive),
      );
      equal(s.artifact(`cache/${sha(new TextEncoder().encode("a local relation"))}`)?.size, 16);
      // The archive is unpacked under its alias: its interpreter imports the environment's module.
      const py = await new Deno.Command(join(s.root, "environment/bin/python"), {
        args: [
          "-c",
          "import sys; sys.path[:0] = ['ziplib.zip', '.']; import envlib, ziplib, mylib; " +
          "print(envlib.X, ziplib.Z, mylib.VERSION)",
        ],
        cwd: s.root,
      }).output();
      equal(new TextDecoder().decode(py.stdout).trim(), "1 7 2");

      // Changed bytes under the same name: ARTIFACT_ALREADY_EXISTS, the stored file unchanged.
      await Deno.writeTextFile(join(files, "mylib.py"), "VERSION = 3\n");
      const [dup] = await pyspark(remote, [
        { op: "add", paths: [join(files, "mylib.py")], pyfile: true },
      ]);
      const err = failure(dup);
      equal(err.type, "SparkRuntimeException");
      equal(err.errorClass, "ARTIFACT_ALREADY_EXISTS");
      equal(err.sqlState, "42713");
      equal(await Deno.readTextFile(join(s.root, "mylib.py")), "VERSION = 2\n");
    } finally {
      await server.close();
      await removeTree(tmp);
    }
  },
);

wireTest(
  "real PySpark: spark.conf, spark.version, a query, another user, a bad session id, spark.stop()",
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-pyspark-" });
    const server = await serve({ dataDir: join(tmp, "data"), port: 0 });
    try {
      await Deno.writeTextFile(join(tmp, "secret.py"), "S = 1\n");
      const sessionId = crypto.randomUUID();
      const base = `sc://127.0.0.1:${server.port}/`;
      const ada = `${base};user_id=ada;session_id=${sessionId}`;
      const r = await pyspark(ada, [
        { op: "add", paths: [join(tmp, "secret.py")], pyfile: true },
        { op: "conf.set", key: PY, value: "environment/bin/python" },
        { op: "conf.get", key: PY },
        { op: "conf.get", key: "spark.sql.session.timeZone" },
        { op: "conf.get", key: "spark.valise.unset" },
        { op: "conf.get", key: "spark.valise.unset", default: "fallback" },
        { op: "conf.isModifiable", key: PY },
        { op: "conf.isModifiable", key: "spark.master" },
        { op: "conf.getAll" },
        { op: "conf.unset", key: PY },
        { op: "conf.get", key: PY, default: "after-unset" },
        { op: "version" },
        { op: "range", n: 3 },
        { op: "ids" },
      ]);
      equal(value(r[2]), "environment/bin/python");
      ok(typeof value(r[3]) === "string" && (value(r[3]) as string).length > 0);
      const notFound = failure(r[4]);
      equal(notFound.type, "SparkNoSuchElementException");
      equal(notFound.errorClass, "SQL_CONF_NOT_FOUND");
      equal(value(r[5]), "fallback");
      equal(value(r[6]), true);
      equal(value(r[7]), false);
      equal((value(r[8]) as Record<string, string>)[PY], "environment/bin/python");
      equal(value(r[9]), null);
      equal(value(r[10]), "after-unset");
      equal(value(r[11]), "4.2.1");
      // A plan runs in the session's environment: the default interpreter here has no pyarrow.
      const query = failure(r[12]);
      equal(query.errorClass, "UDF_PYARROW_UNAVAILABLE");
      ok(query.message.includes("cannot import pyarrow"), query.message);
      const adaIds = value(r[13]) as { server_side_session_id: string };
      const adaSession = server.valise.store.find("ada", sessionId)!;
      equal(adaSession.interpreter(), undefined);

      // Another user naming the same session id gets a session of their own.
      const bob = await pyspark(`${base};user_id=bob;session_id=${sessionId}`, [
        { op: "ids" },
        { op: "conf.get", key: "spark.valise.unset", default: "none" },
      ]);
      const bobIds = value(bob[0]) as { server_side_session_id: string };
      notEqual(bobIds.server_side_session_id, adaIds.server_side_session_id);
      const bobSession = server.valise.store.find("bob", sessionId)!;
      equal(bobSession.artifact("pyfiles/secret.py"), undefined);
      ok(adaSession.artifact("pyfiles/secret.py"));

      // A malformed session id: PySpark refuses it itself, and so does the server.
      const [bad] = await pyspark(ada, [{ op: "bad_session", session_id: "not-a-uuid" }]);
      const { client, server: wire } = value(bad) as { client: PySparkError; server: PySparkError };
      equal(client.errorClass, "INVALID_SESSION_UUID_ID");
      equal(wire.errorClass, "INVALID_HANDLE.FORMAT");
      equal(wire.grpcCode, "INVALID_ARGUMENT");

      // spark.stop() releases the session: its files go, and the id cannot be used again.
      const stop = await pyspark(ada, [{ op: "stop" }]);
      ok(stop[0]!.ok, JSON.stringify(stop));
      equal(server.valise.store.find("ada", sessionId), undefined);
      let gone = false;
      await Deno.stat(adaSession.dir).catch(() => (gone = true));
      ok(gone, "the released session's directory is removed");
      const [closed] = await pyspark(ada, [{ op: "conf.get", key: "spark.sql.session.timeZone" }]);
      equal(failure(closed).errorClass, "INVALID_HANDLE.SESSION_CLOSED");
      // Bob's session is his own and still there.
      ok(server.valise.store.find("bob", sessionId));
    } finally {
      await server.close();
      await removeTree(tmp);
    }
  },
);

// The real client computes CRCs and chunk counts itself and never sends a broken stream; the
// stand-in sends exactly the messages asked for.
Deno.test("broken upload streams (stand-in): a bad CRC is reported, a short stream fails, nothing stays", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-pyspark-" });
  const server = await serve({ dataDir: join(tmp, "data"), port: 0 });
  try {
    const sessionId = crypto.randomUUID();
    const out = await new Deno.Command("/usr/bin/python3", {
      args: [
        STAND_IN,
        "--remote",
        `sc://127.0.0.1:${server.port}`,
        "--session",
        sessionId,
        "--user",
        "ada",
        "script",
        JSON.stringify([
          {
            op: "raw",
            steps: [{
              artifact: { name: "files/crc.bin", size: 100000, seed: 1, corrupt_chunk: 1 },
            }],
          },
          {
            op: "raw",
            steps: [{
              artifact: { name: "files/short.bin", size: 100000, seed: 2, drop_chunks: 1 },
            }],
          },
        ]),
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const broken = JSON.parse(new TextDecoder().decode(out.stdout)) as {
      results: Record<string, unknown>[];
    };
    const crc = broken.results[0] as {
      ok: boolean;
      response: { artifacts: { is_crc_successful: boolean }[] };
    };
    equal(crc.ok, true);
    equal(crc.response.artifacts[0]!.is_crc_successful, false);
    equal(broken.results[1]!.ok, false);
    const s = server.valise.store.find("ada", sessionId)!;
    equal(s.artifact("files/crc.bin"), undefined);
    equal(s.artifact("files/short.bin"), undefined);
    deepEqual(await Array.fromAsync(Deno.readDir(join(tmp, "data", "staging"))), []);
  } finally {
    await server.close();
    await removeTree(tmp);
  }
});
