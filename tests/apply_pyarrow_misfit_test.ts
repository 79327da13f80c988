// Apply over Arrow IPC (pyarrow in the session's interpreter): output pyarrow cannot convert is
// APPLY_OUTPUT_TYPE_MISMATCH naming the column, the value's type and the type it should have,
// as on the columnar transport; it was a worker crash (APPLY_WORKER_FAILED with pyarrow's
// traceback).
import { equal, rejects } from "node:assert/strict";
import { join } from "node:path";
import { Field, Int64, Schema, tableFromArrays } from "apache-arrow";
import { connect, ValiseClientError } from "@valise/client";
import { needsVenv, VENV_PYTHON } from "./_python.ts";
import { startServer } from "./_server.ts";

const CODE = [
  "import pandas as pd",
  "def pd_mixed(df):",
  "    return pd.DataFrame({'y': [1, 'a', 2.5]})",
  "def cols_mixed(c):",
  "    return {'y': [1, 'a', 2]}",
  "def cols_complex(c):",
  "    return {'y': [1j, 2j, 3j]}",
  "",
].join("\n");

Deno.test({
  ...needsVenv(
    "Apply with pyarrow: output it cannot convert names the column, the value and the type",
  ),
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-misfit-" });
    const server = await startServer({
      dataDir: join(tmp, "data"),
      args: ["--allow-interpreter", VENV_PYTHON],
    });
    const session = connect(`sc://127.0.0.1:${server.port}`);
    try {
      await session.conf.set("spark.sql.execution.pyspark.python", VENV_PYTHON);
      const input = tableFromArrays({ x: Int32Array.of(1, 2, 3) });
      const fails = async (
        functionName: string,
        form: "pandas" | "columns",
        message: string,
        outputSchema?: Schema,
      ) => {
        await rejects(
          session.applyCollect({ code: CODE, functionName }, input, {
            form,
            ...(outputSchema ? { outputSchema } : {}),
          }),
          (e: unknown) => {
            equal(e instanceof ValiseClientError && e.errorClass, "APPLY_OUTPUT_TYPE_MISMATCH");
            equal((e as ValiseClientError).message, `[APPLY_OUTPUT_TYPE_MISMATCH] ${message}`);
            return true;
          },
        );
      };
      await fails(
        "pd_mixed",
        "pandas",
        "column 'y': cannot infer an Arrow type from values of types float, int, str; declare " +
          "the output schema",
      );
      await fails(
        "pd_mixed",
        "pandas",
        "column 'y' is int64, but row 1 holds str 'a'",
        new Schema([new Field("y", new Int64(), true)]),
      );
      await fails(
        "cols_mixed",
        "columns",
        "column 'y': cannot infer an Arrow type from values of types int, str; declare the " +
          "output schema",
      );
      await rejects(
        session.applyCollect({ code: CODE, functionName: "cols_complex" }, input),
        (e: unknown) => {
          equal(e instanceof ValiseClientError && e.errorClass, "APPLY_OUTPUT_TYPE_MISMATCH");
          equal(
            /^\[APPLY_OUTPUT_TYPE_MISMATCH\] column 'y' holds complex values pyarrow cannot convert: /
              .test((e as Error).message),
            true,
            (e as Error).message,
          );
          return true;
        },
      );
      // The session's worker is fine afterwards.
      const ok = await session.applyCollect(
        { code: "def f(c):\n    return {'y': c['x']}\n", functionName: "f" },
        input,
      );
      equal(ok.table.numRows, 3);
    } finally {
      session.close();
      await server.stop();
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
