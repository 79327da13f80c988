// The seed's three flows, each as a user runs it: examples/<flow>/run.sh against a real server
// (build the environment with the real tools of .venv/, add it with the CLI, choose the
// interpreter, run).
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { serve } from "@valise/server";
import { needsVenv } from "./_python.ts";
import { removeTree } from "./_util.ts";

const EXAMPLES = new URL("../examples/", import.meta.url).pathname;

for (
  const [flow, expect] of [
    ["venv-pack", "hello from a venv-pack environment (environment)"],
    ["conda-pack", "hello from a conda-pack environment (environment)"],
    ["pex", "hello from a PEX file"],
  ]
) {
  Deno.test(needsVenv(`examples/${flow}/run.sh works from a fresh directory`), async () => {
    const tmp = await Deno.makeTempDir({ prefix: `valise-ex-${flow}-` });
    const server = await serve({ dataDir: join(tmp, "data"), port: 0 });
    try {
      const out = await new Deno.Command("bash", {
        args: [join(EXAMPLES, flow!, "run.sh")],
        env: {
          SPARK_REMOTE: `sc://127.0.0.1:${server.port}`,
          OUT_DIR: join(tmp, "out"),
          PATH: `${Deno.execPath().replace(/\/[^/]+$/, "")}:${Deno.env.get("PATH") ?? ""}`,
        },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stdout = new TextDecoder().decode(out.stdout);
      const stderr = new TextDecoder().decode(out.stderr);
      equal(out.code, 0, `${stdout}\n${stderr}`);
      ok(stdout.split("\n").includes(expect!), stdout);
      // The flow ends by releasing its session: nothing is left on the server.
      equal(server.valise.store.sessions().length, 0);
    } finally {
      await server.close();
      await removeTree(tmp);
    }
  });
}
