// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The types of the columnar encoding (see `docs/apply.md`) and how they map to Arrow types
 * both ways: what the encoder, the decoder and the driver's `START` frame share.
 *
 * @module
 */
import {
  Binary,
  Bool,
  type DataType,
  DateDay,
  DateMillisecond,
  DateUnit,
  Decimal,
  type Dictionary,
  Duration,
  Field,
  FixedSizeBinary,
  FixedSizeList,
  Float32,
  Float64,
  Int16,
  Int32,
  Int64,
  Int8,
  Interval,
  IntervalUnit,
  List,
  type Map_,
  Map_ as ArrowMap,
  Null,
  Precision,
  Schema,
  Struct,
  Time,
  Timestamp,
  TimeUnit,
  Type,
  Uint16,
  Uint32,
  Uint64,
  Uint8,
  Utf8,
} from "apache-arrow";

/** A type of the columnar encoding. */
export type ColumnarType =
  | "null"
  | "bool"
  | "int8"
  | "int16"
  | "int32"
  | "int64"
  | "uint8"
  | "uint16"
  | "uint32"
  | "uint64"
  | "float32"
  | "float64"
  | "utf8"
  | "binary"
  | "date32"
  | "date64"
  | "timestamp"
  | "time"
  | "duration"
  | "decimal"
  | "fixed_binary"
  | "interval_ym"
  | "interval_dt"
  | "interval_mdn"
  | "list"
  | "fixed_list"
  | "struct"
  | "map";

/** A time unit of the encoding. */
export type ColumnarUnit = "s" | "ms" | "us" | "ns";

/** What describes a columnar type beyond its name (absent where it does not apply). */
export interface ColumnarParams {
  /** Its type. */
  type: ColumnarType;
  /** Unit of `timestamp`, `time`, `duration`. */
  unit?: ColumnarUnit;
  /** Time zone of `timestamp`, `null` for none. */
  tz?: string | null;
  /** Digits of `decimal`. */
  precision?: number;
  /** Digits after the point of `decimal`. */
  scale?: number;
  /** Bits of each `decimal` value: 128 or 256. */
  bits?: number;
  /** Bytes of each `fixed_binary` value, or values of each `fixed_list` value. */
  width?: number;
}

/** A columnar type with its children (a field or a column). */
export interface ColumnarTypeTree extends ColumnarParams {
  /** Its name (a child's name is part of a struct's type). */
  name: string;
  /** Its children. */
  children?: ColumnarTypeTree[] | undefined;
}

/** A column's name and type, as the driver receives the declared output schema. */
export interface ColumnarField extends ColumnarParams {
  /** Column name. */
  name: string;
  /** `false` when the column may hold no null. */
  nullable?: boolean;
  /** The child fields of `list`, `fixed_list` (one), `struct`, `map` (one: a struct of key, value). */
  children?: ColumnarField[];
}

/** One column of an encoded batch's header. */
export interface ColumnarColumn extends ColumnarParams {
  /** Column name. */
  name: string;
  /** How many values are null. */
  nulls: number;
  /** Values of a nested child or a dictionary chunk (a top-level column has the batch's rows). */
  length?: number;
  /** `[offset, length]` of each buffer in the body: validity first (empty without nulls). */
  buffers: [number, number][];
  /** The children of a nested column. */
  children?: ColumnarColumn[];
  /** A dictionary-encoded column: its integer type; `buffers[1]` holds the indices. */
  index?: ColumnarType;
  /** A dictionary-encoded column: the dictionary's values, in chunks to concatenate. */
  dictionary?: ColumnarColumn[];
}

/** The header of an encoded batch. */
export interface ColumnarHeader {
  /** Rows of the batch. */
  rows: number;
  /** Its columns. */
  columns: ColumnarColumn[];
}

/** An Arrow type the encoding cannot carry, or values that do not fit a type. */
export class ColumnarTypeError extends TypeError {
  override name = "ColumnarTypeError";
  /** The column concerned. */
  readonly column: string;
  /**
   * @param column The column concerned.
   * @param message What is wrong.
   */
  constructor(column: string, message: string) {
    super(message);
    this.column = column;
  }
}

/** Input bytes that lie about themselves (lengths, offsets, dictionary indices). */
export class ColumnarInputError extends SyntaxError {
  override name = "ColumnarInputError";
  /** The column concerned. */
  readonly column: string;
  /**
   * @param column The column concerned.
   * @param message What is wrong.
   */
  constructor(column: string, message: string) {
    super(message);
    this.column = column;
  }
}

/** The units of the encoding, indexed by apache-arrow's `TimeUnit`. */
export const UNITS = ["s", "ms", "us", "ns"] as const;

/** Bytes per value of the fixed-width types (`time`, `decimal`, `fixed_binary` depend on params). */
export const WIDTH: Partial<Record<ColumnarType, number>> = {
  int8: 1,
  int16: 2,
  int32: 4,
  int64: 8,
  uint8: 1,
  uint16: 2,
  uint32: 4,
  uint64: 8,
  float32: 4,
  float64: 8,
  date32: 4,
  date64: 8,
  timestamp: 8,
  duration: 8,
  interval_ym: 4,
  interval_dt: 8,
  interval_mdn: 16,
};

/**
 * Bytes per value of a fixed-width columnar type.
 *
 * @returns The width, or `undefined` for types that are not fixed-width (bool counts bits).
 */
export function byteWidth(c: ColumnarParams): number | undefined {
  if (c.type === "time") return c.unit === "s" || c.unit === "ms" ? 4 : 8;
  if (c.type === "decimal") return (c.bits ?? 128) / 8;
  if (c.type === "fixed_binary") return c.width;
  return WIDTH[c.type];
}

const SUPPORTED = "ints, floats (32, 64), bool, utf8, binary (and large, fixed-size), " +
  "date32/64, timestamp, time, duration, interval, decimal128/256, list (large, fixed-size), " +
  "struct, map, dictionary of any of these, null";

function unsupported(name: string, t: DataType, why = ""): ColumnarTypeError {
  return new ColumnarTypeError(
    name,
    `Cannot pass column ${JSON.stringify(name)} of type ${t} to Python without pyarrow${why} ` +
      `(supported: ${SUPPORTED}); add pyarrow to the session's environment ` +
      `(e.g. a venv-pack archive) to pass every Arrow type, or cast the column before Apply`,
  );
}

/**
 * Maps an Arrow field to the encoding's type; a dictionary maps to its values' type.
 *
 * @param field The field.
 * @returns The columnar field.
 * @throws {ColumnarTypeError} naming the column when the type has no columnar form.
 */
export function columnarField(field: Field): ColumnarField {
  const base = { name: field.name, nullable: field.nullable };
  return { ...base, ...columnarParams(field.name, field.type as DataType) };
}

function columnarParams(
  name: string,
  t: DataType,
): Omit<ColumnarField, "name" | "nullable"> {
  const kids = (): ColumnarField[] =>
    (t.children ?? []).map((c: Field) => columnarField(c as Field));
  switch (t.typeId) {
    case Type.Null:
      return { type: "null" };
    case Type.Bool:
      return { type: "bool" };
    case Type.Int: {
      const i = t as Int8;
      return { type: `${i.isSigned ? "int" : "uint"}${i.bitWidth}` as ColumnarType };
    }
    case Type.Float: {
      const p = (t as Float64).precision;
      if (p === Precision.SINGLE) return { type: "float32" };
      if (p === Precision.DOUBLE) return { type: "float64" };
      break;
    }
    case Type.Utf8:
    case Type.LargeUtf8:
      return { type: "utf8" };
    case Type.Binary:
    case Type.LargeBinary:
      return { type: "binary" };
    case Type.FixedSizeBinary:
      return { type: "fixed_binary", width: (t as FixedSizeBinary).byteWidth };
    case Type.Date:
      return { type: (t as DateDay).unit === DateUnit.DAY ? "date32" : "date64" };
    case Type.Timestamp: {
      const ts = t as Timestamp;
      return { type: "timestamp", unit: UNITS[ts.unit], tz: ts.timezone ?? null };
    }
    case Type.Time:
      return { type: "time", unit: UNITS[(t as Time).unit] };
    case Type.Duration:
      return { type: "duration", unit: UNITS[(t as Duration).unit] };
    case Type.Interval: {
      const u = (t as Interval).unit;
      if (u === IntervalUnit.YEAR_MONTH) return { type: "interval_ym" };
      if (u === IntervalUnit.DAY_TIME) return { type: "interval_dt" };
      if (u === IntervalUnit.MONTH_DAY_NANO) return { type: "interval_mdn" };
      break;
    }
    case Type.Decimal: {
      const d = t as Decimal;
      if (d.bitWidth !== 128 && d.bitWidth !== 256) break;
      return { type: "decimal", precision: d.precision, scale: d.scale, bits: d.bitWidth };
    }
    case Type.List:
    case Type.LargeList:
      return { type: "list", children: kids() };
    case Type.FixedSizeList:
      return { type: "fixed_list", width: (t as FixedSizeList).listSize, children: kids() };
    case Type.Struct:
      return { type: "struct", children: kids() };
    case Type.Map:
      return { type: "map", children: kids() };
    case Type.Dictionary:
      return columnarParams(name, (t as Dictionary).dictionary);
  }
  throw unsupported(name, t);
}

/**
 * The Arrow type of a columnar type.
 *
 * @param c The columnar field or column.
 * @returns The Arrow type.
 * @throws {TypeError} when the description is not a columnar type.
 */
export function arrowType(c: ColumnarTypeTree): DataType {
  const unit = (): TimeUnit => {
    const u = UNITS.indexOf(c.unit ?? "us");
    if (u < 0) throw new TypeError(`Cannot use time unit ${c.unit}`);
    return u as TimeUnit;
  };
  const kids = (n?: number): Field[] => {
    const k = (c.children ?? []).map((x) => new Field(x.name, arrowType(x), true));
    if (n !== undefined && k.length !== n) {
      throw new TypeError(`Cannot use a ${c.type} with ${k.length} children`);
    }
    return k;
  };
  switch (c.type) {
    case "null":
      return new Null();
    case "bool":
      return new Bool();
    case "int8":
      return new Int8();
    case "int16":
      return new Int16();
    case "int32":
      return new Int32();
    case "int64":
      return new Int64();
    case "uint8":
      return new Uint8();
    case "uint16":
      return new Uint16();
    case "uint32":
      return new Uint32();
    case "uint64":
      return new Uint64();
    case "float32":
      return new Float32();
    case "float64":
      return new Float64();
    case "utf8":
      return new Utf8();
    case "binary":
      return new Binary();
    case "fixed_binary":
      return new FixedSizeBinary(positive(c.width, "fixed_binary width"));
    case "date32":
      return new DateDay();
    case "date64":
      return new DateMillisecond();
    case "timestamp":
      return new Timestamp(unit(), c.tz ?? null);
    case "time": {
      const u = unit();
      return new Time(u, u <= TimeUnit.MILLISECOND ? 32 : 64);
    }
    case "duration":
      return new Duration(unit());
    case "interval_ym":
      return new Interval(IntervalUnit.YEAR_MONTH);
    case "interval_dt":
      return new Interval(IntervalUnit.DAY_TIME);
    case "interval_mdn":
      return new Interval(IntervalUnit.MONTH_DAY_NANO);
    case "decimal": {
      const bits = c.bits ?? 128;
      if (bits !== 128 && bits !== 256) throw new TypeError(`Cannot use decimal${bits}`);
      const p = positive(c.precision, "decimal precision");
      if (p > (bits === 128 ? 38 : 76)) throw new TypeError(`Cannot use decimal precision ${p}`);
      const s = c.scale ?? 0;
      if (!Number.isSafeInteger(s) || Math.abs(s) > p) {
        throw new TypeError(`Cannot use decimal scale ${s}`);
      }
      return new Decimal(s, p, bits);
    }
    case "list":
      return new List(kids(1)[0]!);
    case "fixed_list":
      return new FixedSizeList(positive(c.width, "fixed_list size"), kids(1)[0]!);
    case "struct":
      return new Struct(kids());
    case "map": {
      const entries = kids(1)[0]!;
      if (entries.type.typeId !== Type.Struct || entries.type.children.length !== 2) {
        throw new TypeError("Cannot use a map whose entries are not a struct of key, value");
      }
      // A map's keys are never null.
      const [k, v] = entries.type.children as [Field, Field];
      return new ArrowMap(
        new Field(entries.name, new Struct([new Field(k.name, k.type, false), v]), false),
      ) as Map_;
    }
  }
  throw new TypeError(`Cannot use columnar type ${JSON.stringify(c.type)}`);
}

function positive(n: number | undefined, what: string): number {
  if (n === undefined || !Number.isSafeInteger(n) || n < 1 || n > 2 ** 31 - 1) {
    throw new TypeError(`Cannot use ${what} ${n}`);
  }
  return n;
}

/**
 * Describes a columnar type for messages and comparisons, e.g. `timestamp[us, tz=UTC]` or
 * `list<struct<a: int64, b: utf8>>`. Two columns have the same type when their descriptions are
 * equal.
 *
 * @param c The type.
 * @returns The description.
 */
export function describeColumnarType(c: ColumnarTypeTree): string {
  const kids = (named: boolean): string =>
    (c.children ?? []).map((k) => `${named ? `${k.name}: ` : ""}${describeColumnarType(k)}`)
      .join(", ");
  switch (c.type) {
    case "timestamp":
      return `timestamp[${c.unit}${c.tz ? `, tz=${c.tz}` : ""}]`;
    case "time":
    case "duration":
      return `${c.type}[${c.unit}]`;
    case "decimal":
      return `decimal${c.bits ?? 128}(${c.precision}, ${c.scale ?? 0})`;
    case "fixed_binary":
      return `fixed_binary[${c.width}]`;
    case "list":
      return `list<${kids(false)}>`;
    case "fixed_list":
      return `fixed_list<${kids(false)}>[${c.width}]`;
    case "struct":
      return `struct<${kids(true)}>`;
    case "map": {
      const e = c.children?.[0]?.children ?? [];
      return `map<${e.map((k) => describeColumnarType(k)).join(", ")}>`;
    }
  }
  return c.type;
}

/**
 * The schema of an encoded batch's columns.
 *
 * @param header The batch header.
 * @returns The Arrow schema (all fields nullable).
 */
export function schemaOfHeader(header: ColumnarHeader): Schema {
  return new Schema(header.columns.map((c) => new Field(c.name, arrowType(c), true)));
}
