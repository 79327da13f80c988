// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * PySpark UDFs run in each session's own environment, through the real PySpark client against
 * a real server: two sessions whose environments hold different versions of one package run
 * UDFs at the same time and each sees its own; an environment whose pyspark is not the client's
 * version, or that has no pyspark, is refused with a class that says so, before any UDF runs.
 *
 * @module
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { makeVenvPack } from "./fixtures/envs.ts";
import { needsVenv, pinned } from "./_python.ts";
import { startServer } from "./_server.ts";
import { udfClient, udfEnvOptions } from "./_udf.ts";
import { removeTree } from "./_util.ts";

Deno.test(
  needsVenv(
    "two sessions with different versions of a package run UDFs at once, each in its own " +
      "environment; a pyspark of another version, or none, is refused by name",
  ),
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-udf-sessions-" });
    try {
      const base = {
        creator: "uv" as const,
        requirements: ["pandas", "pyarrow", "numpy"].map(pinned),
      };
      const [one, two, otherSpark, noSpark] = await Promise.all([
        makeVenvPack(tmp, udfEnvOptions("1.0")),
        makeVenvPack(tmp, udfEnvOptions("2.0")),
        // A pyspark of another minor version (its version is all the check reads).
        makeVenvPack(tmp, {
          ...base,
          packages: { pyspark: '__version__ = "3.5.1"\n', udfmark: 'VERSION = "x"\n' },
          name: "old-pyspark",
        }),
        makeVenvPack(tmp, {
          ...base,
          packages: { udfmark: 'VERSION = "y"\n' },
          name: "no-pyspark",
        }),
      ]);
      const server = await startServer({ dataDir: join(tmp, "data"), args: ["--quiet"] });
      try {
        const remote = `sc://127.0.0.1:${server.port}`;
        const programs = ["env_version", "pandas_udf", "map_in_pandas"];
        const [a, b] = await Promise.all([
          udfClient(remote, one.archive, programs, "alice"),
          udfClient(remote, two.archive, programs, "bob"),
        ]);
        deepEqual(a.env_version, { ok: { udf: ["1.0"], map: ["1.0"] } });
        deepEqual(b.env_version, { ok: { udf: ["2.0"], map: ["2.0"] } });
        deepEqual(a.pandas_udf, b.pandas_udf);
        deepEqual(a.map_in_pandas, b.map_in_pandas);
        ok("ok" in a.pandas_udf!, JSON.stringify(a.pandas_udf));

        const [old, none] = await Promise.all([
          udfClient(remote, otherSpark.archive, ["pandas_udf"], "carol"),
          udfClient(remote, noSpark.archive, ["pandas_udf"], "dave"),
        ]);
        const oldErr = (old.pandas_udf as { error: { errorClass: string; message: string } }).error;
        equal(oldErr.errorClass, "UDF_PYSPARK_VERSION_MISMATCH");
        ok(
          /client runs pyspark 4\.2\.\d+.*has pyspark 3\.5\.1/s.test(oldErr.message),
          oldErr.message,
        );
        const noneErr =
          (none.pandas_udf as { error: { errorClass: string; message: string } }).error;
        equal(noneErr.errorClass, "UDF_PYSPARK_UNAVAILABLE");
        ok(noneErr.message.includes("pyspark is not importable"), noneErr.message);
        // Plans without UDFs need no pyspark in the environment.
        const plain = await udfClient(remote, noSpark.archive, ["no_udf"], "dave");
        deepEqual(plain.no_udf, {
          ok: {
            rows: { schema: "struct<n:bigint,one:int>", rows: [[0, 1], [1, 1], [2, 1]] },
            show: "+---+\n| id|\n+---+\n|  0|\n|  1|\n|  2|\n+---+\n\n",
          },
        });
      } finally {
        await server.stop();
      }
    } finally {
      await removeTree(tmp);
    }
  },
);
