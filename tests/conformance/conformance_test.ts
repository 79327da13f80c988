// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The differential conformance suite: one client (`client.py`: the real PySpark client and the
 * raw gRPC stub of its wheel) run against Apache Spark's own Spark Connect server and against a
 * Valise server process. Every observable must be the same, or its difference listed in
 * `differences.json` (on purpose, with the reason, or being fixed); an unlisted difference or a
 * stale entry fails. `docs/compatibility.md`'s table must be the one this run generates.
 *
 * @module
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { sparkMissing } from "../_spark.ts";
import {
  compare,
  formatMarkdown,
  type Registry,
  renderTable,
  replaceSection,
  sparkVersionOf,
} from "./_compare.ts";
import { observeBoth } from "./_observe.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const missing = sparkMissing();
const NAME =
  "Valise answers the real PySpark client as Apache Spark does, but for listed differences";

Deno.test(
  { name: missing ? `${NAME} (ignored: ${missing})` : NAME, ignore: !!missing },
  async () => {
    const runs = await observeBoth();
    const registry = JSON.parse(
      await Deno.readTextFile(`${ROOT}tests/conformance/differences.json`),
    ) as Registry;
    const { rows, problems } = compare(runs.spark, runs.valise, registry);
    deepEqual(problems, [], problems.join("\n"));
    // The run measured what it claims to: the whole script ran on both, against Spark 4.2.1.
    ok(rows.length >= 150, `only ${rows.length} observables`);
    equal(sparkVersionOf(runs.spark), "4.2.1");
    equal(sparkVersionOf(runs.valise), "4.2.1");
    const doc = await Deno.readTextFile(`${ROOT}docs/compatibility.md`);
    const table = renderTable(rows, sparkVersionOf(runs.spark));
    const want = await formatMarkdown(replaceSection(doc, table));
    equal(
      doc,
      want,
      "docs/compatibility.md's conformance table is not this run's: run " +
        "`deno run -A tools/compat_table.ts` and commit the result",
    );
  },
);
