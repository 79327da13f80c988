// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Spark's DDL type strings (`"long"`, `"id long, v double"`, `"array<int>"`,
 * `"struct<a:int,b:string>"`, `"decimal(10,2)"`), which PySpark asks the server to parse
 * (`AnalyzePlan.ddl_parse`) when a UDF's return type or a `mapInPandas` schema is a string. As
 * Spark's `DataType.fromDDL`: a list of fields reads as a struct, else one type.
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import { type DataType, DataTypeSchema } from "@valise/protocol";
import { ServerError } from "./errors.ts";
import { decimalType, primitive, type SparkField, structType } from "./_spark_types.ts";

const NAMES: Record<string, Parameters<typeof primitive>[0]> = {
  boolean: "boolean",
  bool: "boolean",
  tinyint: "byte",
  byte: "byte",
  smallint: "short",
  short: "short",
  int: "integer",
  integer: "integer",
  bigint: "long",
  long: "long",
  float: "float",
  real: "float",
  double: "double",
  string: "string",
  binary: "binary",
  date: "date",
  timestamp: "timestamp",
  timestamp_ltz: "timestamp",
  timestamp_ntz: "timestampNtz",
  void: "null",
};

/** The longest DDL string read, and its deepest nesting. */
const MAX_DDL = 64 * 1024;
const MAX_DEPTH = 64;

class Parser {
  #s: string;
  #i = 0;
  constructor(s: string) {
    this.#s = s;
  }
  #ws(): void {
    while (this.#i < this.#s.length && /\s/.test(this.#s[this.#i]!)) this.#i++;
  }
  #fail(why: string): never {
    throw new ServerError(
      "PARSE_SYNTAX_ERROR",
      `Cannot parse the data type ${JSON.stringify(this.#s.slice(0, 200))}: ${why} at ` +
        `position ${this.#i}.`,
    );
  }
  peek(c: string): boolean {
    this.#ws();
    return this.#s.startsWith(c, this.#i);
  }
  eat(c: string): boolean {
    if (!this.peek(c)) return false;
    this.#i += c.length;
    return true;
  }
  expect(c: string): void {
    if (!this.eat(c)) this.#fail(`expected '${c}'`);
  }
  atEnd(): boolean {
    this.#ws();
    return this.#i >= this.#s.length;
  }
  ident(): string {
    this.#ws();
    if (this.#s[this.#i] === "`") {
      const end = this.#s.indexOf("`", this.#i + 1);
      if (end < 0) this.#fail("unclosed backquote");
      const name = this.#s.slice(this.#i + 1, end);
      this.#i = end + 1;
      return name;
    }
    const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(this.#s.slice(this.#i, this.#i + 1000));
    if (!m) this.#fail("expected a name");
    this.#i += m[0].length;
    return m[0];
  }
  int(): number {
    this.#ws();
    const m = /^\d{1,5}/.exec(this.#s.slice(this.#i));
    if (!m) this.#fail("expected a number");
    this.#i += m[0].length;
    return Number(m[0]);
  }
  /** Skips `NOT NULL` and `COMMENT '…'` after a field's type. */
  fieldTail(): boolean {
    let nullable = true;
    for (;;) {
      const save = this.#i;
      this.#ws();
      const word = /^[A-Za-z]+/.exec(this.#s.slice(this.#i))?.[0]?.toLowerCase();
      if (word === "not") {
        this.#i += 3;
        if (this.ident().toLowerCase() !== "null") this.#fail("expected NULL");
        nullable = false;
      } else if (word === "comment") {
        this.#i += 7;
        this.#ws();
        const q = this.#s[this.#i];
        if (q !== "'" && q !== '"') this.#fail("expected a quoted comment");
        const end = this.#s.indexOf(q, this.#i + 1);
        if (end < 0) this.#fail("unclosed comment");
        this.#i = end + 1;
      } else {
        this.#i = save;
        return nullable;
      }
    }
  }
  type(depth: number): DataType {
    if (depth > MAX_DEPTH) this.#fail(`nesting deeper than ${MAX_DEPTH}`);
    const name = this.ident().toLowerCase();
    if (name === "array") {
      this.expect("<");
      const elementType = this.type(depth + 1);
      this.expect(">");
      return create(DataTypeSchema, {
        kind: { case: "array", value: { elementType, containsNull: true } },
      });
    }
    if (name === "map") {
      this.expect("<");
      const keyType = this.type(depth + 1);
      this.expect(",");
      const valueType = this.type(depth + 1);
      this.expect(">");
      return create(DataTypeSchema, {
        kind: { case: "map", value: { keyType, valueType, valueContainsNull: true } },
      });
    }
    if (name === "struct") {
      this.expect("<");
      const fields: SparkField[] = [];
      if (!this.peek(">")) {
        do {
          const n = this.ident();
          this.eat(":");
          const t = this.type(depth + 1);
          fields.push({ name: n, type: t, nullable: this.fieldTail() });
        } while (this.eat(","));
      }
      this.expect(">");
      return structType(fields);
    }
    if (name === "decimal" || name === "dec" || name === "numeric") {
      if (!this.eat("(")) return decimalType(10, 0);
      const p = this.int();
      const s = this.eat(",") ? this.int() : 0;
      this.expect(")");
      if (p < 1 || p > 38 || s > p) this.#fail(`decimal(${p},${s}) is out of range`);
      return decimalType(p, s);
    }
    if (name === "varchar" || name === "char") {
      this.expect("(");
      this.int();
      this.expect(")");
      return primitive("string");
    }
    const kind = NAMES[name];
    if (!kind) this.#fail(`unknown type '${name}'`);
    return primitive(kind);
  }
  /** `name type, …` as a struct, or `undefined` (position restored) when it is not one. */
  fields(): DataType | undefined {
    const start = this.#i;
    try {
      const fields: SparkField[] = [];
      do {
        const n = this.ident();
        this.eat(":");
        const t = this.type(1);
        fields.push({ name: n, type: t, nullable: this.fieldTail() });
      } while (this.eat(","));
      if (!this.atEnd()) throw new Error("trailing");
      return structType(fields);
    } catch {
      this.#i = start;
      return undefined;
    }
  }
}

/**
 * Parses a DDL string as Spark's `DataType.fromDDL` does.
 *
 * @param ddl The string.
 * @returns The type.
 * @throws {ServerError} `PARSE_SYNTAX_ERROR`.
 */
export function parseDdl(ddl: string): DataType {
  if (ddl.length > MAX_DDL) {
    throw new ServerError(
      "PARSE_SYNTAX_ERROR",
      `Cannot parse a data type of ${ddl.length} characters: the limit is ${MAX_DDL}.`,
    );
  }
  const p = new Parser(ddl);
  const asFields = p.fields();
  if (asFields) return asFields;
  const t = p.type(0);
  if (!p.atEnd()) p.expect("<end>");
  return t;
}
