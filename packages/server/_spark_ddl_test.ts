// Copyright 2026 the Valise authors. Apache-2.0 license.
import { equal, throws } from "node:assert/strict";
import fc from "fast-check";
import { parseDdl } from "./_spark_ddl.ts";
import { simpleString } from "./_spark_types.ts";
import { isServerError } from "./errors.ts";

Deno.test("parseDdl reads Spark's DDL types as DataType.fromDDL does", () => {
  const cases: [string, string][] = [
    ["long", "bigint"],
    ["int", "int"],
    ["double", "double"],
    ["string", "string"],
    ["decimal(10,2)", "decimal(10,2)"],
    ["decimal", "decimal(10,0)"],
    ["array<int>", "array<int>"],
    ["map<string, bigint>", "map<string,bigint>"],
    ["struct<a:int,b:string>", "struct<a:int,b:string>"],
    ["id long, v double", "struct<id:bigint,v:double>"],
    ["a int not null, `b c` string comment 'x'", "struct<a:int,b c:string>"],
    ["x: timestamp_ntz", "struct<x:timestamp_ntz>"],
  ];
  for (const [ddl, want] of cases) equal(simpleString(parseDdl(ddl)), want, ddl);
});

Deno.test("parseDdl refuses what is not a type, with PARSE_SYNTAX_ERROR", () => {
  for (
    const bad of ["", "lng", "array<int", "map<int>", "decimal(99,2)", "a int,", "<".repeat(100)]
  ) {
    throws(() => parseDdl(bad), (e) => isServerError(e) && e.code === "PARSE_SYNTAX_ERROR", bad);
  }
  throws(() => parseDdl("array<".repeat(100) + "int" + ">".repeat(100)), /deeper than 64/);
});

Deno.test("parseDdl of arbitrary text: a type or PARSE_SYNTAX_ERROR, never anything else", () => {
  fc.assert(fc.property(fc.string({ maxLength: 80 }), (s) => {
    try {
      parseDdl(s);
    } catch (e) {
      if (!isServerError(e) || e.code !== "PARSE_SYNTAX_ERROR") throw e;
    }
  }));
});
