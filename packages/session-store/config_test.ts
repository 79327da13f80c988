// Copyright 2026 the Valise authors. Apache-2.0 license.
// Worker environment names a session may not set: the programs that set a sandbox up inherit
// the worker environment, some with the server's rights (issue 10: LD_AUDIT ran a session's
// library as host root).
import { deepEqual, equal, rejects } from "node:assert/strict";
import fc from "fast-check";
import { SessionConfig } from "./config.ts";
import { SessionError } from "./errors.ts";

const conf = (initial: Record<string, string> = {}) =>
  new SessionConfig(initial, () => Promise.resolve());

Deno.test("loader and C library variables are refused as worker environment", async () => {
  for (
    const [name, value] of [
      ["LD_AUDIT", "/x/audit.so"],
      ["LD_DEBUG_OUTPUT", "/etc/x"],
      ["LD_PRELOAD", "/x.so"],
      ["GCONV_PATH", "/x"],
      ["GLIBC_TUNABLES", "glibc.malloc.check=3"],
      ["LOCPATH", "/x"],
      ["MALLOC_TRACE", "/x"],
      ["LC_ALL", "/x/locale"],
      ["LANG", "../../x"],
    ]
  ) {
    await rejects(
      conf().set([{ key: `spark.pythonWorkerEnv.${name}`, value }], false),
      (e: unknown) => e instanceof SessionError && e.errorClass === "INVALID_CONF_VALUE",
      name,
    );
  }
  const c = conf();
  await c.set([
    { key: "spark.pythonWorkerEnv.LC_ALL", value: "C.UTF-8" },
    { key: "spark.pythonWorkerEnv.TMPDIR", value: "/tmp" },
    { key: "spark.pythonWorkerEnv.MY_LD_FLAG", value: "1" },
  ], false);
  deepEqual(c.workerEnv(), { LC_ALL: "C.UTF-8", TMPDIR: "/tmp", MY_LD_FLAG: "1" });
});

Deno.test("every LD_ name is refused, whatever follows", async () => {
  await fc.assert(
    fc.asyncProperty(fc.stringMatching(/^[A-Z0-9_]{0,12}$/), async (rest) => {
      let refused = false;
      try {
        await conf().set([{ key: `spark.pythonWorkerEnv.LD_${rest}`, value: "x" }], false);
      } catch (e) {
        refused = e instanceof SessionError;
      }
      equal(refused, true);
    }),
  );
});

Deno.test("a config restored with a refused name does not give it to workers", () => {
  const c = conf({
    "spark.pythonWorkerEnv.LD_AUDIT": "/x/audit.so",
    "spark.pythonWorkerEnv.LC_ALL": "/x",
    "spark.pythonWorkerEnv.OK": "1",
  });
  deepEqual(c.workerEnv(), { OK: "1" });
});
