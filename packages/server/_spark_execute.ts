// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * ExecutePlan for the Python-UDF subset of Spark Connect: a compiled plan (`_spark_plan.ts`) runs
 * as an Apply job of the session — the UDF runner (`udf_runner.py`) over the source's Arrow
 * batches, in the session's interpreter, fork server, sandbox and limits — and its output goes
 * back as Spark sends a result: the schema, one `ArrowBatch` per record batch (each a whole IPC
 * stream, with its row count and offset), then `ResultComplete`.
 *
 * @module
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type DataType,
  type ExecutePlanResponse,
  ExecutePlanResponseSchema,
  ipcMessageReader,
  ipcMessages,
  IpcMessageType,
  type Relation,
} from "@valise/protocol";
import type { Session } from "@valise/session-store";
import {
  Int64,
  makeData,
  RecordBatch,
  type Schema,
  Struct,
  Table,
  tableFromIPC,
  tableToIPC,
  Utf8,
  vectorFromArray,
} from "apache-arrow";
import { type ApplyContext, runApplyJob } from "./_apply_service.ts";
import { isServerError, ServerError } from "./errors.ts";
import { type CompiledPlan, compilePlan, leafOf, schemaFields } from "./_spark_plan.ts";
import {
  arrowSchema,
  fromArrowType,
  primitive,
  type SparkField,
  structType,
} from "./_spark_types.ts";
import { showString } from "./_spark_show.ts";
import { parseSchemaMessage } from "./_ipc_pieces.ts";
import RUNNER_SOURCE from "./udf_runner.py" with { type: "text" };

/** The session configs the UDF runner passes on to PySpark's worker (`RunnerConf`). */
const RUNNER_CONF_KEYS = [
  "spark.sql.session.timeZone",
  "spark.sql.execution.pandas.convertToArrowArraySafely",
  "spark.sql.legacy.execution.pandas.groupedMap.assignColumnsByName",
  "spark.sql.execution.arrow.useLargeVarTypes",
  "spark.sql.execution.pythonUDF.pandas.intToDecimalCoercionEnabled",
  "spark.sql.execution.pyspark.binaryAsBytes",
];

/** The session config that spreads a plan's batches over several workers (Apply's rules). */
export const UDF_PARALLELISM_KEY = "spark.valise.udf.parallelism";

function conf(session: Session, key: string): string | undefined {
  const v = session.config.getOption([key])[0]?.value;
  return typeof v === "string" ? v : undefined;
}

function invalid(why: string): ServerError {
  return new ServerError("INVALID_PLAN_INPUT", `The plan is not valid: ${why}.`);
}

/** The path of a session's `cache/<hash>` artifact's bytes. */
function cachePath(ctx: ApplyContext, session: Session, hash: string): string {
  const record = session.artifact(`cache/${hash}`);
  if (!record) {
    throw invalid(
      `the session holds no artifact cache/${hash} (the client's cached local data): upload ` +
        `it first (PySpark does so in createDataFrame)`,
    );
  }
  return ctx.store.blobs.path(record.sha256);
}

async function* fileChunks(path: string): AsyncGenerator<Uint8Array, void, undefined> {
  using f = await Deno.open(path);
  const buf = new Uint8Array(1 << 20);
  for (;;) {
    const n = await f.read(buf);
    if (n === null) return;
    yield buf.slice(0, n);
  }
}

/** The columns of an Arrow IPC stream's schema message, read from its first bytes. */
async function arrowFieldsOf(
  chunks: AsyncIterable<Uint8Array>,
  maxMessageBytes: number,
): Promise<SparkField[]> {
  for await (const m of ipcMessages(chunks, { maxMessageBytes })) {
    if (m.type !== IpcMessageType.SCHEMA) break;
    return fieldsOfSchema(parseSchemaMessage(m.bytes));
  }
  throw invalid("the cached local data does not start with an Arrow schema");
}

function fieldsOfSchema(schema: Schema): SparkField[] {
  return schema.fields.map((f) => ({
    name: f.name,
    type: fromArrowType(f.type),
    nullable: f.nullable,
  }));
}

/**
 * Compiles a plan for this session: cached local data is looked up (its schema read) first.
 *
 * @param ctx The Apply context (its store holds the blobs).
 * @param session The session.
 * @param rel The root relation.
 * @returns The compiled plan.
 */
export async function compileForSession(
  ctx: ApplyContext,
  session: Session,
  rel: Relation | undefined,
): Promise<CompiledPlan> {
  const max = ctx.maxMessageBytes ?? 64 * 1024 * 1024;
  const leaf = leafOf(rel);
  let cached: SparkField[] | undefined;
  if (leaf?.relType.case === "cachedLocalRelation") {
    cached = await arrowFieldsOf(fileChunks(cachePath(ctx, session, leaf.relType.value.hash)), max);
  } else if (leaf?.relType.case === "chunkedCachedLocalRelation") {
    const v = leaf.relType.value;
    if (v.schemaHash) {
      const path = cachePath(ctx, session, v.schemaHash);
      const size = (await Deno.stat(path)).size;
      if (size > 1 << 20) throw invalid("the cached schema is larger than 1 MiB");
      cached = schemaFields(await Deno.readTextFile(path));
    } else if (v.dataHashes[0]) {
      cached = await arrowFieldsOf(fileChunks(cachePath(ctx, session, v.dataHashes[0])), max);
    }
  }
  return compilePlan(rel, {
    arrowFields(data) {
      try {
        return fieldsOfSchema(parseSchemaMessage(data));
      } catch (e) {
        throw invalid(`the local relation's data is not Arrow IPC (${(e as Error).message})`);
      }
    },
    cachedFields: () => cached ?? [],
  });
}

/** The Spark schema of a compiled plan's result. */
export function resultSchema(plan: CompiledPlan): DataType {
  if (plan.show) {
    return structType([{ name: "show_string", type: primitive("string"), nullable: false }]);
  }
  return structType(plan.fields);
}

/** Reads `RecordBatch.length` from an IPC record batch message (framing, flatbuffer). */
export function recordBatchRows(message: Uint8Array): number {
  const v = new DataView(message.buffer, message.byteOffset, message.byteLength);
  const prefix = v.getUint32(0, true) === 0xffffffff ? 8 : 4;
  const base = prefix;
  const u32 = (at: number) => v.getUint32(base + at, true);
  const table = u32(0);
  const vtable = table - v.getInt32(base + table, true);
  const vsize = v.getUint16(base + vtable, true);
  const fieldAt = (vt: number, vs: number, i: number) => {
    const at = 4 + 2 * i;
    return at + 2 > vs ? 0 : v.getUint16(base + vt + at, true);
  };
  const headerOff = fieldAt(vtable, vsize, 2);
  if (!headerOff) return 0;
  const header = table + headerOff + u32(table + headerOff);
  const hvt = header - v.getInt32(base + header, true);
  const hvs = v.getUint16(base + hvt, true);
  const lengthOff = fieldAt(hvt, hvs, 0);
  return lengthOff ? Number(v.getBigInt64(base + header + lengthOff, true)) : 0;
}

const EOS = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** An empty IPC stream (schema and end marker) of a schema. */
function schemaOnly(schema: Schema): Uint8Array {
  return tableToIPC(new Table(schema), "stream");
}

async function* rangeInput(
  start: bigint,
  end: bigint,
  step: bigint,
  batchRows: number,
  maxRows: number | undefined,
  stop: { done: boolean },
): AsyncGenerator<Uint8Array, void, undefined> {
  const schema = arrowSchema([{ name: "id", type: primitive("long"), nullable: false }], "UTC");
  // The count as Spark's Range computes it, capped by what the plan needs.
  let total = step > 0n
    ? (end > start ? (end - start + step - 1n) / step : 0n)
    : (start > end ? (start - end - step - 1n) / -step : 0n);
  if (maxRows !== undefined && BigInt(maxRows) < total) total = BigInt(maxRows);
  let next = start;
  const whole = tableToIPC(new Table(schema), "stream");
  yield whole.subarray(0, whole.length - EOS.length);
  for (let done = 0n; done < total && !stop.done;) {
    const n = Number(total - done < BigInt(batchRows) ? total - done : BigInt(batchRows));
    const ids = new BigInt64Array(n);
    for (let i = 0; i < n; i++) {
      ids[i] = next;
      next += step;
    }
    const batch = new RecordBatch({ id: makeData({ type: new Int64(), length: n, data: ids }) });
    yield batchMessage(new Table([batch]));
    done += BigInt(n);
  }
  yield EOS;
}

/** The record batch message of a one-batch table (its IPC stream without schema and end). */
function batchMessage(table: Table): Uint8Array {
  const reader = ipcMessageReader({ maxMessageBytes: Number.MAX_SAFE_INTEGER });
  for (const m of reader.push(tableToIPC(table, "stream"))) {
    if (m?.type === IpcMessageType.RECORD_BATCH) return m.bytes;
  }
  throw new Error("apache-arrow wrote no record batch");
}

/** Several IPC streams (cached chunks) as one: the first schema, every batch, one end. */
async function* cachedInput(
  paths: string[],
  maxMessageBytes: number,
  stop: { done: boolean },
): AsyncGenerator<Uint8Array, void, undefined> {
  let schemaSent = false;
  for (const p of paths) {
    for await (const m of ipcMessages(fileChunks(p), { maxMessageBytes })) {
      if (stop.done) break;
      if (m.type === IpcMessageType.SCHEMA) {
        if (!schemaSent) yield m.bytes.slice();
        schemaSent = true;
        continue;
      }
      yield m.bytes.slice();
    }
  }
  yield EOS;
}

async function* stoppable(
  source: Iterable<Uint8Array>,
  stop: { done: boolean },
): AsyncGenerator<Uint8Array, void, undefined> {
  for (const c of source) {
    if (stop.done) break;
    yield c;
  }
}

/** The runner's Python source with the plan appended. */
function runnerCode(plan: CompiledPlan, session: Session, clientType: string | undefined): string {
  const runnerConf: Record<string, string> = {};
  for (const k of RUNNER_CONF_KEYS) {
    const v = conf(session, k);
    if (v !== undefined) runnerConf[k] = v;
  }
  const spark = /(?:^|\s)spark\/(\d+\.\d+[^\s]*)/.exec(clientType ?? "")?.[1];
  const json = JSON.stringify({
    clientSpark: spark ?? null,
    pythonVersions: plan.pythonVersions,
    conf: runnerConf,
    udfs: plan.udfs,
    stages: plan.stages,
    limit: plan.limit ?? null,
  });
  return `${RUNNER_SOURCE}\nimport json as _json\nrun = make(_json.loads(${
    JSON.stringify(json)
  }))\n`;
}

const EMBEDDED = /ValiseUdfError: \[([A-Z_.]+)\] ([\s\S]*?)\s*$/;

/** What an Apply failure of the runner means for ExecutePlan (paths shown from `root`). */
function udfFailure(e: unknown, root: string): unknown {
  if (!isServerError(e) || !e.code.startsWith("APPLY_")) return e;
  if (e.code === "APPLY_PYARROW_UNAVAILABLE") {
    return new ServerError(
      "UDF_PYARROW_UNAVAILABLE",
      `Cannot run the plan: Valise runs plans in the session's environment, whose interpreter ` +
        `cannot import pyarrow (${e.detail.replace(/^.*?by /, "").replace(/;.*$/, "")}). Add ` +
        `pyarrow, and pyspark for UDFs, to the environment (pyspark-client brings both), or ` +
        `choose an interpreter that has them (spark.sql.execution.pyspark.python).`,
    );
  }
  const embedded = EMBEDDED.exec(e.detail) ?? EMBEDDED.exec(e.traceback);
  if (embedded) {
    const cls = embedded[1]!;
    const known = [
      "UDF_PYSPARK_UNAVAILABLE",
      "UDF_PYSPARK_VERSION_MISMATCH",
      "PYTHON_VERSION_MISMATCH",
    ] as const;
    const code = known.find((k) => k === cls) ?? "UDF_EXECUTION_FAILED";
    return new ServerError(code, embedded[2]!.trim());
  }
  if (e.code === "APPLY_FUNCTION_FAILED" || e.code === "APPLY_FUNCTION_NOT_FOUND") {
    // The runner's own frames say nothing to the user: Spark shows the worker's and theirs.
    // Paths inside the session show relative to its working directory, not the server's disk.
    const tb = e.traceback
      .replace(/ {2}File "<apply code>", line \d+, in [^\n]*\n(?: {4}[^\n]*\n)*/g, "")
      .replaceAll(`"${root}/`, '"./');
    const text = tb || e.detail;
    // Spark cuts messages at 2048 characters: the end of a traceback says the most.
    const room = 1900;
    return new ServerError(
      "PYTHON_EXCEPTION",
      text.length > room ? `...\n${text.slice(-room)}` : text,
      { traceback: tb },
    );
  }
  if (
    e.code === "APPLY_TIMEOUT" || e.code === "APPLY_OUTPUT_TOO_LARGE" ||
    e.code === "APPLY_WORKER_FAILED"
  ) return e;
  return new ServerError("UDF_EXECUTION_FAILED", `Running the plan failed: ${e.detail}`, {
    traceback: e.traceback,
  });
}

/** What one ExecutePlan call answers for. */
export interface ExecuteTarget {
  /** The request's session id (echoed). */
  sessionId: string;
  /** The operation id (the client's, or one made up). */
  operationId: string;
  /** The client's user agent (`spark/<version>` in it). */
  clientType: string | undefined;
}

/**
 * Runs a compiled plan in a session and yields Spark's responses for it.
 *
 * @param ctx The Apply context (launcher, limits).
 * @param session The session (held by the caller).
 * @param plan The compiled plan.
 * @param target Ids for the responses.
 * @param signal Aborted when the call ends.
 * @returns The responses: schema, batches, result complete.
 */
export async function* executeCompiled(
  ctx: ApplyContext,
  session: Session,
  plan: CompiledPlan,
  target: ExecuteTarget,
  signal: AbortSignal,
): AsyncGenerator<ExecutePlanResponse, void, undefined> {
  const base = {
    sessionId: target.sessionId,
    serverSideSessionId: session.serverSideSessionId,
    operationId: target.operationId,
  };
  const respond = (
    init: Omit<MessageInitShape<typeof ExecutePlanResponseSchema>, "$typeName">,
  ): ExecutePlanResponse =>
    create(ExecutePlanResponseSchema, { ...base, responseId: crypto.randomUUID(), ...init });
  const timeZone = conf(session, "spark.sql.session.timeZone") ?? "UTC";
  const outSchema = arrowSchema(plan.fields, timeZone);
  const maxMessageBytes = ctx.maxMessageBytes ?? 64 * 1024 * 1024;
  const batchRows = Math.max(
    1,
    Number(conf(session, "spark.sql.execution.arrow.maxRecordsPerBatch")) || 10_000,
  );
  const stop = { done: false };

  let input: AsyncIterable<Uint8Array>;
  const src = plan.source;
  if (src.kind === "range") {
    input = rangeInput(src.start, src.end, src.step, batchRows, plan.sourceLimit, stop);
  } else if (src.kind === "local") {
    input = stoppable(
      [src.data ?? schemaOnly(arrowSchema(plan.sourceFields, timeZone))],
      stop,
    );
  } else {
    input = cachedInput(src.hashes.map((h) => cachePath(ctx, session, h)), maxMessageBytes, stop);
  }

  yield respond({ schema: resultSchema(plan) });

  const code = runnerCode(plan, session, target.clientType);
  const abort = new AbortController();
  const onAbort = () => abort.abort(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  const parallelism = plan.limit === undefined
    ? Math.max(1, Number(conf(session, UDF_PARALLELISM_KEY)) || 1)
    : 1;
  const responses = runApplyJob(ctx, session, {
    fn: { code, name: "run" },
    form: "pyarrow",
    declared: outSchema,
    declaredBytes: schemaOnly(outSchema),
    input,
    timeoutMs: 0,
    signal: abort.signal,
  }, parallelism);

  const reader = ipcMessageReader({ maxMessageBytes });
  let prefix: Uint8Array[] = [];
  let rows = 0;
  let batches = 0;
  const shown: Table[] = [];
  try {
    for await (const r of responses) {
      if (r.response.case !== "arrowIpc") continue;
      for (const m of reader.push(r.response.value)) {
        if (!m) continue;
        if (m.type === IpcMessageType.SCHEMA) {
          prefix = [m.bytes.slice()];
          continue;
        }
        if (m.type === IpcMessageType.DICTIONARY_BATCH) {
          prefix.push(m.bytes.slice());
          continue;
        }
        if (m.type !== IpcMessageType.RECORD_BATCH) continue;
        const n = recordBatchRows(m.bytes);
        const data = concat([...prefix, m.bytes, EOS]);
        if (plan.show) {
          shown.push(tableFromIPC(data));
        } else {
          yield respond({
            responseType: {
              case: "arrowBatch",
              value: { rowCount: BigInt(n), data, startOffset: BigInt(rows) },
            },
          });
        }
        rows += n;
        batches++;
        // Enough rows: the source stops, and the worker finishes with what it has.
        if (plan.limit !== undefined && rows >= plan.limit) stop.done = true;
      }
    }
  } catch (e) {
    throw udfFailure(e, session.root);
  } finally {
    signal.removeEventListener("abort", onAbort);
    abort.abort();
  }
  if (plan.show) {
    const table = shown.length ? new Table(shown.flatMap((t) => t.batches)) : new Table(outSchema);
    const text = showString(table, plan.show, timeZone);
    const out = new Table({ show_string: vectorFromArray([text], new Utf8()) });
    yield respond({
      responseType: {
        case: "arrowBatch",
        value: { rowCount: 1n, data: tableToIPC(out, "stream"), startOffset: 0n },
      },
    });
  } else if (batches === 0) {
    // As Spark does for an empty result: one batch of no rows, which carries the schema.
    const children = outSchema.fields.map((f) => vectorFromArray([], f.type).data[0]!);
    const empty = new RecordBatch(
      outSchema,
      makeData({ type: new Struct(outSchema.fields), length: 0, nullCount: 0, children }),
    );
    const data = tableToIPC(new Table([empty]), "stream");
    yield respond({
      responseType: { case: "arrowBatch", value: { rowCount: 0n, data, startOffset: 0n } },
    });
  }
  yield respond({ responseType: { case: "resultComplete", value: {} } });
}
