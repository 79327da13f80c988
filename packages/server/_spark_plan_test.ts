// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, throws } from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { type DataType, type Relation, RelationSchema } from "@valise/protocol";
import { compilePlan } from "./_spark_plan.ts";
import { parseDdl } from "./_spark_ddl.ts";
import { simpleString } from "./_spark_types.ts";
import { isServerError } from "./errors.ts";

const NO_DATA = {
  arrowFields: () => [],
  cachedFields: () => [],
};

/** `range(3)` with `id` and a nullable string column `s` (a literal null). */
function source(): Relation {
  return create(RelationSchema, {
    relType: {
      case: "project",
      value: {
        input: { relType: { case: "range", value: { end: 3n, step: 1n } } },
        expressions: [
          { exprType: { case: "unresolvedAttribute", value: { unparsedIdentifier: "id" } } },
          {
            exprType: {
              case: "alias",
              value: {
                name: ["s"],
                expr: {
                  exprType: {
                    case: "literal",
                    value: {
                      literalType: { case: "null", value: { kind: { case: "null", value: {} } } },
                    },
                  },
                },
              },
            },
          },
        ],
      },
    },
  });
}

function to(ddl: string, nullable: Record<string, boolean> = {}): Relation {
  const schema = parseDdl(ddl) as DataType;
  if (schema.kind.case === "struct") {
    for (const f of schema.kind.value.fields) f.nullable = nullable[f.name] ?? true;
  }
  return create(RelationSchema, {
    relType: { case: "toSchema", value: { input: source(), schema } },
  });
}

function refused(rel: Relation, errorClass: string, text: string): void {
  throws(() => compilePlan(rel, NO_DATA), (e) => {
    equal(isServerError(e) && e.code, errorClass);
    equal((e as Error).message.includes(text), true, (e as Error).message);
    return true;
  });
}

Deno.test("df.to(schema): columns by name, in the schema's order, with its nullability", () => {
  const plan = compilePlan(to("S void, ID bigint", { ID: false }), NO_DATA);
  deepEqual(plan.fields.map((f) => [f.name, simpleString(f.type), f.nullable]), [
    ["S", "void", true],
    ["ID", "bigint", false],
  ]);
  deepEqual(plan.stages.at(-1), {
    kind: "project",
    columns: [
      { name: "S", expr: { kind: "col", index: 1 } },
      { name: "ID", expr: { kind: "col", index: 0 } },
    ],
  });
});

Deno.test("df.to(schema): Spark's errors, and what would change values refused by name", () => {
  refused(to("s void", { s: false }), "NULLABLE_COLUMN_OR_FIELD", "Column or field `s`");
  refused(to("zz bigint", { zz: false }), "UNRESOLVED_COLUMN.WITH_SUGGESTION", "`zz`");
  refused(to("zz bigint"), "UNSUPPORTED_CONNECT_FEATURE.RELATION", "`zz` is not in the input");
  refused(to("id int"), "UNSUPPORTED_CONNECT_FEATURE.RELATION", "is bigint, the schema wants int");
  refused(
    create(RelationSchema, {
      relType: { case: "toSchema", value: { input: source(), schema: parseDdl("bigint") } },
    }),
    "INVALID_PLAN_INPUT",
    "no struct schema",
  );
});
