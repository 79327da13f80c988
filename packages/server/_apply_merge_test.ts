// Copyright 2026 the Valise authors. Apache-2.0 license.
// Merging workers' per-unit output streams into the call's one stream.
import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { ipcMessageReader } from "@valise/protocol";
import {
  Dictionary,
  Field,
  Int32,
  Int64,
  RecordBatch,
  Schema,
  Table,
  tableFromArrays,
  tableFromIPC,
  tableToIPC,
  Utf8,
  vectorFromArray,
} from "apache-arrow";
import { OutputMerger } from "./_apply_merge.ts";
import { encodeColumnarBatch } from "./_columnar.ts";
import { isServerError } from "./errors.ts";

/** A unit's output as a worker gives it: the messages of one whole IPC stream, EOS left out. */
function unitItems(table: Table): Uint8Array[] {
  return ipcMessageReader().push(tableToIPC(table, "stream")).flatMap((m) =>
    m ? [m.bytes.slice()] : []
  );
}

function joined(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function codeOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    ok(isServerError(e), String(e));
    return isServerError(e) ? e.code : "";
  }
  return "none";
}

Deno.test("OutputMerger: units' streams become one stream, the schema once, in order", () => {
  const m = new OutputMerger("arrow", undefined, new Uint8Array(), 1 << 20);
  const out: Uint8Array[] = [];
  for (const from of [0, 3, 6]) {
    const t = tableFromArrays({ x: Int32Array.from([from, from + 1, from + 2]) });
    for (const item of unitItems(t)) out.push(...m.item(item));
  }
  out.push(...m.end());
  const t = tableFromIPC(joined(out));
  deepEqual([...t.getChild("x")!.toArray()], [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  equal(t.batches.length, 3);
});

Deno.test("OutputMerger: each unit's dictionaries replace the previous unit's", () => {
  const type = new Dictionary(new Utf8(), new Int32());
  const m = new OutputMerger("arrow", undefined, new Uint8Array(), 1 << 20);
  const out: Uint8Array[] = [];
  const words = [["a", "b", "a"], ["z", "y"], ["b", "q", "q"]];
  for (const w of words) {
    const t = new Table({ s: vectorFromArray(w, type) });
    for (const item of unitItems(t)) out.push(...m.item(item));
  }
  out.push(...m.end());
  const t = tableFromIPC(joined(out));
  deepEqual([...t.getChild("s")!].map(String), words.flat());
});

Deno.test("OutputMerger: workers' schemas of other columns fail APPLY_OUTPUT_TYPE_MISMATCH", () => {
  const m = new OutputMerger("arrow", undefined, new Uint8Array(), 1 << 20);
  for (const item of unitItems(tableFromArrays({ x: Int32Array.of(1) }))) m.item(item);
  const other = unitItems(new Table({ x: vectorFromArray([1n], new Int64()) }));
  equal(codeOf(() => m.item(other[0]!)), "APPLY_OUTPUT_TYPE_MISMATCH");
});

Deno.test("OutputMerger: the same columns with other metadata are one schema", () => {
  const m = new OutputMerger("arrow", undefined, new Uint8Array(), 1 << 20);
  const plain = new Schema([new Field("x", new Int32(), true)]);
  const meta = new Schema([new Field("x", new Int32(), true)], new Map([["pandas", "{}"]]));
  const a = tableFromArrays({ x: Int32Array.of(1) }).batches[0]!;
  const out: Uint8Array[] = [];
  for (const s of [plain, meta]) {
    for (const item of unitItems(new Table([new RecordBatch(s, a.data)]))) {
      out.push(...m.item(item));
    }
  }
  out.push(...m.end());
  deepEqual([...tableFromIPC(joined(out)).getChild("x")!.toArray()], [1, 1]);
});

Deno.test("OutputMerger: what is not one whole message, or a batch before a schema, is APPLY_PROTOCOL", () => {
  const items = unitItems(tableFromArrays({ x: Int32Array.of(1, 2) }));
  const fresh = () => new OutputMerger("arrow", undefined, new Uint8Array(), 1 << 20);
  equal(codeOf(() => fresh().item(items[1]!)), "APPLY_PROTOCOL");
  equal(codeOf(() => fresh().item(items[0]!.subarray(0, 9))), "APPLY_PROTOCOL");
  equal(codeOf(() => fresh().item(joined(items))), "APPLY_PROTOCOL");
  equal(codeOf(() => fresh().item(new Uint8Array([9, 9, 9, 9, 9, 9, 9, 9]))), "APPLY_PROTOCOL");
  const small = new OutputMerger("arrow", undefined, new Uint8Array(), 64);
  equal(codeOf(() => small.item(items[1]!)), "APPLY_PROTOCOL");
});

Deno.test("OutputMerger: no output at all is the declared schema's empty stream, or nothing", () => {
  const schema = new Schema([new Field("y", new Utf8(), true)]);
  const declared = tableToIPC(new Table(schema), "stream");
  for (const transport of ["arrow", "columnar"] as const) {
    const t = tableFromIPC(joined(new OutputMerger(transport, schema, declared, 1 << 20).end()));
    equal(t.numRows, 0);
    equal(t.schema.fields[0]!.name, "y");
    deepEqual(new OutputMerger(transport, undefined, new Uint8Array(), 1 << 20).end(), []);
  }
});

Deno.test("OutputMerger: columnar batches are checked against the first one's schema", () => {
  const m = new OutputMerger("columnar", undefined, new Uint8Array(), 1 << 20);
  const enc = (t: Table) => joined(encodeColumnarBatch(t.batches[0]!));
  const out = [
    ...m.item(enc(tableFromArrays({ x: Int32Array.of(1, 2) }))),
    ...m.item(enc(tableFromArrays({ x: Int32Array.of(3) }))),
  ];
  equal(
    codeOf(() => m.item(enc(new Table({ z: vectorFromArray(["no"], new Utf8()) })))),
    "APPLY_OUTPUT_TYPE_MISMATCH",
  );
  out.push(...m.end());
  deepEqual([...tableFromIPC(joined(out)).getChild("x")!.toArray()], [1, 2, 3]);
  throws(() => m.item(new Uint8Array(3)));
});
