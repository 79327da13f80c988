/**
 * Runs the conformance suite (the real PySpark client against Apache Spark's Spark Connect
 * server and against Valise; see `tests/conformance/`) and writes its table into
 * `docs/compatibility.md`, between the generated-section markers. Refuses while a difference is
 * neither fixed nor listed in `tests/conformance/differences.json`, or an entry there is stale.
 * `tests/conformance/conformance_test.ts` checks that the committed table is the current one.
 *
 * Usage: `deno run -A tools/compat_table.ts` (needs `deno task setup`'s `.venv/` and Java).
 *
 * @module
 */
import {
  compare,
  formatMarkdown,
  type Registry,
  renderTable,
  replaceSection,
  sparkVersionOf,
} from "../tests/conformance/_compare.ts";
import { observeBoth } from "../tests/conformance/_observe.ts";
import { sparkMissing } from "../tests/_spark.ts";

const root = new URL("..", import.meta.url).pathname;
const missing = sparkMissing();
if (missing) {
  console.error(`compat_table: cannot run the conformance suite: ${missing}`);
  Deno.exit(1);
}
const runs = await observeBoth();
const registry = JSON.parse(
  await Deno.readTextFile(`${root}tests/conformance/differences.json`),
) as Registry;
const { rows, problems } = compare(runs.spark, runs.valise, registry);
if (problems.length) {
  console.error(`compat_table: the table is not written:\n${problems.join("\n")}`);
  Deno.exit(1);
}
const path = `${root}docs/compatibility.md`;
const doc = await Deno.readTextFile(path);
const next = await formatMarkdown(
  replaceSection(doc, renderTable(rows, sparkVersionOf(runs.spark))),
);
await Deno.writeTextFile(path, next);
const counts = Object.groupBy(rows, (r) => r.verdict);
console.error(
  `compat_table: ${rows.length} observables written to docs/compatibility.md ` +
    `(same ${counts.same?.length ?? 0}, on purpose ${counts["on purpose"]?.length ?? 0}, ` +
    `being fixed ${counts["being fixed"]?.length ?? 0})`,
);
