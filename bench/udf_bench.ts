// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * PySpark UDFs, versus Apache Spark: the real PySpark client (`bench/udf_client.py`) adds a
 * venv-pack environment with pandas, pyarrow and pyspark-client (`tests/_udf.ts`) as
 * `env.tar.gz#environment`, then times `spark.range(N).select(pandas_udf(...)).toPandas()` and
 * `spark.range(N).mapInPandas(...).toPandas()` (N = 10 million; medians of 3) on Spark
 * (`local[2]`, `tests/_spark.ts`) and on Valise (`packages/server/main.ts`, one worker per
 * plan, the default), and the first UDF call of a new session adding the same environment,
 * which the server already holds (Valise: its blob and unpacked tree; Spark: the file, unpacked
 * again per session). Both results go to the client whole, so the transfer is in both figures.
 *
 * Env: VALISE_BENCH_SCALE (default 1: 10 million rows), VALISE_BENCH_UDF_REPS (default 3).
 * Without `.venv/` or Java it says why and measures nothing.
 *
 * @module
 */
import { join } from "node:path";
import { makeVenvPack } from "../tests/fixtures/envs.ts";
import { VENV_PYTHON } from "../tests/_python.ts";
import { sparkMissing, startSpark } from "../tests/_spark.ts";
import { startServer } from "../tests/_server.ts";
import { udfEnvOptions } from "../tests/_udf.ts";
import { median } from "./_peers.ts";
import { removeTree } from "../tests/_util.ts";

const ROWS = Math.round(10_000_000 * Number(Deno.env.get("VALISE_BENCH_SCALE") ?? "1"));
const REPS = Number(Deno.env.get("VALISE_BENCH_UDF_REPS") ?? "3");
const CLIENT = new URL("./udf_client.py", import.meta.url).pathname;

interface Timings {
  warm_first_call_s: number;
  pandas_udf_s: number[];
  map_in_pandas_s: number[];
  new_session_add_s: number;
  new_session_first_call_s: number;
}

async function client(remote: string, env: string): Promise<Timings> {
  const out = await new Deno.Command(VENV_PYTHON, {
    args: [
      CLIENT,
      "--remote",
      remote,
      "--env",
      env,
      "--rows",
      String(ROWS),
      "--reps",
      String(REPS),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`udf_client.py failed:\n${new TextDecoder().decode(out.stderr).slice(-3000)}`);
  }
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

const missing = sparkMissing();
if (missing) {
  console.log(`udf bench skipped: ${missing}`);
  Deno.exit(0);
}
const tmp = await Deno.makeTempDir({ prefix: "valise-udf-bench-" });
try {
  const env = await makeVenvPack(tmp, udfEnvOptions("1.0"));
  const results: Record<string, Timings> = {};
  {
    const spark = await startSpark();
    try {
      results["Spark (local[2])"] = await client(spark.remote, env.archive);
    } finally {
      await spark.stop();
    }
  }
  {
    const valise = await startServer({ dataDir: join(tmp, "data"), args: ["--quiet"] });
    try {
      results["Valise"] = await client(`sc://127.0.0.1:${valise.port}`, env.archive);
    } finally {
      await valise.stop();
    }
  }
  const rate = (s: number[]) =>
    `${(ROWS / median(s) / 1e6).toFixed(2)} M rows/s (${median(s).toFixed(1)} s)`;
  console.log(`rows: ${ROWS.toLocaleString("en")}, medians of ${REPS}\n`);
  console.log(
    "| server | pandas_udf | mapInPandas | new session: add | new session: first UDF call |",
  );
  console.log("| --- | --- | --- | --- | --- |");
  for (const [name, t] of Object.entries(results)) {
    console.log(
      `| ${name} | ${rate(t.pandas_udf_s)} | ${rate(t.map_in_pandas_s)} | ` +
        `${t.new_session_add_s.toFixed(2)} s | ${t.new_session_first_call_s.toFixed(2)} s |`,
    );
  }
  console.log(
    `\nfirst UDF call of the first session (environment new to the server): ${
      Object.entries(results).map(([n, t]) => `${n} ${t.warm_first_call_s.toFixed(2)} s`).join(", ")
    }`,
  );
} finally {
  await removeTree(tmp);
}
