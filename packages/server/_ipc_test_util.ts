// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Arrow IPC samples for the attack tests of the columnar transport.
 *
 * @module
 */
import {
  Dictionary,
  Field,
  Int32,
  Int64,
  List,
  Struct,
  Table,
  tableToIPC,
  Utf8,
  vectorFromArray,
} from "apache-arrow";

/** The dictionary id of {@linkcode richStream}'s dictionary column (easy to find in its bytes). */
export const DICT_ID = 0x5a5a5a5a;

/** A stream of every shape the checks cover: offsets, a dictionary, a list, a struct. */
export function richStream(): Uint8Array {
  const t = new Table({
    s: vectorFromArray(["hello", "world", null, "x"], new Utf8()),
    d: vectorFromArray(["a", "b", "a", "b"], new Dictionary(new Utf8(), new Int32(), DICT_ID)),
    l: vectorFromArray([[1, 2], null, [3], []], new List(new Field("item", new Int32(), true))),
    st: vectorFromArray(
      [{ a: 1n }, null, { a: 2n }, { a: 3n }],
      new Struct([new Field("a", new Int64(), true)]),
    ),
  });
  return tableToIPC(t, "stream");
}
