// The PySpark example, run as written with the real PySpark client of the project's .venv/:
// the session it creates holds the module, the unpacked environment and the config.
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { DEFAULT_LIMITS } from "@valise/launcher";
import { serve, sessionSpec } from "@valise/server";
import { makeVenvPack } from "./fixtures/envs.ts";
import { needsVenv, VENV_PYTHON } from "./_python.ts";
import { removeTree } from "./_util.ts";

const EXAMPLE = new URL("../examples/pyspark/add_environment.py", import.meta.url).pathname;

Deno.test(
  needsVenv("examples/pyspark: addArtifacts + conf.set give the session its environment"),
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-ex-pyspark-" });
    const server = await serve({ dataDir: join(tmp, "data"), port: 0 });
    try {
      const { archive } = await makeVenvPack(join(tmp, "fx"), { packages: { envlib: "X = 42\n" } });
      await Deno.writeTextFile(join(tmp, "util.py"), "def double(x):\n    return 2 * x\n");
      const out = await new Deno.Command(VENV_PYTHON, {
        args: [EXAMPLE, archive, join(tmp, "util.py")],
        env: {
          SPARK_REMOTE: `sc://127.0.0.1:${server.port}`,
          KEEP_SESSION: "1",
          USER: "example-user",
        },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      equal(out.success, true, new TextDecoder().decode(out.stderr));
      const sid = text.match(/^session (\S+)$/m)![1]!;
      ok(text.includes("interpreter environment/bin/python"), text);
      const s = server.valise.store.find("example-user", sid)!;
      equal(s.interpreter(), "environment/bin/python");
      // The session's worker sees both artifacts, with the environment's interpreter.
      let stdout = "";
      for await (
        const ev of server.valise.launcher.run(
          sessionSpec(s, DEFAULT_LIMITS),
          { code: "import util, envlib; print(util.double(envlib.X))" },
        )
      ) {
        if (ev.kind === "stdout") stdout += new TextDecoder().decode(ev.data);
      }
      equal(stdout.trim(), "84");
      // And spark.stop() releases it.
      const stop = await new Deno.Command(VENV_PYTHON, {
        args: [EXAMPLE, archive, join(tmp, "util.py")],
        env: {
          SPARK_REMOTE: `sc://127.0.0.1:${server.port}`,
          USER: "example-user",
        },
        stdout: "piped",
      }).output();
      equal(stop.success, true);
      const sid2 = new TextDecoder().decode(stop.stdout).match(/^session (\S+)$/m)![1]!;
      equal(server.valise.store.find("example-user", sid2), undefined);
    } finally {
      await server.close();
      await removeTree(tmp);
    }
  },
);
