// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The columnar encoding back to Arrow record batches: what the driver wrote, checked against
 * the output schema. The driver runs the session's code, which can write these bytes itself:
 * every buffer, length and offset is checked before it is used.
 *
 * @module
 */
import {
  type Data,
  type DataType,
  type Dictionary,
  type Field,
  makeData,
  makeVector,
  RecordBatch,
  type Schema,
  Struct,
  Type,
  vectorFromArray,
} from "apache-arrow";
import {
  byteWidth,
  type ColumnarColumn,
  columnarField,
  type ColumnarHeader,
  ColumnarTypeError,
  describeColumnarType,
} from "./_columnar_types.ts";

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
  if (
    !header || typeof header !== "object" || !Number.isSafeInteger(header.rows) ||
    header.rows < 0 || !Array.isArray(header.columns)
  ) {
    throw new SyntaxError("Cannot decode batch: not a columnar header");
  }
  return { header, body: payload.subarray((4 + n + 7) & ~7) };
}

function bytesToBits(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array((bytes.length + 7) >> 3);
  for (let i = 0; i < bytes.length; i++) if (bytes[i]) out[i >> 3]! |= 1 << (i & 7);
  return out;
}

function bad(c: ColumnarColumn, why: string): SyntaxError {
  return new SyntaxError(`Cannot decode column ${JSON.stringify(c.name)}: ${why}`);
}

/** Int32 offsets of `length` values, checked: from 0, never decreasing, within `limit`. */
function offsetsOf(c: ColumnarColumn, b: Uint8Array, length: number, limit: number): Int32Array {
  if (b.length < (length + 1) * 4) throw bad(c, "offsets shorter than its length");
  const o = new Int32Array(b.buffer, b.byteOffset, length + 1);
  if (o[0] !== 0) throw bad(c, "offsets do not start at 0");
  for (let i = 0; i < length; i++) if (o[i + 1]! < o[i]!) throw bad(c, "offsets decrease");
  if (o[length]! > limit) throw bad(c, "offsets overrun its values");
  return o;
}

function large(type: DataType, o: Int32Array): Int32Array | BigInt64Array {
  const id = type.typeId;
  if (id !== Type.LargeUtf8 && id !== Type.LargeBinary && id !== Type.LargeList) return o;
  const out = new BigInt64Array(o.length);
  for (let i = 0; i < o.length; i++) out[i] = BigInt(o[i]!);
  return out;
}

/** Types whose values are their own identity (a JS primitive): these are deduplicated. */
const PRIMITIVE = new Set<Type>([Type.Utf8, Type.LargeUtf8, Type.Int, Type.Float, Type.Bool]);

/**
 * A column of values as a dictionary column of type `d`: each distinct primitive value once,
 * in order of appearance; other value types are their own dictionary (Arrow does not require
 * distinct dictionary values).
 */
function dictionaryEncode(name: string, d: Dictionary, values: Data): Data {
  const length = values.length;
  const vec = makeVector(values);
  const IndexArray = d.indices.ArrayType as new (n: number) => Int32Array | BigInt64Array;
  const idx = new IndexArray(length);
  const big = idx instanceof BigInt64Array || idx instanceof BigUint64Array;
  const max = d.indices.isSigned ? 2 ** (d.indices.bitWidth - 1) - 1 : 2 ** d.indices.bitWidth - 1;
  let dictionary;
  let n: number;
  if (PRIMITIVE.has(d.dictionary.typeId)) {
    const seen = new Map<unknown, number>();
    const distinct: unknown[] = [];
    for (let i = 0; i < length; i++) {
      const v = vec.get(i);
      if (v === null || v === undefined) continue;
      let k = seen.get(v);
      if (k === undefined) {
        k = distinct.length;
        seen.set(v, k);
        distinct.push(v);
      }
      (idx as Int32Array)[i] = (big ? BigInt(k) : k) as number;
    }
    n = distinct.length;
    dictionary = vectorFromArray(distinct, d.dictionary);
  } else {
    for (let i = 0; i < length; i++) (idx as Int32Array)[i] = (big ? BigInt(i) : i) as number;
    n = length;
    dictionary = vec;
  }
  if (n > 0 && n - 1 > max) {
    throw new ColumnarTypeError(
      name,
      `Column ${JSON.stringify(name)} has ${n} distinct values, more than its dictionary's ` +
        `${d.indices} indices can refer to: declare wider indices`,
    );
  }
  return makeData({
    type: d,
    length,
    nullCount: values.nullCount,
    nullBitmap: values.nullBitmap,
    data: idx,
    dictionary,
  } as never);
}

/** Builds one column's data of `field`'s type from its encoding. */
function buildData(field: Field, c: ColumnarColumn, length: number, body: Uint8Array): Data {
  const want = columnarField(field);
  if (describeColumnarType(want) !== describeColumnarType(c)) {
    throw new ColumnarTypeError(
      c.name,
      `Column ${JSON.stringify(c.name)} is ${describeColumnarType(want)} in the output schema, ` +
        `but the function produced ${describeColumnarType(c)}`,
    );
  }
  if (!Array.isArray(c.buffers) || !Number.isSafeInteger(c.nulls) || c.nulls < 0) {
    throw bad(c, "malformed column header");
  }
  if (!field.nullable && c.nulls > 0 && c.type !== "null") {
    throw new ColumnarTypeError(
      c.name,
      `Column ${JSON.stringify(c.name)} is declared non-nullable, but has ${c.nulls} nulls`,
    );
  }
  const type = field.type as DataType;
  if (type.typeId === Type.Dictionary) {
    // The driver sends a dictionary column's values; they are dictionary-encoded here.
    const d = type as Dictionary;
    const values = buildData(
      { ...field, type: d.dictionary, name: field.name } as Field,
      c,
      length,
      body,
    );
    return dictionaryEncode(c.name, d, values);
  }
  const buf = (k: number): Uint8Array => {
    const [o, n] = c.buffers[k] ?? [0, 0];
    if (!Number.isSafeInteger(o) || !Number.isSafeInteger(n) || o < 0 || n < 0) {
      throw bad(c, "malformed buffer");
    }
    if (o + n > body.length) throw bad(c, "overrun");
    return body.subarray(o, o + n);
  };
  if (c.type === "null") return makeData({ type, length } as never);
  let nullBitmap: Uint8Array | undefined;
  if (c.nulls) {
    const v = buf(0);
    if (v.length < length) throw bad(c, "validity shorter than its length");
    nullBitmap = bytesToBits(v.subarray(0, length));
  }
  const base = { type, length, nullCount: c.nulls, nullBitmap } as const;
  const kids = type.children as Field[];
  const kid = (i: number, n: number): Data => {
    const k = c.children?.[i];
    const f = kids[i];
    if (!k || !f) throw bad(c, "children missing");
    return buildData(f, k, n, body);
  };
  const width = byteWidth(c);
  if (width !== undefined) {
    const v = buf(1);
    if (v.length < length * width) throw bad(c, "values shorter than its length");
    return makeData({ ...base, data: v.subarray(0, length * width) } as never);
  }
  switch (c.type) {
    case "bool": {
      const v = buf(1);
      if (v.length < length) throw bad(c, "values shorter than its length");
      return makeData({ ...base, data: bytesToBits(v.subarray(0, length)) } as never);
    }
    case "utf8":
    case "binary": {
      const data = buf(2);
      const o = offsetsOf(c, buf(1), length, data.length);
      return makeData({ ...base, valueOffsets: large(type, o), data } as never);
    }
    case "list":
    case "map": {
      const k = c.children?.[0];
      if (!k) throw bad(c, "children missing");
      const o = offsetsOf(c, buf(1), length, Number.MAX_SAFE_INTEGER);
      const child = kid(0, o[length]!);
      return makeData({ ...base, valueOffsets: large(type, o), child } as never);
    }
    case "fixed_list":
      return makeData({ ...base, child: kid(0, length * c.width!) } as never);
    case "struct": {
      if ((c.children?.length ?? 0) !== kids.length) throw bad(c, "children missing");
      return makeData({ ...base, children: kids.map((_, i) => kid(i, length)) } as never);
    }
  }
  throw bad(c, `unknown type ${c.type}`);
}

/**
 * Rebuilds a record batch from its encoding, against an expected schema.
 *
 * @param payload The encoded batch (its buffers must stay untouched while the batch is used).
 * @param schema The schema the batch must have: same column names, order and types.
 * @returns The batch.
 * @throws {ColumnarTypeError} naming the column that does not match the schema.
 * @throws {SyntaxError} when the bytes do not hold what the header says.
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
    return buildData(f, c, rows, body);
  });
  const data = makeData({
    type: new Struct(fields),
    length: rows,
    nullCount: 0,
    children,
  });
  return new RecordBatch(schema, data);
}
