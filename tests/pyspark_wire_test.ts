// A PySpark-equivalent grpcio client (tests/python/spark_artifacts.py, which sends exactly what
// PySpark's artifact manager sends) against the real server on a loopback port; assertions on
// what ends up on disk, byte for byte.
import { deepEqual, equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { serve } from "@valise/server";
import { makeVenvPack } from "./fixtures/envs.ts";
import { needsVenv } from "./_python.ts";
import { removeTree } from "./_util.ts";

const CLIENT = new URL("./python/spark_artifacts.py", import.meta.url).pathname;
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

interface ScriptResult {
  ok: boolean;
  results: Record<string, unknown>[];
}

async function script(
  port: number,
  sessionId: string,
  ops: unknown[],
  extra: string[] = [],
): Promise<ScriptResult> {
  const out = await new Deno.Command("/usr/bin/python3", {
    args: [
      CLIENT,
      "--remote",
      `sc://127.0.0.1:${port}`,
      "--session",
      sessionId,
      ...extra,
      "script",
      JSON.stringify(ops),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  try {
    return JSON.parse(text) as ScriptResult;
  } catch {
    throw new Error(`client printed no JSON: ${text}\n${new TextDecoder().decode(out.stderr)}`);
  }
}

Deno.test(
  needsVenv("PySpark's artifact traffic (grpcio) is stored byte for byte and behaves like Spark"),
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-pyspark-" });
    const server = await serve({ dataDir: join(tmp, "data"), port: 0 });
    try {
      const files = join(tmp, "files");
      await Deno.mkdir(files);
      await Deno.writeTextFile(join(files, "mylib.py"), "VERSION = 2\n");
      const big = new Uint8Array(200_000).map((_, i) => (i * 7 + 3) & 0xff);
      await Deno.writeFile(join(files, "data.bin"), big);
      await Deno.writeFile(join(files, "edge.bin"), big.subarray(0, 32768));
      const { archive } = await makeVenvPack(join(tmp, "fx"), { packages: { envlib: "X = 1\n" } });
      const blob = "arrow ipc stand-in";
      const sessionId = crypto.randomUUID();

      const r = await script(server.port, sessionId, [
        { op: "add", paths: [join(files, "mylib.py")], pyfile: true },
        { op: "add", paths: [join(files, "data.bin"), join(files, "edge.bin")], file: true },
        { op: "add", paths: [`${archive}#environment`], archive: true },
        { op: "cache", data: blob },
        { op: "cache", data: blob },
        { op: "status", names: ["pyfiles/mylib.py", "files/nope"] },
        {
          op: "conf.set",
          key: "spark.sql.execution.pyspark.python",
          value: "environment/bin/python",
        },
        { op: "conf.get", key: "spark.sql.execution.pyspark.python" },
        { op: "conf.get_option", keys: ["spark.unset.key"] },
        { op: "add", paths: [join(files, "mylib.py")], pyfile: true },
      ], ["--user", "ada"]);
      ok(r.ok, JSON.stringify(r, null, 1));
      // The second cache_artifact saw the blob already there and did not upload it.
      equal(r.results[3]!.uploaded, true);
      equal(r.results[4]!.uploaded, false);
      deepEqual(r.results[5]!.statuses, { "pyfiles/mylib.py": true, "files/nope": false });

      const s = server.valise.store.find("ada", sessionId)!;
      equal(await Deno.readTextFile(join(s.root, "mylib.py")), "VERSION = 2\n");
      deepEqual(await Deno.readFile(join(s.root, "data.bin")), big);
      deepEqual(await Deno.readFile(join(s.root, "edge.bin")), big.subarray(0, 32768));
      deepEqual(
        await Deno.readFile(
          join(s.artifactsDir, "archives/" + archive.split("/").pop() + "#environment"),
        ),
        await Deno.readFile(archive),
      );
      equal(s.artifact(`cache/${sha(new TextEncoder().encode(blob))}`)?.size, blob.length);
      equal(s.interpreter(), "environment/bin/python");
      const py = await new Deno.Command(join(s.root, "environment/bin/python"), {
        args: ["-c", "import envlib; print(envlib.X)"],
        cwd: s.root,
      }).output();
      equal(new TextDecoder().decode(py.stdout).trim(), "1");

      // Different bytes under the same name: ARTIFACT_ALREADY_EXISTS, the stored file unchanged.
      await Deno.writeTextFile(join(files, "mylib.py"), "VERSION = 3\n");
      const dup = await script(server.port, sessionId, [
        { op: "add", paths: [join(files, "mylib.py")], pyfile: true },
      ], ["--user", "ada"]);
      equal(dup.ok, false);
      const err = dup.results[0]!.error as {
        code: string;
        error_info: { metadata: Record<string, string> };
      };
      equal(err.code, "ALREADY_EXISTS");
      equal(err.error_info.metadata.errorClass, "ARTIFACT_ALREADY_EXISTS");
      equal(await Deno.readTextFile(join(s.root, "mylib.py")), "VERSION = 2\n");

      // A broken stream (bad CRC on one chunk, a stream that ends with a chunked artifact open).
      const broken = await script(server.port, sessionId, [
        {
          op: "raw",
          steps: [{ artifact: { name: "files/crc.bin", size: 100000, seed: 1, corrupt_chunk: 1 } }],
        },
        {
          op: "raw",
          steps: [{ artifact: { name: "files/short.bin", size: 100000, seed: 2, drop_chunks: 1 } }],
        },
      ], ["--user", "ada"]);
      const crc = broken.results[0] as {
        ok: boolean;
        response: { artifacts: { is_crc_successful: boolean }[] };
      };
      equal(crc.ok, true);
      equal(crc.response.artifacts[0]!.is_crc_successful, false);
      equal(broken.results[1]!.ok, false);
      equal(s.artifact("files/crc.bin"), undefined);
      equal(s.artifact("files/short.bin"), undefined);
      deepEqual(await Array.fromAsync(Deno.readDir(join(tmp, "data", "staging"))), []);

      // spark.stop(): ReleaseSession removes the session and closes it.
      const rel = await script(server.port, sessionId, [{ op: "release" }, {
        op: "status",
        names: [],
      }], ["--user", "ada"]);
      equal(rel.results[0]!.ok, true);
      const closed = rel.results[1]!.error as { error_info: { metadata: Record<string, string> } };
      equal(closed.error_info.metadata.errorClass, "INVALID_HANDLE.SESSION_CLOSED");
      let gone = false;
      await Deno.stat(s.dir).catch(() => (gone = true));
      equal(gone, true);
    } finally {
      await server.close();
      await removeTree(tmp);
    }
  },
);
