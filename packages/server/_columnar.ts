// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The columnar encoding that carries record batches to and from a Python worker without
 * pyarrow (see `docs/apply.md`): a JSON header and little-endian buffers a stdlib-only
 * program reads with `memoryview.cast`. Its types (`_columnar_types.ts`), Arrow to it
 * (`_columnar_encode.ts`) and back (`_columnar_decode.ts`).
 *
 * @module
 */
export {
  arrowType,
  type ColumnarColumn,
  type ColumnarField,
  columnarField,
  type ColumnarHeader,
  ColumnarInputError,
  type ColumnarType,
  ColumnarTypeError,
  describeColumnarType,
  schemaOfHeader,
} from "./_columnar_types.ts";
export { encodeColumnarBatch } from "./_columnar_encode.ts";
export { decodeColumnarBatch, readColumnarBatch } from "./_columnar_decode.ts";
