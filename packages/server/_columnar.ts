// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The columnar encoding that carries record batches to and from a Python worker without
 * pyarrow (see `docs/apply.md`): a JSON header and little-endian buffers a stdlib-only
 * program reads with `memoryview.cast`. Converts Arrow record batches (apache-arrow) to it
 * and back.
 *
 * @module
 */
import {
  Binary,
  Bool,
  type Data,
  type DataType,
  DateDay,
  DateUnit,
  Field,
  Float32,
  Float64,
  Int16,
  Int32,
  Int64,
  Int8,
  makeData,
  Null,
  Precision,
  RecordBatch,
  Schema,
  Struct,
  Timestamp,
  type TimeUnit,
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
  | "timestamp";

/** A column's name and type, as the driver receives the declared output schema. */
export interface ColumnarField {
  /** Column name. */
  name: string;
  /** Its type. */
  type: ColumnarType;
  /** Timestamp unit. */
  unit?: "s" | "ms" | "us" | "ns";
  /** Timestamp time zone, `null` for none. */
  tz?: string | null;
  /** `false` when the column may hold no null. */
  nullable?: boolean;
}

/** One column of an encoded batch's header. */
export interface ColumnarColumn {
  /** Column name. */
  name: string;
  /** Its type. */
  type: ColumnarType;
  /** Timestamp unit. */
  unit?: "s" | "ms" | "us" | "ns";
  /** Timestamp time zone, `null` for none. */
  tz?: string | null;
  /** How many values are null. */
  nulls: number;
  /** `[offset, length]` of each buffer in the body: validity first (empty without nulls). */
  buffers: [number, number][];
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

const UNITS = ["s", "ms", "us", "ns"] as const;
const WIDTH: Partial<Record<ColumnarType, number>> = {
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
  timestamp: 8,
};
const SUPPORTED =
  "int8-64, uint8-64, float32/64, bool, utf8, binary, timestamp, date32 (day), null";

/**
 * Maps an Arrow field to the encoding's type.
 *
 * @param field The field.
 * @returns The columnar field.
 * @throws {ColumnarTypeError} naming the column when the type has no columnar form.
 */
export function columnarField(field: Field): ColumnarField {
  const t = field.type as DataType;
  const base = { name: field.name, nullable: field.nullable };
  switch (t.typeId) {
    case Type.Null:
      return { ...base, type: "null" };
    case Type.Bool:
      return { ...base, type: "bool" };
    case Type.Int: {
      const i = t as Int8;
      return { ...base, type: `${i.isSigned ? "int" : "uint"}${i.bitWidth}` as ColumnarType };
    }
    case Type.Float: {
      const p = (t as Float64).precision;
      if (p === Precision.SINGLE) return { ...base, type: "float32" };
      if (p === Precision.DOUBLE) return { ...base, type: "float64" };
      break;
    }
    case Type.Utf8:
    case Type.LargeUtf8:
      return { ...base, type: "utf8" };
    case Type.Binary:
    case Type.LargeBinary:
      return { ...base, type: "binary" };
    case Type.Date:
      if ((t as DateDay).unit === DateUnit.DAY) return { ...base, type: "date32" };
      break;
    case Type.Timestamp: {
      const ts = t as Timestamp;
      return { ...base, type: "timestamp", unit: UNITS[ts.unit], tz: ts.timezone ?? null };
    }
  }
  throw new ColumnarTypeError(
    field.name,
    `Cannot pass column ${JSON.stringify(field.name)} of type ${t} to Python without pyarrow ` +
      `(supported: ${SUPPORTED})`,
  );
}

/**
 * The Arrow type of a columnar type.
 *
 * @param c The columnar field or column.
 * @returns The Arrow type.
 */
export function arrowType(c: Pick<ColumnarField, "type" | "unit" | "tz">): DataType {
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
    case "date32":
      return new DateDay();
    case "timestamp": {
      const unit = UNITS.indexOf(c.unit ?? "us");
      if (unit < 0) throw new TypeError(`Cannot use timestamp unit ${c.unit}`);
      return new Timestamp(unit as TimeUnit, c.tz ?? null);
    }
  }
  throw new TypeError(`Cannot use columnar type ${JSON.stringify(c.type)}`);
}

function sameType(a: Pick<ColumnarField, "type" | "unit" | "tz">, b: typeof a): boolean {
  return a.type === b.type &&
    (a.type !== "timestamp" || (a.unit === b.unit && (a.tz ?? null) === (b.tz ?? null)));
}

/**
 * Describes a columnar type for messages, e.g. `timestamp[us, tz=UTC]`.
 *
 * @param c The type.
 * @returns The description.
 */
export function describeColumnarType(c: Pick<ColumnarField, "type" | "unit" | "tz">): string {
  if (c.type !== "timestamp") return c.type;
  return `timestamp[${c.unit}${c.tz ? `, tz=${c.tz}` : ""}]`;
}

function bitsToBytes(bitmap: Uint8Array, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  if ((offset & 7) === 0) {
    const base = offset >> 3;
    const whole = length >> 3;
    for (let i = 0; i < whole; i++) {
      const b = bitmap[base + i]!;
      const o = i << 3;
      out[o] = b & 1;
      out[o + 1] = (b >> 1) & 1;
      out[o + 2] = (b >> 2) & 1;
      out[o + 3] = (b >> 3) & 1;
      out[o + 4] = (b >> 4) & 1;
      out[o + 5] = (b >> 5) & 1;
      out[o + 6] = (b >> 6) & 1;
      out[o + 7] = (b >> 7) & 1;
    }
    for (let i = whole << 3; i < length; i++) out[i] = (bitmap[base + (i >> 3)]! >> (i & 7)) & 1;
    return out;
  }
  for (let i = 0; i < length; i++) {
    const j = offset + i;
    out[i] = (bitmap[j >> 3]! >> (j & 7)) & 1;
  }
  return out;
}

function bytesToBits(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array((bytes.length + 7) >> 3);
  for (let i = 0; i < bytes.length; i++) if (bytes[i]) out[i >> 3]! |= 1 << (i & 7);
  return out;
}

function viewBytes(a: ArrayBufferView, start: number, length: number): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset + start, length);
}

/**
 * Encodes a record batch: header, then buffers, each starting at a multiple of 8 bytes.
 * Returns the pieces to write in order (views into the batch's buffers where possible).
 *
 * @param batch The batch.
 * @returns The encoded pieces.
 * @throws {ColumnarTypeError} naming the column when a type has no columnar form.
 */
export function encodeColumnarBatch(batch: RecordBatch): Uint8Array[] {
  const parts: Uint8Array[] = [];
  let pos = 0;
  const add = (b: Uint8Array): [number, number] => {
    const at = pos;
    if (b.length) {
      parts.push(b);
      pos += b.length;
      const pad = (8 - (pos & 7)) & 7;
      if (pad) {
        parts.push(new Uint8Array(pad));
        pos += pad;
      }
    }
    return [at, b.length];
  };
  const columns: ColumnarColumn[] = [];
  const rows = batch.numRows;
  batch.schema.fields.forEach((field, i) => {
    const f = columnarField(field);
    const data = batch.getChildAt(i)!.data[0] as Data;
    const col: ColumnarColumn = { name: f.name, type: f.type, nulls: 0, buffers: [] };
    if (f.type === "timestamp") {
      col.unit = f.unit!;
      col.tz = f.tz ?? null;
    }
    if (f.type === "null") {
      col.nulls = rows;
      columns.push(col);
      return;
    }
    const off = data.offset;
    const nulls = data.nullBitmap && data.nullBitmap.length ? data.nullCount : 0;
    col.nulls = nulls;
    col.buffers.push(add(nulls ? bitsToBytes(data.nullBitmap!, off, rows) : new Uint8Array()));
    // apache-arrow slices fixed-width values and value offsets when it slices Data, but not
    // bitmaps (validity, bool values), which `offset` then indexes.
    const width = WIDTH[f.type];
    if (width !== undefined) {
      col.buffers.push(add(viewBytes(data.values, 0, rows * width)));
    } else if (f.type === "bool") {
      col.buffers.push(add(bitsToBytes(data.values as Uint8Array, off, rows)));
    } else {
      const vo = data.valueOffsets as Int32Array | BigInt64Array;
      const first = Number(vo[0] ?? 0);
      const last = Number(vo[rows] ?? 0);
      let offsets: Int32Array;
      if (vo instanceof Int32Array && first === 0) {
        offsets = vo.subarray(0, rows + 1);
      } else {
        if (last - first >= 2 ** 31) {
          throw new ColumnarTypeError(
            f.name,
            `Cannot pass column ${JSON.stringify(f.name)}: more than 2 GiB in one batch`,
          );
        }
        offsets = new Int32Array(rows + 1);
        for (let r = 0; r <= rows; r++) offsets[r] = Number(vo[r]) - first;
      }
      col.buffers.push(add(viewBytes(offsets, 0, offsets.byteLength)));
      col.buffers.push(add(viewBytes(data.values, first, last - first)));
    }
    columns.push(col);
  });
  const header = new TextEncoder().encode(JSON.stringify({ rows, columns }));
  const lead = new Uint8Array((4 + header.length + 7) & ~7);
  new DataView(lead.buffer).setUint32(0, header.length, true);
  lead.set(header, 4);
  return [lead, ...parts];
}

/**
 * Reads the header of an encoded batch.
 *
 * @param payload The encoded batch.
 * @returns The header and the body (the bytes the buffer offsets refer to).
 * @throws {SyntaxError} when the bytes are not an encoded batch.
 */
export function readColumnarBatch(
  payload: Uint8Array,
): { header: ColumnarHeader; body: Uint8Array } {
  if (payload.length < 4) throw new SyntaxError("Cannot decode batch: shorter than 4 bytes");
  const n = new DataView(payload.buffer, payload.byteOffset).getUint32(0, true);
  if (4 + n > payload.length) throw new SyntaxError("Cannot decode batch: header overruns it");
  const header = JSON.parse(new TextDecoder().decode(payload.subarray(4, 4 + n)));
  return { header, body: payload.subarray((4 + n + 7) & ~7) };
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

/**
 * Rebuilds a record batch from its encoding, against an expected schema.
 *
 * @param payload The encoded batch (its buffers must stay untouched while the batch is used).
 * @param schema The schema the batch must have: same column names, order and types.
 * @returns The batch.
 * @throws {ColumnarTypeError} naming the column that does not match the schema.
 */
export function decodeColumnarBatch(payload: Uint8Array, schema: Schema): RecordBatch {
  const { header, body } = readColumnarBatch(payload);
  const rows = header.rows;
  const fields = schema.fields;
  const names = header.columns.map((c) => c.name);
  for (const f of fields) {
    if (!names.includes(f.name)) {
      throw new ColumnarTypeError(
        f.name,
        `Column ${JSON.stringify(f.name)} of the output schema is missing from the output`,
      );
    }
  }
  const children: Data[] = header.columns.map((c, i) => {
    const f = fields[i];
    if (!f || f.name !== c.name) {
      throw new ColumnarTypeError(
        c.name,
        `Column ${JSON.stringify(c.name)} is not at position ${i} of the output schema (${
          fields.map((x) => x.name).join(", ")
        })`,
      );
    }
    const want = columnarField(f);
    if (!sameType(want, c)) {
      throw new ColumnarTypeError(
        c.name,
        `Column ${JSON.stringify(c.name)} is ${describeColumnarType(want)} in the output schema, ` +
          `but the function produced ${describeColumnarType(c)}`,
      );
    }
    if (!f.nullable && c.nulls > 0 && c.type !== "null") {
      throw new ColumnarTypeError(
        c.name,
        `Column ${JSON.stringify(c.name)} is declared non-nullable, but has ${c.nulls} nulls`,
      );
    }
    const type = f.type as DataType;
    const buf = (k: number): Uint8Array => {
      const [o, n] = c.buffers[k] ?? [0, 0];
      if (o + n > body.length) throw new SyntaxError(`Cannot decode column ${c.name}: overrun`);
      return body.subarray(o, o + n);
    };
    if (c.type === "null") return makeData({ type: new Null(), length: rows });
    const nullBitmap = c.nulls ? bytesToBits(buf(0)) : undefined;
    const base = { type, length: rows, nullCount: c.nulls, nullBitmap };
    if (c.type === "bool") {
      return makeData({ ...base, type: type as Bool, data: bytesToBits(buf(1)) });
    }
    if (c.type === "utf8" || c.type === "binary") {
      const ob = buf(1);
      const valueOffsets = new Int32Array(ob.buffer, ob.byteOffset, ob.length >> 2);
      // deno-lint-ignore no-explicit-any
      return makeData({ ...base, type: type as any, valueOffsets, data: buf(2) });
    }
    // deno-lint-ignore no-explicit-any
    return makeData({ ...base, type: type as any, data: buf(1) as any });
  });
  const data = makeData({
    type: new Struct(fields),
    length: rows,
    nullCount: 0,
    children,
  });
  return new RecordBatch(schema, data);
}
