// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Session-scoped `pip install` from a plain PySpark client (the real one of `.venv/`, no Valise
 * code): `spark.conf.set("spark.valise.pip.requirements", …)` is checked when set, reported by
 * `spark.conf.get`, and installed before the session's next Run; a wheel added with
 * `spark.addArtifacts(…, file=True)` installs on a server without an index (`--pip-offline`).
 *
 * @module
 */
import { equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { connect } from "@valise/client";
import { startServer } from "./_server.ts";
import { makeWheel } from "./fixtures/wheels.ts";
import { needsVenv, VENV_PYTHON, venvBin } from "./_python.ts";
import { removeTree } from "./_util.ts";

/** What the PySpark client does: optional wheel, the requirement set, a hostile set. */
const CLIENT = `
import sys
from pyspark.sql import SparkSession
remote, requirements, wheel = sys.argv[1], sys.argv[2], sys.argv[3]
spark = SparkSession.builder.remote(remote).getOrCreate()
if wheel:
    spark.addArtifacts(wheel, file=True)
spark.conf.set("spark.valise.pip.requirements", requirements)
print("session", spark.session_id)
print("conf", repr(spark.conf.get("spark.valise.pip.requirements")))
try:
    spark.conf.set("spark.valise.pip.requirements", "six\\n--index-url https://evil.example/simple")
    print("accepted")
except Exception as e:
    print("refused", type(e).__name__, str(e).splitlines()[0])
print("conf after", repr(spark.conf.get("spark.valise.pip.requirements")))
`;

async function pyspark(
  remote: string,
  requirements: string,
  wheel = "",
): Promise<{ sessionId: string; out: string }> {
  const r = await new Deno.Command(VENV_PYTHON, {
    args: ["-c", CLIENT, remote, requirements, wheel],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(r.stdout);
  equal(r.success, true, new TextDecoder().decode(r.stderr) + out);
  return { sessionId: out.match(/^session (\S+)$/m)![1]!, out };
}

Deno.test(
  needsVenv(
    "pip from PySpark: spark.conf.set(spark.valise.pip.requirements) is checked, reported, and installed before the next Run",
  ),
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-pip-pyspark-" });
    const server = await startServer({
      dataDir: join(tmp, "data"),
      args: ["--pip-installer", venvBin("uv")],
    });
    try {
      const remote = `sc://127.0.0.1:${server.port}/;user_id=pyuser`;
      const { sessionId, out } = await pyspark(remote, "six==1.16.0\nidna==3.7  # pinned");
      ok(out.includes("conf 'six==1.16.0\\nidna==3.7  # pinned'"), out);
      // PySpark raises its usual exception for an invalid value, and the value stays.
      match(out, /^refused \w*(IllegalArgument|Exception)\w* .*INVALID_CONF_VALUE/m);
      ok(out.includes("conf after 'six==1.16.0\\nidna==3.7  # pinned'"), out);
      // Nothing was installed yet: the next Run of the session does it, then runs.
      await using s = connect(remote, { sessionId });
      const r = await s.runCollect({
        code: "import six, idna; print(six.__version__, idna.__version__)",
      });
      equal(r.exitCode, 0, r.stderr);
      equal(r.stdout.trim(), "1.16.0 3.7");
      const listed = await s.pip.list();
      equal(listed.requirements.join(" "), "six==1.16.0 idna==3.7");
      ok(listed.layer !== undefined);
      await server.waitForLog(/pip: built layer \w+ \(2 requirement\(s\)/);
    } finally {
      await server.stop();
      await removeTree(tmp);
    }
  },
);

Deno.test(
  needsVenv(
    "pip from PySpark, offline: a wheel added with addArtifacts(file=True) is installed by name and version without an index",
  ),
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-pip-pyspark-" });
    const server = await startServer({
      dataDir: join(tmp, "data"),
      args: ["--pip-installer", venvBin("uv"), "--pip-offline"],
    });
    try {
      const wheel = await makeWheel(join(tmp, "dist"), {
        name: "mylib",
        version: "1.0",
        modules: { mylib: 'VERSION = "1.0"\n' },
      });
      const remote = `sc://127.0.0.1:${server.port}/;user_id=pyuser`;
      const { sessionId } = await pyspark(remote, "mylib==1.0", wheel);
      await using s = connect(remote, { sessionId });
      const r = await s.runCollect({ code: "import mylib; print(mylib.VERSION)" });
      equal(r.exitCode, 0, r.stderr);
      equal(r.stdout.trim(), "1.0");
    } finally {
      await server.stop();
      await removeTree(tmp);
    }
  },
);
