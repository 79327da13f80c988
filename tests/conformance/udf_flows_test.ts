// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The seed's other two flows end to end from the real PySpark client, on Apache Spark and on
 * Valise: a PEX (built by the real `pex`, holding pyspark-client, pandas and pyarrow as Spark's
 * own PEX recipe does) added as a file with the interpreter `./<name>.pex`, and a conda-pack
 * shaped environment (the fixture's look-alike with the same packages) added as
 * `archives/<name>.tar.gz#environment` with the interpreter `environment/bin/python`. In each, a
 * `pandas_udf` and `mapInPandas` run (`udf_client.py`'s programs), and a third program imports
 * the environment's own marker package in both. Valise's results are the expected values, and
 * Spark's (the same script, one Spark for the file) are Valise's. The venv-pack flow is
 * `udf_test.ts`.
 *
 * @module
 */
import { deepEqual } from "node:assert/strict";
import { join } from "node:path";
import { makeCondaPackLike, makePex } from "../fixtures/envs.ts";
import { udfClient, udfCondaOptions, type UdfEnv, udfPexOptions, type UdfResult } from "../_udf.ts";
import { startServer } from "../_server.ts";
import { sparkMissing, startSpark } from "../_spark.ts";
import { removeTree } from "../_util.ts";

const PROGRAMS = ["pandas_udf", "map_in_pandas", "env_version"];

/** Python's repr of a float (`0.0`, `0.5`), as udf_client.py's `plain` writes it. */
function pyFloat(x: number): string {
  return Number.isInteger(x) ? x.toFixed(1) : String(x);
}

/** What the programs must return in an environment whose `udfmark.VERSION` is `version`. */
function expected(version: string): Record<string, UdfResult> {
  const ids = [...Array(7).keys()];
  return {
    pandas_udf: {
      ok: { schema: "struct<x:bigint>", rows: [...Array(10).keys()].map((i) => [i + 1]) },
    },
    map_in_pandas: {
      ok: {
        schema: "struct<id:bigint,half:double,name:string>",
        rows: ids.map((i) => [i, pyFloat(i / 2), `r${i}`]),
      },
    },
    env_version: { ok: { udf: [version], map: [version] } },
  };
}

const missing = sparkMissing();
const NAME = "the seed's PEX and conda-pack flows: pandas_udf and mapInPandas give the expected " +
  "results on Valise and the same on Spark";

Deno.test(
  { name: missing ? `${NAME} (ignored: ${missing})` : NAME, ignore: !!missing },
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-udf-flows-" });
    try {
      const [pex, conda] = await Promise.all([
        makePex(tmp, udfPexOptions("pex-1.0")),
        makeCondaPackLike(tmp, udfCondaOptions("conda-1.0")),
      ]);
      const flows: { name: string; env: UdfEnv; version: string }[] = [
        { name: "pex", env: { pex: pex.path }, version: "pex-1.0" },
        { name: "conda-pack", env: { archive: conda.archive }, version: "conda-1.0" },
      ];
      const [spark, valise] = await Promise.allSettled([
        startSpark(),
        startServer({ dataDir: join(tmp, "data"), args: ["--quiet"] }),
      ]);
      try {
        if (spark.status === "rejected") throw spark.reason;
        if (valise.status === "rejected") throw valise.reason;
        const onValise = `sc://127.0.0.1:${valise.value.port}`;
        const results = await Promise.all(flows.map(async (f) => {
          const [s, v] = await Promise.all([
            udfClient(spark.value.remote, f.env, PROGRAMS, `flow-${f.name}`),
            udfClient(onValise, f.env, PROGRAMS, `flow-${f.name}`),
          ]);
          return { ...f, spark: s, valise: v };
        }));
        for (const r of results) {
          deepEqual(r.valise, expected(r.version), `${r.name} on Valise`);
          deepEqual(r.spark, r.valise, `${r.name}: Spark and Valise`);
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
