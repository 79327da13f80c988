// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Arrow record batches (as apache-arrow read them from a client's IPC bytes) to the columnar
 * encoding. The client may lie in its IPC bytes: every length, offset and dictionary index is
 * checked against the buffers that hold them before anything is allocated from it.
 *
 * @module
 */
import {
  type Data,
  type DataType,
  type Dictionary,
  type RecordBatch,
  Type,
  type Vector,
} from "apache-arrow";
import {
  byteWidth,
  type ColumnarColumn,
  type ColumnarField,
  columnarField,
  ColumnarInputError,
  ColumnarTypeError,
} from "./_columnar_types.ts";

/** Appends a buffer to the body; returns its `[offset, length]`. */
type Add = (b: Uint8Array) => [number, number];

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

function viewBytes(a: ArrayBufferView, start: number, length: number): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset + start, length);
}

function lie(name: string, why: string): ColumnarInputError {
  return new ColumnarInputError(name, `Cannot read column ${JSON.stringify(name)}: ${why}`);
}

/** The validity as one byte per value, and how many are null, checked against the bitmap. */
function validity(name: string, data: Data, length: number): [Uint8Array, number] {
  const bitmap = data.nullBitmap;
  if (!bitmap || bitmap.length === 0) return [new Uint8Array(), 0];
  // Checked before `nullCount`, which apache-arrow may count over the claimed length.
  if (bitmap.length * 8 < data.offset + length) {
    throw lie(name, `its validity bitmap holds ${bitmap.length * 8} bits for ${length} values`);
  }
  if (data.nullCount === 0) return [new Uint8Array(), 0];
  const bytes = bitsToBytes(bitmap, data.offset, length);
  let valid = 0;
  for (let i = 0; i < length; i++) valid += bytes[i]!;
  return valid === length ? [new Uint8Array(), 0] : [bytes, length - valid];
}

/**
 * Value offsets rebased to start at 0 as int32, checked: `length + 1` of them, never
 * decreasing, the last within `limit` (the bytes or child values they index).
 */
function offsetsOf(
  name: string,
  data: Data,
  length: number,
  limit: number,
): { offsets: Int32Array; first: number; last: number } {
  const vo = data.valueOffsets as Int32Array | BigInt64Array | undefined;
  // An empty column may come without offsets (apache-arrow writes none).
  if (length === 0 && !vo?.length) return { offsets: Int32Array.of(0), first: 0, last: 0 };
  if (!vo || vo.length < length + 1) {
    throw lie(name, `it has ${vo?.length ?? 0} value offsets for ${length} values`);
  }
  const first = Number(vo[0]);
  const last = Number(vo[length]);
  if (!(first >= 0) || !(last >= first) || last > limit) {
    throw lie(name, `its value offsets run from ${first} to ${last}, outside 0..${limit}`);
  }
  if (last - first >= 2 ** 31) {
    throw new ColumnarTypeError(
      name,
      `Cannot pass column ${JSON.stringify(name)}: more than 2 GiB in one batch ` +
        "(send smaller batches)",
    );
  }
  let offsets: Int32Array;
  if (vo instanceof Int32Array && first === 0) offsets = vo.subarray(0, length + 1);
  else {
    offsets = new Int32Array(length + 1);
    for (let r = 0; r <= length; r++) offsets[r] = Number(vo[r]) - first;
  }
  for (let r = 0; r < length; r++) {
    if (offsets[r + 1]! < offsets[r]!) throw lie(name, `its value offsets decrease at ${r}`);
  }
  return { offsets, first, last };
}

function checkIndices(name: string, idx: ArrayLike<number | bigint>, valid: Uint8Array, n: number) {
  const len = idx.length;
  for (let i = 0; i < len; i++) {
    if (valid.length && !valid[i]) continue;
    const k = Number(idx[i]);
    if (!(k >= 0 && k < n)) {
      throw lie(name, `row ${i} refers to dictionary entry ${k}, but its dictionary holds ${n}`);
    }
  }
}

/**
 * One column (or nested child, or dictionary chunk) of `length` values. `cap` bounds every
 * length: a null column has no buffer that would.
 */
function encodeData(
  f: ColumnarField,
  data: Data,
  length: number,
  add: Add,
  cap: number,
): ColumnarColumn {
  const name = f.name;
  const { nullable: _n, children: _c, ...params } = f;
  const col: ColumnarColumn = { ...params, nulls: 0, buffers: [] };
  if (!Number.isSafeInteger(length) || length < 0 || length > cap) {
    throw lie(name, `it claims ${length} values (at most ${cap})`);
  }
  if (f.type === "null") {
    col.nulls = length;
    return col;
  }
  const [valid, nulls] = validity(name, data, length);
  col.nulls = nulls;
  col.buffers.push(add(valid));
  const t = data.type as DataType;
  if (t.typeId === Type.Dictionary) {
    const dict = data.dictionary as Vector | undefined;
    if (!dict) throw lie(name, "its dictionary was never sent");
    const idx = data.values as Int32Array | BigInt64Array;
    if (!idx || idx.length < length) {
      throw lie(name, `it has ${idx?.length ?? 0} dictionary indices for ${length} values`);
    }
    const indexField = columnarField({ name, type: (t as Dictionary).indices } as never);
    col.index = indexField.type;
    const indices = idx.subarray(0, length);
    checkIndices(name, indices, valid, dict.length);
    col.buffers.push(add(viewBytes(indices, 0, indices.byteLength)));
    col.dictionary = dict.data.map((d) => {
      const c = encodeData({ ...f }, d, d.length, add, cap);
      c.length = d.length;
      return c;
    });
    return col;
  }
  const width = byteWidth(f);
  if (width !== undefined) {
    const values = data.values as ArrayBufferView;
    if (!values || values.byteLength < length * width) {
      throw lie(name, `its values take ${values?.byteLength ?? 0} bytes for ${length} values`);
    }
    col.buffers.push(add(viewBytes(values, 0, length * width)));
    return col;
  }
  switch (f.type) {
    case "bool": {
      const values = data.values as Uint8Array;
      if (!values || values.length * 8 < data.offset + length) {
        throw lie(name, `its values hold ${(values?.length ?? 0) * 8} bits for ${length} values`);
      }
      col.buffers.push(add(bitsToBytes(values, data.offset, length)));
      return col;
    }
    case "utf8":
    case "binary": {
      const values = data.values as Uint8Array;
      const { offsets, first, last } = offsetsOf(name, data, length, values?.length ?? 0);
      col.buffers.push(add(viewBytes(offsets, 0, offsets.byteLength)));
      col.buffers.push(add(viewBytes(values, first, last - first)));
      return col;
    }
    case "list":
    case "map": {
      const child = data.children[0] as Data | undefined;
      if (!child) throw lie(name, "it has no child values");
      const { offsets, first, last } = offsetsOf(name, data, length, child.length);
      col.buffers.push(add(viewBytes(offsets, 0, offsets.byteLength)));
      const kid = encodeData(
        f.children![0]!,
        child.slice(first, last - first),
        last - first,
        add,
        cap,
      );
      kid.length = last - first;
      col.children = [kid];
      return col;
    }
    case "fixed_list": {
      // apache-arrow slices a fixed-size list's child along with it.
      const child = data.children[0] as Data | undefined;
      const n = length * f.width!;
      if (!child || child.length < n) {
        throw lie(name, `it has ${child?.length ?? 0} child values for ${length} lists`);
      }
      const kid = encodeData(f.children![0]!, child, n, add, cap);
      kid.length = n;
      col.children = [kid];
      return col;
    }
    case "struct": {
      // apache-arrow slices a struct's children along with it.
      col.children = f.children!.map((kf, i) => {
        const child = data.children[i] as Data | undefined;
        if (!child || child.length < length) {
          throw lie(name, `its child ${kf.name} has ${child?.length ?? 0} values for ${length}`);
        }
        const kid = encodeData(kf, child, length, add, cap);
        kid.length = length;
        return kid;
      });
      return col;
    }
  }
  throw new ColumnarTypeError(name, `Cannot pass column ${JSON.stringify(name)} of type ${t}`);
}

/**
 * Encodes a record batch: header, then buffers, each starting at a multiple of 8 bytes.
 * Returns the pieces to write in order (views into the batch's buffers where possible).
 * Dictionary columns carry their indices and their dictionary: the driver decodes the
 * dictionary once per batch.
 *
 * @param batch The batch.
 * @param maxRows The most rows a batch, and values a nested column or a dictionary, may claim
 * (a null column has no buffer that would bound them).
 * @returns The encoded pieces.
 * @throws {ColumnarTypeError} naming the column when a type has no columnar form.
 * @throws {ColumnarInputError} naming the column when a length, offset or dictionary index
 * does not fit the buffers that hold it.
 */
export function encodeColumnarBatch(
  batch: RecordBatch,
  maxRows: number = 2 ** 31 - 1,
): Uint8Array[] {
  const parts: Uint8Array[] = [];
  let pos = 0;
  const add: Add = (b) => {
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
  const rows = batch.numRows;
  if (!Number.isSafeInteger(rows) || rows < 0 || rows > maxRows) {
    throw new ColumnarInputError(
      "",
      `Cannot read a record batch of ${rows} rows: at most ${maxRows} per batch`,
    );
  }
  const columns = batch.schema.fields.map((field, i) => {
    const f = columnarField(field);
    const data = batch.getChildAt(i)?.data[0] as Data | undefined;
    if (!data) throw lie(field.name, "the batch holds no data for it");
    return encodeData(f, data, rows, add, maxRows);
  });
  const header = new TextEncoder().encode(JSON.stringify({ rows, columns }));
  const lead = new Uint8Array((4 + header.length + 7) & ~7);
  new DataView(lead.buffer).setUint32(0, header.length, true);
  lead.set(header, 4);
  return [lead, ...parts];
}
