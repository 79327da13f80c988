// Copyright 2026 the Valise authors. Apache-2.0 license.
// The part of apache-arrow's API that Valise uses, declared here so that apache-arrow's own
// declarations — which pull npm's @types/node into the program, where it disagrees with
// Deno's built-in Node types (e.g. on zlib.zstdDecompressSync) — stay out of type checking.
// The runtime module is the real apache-arrow.
// deno-lint-ignore-file no-explicit-any

export declare enum Type {
  NONE = 0,
  Null = 1,
  Int = 2,
  Float = 3,
  Binary = 4,
  Utf8 = 5,
  Bool = 6,
  Decimal = 7,
  Date = 8,
  Time = 9,
  Timestamp = 10,
  Interval = 11,
  List = 12,
  Struct = 13,
  Union = 14,
  FixedSizeBinary = 15,
  FixedSizeList = 16,
  Map = 17,
  Duration = 18,
  LargeBinary = 19,
  LargeUtf8 = 20,
  LargeList = 21,
  BinaryView = 23,
  Utf8View = 24,
  Dictionary = -1,
}
export declare enum TimeUnit {
  SECOND = 0,
  MILLISECOND = 1,
  MICROSECOND = 2,
  NANOSECOND = 3,
}
export declare enum DateUnit {
  DAY = 0,
  MILLISECOND = 1,
}
export declare enum Precision {
  HALF = 0,
  SINGLE = 1,
  DOUBLE = 2,
}

export declare class DataType {
  readonly typeId: Type;
  readonly ArrayType: any;
  toString(): string;
}
export declare class Null extends DataType {}
export declare class Bool extends DataType {}
export declare class Int extends DataType {
  readonly isSigned: boolean;
  readonly bitWidth: 8 | 16 | 32 | 64;
}
export declare class Int8 extends Int {}
export declare class Int16 extends Int {}
export declare class Int32 extends Int {}
export declare class Int64 extends Int {}
export declare class Uint8 extends Int {}
export declare class Uint16 extends Int {}
export declare class Uint32 extends Int {}
export declare class Uint64 extends Int {}
export declare class Float extends DataType {
  readonly precision: Precision;
}
export declare class Float32 extends Float {}
export declare class Float64 extends Float {}
export declare class Utf8 extends DataType {}
export declare class LargeUtf8 extends DataType {}
export declare class Binary extends DataType {}
export declare class LargeBinary extends DataType {}
export declare class DateDay extends DataType {
  readonly unit: DateUnit;
}
export declare class Timestamp extends DataType {
  constructor(unit: TimeUnit, timezone?: string | null);
  readonly unit: TimeUnit;
  readonly timezone: string | null;
}
export declare class Decimal extends DataType {
  constructor(scale: number, precision: number, bitWidth?: number);
}
export declare class List extends DataType {
  constructor(child: Field);
}
export declare class Struct extends DataType {
  constructor(children: Field[]);
}

export declare class Field {
  constructor(name: string, type: DataType, nullable?: boolean);
  readonly name: string;
  readonly type: DataType;
  readonly nullable: boolean;
}
export declare class Schema {
  constructor(fields?: Field[]);
  readonly fields: Field[];
  readonly names: string[];
}

export declare class Data {
  readonly type: DataType;
  readonly length: number;
  readonly offset: number;
  readonly nullCount: number;
  readonly values: any;
  readonly nullBitmap: Uint8Array | undefined;
  readonly valueOffsets: any;
  readonly children: Data[];
  getValid(index: number): boolean;
}
export declare class Vector {
  readonly data: Data[];
  readonly type: DataType;
  readonly length: number;
  readonly nullCount: number;
  get(index: number): any;
  toArray(): any;
}
export declare class RecordBatch {
  constructor(schema: Schema, data: Data);
  readonly schema: Schema;
  readonly numRows: number;
  readonly numCols: number;
  readonly data: Data;
  getChildAt(index: number): Vector | null;
  getChild(name: string): Vector | null;
  slice(begin?: number, end?: number): RecordBatch;
}
export declare class Table {
  constructor(...args: any[]);
  readonly schema: Schema;
  readonly batches: RecordBatch[];
  readonly numRows: number;
  getChild(name: string): Vector | null;
  select(names: string[]): Table;
  slice(begin?: number, end?: number): Table;
}

export interface AsyncRecordBatchReader extends AsyncIterable<RecordBatch> {
  readonly schema: Schema;
  open(): Promise<AsyncRecordBatchReader>;
}
export declare class RecordBatchReader implements Iterable<RecordBatch> {
  static from(source: Uint8Array): RecordBatchReader;
  static from(source: AsyncIterable<Uint8Array>): Promise<AsyncRecordBatchReader>;
  readonly schema: Schema;
  open(): this;
  [Symbol.iterator](): IterableIterator<RecordBatch>;
}

export declare function makeData(props: {
  type: DataType;
  offset?: number;
  length?: number;
  nullCount?: number;
  nullBitmap?: Uint8Array | undefined;
  data?: ArrayBufferView;
  valueOffsets?: Int32Array | BigInt64Array;
  children?: Data[];
  child?: Data;
}): Data;
export declare function makeVector(data: Data | Data[] | ArrayBufferView): Vector;
export declare function vectorFromArray(values: readonly unknown[], type?: DataType): Vector;
export declare function tableToIPC(table: Table, type?: "stream" | "file"): Uint8Array;
export declare function tableFromIPC(input: Uint8Array | ArrayBufferView): Table;
