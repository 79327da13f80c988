// Copyright 2026 the Valise authors. Apache-2.0 license.
// Worker environment a session may set: plain names only, never one the launcher owns. (What a
// name can do is bounded by the launcher: the environment reaches only the session's own
// interpreter, after every step with the server's rights; see tests/hostile_sandbox_test.ts.)
import { deepEqual, rejects } from "node:assert/strict";
import fc from "fast-check";
import { SessionConfig } from "./config.ts";
import { SessionError } from "./errors.ts";

const conf = (initial: Record<string, string> = {}) =>
  new SessionConfig(initial, () => Promise.resolve());

const refused = (e: unknown) => e instanceof SessionError && e.errorClass === "INVALID_CONF_VALUE";

Deno.test("names the launcher owns are refused as worker environment", async () => {
  for (const name of ["PATH", "HOME", "PYTHONPATH", "PYTHONHOME", "PEX_ROOT", "LD_PRELOAD"]) {
    await rejects(
      conf().set([{ key: `spark.pythonWorkerEnv.${name}`, value: "/x" }], false),
      refused,
      name,
    );
  }
  const c = conf();
  await c.set([
    { key: "spark.pythonWorkerEnv.LC_ALL", value: "C.UTF-8" },
    { key: "spark.pythonWorkerEnv.TMPDIR", value: "/tmp" },
  ], false);
  deepEqual(c.workerEnv(), { LC_ALL: "C.UTF-8", TMPDIR: "/tmp" });
});

Deno.test("a worker environment name is letters, digits and '_' (env(1) never reads it as an option)", async () => {
  await fc.assert(
    fc.asyncProperty(fc.string({ minLength: 1, maxLength: 12 }), async (name) => {
      const plain = /^[A-Za-z_][A-Za-z0-9_]*$/.test(name);
      const set = conf().set([{ key: `spark.pythonWorkerEnv.${name}`, value: "x" }], false);
      if (plain) {
        await set.catch((e) => {
          if (!refused(e)) throw e; // a reserved name
        });
      } else await rejects(set, refused);
    }),
  );
});

Deno.test("a config restored with a reserved name does not give it to workers", () => {
  const c = conf({ "spark.pythonWorkerEnv.PATH": "/x", "spark.pythonWorkerEnv.OK": "1" });
  deepEqual(c.workerEnv(), { OK: "1" });
});
