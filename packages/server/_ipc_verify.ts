// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A bounds check of Arrow IPC message metadata (flatbuffers) before apache-arrow decodes it.
 * apache-arrow trusts every vector length it reads: a schema claiming 2³¹ fields, or children
 * that all point at one subtree (a DAG that decodes as an exponential tree), makes it allocate
 * until the process dies. Here every table, vector and string the decoder would visit must lie
 * inside the metadata, and the number of things visited is capped by the metadata's size.
 *
 * @module
 */
import { type RecordBatch, RecordBatchReader } from "apache-arrow";

/** IPC metadata that does not hold what it claims. */
export class IpcMetadataError extends SyntaxError {
  override name = "IpcMetadataError";
}

class Walker {
  #v: DataView;
  #size: number;
  #budget: number;

  constructor(meta: Uint8Array) {
    this.#v = new DataView(meta.buffer, meta.byteOffset, meta.byteLength);
    this.#size = meta.byteLength;
    // A real table, vector element or string costs at least 4 bytes of metadata.
    this.#budget = (meta.byteLength >> 2) + 16;
  }

  #fail(why: string): never {
    throw new IpcMetadataError(`Cannot read Arrow IPC metadata: ${why}`);
  }

  #spend(n: number): void {
    this.#budget -= n;
    if (this.#budget < 0) this.#fail("it describes more than its bytes can hold");
  }

  #u32(at: number): number {
    if (at < 0 || at + 4 > this.#size) this.#fail(`an offset at ${at} is outside it`);
    return this.#v.getUint32(at, true);
  }

  /** The absolute position of field `i` of the table at `t`, or 0 when absent. */
  field(t: number, i: number): number {
    const vt = t - this.#v.getInt32(t, true);
    if (vt < 0 || vt + 4 > this.#size) this.#fail(`a vtable at ${vt} is outside it`);
    const vsize = this.#v.getUint16(vt, true);
    if (vsize < 4 || vt + vsize > this.#size) this.#fail(`a vtable at ${vt} overruns it`);
    const at = 4 + 2 * i;
    if (at + 2 > vsize) return 0;
    const o = this.#v.getUint16(vt + at, true);
    return o ? t + o : 0;
  }

  /** The table an offset field points at (0 when absent), checked. */
  table(t: number, i: number): number {
    const f = this.field(t, i);
    if (!f) return 0;
    const to = f + this.#u32(f);
    if (to + 4 > this.#size) this.#fail(`a table at ${to} is outside it`);
    this.#spend(1);
    return to;
  }

  /** The elements' start and count of a vector field (0 when absent), checked. */
  vector(t: number, i: number, width: number): [number, number] {
    const f = this.field(t, i);
    if (!f) return [0, 0];
    const at = f + this.#u32(f);
    const n = this.#u32(at);
    if (at + 4 + n * width > this.#size) this.#fail(`a vector of ${n} at ${at} overruns it`);
    this.#spend(1 + n);
    return [at + 4, n];
  }

  /** Each table of a vector of tables. */
  tables(t: number, i: number): number[] {
    const [at, n] = this.vector(t, i, 4);
    const out: number[] = [];
    for (let k = 0; k < n; k++) {
      const p = at + 4 * k;
      const to = p + this.#u32(p);
      if (to + 4 > this.#size) this.#fail(`a table at ${to} is outside it`);
      out.push(to);
    }
    return out;
  }

  /** An int64 field (0 when absent). */
  long(t: number, i: number): bigint {
    const f = this.field(t, i);
    if (!f) return 0n;
    if (f + 8 > this.#size) this.#fail(`a field at ${f} is outside it`);
    return this.#v.getBigInt64(f, true);
  }

  byte(at: number): number {
    if (at >= this.#size) this.#fail(`a byte at ${at} is outside it`);
    return this.#v.getUint8(at);
  }

  root(): number {
    const t = this.#u32(0);
    if (t + 4 > this.#size) this.#fail("its root table is outside it");
    return t;
  }
}

/**
 * Field { name, nullable, type_type, type, dictionary, children, custom_metadata }; adds the
 * dictionary ids it names to `ids`.
 */
function walkField(w: Walker, f: number, depth: number, ids: Set<bigint>): void {
  if (depth > 64) {
    throw new IpcMetadataError("Cannot read Arrow IPC metadata: fields nest too deep");
  }
  w.vector(f, 0, 1);
  const typeAt = w.field(f, 2);
  const type = w.table(f, 3);
  // Union (type 14) { mode, typeIds: [int] }: the only type with a vector.
  if (type && typeAt && w.byte(typeAt) === 14) w.vector(type, 1, 4);
  const dict = w.table(f, 4);
  if (dict) {
    ids.add(w.long(dict, 0));
    w.table(dict, 1);
  }
  for (const c of w.tables(f, 5)) walkField(w, c, depth + 1, ids);
  walkKeyValues(w, f, 6);
}

function walkKeyValues(w: Walker, t: number, i: number): void {
  for (const kv of w.tables(t, i)) {
    w.vector(kv, 0, 1);
    w.vector(kv, 1, 1);
  }
}

/** RecordBatch { length, nodes: [FieldNode], buffers: [Buffer], compression, variadic }. */
function walkRecordBatch(w: Walker, b: number): void {
  w.vector(b, 1, 16);
  w.vector(b, 2, 16);
  w.table(b, 3);
  w.vector(b, 4, 8);
}

/** What a stream's messages said so far: the dictionaries its schema names and those sent. */
interface StreamState {
  /** Dictionary ids the schema names (undefined before the schema). */
  named: Set<bigint> | undefined;
  /** Dictionary ids sent. */
  sent: Set<bigint>;
}

/**
 * Checks one message's metadata flatbuffer (`Message`), as apache-arrow would walk it, and its
 * dictionary ids against the stream's.
 *
 * @param meta The metadata bytes.
 * @param state What the stream's earlier messages said (updated).
 * @throws {IpcMetadataError} when something lies outside it, it describes more than it holds,
 * or a dictionary id is not the schema's or was never sent.
 */
export function verifyIpcMetadata(
  meta: Uint8Array,
  state: StreamState = { named: undefined, sent: new Set() },
): void {
  const w = new Walker(meta);
  const m = w.root();
  walkKeyValues(w, m, 4);
  const typeAt = w.field(m, 1);
  const kind = typeAt ? w.byte(typeAt) : 0;
  const header = w.table(m, 2);
  if (!header) return;
  if (kind === 1) {
    const ids = new Set<bigint>();
    for (const f of w.tables(header, 1)) walkField(w, f, 0, ids);
    walkKeyValues(w, header, 2);
    w.vector(header, 3, 8);
    state.named = ids;
    state.sent = new Set();
  } else if (kind === 2) {
    const id = w.long(header, 0);
    if (state.named && !state.named.has(id)) {
      throw new IpcMetadataError(
        `Cannot read Arrow IPC: a dictionary batch for id ${id}, which the schema does not name`,
      );
    }
    state.sent.add(id);
    const data = w.table(header, 1);
    if (data) walkRecordBatch(w, data);
  } else if (kind === 3) {
    for (const id of state.named ?? []) {
      if (!state.sent.has(id)) {
        throw new IpcMetadataError(
          `Cannot read Arrow IPC: a record batch before the dictionary (id ${id}) of one of ` +
            "its columns",
        );
      }
    }
    walkRecordBatch(w, header);
  }
}

/**
 * Checks the metadata of every whole message in `bytes` (an IPC stream or a piece of one
 * made of whole messages); stops at the end-of-stream marker or where a message is cut.
 *
 * @param bytes The messages.
 * @throws {IpcMetadataError} as {@linkcode verifyIpcMetadata}.
 */
export function verifyIpcMessages(bytes: Uint8Array): void {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const state: StreamState = { named: undefined, sent: new Set() };
  let pos = 0;
  while (pos + 4 <= bytes.length) {
    let prefix = 4;
    let meta = v.getUint32(pos, true);
    if (meta === 0xffffffff) {
      if (pos + 8 > bytes.length) return;
      prefix = 8;
      meta = v.getUint32(pos + 4, true);
    }
    if (meta === 0) return;
    const start = pos + prefix;
    if (start + meta > bytes.length) return;
    const metadata = bytes.subarray(start, start + meta);
    verifyIpcMetadata(metadata, state);
    const w = new Walker(metadata);
    const len = w.field(w.root(), 3);
    const body = len
      ? Number(new DataView(metadata.buffer, metadata.byteOffset).getBigInt64(len, true))
      : 0;
    if (!(body >= 0) || !Number.isSafeInteger(body)) return;
    pos = start + meta + body;
  }
}

/**
 * apache-arrow's `RecordBatchReader` for one whole IPC stream, its metadata checked first
 * (an {@linkcode IpcStreamOpener} for `ipcRecordBatches`).
 */
export const VerifiedReader: {
  from(stream: Uint8Array): Iterable<RecordBatch> & { open(): unknown };
} = {
  /** Opens the stream's bytes after checking them. */
  from(stream: Uint8Array): Iterable<RecordBatch> & { open(): unknown } {
    verifyIpcMessages(stream);
    return RecordBatchReader.from(stream);
  },
};
