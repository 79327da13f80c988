// Copyright 2026 the Valise authors. Apache-2.0 license.
import { equal } from "node:assert/strict";
import { Float64, Int64, makeData, RecordBatch, Table, Utf8, vectorFromArray } from "apache-arrow";
import fc from "fast-check";
import { javaDouble, javaFloat, showString } from "./_spark_show.ts";

Deno.test("javaDouble formats as Java's Double.toString", () => {
  const cases: [number, string][] = [
    [0, "0.0"],
    [-0, "-0.0"],
    [1, "1.0"],
    [0.5, "0.5"],
    [1 / 3, "0.3333333333333333"],
    [1e7, "1.0E7"],
    [12345678.9, "1.23456789E7"],
    [0.001, "0.001"],
    [0.0001, "1.0E-4"],
    [1e-300, "1.0E-300"],
    [NaN, "NaN"],
    [Infinity, "Infinity"],
    [-Infinity, "-Infinity"],
  ];
  for (const [x, want] of cases) equal(javaDouble(x), want, String(x));
});

Deno.test("javaFloat gives the shortest digits of a float32", () => {
  equal(javaFloat(Math.fround(0.1)), "0.1");
  equal(javaFloat(Math.fround(1.5)), "1.5");
  equal(javaFloat(Math.fround(3.4e38)), "3.4E38");
});

Deno.test("javaDouble always reads back as the same double", () => {
  fc.assert(fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (x) => {
    const s = javaDouble(x).replace("E", "e");
    equal(Number(s), x);
  }));
});

Deno.test("showString: Spark's table, truncation, NULL and footer", () => {
  const batch = new RecordBatch({
    id: makeData({ type: new Int64(), length: 3, data: new BigInt64Array([0n, 1n, 2n]) }),
    v: vectorFromArray([0.5, null, 2], new Float64()).data[0]!,
    s: vectorFromArray(["a", "x".repeat(30), "line\nbreak"], new Utf8()).data[0]!,
  });
  const table = new Table([batch]);
  equal(
    showString(table, { numRows: 2, truncate: 20, vertical: false }, "UTC"),
    "+---+----+--------------------+\n" +
      "| id|   v|                   s|\n" +
      "+---+----+--------------------+\n" +
      "|  0| 0.5|                   a|\n" +
      "|  1|NULL|xxxxxxxxxxxxxxxxx...|\n" +
      "+---+----+--------------------+\n" +
      "only showing top 2 rows",
  );
  equal(
    showString(table, { numRows: 20, truncate: 0, vertical: false }, "UTC").split("\n")[5],
    `|2  |2.0 |line\\nbreak${" ".repeat(30 - 11)}|`,
  );
});
