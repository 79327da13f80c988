// Copyright 2026 the Valise authors. Apache-2.0 license.
// Worker environment a session may set: plain names only, never one the launcher owns. (What a
// name can do is bounded by the launcher: the environment reaches only the session's own
// interpreter, after every step with the server's rights; see tests/hostile_sandbox_test.ts.)
import { deepEqual, rejects, throws } from "node:assert/strict";
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

const classOf = (e: unknown) => (e instanceof SessionError ? e.errorClass : String(e));

Deno.test("typed keys refuse values their type cannot parse, as Spark does, and keep the old value", async () => {
  const c = conf();
  for (
    const [key, value, cls] of [
      ["spark.sql.ansi.enabled", "maybe", "INVALID_CONF_VALUE.TYPE_MISMATCH"],
      ["spark.sql.execution.arrow.maxRecordsPerBatch", "many", "INVALID_CONF_VALUE.TYPE_MISMATCH"],
      [
        "spark.sql.execution.arrow.maxRecordsPerBatch",
        "99999999999",
        "INVALID_CONF_VALUE.TYPE_MISMATCH",
      ],
      ["spark.sql.session.timeZone", "Nowhere/Zone", "INVALID_CONF_VALUE.TIME_ZONE"],
    ] as const
  ) {
    await rejects(c.set([{ key, value }], false), (e) => classOf(e) === cls, `${key}=${value}`);
  }
  deepEqual(c.get(["spark.sql.ansi.enabled", "spark.sql.session.timeZone"]).map((p) => p.value), [
    "true",
    "UTC",
  ]);
  await c.set([
    { key: "spark.sql.ansi.enabled", value: "FALSE" },
    { key: "spark.sql.session.timeZone", value: "Asia/Tokyo" },
    { key: "spark.sql.execution.arrow.maxRecordsPerBatch", value: " 500 " },
  ], false);
  deepEqual(c.getAll("spark.sql.session.").map((p) => p.value), ["Asia/Tokyo"]);
  for (const zone of ["+01:00", "GMT+8", "UTC", "Z", "Etc/UTC"]) {
    await c.set([{ key: "spark.sql.session.timeZone", value: zone }], false);
  }
  // A default given with GetWithDefault is checked too.
  throws(
    () => c.getWithDefault([{ key: "spark.sql.ansi.enabled", value: "maybe" }]),
    (e) => classOf(e) === "INVALID_CONF_VALUE.TYPE_MISMATCH",
  );
});

Deno.test("an integer key accepts exactly the decimal ints", async () => {
  await fc.assert(
    fc.asyncProperty(fc.string({ maxLength: 12 }), async (value) => {
      const key = "spark.sql.execution.arrow.maxRecordsPerBatch";
      const isInt = /^\s*[+-]?\d{1,10}\s*$/.test(value) && Math.abs(Number(value)) < 2 ** 31;
      const set = conf().set([{ key, value }], false);
      if (isInt) await set;
      else await rejects(set, (e) => classOf(e) === "INVALID_CONF_VALUE.TYPE_MISMATCH");
    }),
  );
});

Deno.test("Spark's config semantics: no value, GetAll, IsModifiable, a key defined without default", async () => {
  const c = conf();
  await rejects(
    c.set([{ key: "spark.custom.none", value: undefined }], false),
    (e) => classOf(e) === "INVALID_CONF_VALUE",
  );
  // Get of the interpreter key, never set: no value, not SQL_CONF_NOT_FOUND.
  deepEqual(c.get(["spark.sql.execution.pyspark.python"]), [{
    key: "spark.sql.execution.pyspark.python",
    value: undefined,
  }]);
  throws(() => c.get(["spark.custom.never"]), (e) => classOf(e) === "SQL_CONF_NOT_FOUND");
  // GetAll lists what was set, not the defaults.
  deepEqual(c.getAll(undefined), []);
  await c.set([{ key: "spark.custom.a", value: "1" }], false);
  deepEqual(c.getAll(undefined), [{ key: "spark.custom.a", value: "1" }]);
  // The session's SQL configs are modifiable; the server's and unknown keys are not.
  const mod = (key: string) => c.isModifiable([key])[0]!.value;
  deepEqual(
    [
      "spark.sql.session.timeZone",
      "spark.sql.shuffle.partitions",
      "spark.connect.session.planCompression.threshold",
      "spark.master",
      "spark.driver.memory",
      "spark.connect.grpc.binding.port",
      "spark.custom.a",
      "spark.pythonWorkerEnv.FOO",
    ].map(mod),
    ["true", "true", "true", "false", "false", "false", "false", "false"],
  );
  await c.set([{ key: "spark.connect.session.planCompression.threshold", value: "1000" }], false);
  await rejects(
    c.set([{ key: "spark.connect.grpc.binding.port", value: "1" }], false),
    (e) => classOf(e) === "CANNOT_MODIFY_CONFIG",
  );
});

Deno.test("Valise's own keys take positive whole numbers, and an unknown spark.valise. key is refused", async () => {
  const c = conf();
  for (const value of ["abc", "0", "-5", "1.5", "1e3", "", "99999999999999999"]) {
    await rejects(
      c.set([{ key: "spark.valise.worker.timeoutMs", value }], false),
      (e) =>
        classOf(e) === "INVALID_CONF_VALUE.TYPE_MISMATCH" &&
        (e as Error).message.includes("positive whole number of milliseconds"),
      JSON.stringify(value),
    );
  }
  await rejects(
    c.set([{ key: "spark.valise.worker.timeoutMS", value: "1000" }], false),
    (e) =>
      classOf(e) === "INVALID_CONF_VALUE" &&
      (e as Error).message.includes("spark.valise.worker.timeoutMs") &&
      (e as Error).message.includes("Check the spelling"),
  );
  // Nothing of the refused calls stuck.
  deepEqual(c.getAll("spark.valise."), []);
  await c.set([{ key: "spark.valise.worker.memoryBytes", value: "1073741824" }], false);
  deepEqual(c.getAll("spark.valise."), [{ key: "worker.memoryBytes", value: "1073741824" }]);
  // Other namespaces stay free, as in Spark.
  await c.set([{ key: "spark.myapp.anything", value: "abc" }], false);
});

Deno.test("spark.valise.pip.* keys take a requirement set and index URLs, never installer options, paths or URLs", async () => {
  const c = conf();
  await c.set([
    { key: "spark.valise.pip.requirements", value: "six==1.16.0\nidna  # any\n" },
    { key: "spark.valise.pip.indexUrl", value: "https://pypi.org/simple" },
    { key: "spark.valise.pip.extraIndexUrls", value: "https://a.example/simple, https://b/x" },
  ], false);
  deepEqual(c.get(["spark.valise.pip.requirements"]), [
    { key: "spark.valise.pip.requirements", value: "six==1.16.0\nidna  # any\n" },
  ]);
  for (
    const value of [
      "six\n--index-url https://evil.example/simple",
      "-e .",
      "six @ https://evil.example/six-1.0-py3-none-any.whl",
      "../mylib-1.0-py3-none-any.whl",
      "six; import os",
      "six\nsix==1",
    ]
  ) {
    await rejects(
      c.set([{ key: "spark.valise.pip.requirements", value }], false),
      (e) => refused(e) && (e as Error).message.includes("spark.valise.pip.requirements"),
      value,
    );
  }
  for (const value of ["ftp://x/simple", "https://u:p@pypi.org/simple", "pypi.org"]) {
    await rejects(c.set([{ key: "spark.valise.pip.indexUrl", value }], false), refused, value);
  }
  await rejects(
    c.set([{
      key: "spark.valise.pip.extraIndexUrls",
      value: Array.from({ length: 9 }, (_, i) => `https://h${i}/simple`).join(" "),
    }], false),
    refused,
  );
  // The refused values left the accepted ones in place; an unset key reads as no value.
  deepEqual(conf().get(["spark.valise.pip.requirements"]), [
    { key: "spark.valise.pip.requirements", value: undefined },
  ]);
});
