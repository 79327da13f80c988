// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Compiles the Python-UDF subset of a Spark Connect plan (a `Relation`) into what Valise runs:
 * a source of Arrow record batches (a `Range`, or the client's `LocalRelation` data, inline or as
 * `cache/<sha256>` artifacts) and the stages the UDF runner (`udf_runner.py`) applies to each
 * batch in the session's interpreter: projections of column references, literals and Python
 * UDFs, a map over partitions (`mapInPandas`, `mapInArrow`), renames, `df.to(schema)` where no
 * value changes, and a limit. Anything else is refused with an error class naming the relation or
 * expression. Every count and depth read from the plan is capped.
 *
 * @module
 */
import type {
  CommonInlineUserDefinedFunction,
  DataType,
  Expression,
  Expression_Literal,
  Relation,
} from "@valise/protocol";
import { ServerError } from "./errors.ts";
import { parseDdl } from "./_spark_ddl.ts";
import {
  decimalType,
  fromSparkJson,
  primitive,
  simpleString,
  type SparkField,
  sparkJson,
  structFields,
  structType,
} from "./_spark_types.ts";

/** The deepest relation tree, and expression tree, a plan may have. */
export const MAX_PLAN_DEPTH = 128;
/** The most UDFs, and output columns, one plan may have. */
export const MAX_PLAN_UDFS = 256;
const MAX_COLUMNS = 4096;
/**
 * The largest string or binary literal: each batch holds it once per row, so a large one
 * multiplies (Spark has no such cap; data belongs in a relation, not a literal).
 */
export const MAX_LITERAL_BYTES = 1024 * 1024;

/** Where the batches come from. */
export type PlanSource =
  | { kind: "range"; start: bigint; end: bigint; step: bigint }
  | { kind: "local"; data: Uint8Array | undefined }
  | { kind: "cached"; hashes: string[] };

/** One UDF for the runner: PySpark's pickled command and how to call it. */
export interface RunnerUdf {
  /** `PythonEvalType`. */
  evalType: number;
  /** Number of arguments. */
  nargs: number;
  /** The pickled `(function, return type)`, base64. */
  command: string;
  /** The arguments' types as a Spark JSON struct (Arrow-optimized UDFs read it). */
  inputType?: string;
}

/** An expression for the runner. */
export type RunnerExpr =
  | { kind: "col"; index: number }
  | { kind: "lit"; type: string; value: unknown; precision?: number; scale?: number }
  | { kind: "udf"; udf: number; args: RunnerExpr[]; name: string };

/** A stage of the runner. */
export type RunnerStage =
  | { kind: "project"; columns: { name: string; expr: RunnerExpr }[] }
  | { kind: "map"; udf: number }
  | { kind: "rename"; names: string[] };

/** A compiled plan. */
export interface CompiledPlan {
  /** Where the rows come from. */
  source: PlanSource;
  /** The schema string a chunked cached relation names (an artifact), if any. */
  schemaHash?: string | undefined;
  /** The source's columns (as the runner receives them). */
  sourceFields: SparkField[];
  /** The runner's stages, in order. */
  stages: RunnerStage[];
  /** The UDFs the stages name. */
  udfs: RunnerUdf[];
  /** The Python versions (major.minor) the UDFs were pickled with. */
  pythonVersions: string[];
  /** The output's columns. */
  fields: SparkField[];
  /** At most this many output rows. */
  limit: number | undefined;
  /** At most this many source rows are needed (every stage keeps rows one for one). */
  sourceLimit: number | undefined;
  /** `df.show()`: format the rows as text. */
  show: { numRows: number; truncate: number; vertical: boolean } | undefined;
}

/** Spark's PythonEvalType values Valise runs, per use. */
const SCALAR_EVAL_TYPES = new Set([100, 101, 200, 204, 250, 251]);
const MAP_EVAL_TYPES = new Set([205, 207]);

function unsupported(what: string, name: string, hint = ""): ServerError {
  return new ServerError(
    `UNSUPPORTED_CONNECT_FEATURE.${what.toUpperCase()}` as
      | "UNSUPPORTED_CONNECT_FEATURE.RELATION"
      | "UNSUPPORTED_CONNECT_FEATURE.EXPRESSION",
    `Valise does not run the ${what} '${name}': it executes the Python-UDF subset of Spark ` +
      `Connect (range, local data, select of columns, literals and Python UDFs, mapInPandas, ` +
      `mapInArrow, limit, show). ${hint}Run this query against Spark.`,
    { parameters: { [what]: name } },
  );
}

function invalid(why: string): ServerError {
  return new ServerError("INVALID_PLAN_INPUT", `The plan is not valid: ${why}.`);
}

/** A relation's case name as Spark's proto spells it (snake_case). */
function snake(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

interface Partial {
  source: PlanSource;
  schemaHash?: string | undefined;
  sourceFields: SparkField[];
  stages: RunnerStage[];
  fields: SparkField[];
  limit: number | undefined;
  /** Whether every stage so far keeps rows one for one. */
  rowPreserving: boolean;
}

/** How a plan's schema strings and Arrow data are read. */
export interface CompileContext {
  /** The Spark types of the columns of Arrow IPC data (a local relation without a schema). */
  arrowFields(data: Uint8Array): SparkField[];
  /** The columns of cached local data, read before compiling (see {@linkcode leafOf}). */
  cachedFields(hashes: string[], schemaHash: string | undefined): SparkField[];
}

/**
 * The leaf relation of a plan Valise may run (each relation it runs has one input), where the
 * rows come from; `undefined` past the depth limit or a relation without input.
 */
export function leafOf(rel: Relation | undefined): Relation | undefined {
  let r = rel;
  for (let depth = 0; r && depth <= MAX_PLAN_DEPTH + 1; depth++) {
    const v = r.relType.value as { input?: Relation } | undefined;
    if (!v || typeof v !== "object" || !("input" in v)) return r;
    r = v.input;
  }
  return undefined;
}

class Compiler {
  udfs: RunnerUdf[] = [];
  pythonVersions = new Set<string>();
  #ctx: CompileContext;
  constructor(ctx: CompileContext) {
    this.#ctx = ctx;
  }

  relation(rel: Relation | undefined, depth: number): Partial {
    if (!rel) throw invalid("a relation has no input");
    if (depth > MAX_PLAN_DEPTH) {
      throw invalid(`relations nest deeper than ${MAX_PLAN_DEPTH} levels`);
    }
    const r = rel.relType;
    switch (r.case) {
      case "range": {
        const step = r.value.step;
        if (step === 0n) throw invalid("range's step is 0");
        return this.#leaf(
          { kind: "range", start: r.value.start ?? 0n, end: r.value.end, step: step ?? 1n },
          [{ name: "id", type: primitive("long"), nullable: false }],
        );
      }
      case "localRelation": {
        const data = r.value.data?.length ? r.value.data : undefined;
        let fields: SparkField[];
        if (r.value.schema) fields = this.#schemaString(r.value.schema);
        else if (data) fields = this.#ctx.arrowFields(data);
        else throw invalid("a local relation has neither data nor a schema");
        return this.#leaf({ kind: "local", data }, fields);
      }
      case "cachedLocalRelation": {
        const hashes = [checkHash(r.value.hash)];
        return this.#leaf({ kind: "cached", hashes }, this.#ctx.cachedFields(hashes, undefined));
      }
      case "chunkedCachedLocalRelation": {
        const hashes = r.value.dataHashes.map(checkHash);
        if (!hashes.length) throw invalid("a chunked cached local relation names no data");
        const schemaHash = r.value.schemaHash ? checkHash(r.value.schemaHash) : undefined;
        const p = this.#leaf(
          { kind: "cached", hashes },
          this.#ctx.cachedFields(hashes, schemaHash),
        );
        p.schemaHash = schemaHash;
        return p;
      }
      case "project": {
        const p = this.relation(r.value.input, depth + 1);
        return this.#project(p, r.value.expressions, depth);
      }
      case "withColumns": {
        const p = this.relation(r.value.input, depth + 1);
        const exprs: Expression[] = [];
        const replaced = new Map<string, Expression>();
        for (const a of r.value.aliases) {
          if (a.name.length !== 1) throw invalid("withColumns needs one name per column");
          replaced.set(a.name[0]!.toLowerCase(), {
            exprType: { case: "alias", value: a },
          } as Expression);
        }
        for (const f of p.fields) {
          const e = replaced.get(f.name.toLowerCase());
          replaced.delete(f.name.toLowerCase());
          exprs.push(e ?? attribute(f.name));
        }
        exprs.push(...replaced.values());
        return this.#project(p, exprs, depth);
      }
      case "mapPartitions": {
        const p = this.relation(r.value.input, depth + 1);
        if (p.limit !== undefined) {
          throw unsupported(
            "relation",
            "map_partitions",
            "A map over a limited relation is not supported. ",
          );
        }
        const fn = r.value.func;
        const udf = fn?.function.case === "pythonUdf" ? fn.function.value : undefined;
        if (!fn || !udf) {
          throw unsupported("expression", fn?.function.case ?? "(no function)");
        }
        if (!MAP_EVAL_TYPES.has(udf.evalType)) {
          throw unsupported("expression", `map_partitions with eval type ${udf.evalType}`);
        }
        const out = structFields(udf.outputType ?? primitive("null"));
        if (!out) throw invalid("the function of map_partitions does not return a struct");
        const index = this.#udf(fn, 1, [structType(p.fields)]);
        p.stages.push({ kind: "map", udf: index });
        p.fields = out;
        p.rowPreserving = false;
        return p;
      }
      case "limit": {
        const p = this.relation(r.value.input, depth + 1);
        const n = Math.max(0, r.value.limit);
        p.limit = p.limit === undefined ? n : Math.min(p.limit, n);
        return p;
      }
      case "toDf": {
        const p = this.relation(r.value.input, depth + 1);
        if (r.value.columnNames.length !== p.fields.length) {
          throw new ServerError(
            "INVALID_PLAN_INPUT",
            `toDF got ${r.value.columnNames.length} names for ${p.fields.length} columns.`,
          );
        }
        return this.#rename(p, r.value.columnNames);
      }
      case "withColumnsRenamed": {
        const p = this.relation(r.value.input, depth + 1);
        const renames = new Map<string, string>();
        for (const [k, v] of Object.entries(r.value.renameColumnsMap)) {
          renames.set(k.toLowerCase(), v);
        }
        for (const x of r.value.renames) renames.set(x.colName.toLowerCase(), x.newColName);
        return this.#rename(p, p.fields.map((f) => renames.get(f.name.toLowerCase()) ?? f.name));
      }
      case "subqueryAlias":
        return this.relation(r.value.input, depth + 1);
      case "toSchema": {
        const p = this.relation(r.value.input, depth + 1);
        return this.#toSchema(p, r.value.schema);
      }
      case undefined:
        throw unsupported(
          "relation",
          "(unknown)",
          "The plan names a relation this server does not know. ",
        );
      default:
        throw unsupported("relation", snake(r.case));
    }
  }

  #leaf(source: PlanSource, fields: SparkField[]): Partial {
    return {
      source,
      sourceFields: fields,
      stages: [],
      fields,
      limit: undefined,
      rowPreserving: true,
    };
  }

  #rename(p: Partial, names: string[]): Partial {
    p.stages.push({ kind: "rename", names });
    p.fields = p.fields.map((f, i) => ({ ...f, name: names[i]! }));
    return p;
  }

  /**
   * `df.to(schema)`: the schema's columns, found by name, in its order, with its nullability,
   * as Spark does it; what would need a cast or a column of nulls is refused by name.
   */
  #toSchema(p: Partial, schema: DataType | undefined): Partial {
    const target = schema ? structFields(schema) : undefined;
    if (!target) throw invalid("to(schema) names no struct schema");
    if (target.length > MAX_COLUMNS) throw invalid(`more than ${MAX_COLUMNS} columns`);
    const sameType = (a: DataType, b: DataType) =>
      JSON.stringify(sparkJson(a)) === JSON.stringify(sparkJson(b));
    const columns: { name: string; expr: RunnerExpr }[] = [];
    for (const t of target) {
      const hits = p.fields.flatMap((f, i) =>
        f.name.toLowerCase() === t.name.toLowerCase() ? [i] : []
      );
      if (hits.length === 0 && t.nullable) {
        throw unsupported(
          "relation",
          "to_schema",
          `The schema's column \`${t.name.slice(0, 200)}\` is not in the input: Spark adds it as ` +
            `nulls, Valise does not. `,
        );
      }
      if (hits.length !== 1) {
        // Spark's own errors: no such column (the schema's is non-nullable), or several.
        resolve(t.name, p.fields);
        throw invalid(`the schema's column ${t.name.slice(0, 200)} matches no single column`);
      }
      const index = hits[0]!;
      const from = p.fields[index]!;
      if (from.nullable && !t.nullable) {
        throw new ServerError(
          "NULLABLE_COLUMN_OR_FIELD",
          `Column or field \`${t.name.slice(0, 200)}\` is nullable while it's required to be ` +
            `non-nullable.`,
          { parameters: { name: `\`${t.name.slice(0, 200)}\`` } },
        );
      }
      if (!sameType(from.type, t.type)) {
        throw unsupported(
          "relation",
          "to_schema",
          `Column \`${t.name.slice(0, 200)}\` is ${simpleString(from.type)}, the schema ` +
            `wants ${simpleString(t.type)}: Spark converts it, Valise does not. `,
        );
      }
      columns.push({ name: t.name, expr: { kind: "col", index } });
    }
    p.stages.push({ kind: "project", columns });
    p.fields = target;
    return p;
  }

  #schemaString(s: string): SparkField[] {
    return schemaFields(s);
  }

  #project(p: Partial, exprs: Expression[], depth: number): Partial {
    const columns: { name: string; expr: RunnerExpr }[] = [];
    const fields: SparkField[] = [];
    for (const e of exprs) {
      if (e.exprType.case === "unresolvedStar") {
        p.fields.forEach((f, index) => {
          columns.push({ name: f.name, expr: { kind: "col", index } });
          fields.push(f);
        });
        continue;
      }
      const c = this.expression(e, p.fields, depth + 1);
      columns.push({ name: c.name, expr: c.expr });
      fields.push({ name: c.name, type: c.type, nullable: c.nullable });
      if (columns.length > MAX_COLUMNS) throw invalid(`more than ${MAX_COLUMNS} columns`);
    }
    p.stages.push({ kind: "project", columns });
    p.fields = fields;
    return p;
  }

  expression(
    e: Expression | undefined,
    input: SparkField[],
    depth: number,
  ): { name: string; expr: RunnerExpr; type: DataType; nullable: boolean } {
    if (!e) throw invalid("an expression is missing");
    if (depth > MAX_PLAN_DEPTH) {
      throw invalid(`expressions nest deeper than ${MAX_PLAN_DEPTH} levels`);
    }
    const x = e.exprType;
    switch (x.case) {
      case "unresolvedAttribute": {
        const index = resolve(x.value.unparsedIdentifier, input);
        const f = input[index]!;
        return { name: f.name, expr: { kind: "col", index }, type: f.type, nullable: f.nullable };
      }
      case "alias": {
        if (x.value.name.length !== 1) {
          throw unsupported("expression", "alias with several names");
        }
        const c = this.expression(x.value.expr, input, depth + 1);
        return { ...c, name: x.value.name[0]! };
      }
      case "literal":
        return literal(x.value);
      case "commonInlineUserDefinedFunction": {
        const fn = x.value;
        if (fn.function.case !== "pythonUdf") {
          throw unsupported("expression", snake(fn.function.case ?? "(no function)"));
        }
        const udf = fn.function.value;
        if (!SCALAR_EVAL_TYPES.has(udf.evalType)) {
          throw unsupported("expression", `a Python UDF of eval type ${udf.evalType}`);
        }
        const args = fn.arguments.map((a) => this.expression(a, input, depth + 1));
        const index = this.#udf(fn, args.length, args.map((a) => a.type));
        const name = `${fn.functionName}(${args.map((a) => a.name).join(", ")})`;
        return {
          name,
          expr: { kind: "udf", udf: index, args: args.map((a) => a.expr), name: fn.functionName },
          type: udf.outputType ?? primitive("null"),
          nullable: true,
        };
      }
      case undefined:
        throw unsupported("expression", "(unknown)");
      default:
        throw unsupported("expression", snake(x.case));
    }
  }

  #udf(fn: CommonInlineUserDefinedFunction, nargs: number, argTypes: DataType[]): number {
    const udf = fn.function.value as NonNullable<
      Extract<CommonInlineUserDefinedFunction["function"], { case: "pythonUdf" }>["value"]
    >;
    if (this.udfs.length >= MAX_PLAN_UDFS) throw invalid(`more than ${MAX_PLAN_UDFS} UDFs`);
    if (!udf.command.length) throw invalid(`the UDF ${fn.functionName} has no command`);
    if (udf.pythonVer) this.pythonVersions.add(udf.pythonVer);
    const inputType = udf.evalType === 101
      ? JSON.stringify(sparkJson(structType(argTypes.map((type, i) => ({
        name: `_${i}`,
        type,
        nullable: true,
      })))))
      : undefined;
    this.udfs.push({
      evalType: udf.evalType,
      nargs,
      command: base64(udf.command),
      ...(inputType ? { inputType } : {}),
    });
    return this.udfs.length - 1;
  }
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function checkHash(h: string): string {
  if (!/^[0-9a-f]{64}$/.test(h)) {
    throw invalid(`a cached relation's hash ${JSON.stringify(h.slice(0, 80))} is not a sha256`);
  }
  return h;
}

function attribute(name: string): Expression {
  return {
    exprType: { case: "unresolvedAttribute", value: { unparsedIdentifier: `\`${name}\`` } },
  } as unknown as Expression;
}

/** The index of a column by Spark's (case-insensitive) name resolution. */
function resolve(identifier: string, input: SparkField[]): number {
  let name = identifier;
  if (/^`[^`]*`$/.test(name)) name = name.slice(1, -1);
  const hits = input.flatMap((f, i) => f.name.toLowerCase() === name.toLowerCase() ? [i] : []);
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) {
    throw new ServerError(
      "AMBIGUOUS_REFERENCE",
      `Reference \`${name}\` is ambiguous, could be: ${
        hits.map((i) => `\`${input[i]!.name}\``).join(", ")
      }.`,
      { parameters: { name } },
    );
  }
  throw new ServerError(
    "UNRESOLVED_COLUMN.WITH_SUGGESTION",
    `A column, variable, or function parameter with name \`${name.slice(0, 200)}\` cannot be ` +
      `resolved. Did you mean one of the following? [${
        input.slice(0, 20).map((f) => `\`${f.name}\``).join(", ")
      }].`,
    { parameters: { objectName: `\`${name.slice(0, 200)}\`` } },
  );
}

function literal(
  l: Expression_Literal,
): { name: string; expr: RunnerExpr; type: DataType; nullable: boolean } {
  const v = l.literalType;
  const size = v.case === "string" ? v.value.length * 3 : v.case === "binary" ? v.value.length : 0;
  if (size > MAX_LITERAL_BYTES) {
    throw invalid(
      `a ${v.case} literal of about ${size} bytes is over the limit of ${MAX_LITERAL_BYTES} bytes: put large values in the data (a ` +
        `DataFrame), not in the query`,
    );
  }
  const lit = (type: string, value: unknown, t: DataType, name = String(value)) => ({
    name,
    expr: { kind: "lit" as const, type, value },
    type: t,
    nullable: value === null,
  });
  switch (v.case) {
    case "null":
      return lit("null", null, primitive("null"), "NULL");
    case "boolean":
      return lit("boolean", v.value, primitive("boolean"));
    case "byte":
      return lit("byte", v.value, primitive("byte"));
    case "short":
      return lit("short", v.value, primitive("short"));
    case "integer":
      return lit("integer", v.value, primitive("integer"));
    case "long":
      return lit("long", v.value.toString(), primitive("long"), `${v.value}`);
    case "float":
      return lit("float", v.value, primitive("float"));
    case "double":
      return lit("double", v.value, primitive("double"));
    case "string":
      return lit("string", v.value, primitive("string"));
    case "binary":
      return lit("binary", base64(v.value), primitive("binary"), "X''");
    case "date":
      return lit("date", v.value, primitive("date"), `DATE '${v.value}'`);
    case "decimal": {
      const p = v.value.precision ?? 38;
      const s = v.value.scale ?? 0;
      if (!/^-?\d{1,38}(\.\d{1,38})?$/.test(v.value.value)) {
        throw invalid("a decimal literal is not a number");
      }
      return {
        name: v.value.value,
        expr: { kind: "lit", type: "decimal", value: v.value.value, precision: p, scale: s },
        type: decimalType(p, s),
        nullable: false,
      };
    }
    default:
      throw unsupported("expression", `literal of type ${snake(v.case ?? "(unknown)")}`);
  }
}

/**
 * Compiles a relation.
 *
 * @param rel The plan's root relation.
 * @param ctx How Arrow data's types are read.
 * @returns What to run.
 * @throws {ServerError} naming what is not supported or not valid.
 */
export function compilePlan(rel: Relation | undefined, ctx: CompileContext): CompiledPlan {
  const c = new Compiler(ctx);
  let show: CompiledPlan["show"];
  let root = rel;
  if (rel?.relType.case === "showString") {
    const s = rel.relType.value;
    show = { numRows: Math.max(0, s.numRows), truncate: s.truncate, vertical: s.vertical };
    root = s.input;
  }
  const p = c.relation(root, 1);
  let limit = p.limit;
  if (show) limit = Math.min(limit ?? Infinity, show.numRows + 1);
  return {
    source: p.source,
    schemaHash: p.schemaHash,
    sourceFields: p.sourceFields,
    stages: p.stages,
    udfs: c.udfs,
    pythonVersions: [...c.pythonVersions],
    fields: p.fields,
    limit,
    sourceLimit: p.rowPreserving ? limit : undefined,
    show,
  };
}

/**
 * The columns a schema string names: Spark's JSON form of a struct, or DDL.
 *
 * @param s The string.
 * @returns The columns.
 * @throws {ServerError} when it is neither.
 */
export function schemaFields(s: string): SparkField[] {
  let t: DataType;
  if (s.trimStart().startsWith("{")) {
    let j: unknown;
    try {
      j = JSON.parse(s);
    } catch {
      throw invalid("the local relation's schema is not JSON");
    }
    t = fromSparkJson(j);
  } else {
    t = parseDdl(s);
  }
  const f = structFields(t);
  if (!f) throw invalid("the local relation's schema is not a struct");
  return f;
}
