// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * PySpark UDFs on Apache Spark and on Valise, through the real PySpark client: the seed's flow
 * (a venv-pack environment with pandas, pyarrow and pyspark-client added as
 * `archives/env.tar.gz#environment`, interpreter `environment/bin/python`) used by pandas UDFs,
 * plain and Arrow-optimized UDFs, mapInPandas and mapInArrow; a differential suite of small
 * programs (`udf_client.py`: every common return type, nulls, empty inputs, exceptions with
 * their traceback, `show()` text, local data inline and as `cache/` artifacts, limits, renames,
 * schemas, `df.to(schema)`). The same script runs against both servers (one Spark per file);
 * results must be equal, or differ as docs/compatibility.md says ("ExecutePlan: Python UDFs"),
 * asserted here. The seed's PEX and conda-pack flows are `udf_flows_test.ts`.
 *
 * @module
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { makeVenvPack } from "../fixtures/envs.ts";
import { udfClient, udfEnvOptions } from "../_udf.ts";
import { startServer } from "../_server.ts";
import { sparkMissing, startSpark } from "../_spark.ts";
import { removeTree } from "../_util.ts";

const missing = sparkMissing();
const NAME = "PySpark UDFs (pandas_udf, udf, Arrow UDFs, mapInPandas, mapInArrow, show) give " +
  "Spark's results on Valise, in the session's venv-pack environment";

Deno.test(
  { name: missing ? `${NAME} (ignored: ${missing})` : NAME, ignore: !!missing },
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-udf-" });
    try {
      const env = await makeVenvPack(tmp, udfEnvOptions("1.0"));
      const [spark, valise] = await Promise.allSettled([
        startSpark(),
        startServer({ dataDir: join(tmp, "data"), args: ["--quiet"] }),
      ]);
      try {
        if (spark.status === "rejected") throw spark.reason;
        if (valise.status === "rejected") throw valise.reason;
        const [onSpark, onValise] = await Promise.all([
          udfClient(spark.value.remote, env.archive),
          udfClient(`sc://127.0.0.1:${valise.value.port}`, env.archive),
        ]);
        deepEqual(Object.keys(onValise).sort(), Object.keys(onSpark).sort());
        // Nothing failed on Spark: every program is a valid PySpark program.
        for (const [name, r] of Object.entries(onSpark)) {
          ok("ok" in r, `${name} on Spark: ${JSON.stringify(r)}`);
        }

        const documented = new Set([
          "exception",
          "pandas_exception",
          "unsupported",
          "to_schema_converted",
        ]);
        for (const name of Object.keys(onSpark).filter((n) => !documented.has(n))) {
          deepEqual(onValise[name], onSpark[name], name);
        }
        // The UDF's environment is the session's, on both.
        deepEqual(onValise.env_version, { ok: { udf: ["1.0"], map: ["1.0"] } });

        // A failing UDF: PySpark raises PythonException with the traceback on both. Spark's
        // workers run beside the client and print the client's source line of the function;
        // Valise's sandboxed workers cannot read the client's files (documented).
        for (const name of ["exception", "pandas_exception"]) {
          const s = (onSpark[name] as { ok: Record<string, unknown> }).ok;
          const v = (onValise[name] as { ok: Record<string, unknown> }).ok;
          equal(s.user_line, true, name);
          equal(v.user_line, false, name);
          deepEqual({ ...v, user_line: true }, s, name);
          equal(v.type, "PythonException");
        }

        // What Valise does not run is refused by name; Spark runs it.
        const unsupported = (onValise.unsupported as {
          ok: Record<string, { type: string; errorClass: string; message: string }>;
        }).ok;
        deepEqual(
          Object.values((onSpark.unsupported as { ok: Record<string, string> }).ok),
          ["ran", "ran", "ran", "ran"],
        );
        const refused: [string, string][] = [
          ["join", "join"],
          ["agg", "aggregate"],
          ["filter", "filter"],
        ];
        for (const [what, relation] of refused) {
          equal(unsupported[what]!.errorClass, "UNSUPPORTED_CONNECT_FEATURE.RELATION", what);
          equal(unsupported[what]!.type, "UnsupportedOperationException", what);
          ok(
            unsupported[what]!.message.includes(`the relation '${relation}'`),
            unsupported[what]!.message,
          );
        }
        equal(unsupported.sql!.errorClass, "UNSUPPORTED_CONNECT_FEATURE.QUERY_EXECUTION");

        // df.to(schema) where Spark converts values (a cast, a nested reorder, a column of
        // nulls): Valise refuses it by name and says why; where nothing is converted it gives
        // Spark's results (the program to_schema, compared above).
        deepEqual((onSpark.to_schema_converted as { ok: unknown }).ok, {
          cast: "ran",
          nested_reorder: "ran",
          missing_nullable: "ran",
        });
        const converted = (onValise.to_schema_converted as {
          ok: Record<string, { errorClass: string; message: string }>;
        }).ok;
        for (
          const [what, why] of [
            ["cast", "Column `x` is bigint, the schema wants int"],
            ["nested_reorder", "Column `st` is struct<p:bigint,q:string>"],
            ["missing_nullable", "The schema's column `zz` is not in the input"],
          ] as const
        ) {
          equal(converted[what]!.errorClass, "UNSUPPORTED_CONNECT_FEATURE.RELATION", what);
          ok(converted[what]!.message.includes("the relation 'to_schema'"), what);
          ok(converted[what]!.message.includes(why), converted[what]!.message);
        }
      } finally {
        if (spark.status === "fulfilled") await spark.value.stop();
        if (valise.status === "fulfilled") await valise.value.stop();
      }
    } finally {
      await removeTree(tmp);
    }
  },
);
