// Regression: a function that raises must not take the session's fork server down with it.
// (A kill frame and the run's own pipe events in one select() batch used to crash the fork
// server about once in forty calls; this loops well past that.)
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { tableFromArrays } from "apache-arrow";
import { connect, ValiseClientError } from "@valise/client";
import { serve } from "@valise/server";
import { removeTree } from "./_util.ts";

Deno.test("after a function raises, the same session's next Apply still works, 60 times over", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-apply-err-" });
  const server = await serve({ dataDir: join(tmp, "data"), port: 0 });
  const session = connect(`sc://127.0.0.1:${server.port}`);
  try {
    const table = tableFromArrays({ a: Int32Array.from([1, 2, 3]) });
    for (let i = 0; i < 60; i++) {
      let errorClass = "";
      try {
        await session.applyCollect(
          { code: "def f(c):\n    raise ValueError('boom')\n", functionName: "f" },
          table,
        );
      } catch (e) {
        errorClass = e instanceof ValiseClientError ? e.errorClass : String(e);
      }
      equal(errorClass, "APPLY_FUNCTION_FAILED", `round ${i}`);
      const good = await session.applyCollect(
        { code: "def f(c):\n    return c\n", functionName: "f" },
        table,
      );
      equal(good.table.numRows, 3, `round ${i}`);
    }
    // Every call is counted for /metrics.
    const text = await server.valise.metrics.render(server.valise.store, server.valise.launcher);
    ok(text.includes('valise_applies_total{outcome="ok"} 60'), text);
    ok(text.includes('valise_applies_total{outcome="error"} 60'), text);
    ok(text.includes('valise_apply_rows_total{direction="out"} 180'), text);
  } finally {
    await session.release();
    session.close();
    await server.close();
    await removeTree(tmp);
  }
});
