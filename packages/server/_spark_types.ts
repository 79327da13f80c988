// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Spark SQL data types as Spark Connect carries them (`spark.connect.DataType`): their JSON form
 * (what `pyspark.sql.types` parses), their Arrow form (what PySpark's `to_arrow_type` gives, so
 * that results read back as Spark's do), the types of Arrow data a client sent, and a parser of
 * the DDL strings PySpark asks the server to parse (`AnalyzePlan.ddl_parse`).
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import { type DataType, type DataType_StructField, DataTypeSchema } from "@valise/protocol";
import {
  Binary,
  Bool,
  type DataType as ArrowType,
  DateDay,
  Decimal,
  Field,
  Float32,
  Float64,
  Int16,
  Int32,
  Int64,
  Int8,
  List,
  Map_,
  Null,
  Schema,
  Struct,
  TimestampMicrosecond,
  Type,
  Utf8,
} from "apache-arrow";
import { ServerError } from "./errors.ts";

/** A column of a relation: its name, type and nullability. */
export interface SparkField {
  /** Column name. */
  name: string;
  /** Spark type. */
  type: DataType;
  /** Whether it may hold nulls. */
  nullable: boolean;
}

type Kind = NonNullable<DataType["kind"]["case"]>;

/** A primitive type by its case. */
export function primitive(kind: Kind): DataType {
  return create(DataTypeSchema, { kind: { case: kind, value: {} } } as never);
}

/** A decimal type. */
export function decimalType(precision: number, scale: number): DataType {
  return create(DataTypeSchema, { kind: { case: "decimal", value: { precision, scale } } });
}

/** A struct type of fields. */
export function structType(fields: SparkField[]): DataType {
  return create(DataTypeSchema, {
    kind: {
      case: "struct",
      value: {
        fields: fields.map((f) => ({ name: f.name, dataType: f.type, nullable: f.nullable })),
      },
    },
  });
}

/** The fields of a struct type (or `undefined` for any other type). */
export function structFields(t: DataType): SparkField[] | undefined {
  if (t.kind.case !== "struct") return undefined;
  return t.kind.value.fields.map((f: DataType_StructField) => ({
    name: f.name,
    type: f.dataType ?? primitive("null"),
    nullable: f.nullable,
  }));
}

const SIMPLE: Partial<Record<Kind, string>> = {
  null: "void",
  binary: "binary",
  boolean: "boolean",
  byte: "tinyint",
  short: "smallint",
  integer: "int",
  long: "bigint",
  float: "float",
  double: "double",
  string: "string",
  date: "date",
  timestamp: "timestamp",
  timestampNtz: "timestamp_ntz",
};

const JSON_NAMES: Partial<Record<Kind, string>> = {
  null: "void",
  binary: "binary",
  boolean: "boolean",
  byte: "byte",
  short: "short",
  integer: "integer",
  long: "long",
  float: "float",
  double: "double",
  string: "string",
  date: "date",
  timestamp: "timestamp",
  timestampNtz: "timestamp_ntz",
};

function unsupportedType(t: DataType): ServerError {
  return new ServerError(
    "UNSUPPORTED_CONNECT_FEATURE.DATA_TYPE",
    `Valise's ExecutePlan does not support the data type ${t.kind.case ?? "(empty)"} ` +
      `(supported: the primitive types, decimal, date, timestamp, array, map and struct).`,
    { parameters: { dataType: String(t.kind.case) } },
  );
}

/** Spark's simple string of a type (`bigint`, `array<int>`, `struct<a:int>`). */
export function simpleString(t: DataType): string {
  const k = t.kind;
  if (k.case && SIMPLE[k.case]) return SIMPLE[k.case]!;
  switch (k.case) {
    case "decimal":
      return `decimal(${k.value.precision ?? 10},${k.value.scale ?? 0})`;
    case "array":
      return `array<${simpleString(k.value.elementType ?? primitive("null"))}>`;
    case "map":
      return `map<${simpleString(k.value.keyType ?? primitive("null"))},${
        simpleString(k.value.valueType ?? primitive("null"))
      }>`;
    case "struct":
      return `struct<${
        k.value.fields.map((f) => `${f.name}:${simpleString(f.dataType ?? primitive("null"))}`)
          .join(",")
      }>`;
    default:
      throw unsupportedType(t);
  }
}

/** The JSON form of a type, as `pyspark.sql.types.DataType.fromJson` reads it. */
export function sparkJson(t: DataType): unknown {
  const k = t.kind;
  if (k.case && JSON_NAMES[k.case]) return JSON_NAMES[k.case];
  switch (k.case) {
    case "decimal":
      return `decimal(${k.value.precision ?? 10},${k.value.scale ?? 0})`;
    case "array":
      return {
        type: "array",
        elementType: sparkJson(k.value.elementType ?? primitive("null")),
        containsNull: k.value.containsNull,
      };
    case "map":
      return {
        type: "map",
        keyType: sparkJson(k.value.keyType ?? primitive("null")),
        valueType: sparkJson(k.value.valueType ?? primitive("null")),
        valueContainsNull: k.value.valueContainsNull,
      };
    case "struct":
      return {
        type: "struct",
        fields: k.value.fields.map((f) => ({
          name: f.name,
          type: sparkJson(f.dataType ?? primitive("null")),
          nullable: f.nullable,
          metadata: {},
        })),
      };
    default:
      throw unsupportedType(t);
  }
}

/** A type from its JSON form (the `schema` of a `LocalRelation`). */
export function fromSparkJson(j: unknown, depth = 0): DataType {
  if (depth > 64) throw badSchema("it nests deeper than 64 levels");
  if (typeof j === "string") {
    const dec = /^decimal\((\d+),\s*(-?\d+)\)$/.exec(j);
    if (dec) return decimalType(Number(dec[1]), Number(dec[2]));
    if (j === "decimal") return decimalType(10, 0);
    for (const [kind, name] of Object.entries(JSON_NAMES)) {
      if (name === j) return primitive(kind as Kind);
    }
    if (j === "null") return primitive("null");
    throw badSchema(`unknown type ${JSON.stringify(j).slice(0, 100)}`);
  }
  if (typeof j !== "object" || j === null) {
    throw badSchema("a type is neither a name nor an object");
  }
  const o = j as Record<string, unknown>;
  switch (o.type) {
    case "array":
      return create(DataTypeSchema, {
        kind: {
          case: "array",
          value: {
            elementType: fromSparkJson(o.elementType, depth + 1),
            containsNull: o.containsNull !== false,
          },
        },
      });
    case "map":
      return create(DataTypeSchema, {
        kind: {
          case: "map",
          value: {
            keyType: fromSparkJson(o.keyType, depth + 1),
            valueType: fromSparkJson(o.valueType, depth + 1),
            valueContainsNull: o.valueContainsNull !== false,
          },
        },
      });
    case "struct": {
      if (!Array.isArray(o.fields)) throw badSchema("a struct has no fields array");
      return structType(o.fields.map((f: Record<string, unknown>) => {
        if (typeof f?.name !== "string") throw badSchema("a struct field has no name");
        return {
          name: f.name,
          type: fromSparkJson(f.type, depth + 1),
          nullable: f.nullable !== false,
        };
      }));
    }
    default:
      throw badSchema(`unknown type ${JSON.stringify(o.type)?.slice(0, 100)}`);
  }
}

function badSchema(why: string): ServerError {
  return new ServerError("INVALID_PLAN_INPUT", `Cannot read the schema: ${why}.`);
}

/** The Arrow type PySpark's `to_arrow_type` gives for a Spark type. */
export function arrowType(t: DataType, timeZone: string): ArrowType {
  const k = t.kind;
  switch (k.case) {
    case "null":
      return new Null();
    case "boolean":
      return new Bool();
    case "byte":
      return new Int8();
    case "short":
      return new Int16();
    case "integer":
      return new Int32();
    case "long":
      return new Int64();
    case "float":
      return new Float32();
    case "double":
      return new Float64();
    case "string":
      return new Utf8();
    case "binary":
      return new Binary();
    case "date":
      return new DateDay();
    case "timestamp":
      return new TimestampMicrosecond(timeZone);
    case "timestampNtz":
      return new TimestampMicrosecond();
    case "decimal":
      return new Decimal(k.value.scale ?? 0, k.value.precision ?? 10, 128);
    case "array":
      return new List(
        new Field("element", arrowType(k.value.elementType ?? primitive("null"), timeZone), true),
      );
    case "map":
      return new Map_(
        // deno-lint-ignore no-explicit-any
        new Field<any>(
          "entries",
          new Struct<never>([
            new Field("key", arrowType(k.value.keyType ?? primitive("null"), timeZone), false),
            new Field(
              "value",
              arrowType(k.value.valueType ?? primitive("null"), timeZone),
              true,
            ),
          ] as never),
          false,
        ),
      );
    case "struct":
      return new Struct(
        k.value.fields.map((f) =>
          new Field(f.name, arrowType(f.dataType ?? primitive("null"), timeZone), f.nullable)
        ),
      );
    default:
      throw unsupportedType(t);
  }
}

/** The Arrow schema of a relation's columns. */
export function arrowSchema(fields: SparkField[], timeZone: string): Schema {
  return new Schema(fields.map((f) => new Field(f.name, arrowType(f.type, timeZone), f.nullable)));
}

/** The Spark type of Arrow data a client sent (a `LocalRelation` without a schema string). */
export function fromArrowType(t: ArrowType): DataType {
  switch (t.typeId) {
    case Type.Null:
      return primitive("null");
    case Type.Bool:
      return primitive("boolean");
    case Type.Int: {
      const bits: number = (t as Int64).bitWidth;
      return primitive(
        bits === 8 ? "byte" : bits === 16 ? "short" : bits === 32 ? "integer" : "long",
      );
    }
    case Type.Float:
      return primitive((t as Float32).precision === 1 ? "float" : "double");
    case Type.Utf8:
    case Type.LargeUtf8:
      return primitive("string");
    case Type.Binary:
    case Type.LargeBinary:
      return primitive("binary");
    case Type.Date:
      return primitive("date");
    case Type.Timestamp:
      return primitive((t as TimestampMicrosecond).timezone ? "timestamp" : "timestampNtz");
    case Type.Decimal:
      return decimalType((t as Decimal).precision, (t as Decimal).scale);
    case Type.List:
      return create(DataTypeSchema, {
        kind: {
          case: "array",
          value: { elementType: fromArrowType((t as List).children[0]!.type), containsNull: true },
        },
      });
    case Type.Struct:
      return structType((t as Struct).children.map((f) => ({
        name: f.name,
        type: fromArrowType(f.type),
        nullable: f.nullable,
      })));
    case Type.Map: {
      const entries = (t as Map_).children[0]!.type as Struct;
      return create(DataTypeSchema, {
        kind: {
          case: "map",
          value: {
            keyType: fromArrowType(entries.children[0]!.type),
            valueType: fromArrowType(entries.children[1]!.type),
            valueContainsNull: true,
          },
        },
      });
    }
    case Type.Dictionary:
      return fromArrowType((t as unknown as { dictionary: ArrowType }).dictionary);
    default:
      throw new ServerError(
        "UNSUPPORTED_CONNECT_FEATURE.DATA_TYPE",
        `Valise's ExecutePlan cannot read Arrow data of type ${t} sent by the client.`,
        { parameters: { dataType: String(t) } },
      );
  }
}
