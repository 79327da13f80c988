// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Attacks on ExecutePlan (the Python-UDF subset) against a real server process with the
 * bubblewrap sandbox on: hostile plans sent as raw gRPC, for a session whose environment was set
 * up by the real PySpark client. A relation the server does not know, plans nested 10^5 deep, a
 * literal of megabytes, local data whose Arrow lengths lie, a cached relation naming data the
 * session does not hold, a UDF command of garbage bytes, `df.to(schema)` with 100000 columns or a
 * name of a megabyte, and relations of arbitrary bytes
 * (fast-check): each gets a clear error class, the server answers health while and after the
 * hostile calls run, and its memory stays bounded.
 *
 * @module
 */
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import { ConnectError } from "@connectrpc/connect";
import {
  ErrorInfoSchema,
  ExecutePlanRequestSchema,
  type Relation,
  RelationSchema,
} from "@valise/protocol";
import { Int64, makeData, RecordBatch, Table, tableToIPC } from "apache-arrow";
import fc from "fast-check";
import { makeVenvPack } from "./fixtures/envs.ts";
import { needsVenv, VENV_PYTHON } from "./_python.ts";
import { bwrapWorks, type ServerProcess, startServer } from "./_server.ts";
import { answered, serving } from "./_hostile.ts";
import { udfEnvOptions } from "./_udf.ts";
import { removeTree } from "./_util.ts";

const GUARD_MS = 60_000;
const MiB = 1024 * 1024;

const within = <T>(p: Promise<T>, what: string): Promise<T> => answered(p, what, GUARD_MS);

const healthy = (server: ServerProcess, what: string): Promise<void> =>
  serving(server, what, GUARD_MS);

/** Sets up a session with PySpark (environment and interpreter); returns its ids. */
async function pysparkSession(
  port: number,
  env: string,
): Promise<{ user: string; session: string }> {
  const code = `
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.remote("sc://127.0.0.1:${port}/;user_id=mallory").create()
spark.addArtifacts(sys.argv[1] + "#environment", archive=True)
spark.conf.set("spark.sql.execution.pyspark.python", "environment/bin/python")
print(spark.client._session_id)
`;
  const out = await new Deno.Command(VENV_PYTHON, {
    args: ["-c", code, env],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  ok(out.success, new TextDecoder().decode(out.stderr));
  return { user: "mallory", session: new TextDecoder().decode(out.stdout).trim() };
}

interface Outcome {
  errorClass: string | undefined;
  message: string;
  rows: number;
}

/** Executes a root relation; the error class it failed with, or the rows it returned. */
async function execute(
  server: ServerProcess,
  ids: { user: string; session: string },
  root: Relation,
): Promise<Outcome> {
  const req = create(ExecutePlanRequestSchema, {
    sessionId: ids.session,
    userContext: { userId: ids.user },
    clientType: "_SPARK_CONNECT_PYTHON spark/4.2.1",
    plan: { opType: { case: "root", value: root } },
  });
  let rows = 0;
  try {
    for await (const r of server.clients.spark.executePlan(req)) {
      if (r.responseType.case === "arrowBatch") rows += Number(r.responseType.value.rowCount);
    }
    return { errorClass: undefined, message: "", rows };
  } catch (e) {
    if (!(e instanceof ConnectError)) throw e;
    const info = e.findDetails(ErrorInfoSchema)[0];
    return { errorClass: info?.metadata.errorClass, message: e.rawMessage, rows };
  }
}

function range(end: bigint): Relation {
  return create(RelationSchema, { relType: { case: "range", value: { end, step: 1n } } });
}

/**
 * `limit(1)` nested `depth` times over a range, as bytes: built inside out by lengths, then
 * written once (copying the growing message at every level would be quadratic).
 */
function nestedLimits(depth: number): Uint8Array {
  const range5 = toBinary(RelationSchema, range(5n));
  const prefixes: number[][] = [];
  let inner = range5.length;
  for (let i = 0; i < depth; i++) {
    // Limit { input = 1: Relation, limit = 2: 1 }, as Relation.limit (field 8).
    const limit = 1 + varintOf(inner).length + inner + 2;
    prefixes.push([0x42, ...varintOf(limit), 0x0a, ...varintOf(inner)]);
    inner = 1 + varintOf(limit).length + limit;
  }
  const out = new Uint8Array(inner);
  let at = 0;
  for (let i = prefixes.length - 1; i >= 0; i--) {
    out.set(prefixes[i]!, at);
    at += prefixes[i]!.length;
  }
  out.set(range5, at);
  at += range5.length;
  for (let i = 0; i < depth; i++) {
    out.set([0x10, 1], at);
    at += 2;
  }
  return out;
}

const SANDBOX = bwrapWorks();

Deno.test(
  needsVenv(
    `hostile plans get clear errors and the server stays up with bounded memory${
      SANDBOX ? "" : " (no bubblewrap here: unsandboxed workers)"
    }`,
  ),
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-hostile-execute-" });
    try {
      const env = await makeVenvPack(tmp, udfEnvOptions("1.0"));
      const server = await startServer({
        dataDir: join(tmp, "data"),
        args: ["--quiet", ...(SANDBOX ? ["--sandbox", "bwrap"] : [])],
      });
      try {
        const ids = await pysparkSession(server.port, env.archive);
        const rss0 = server.rss();

        // A relation this server does not know (a field number no Spark has).
        const unknown = fromBinary(RelationSchema, new Uint8Array([0xc2, 0x3e, 0x00]));
        let o = await execute(server, ids, unknown);
        equal(o.errorClass, "UNSUPPORTED_CONNECT_FEATURE.RELATION", o.message);
        ok(o.message.includes("(unknown)"), o.message);

        // Plans nested 200 and 100000 levels deep: refused while decoding (protobuf-es stops at
        // 100 nested messages), never a crash or a stack overflow.
        for (const depth of [200, 100_000]) {
          // Relation { limit (8) = <depth - 1 nested limits> }, its field carried verbatim as an
          // unknown field: the client writes the bytes without ever decoding them.
          const deep = nestedLimits(depth - 1);
          const head = [0x0a, ...varintOf(deep.length)];
          const limit = new Uint8Array(head.length + deep.length + 2);
          limit.set(head);
          limit.set(deep, head.length);
          limit.set([0x10, 1], head.length + deep.length);
          const root = create(RelationSchema, {});
          root.$unknown = [{
            no: 8,
            wireType: WireType.LengthDelimited,
            // An unknown field's data is what follows its tag: the length, then the bytes.
            data: (() => {
              const len = varintOf(limit.length);
              const data = new Uint8Array(len.length + limit.length);
              data.set(len);
              data.set(limit, len.length);
              return data;
            })(),
          }];
          const o = await within(execute(server, ids, root), `the ${depth}-deep plan`);
          ok(o.message.includes("maximum recursion depth of 100"), JSON.stringify(o));
          await healthy(server, `health after the ${depth}-deep plan`);
        }

        // A 4 MiB string literal.
        const big = create(RelationSchema, {
          relType: {
            case: "project",
            value: {
              input: range(3n),
              expressions: [{
                exprType: {
                  case: "literal",
                  value: { literalType: { case: "string", value: "x".repeat(4 * MiB) } },
                },
              }],
            },
          },
        });
        o = await execute(server, ids, big);
        equal(o.errorClass, "INVALID_PLAN_INPUT", o.message);
        ok(o.message.includes("literal"), o.message);

        // Local data whose record batch claims 10^9 rows over buffers of 3.
        const honest = tableToIPC(
          new Table([
            new RecordBatch({
              v: makeData({ type: new Int64(), length: 3, data: new BigInt64Array([1n, 2n, 3n]) }),
            }),
          ]),
          "stream",
        );
        const lying = honest.slice();
        patchInt64(lying, 3n, 1_000_000_000n);
        o = await execute(
          server,
          ids,
          create(RelationSchema, {
            relType: { case: "localRelation", value: { data: lying } },
          }),
        );
        ok(o.errorClass !== undefined && o.rows === 0, JSON.stringify(o));
        ok(
          ["UDF_EXECUTION_FAILED", "APPLY_WORKER_FAILED", "PYTHON_EXCEPTION"].includes(
            o.errorClass!,
          ),
          JSON.stringify(o),
        );
        // The honest bytes run: the patch is what was refused.
        o = await execute(
          server,
          ids,
          create(RelationSchema, { relType: { case: "localRelation", value: { data: honest } } }),
        );
        equal(o.errorClass, undefined, o.message);
        equal(o.rows, 3);

        // Cached data the session does not hold.
        o = await execute(
          server,
          ids,
          create(RelationSchema, {
            relType: { case: "cachedLocalRelation", value: { hash: "ab".repeat(32) } },
          }),
        );
        equal(o.errorClass, "INVALID_PLAN_INPUT", o.message);
        ok(o.message.includes(`cache/${"ab".repeat(32)}`), o.message);

        // A UDF whose pickled command is garbage: the unpickling error, as a Python exception.
        const garbage = create(RelationSchema, {
          relType: {
            case: "project",
            value: {
              input: range(3n),
              expressions: [{
                exprType: {
                  case: "commonInlineUserDefinedFunction",
                  value: {
                    functionName: "f",
                    arguments: [{
                      exprType: {
                        case: "unresolvedAttribute",
                        value: { unparsedIdentifier: "id" },
                      },
                    }],
                    function: {
                      case: "pythonUdf",
                      value: {
                        evalType: 200,
                        command: new Uint8Array([0x80, 0x05, 0xff, 0x13, 0x37]),
                        pythonVer: "",
                        outputType: { kind: { case: "long", value: {} } },
                      },
                    },
                  },
                },
              }],
            },
          },
        });
        o = await execute(server, ids, garbage);
        equal(o.errorClass, "PYTHON_EXCEPTION", o.message);
        ok(/UnpicklingError|unpickl/i.test(o.message), o.message);

        // df.to(schema) with 100000 columns, and with a column name of 1 MiB: refused, and the
        // error does not echo the megabyte back.
        const toSchema = (names: string[]) =>
          create(RelationSchema, {
            relType: {
              case: "toSchema",
              value: {
                input: range(3n),
                schema: {
                  kind: {
                    case: "struct",
                    value: {
                      fields: names.map((name) => ({
                        name,
                        nullable: true,
                        dataType: { kind: { case: "long" as const, value: {} } },
                      })),
                    },
                  },
                },
              },
            },
          });
        o = await execute(
          server,
          ids,
          toSchema(Array.from({ length: 100_000 }, (_, i) => `c${i}`)),
        );
        equal(o.errorClass, "INVALID_PLAN_INPUT", o.message);
        ok(o.message.includes("more than 4096 columns"), o.message);
        o = await execute(server, ids, toSchema(["x".repeat(MiB)]));
        equal(o.errorClass, "UNSUPPORTED_CONNECT_FEATURE.RELATION", o.message.slice(0, 300));
        ok(o.message.length < 2000, `a message of ${o.message.length} characters`);

        // Relations of arbitrary bytes: answered, with a class, every time.
        await fc.assert(
          fc.asyncProperty(fc.uint8Array({ maxLength: 200 }), async (bytes) => {
            let rel: Relation;
            try {
              rel = fromBinary(RelationSchema, bytes);
            } catch {
              return; // not a relation at all: protobuf refuses it before any server would
            }
            const r = await within(execute(server, ids, rel), "an arbitrary relation");
            ok(r.errorClass !== undefined || r.rows >= 0, JSON.stringify(r));
            ok(r.errorClass !== "INTERNAL_ERROR", JSON.stringify(r));
          }),
          { numRuns: 20 },
        );
        await healthy(server, "health after the hostile calls");
        const growth = server.rss() - rss0;
        ok(growth < 256 * MiB, `RSS grew by ${Math.round(growth / MiB)} MiB`);
      } finally {
        await server.stop();
      }
    } finally {
      await removeTree(tmp);
    }
  },
);

function varintOf(n: number): number[] {
  const out: number[] = [];
  while (n > 127) {
    out.push((n & 127) | 128);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

/** Replaces every little-endian int64 `from` in the bytes' flatbuffer metadata with `to`. */
function patchInt64(bytes: Uint8Array, from: bigint, to: bigint): void {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // Only the metadata of messages: stop before the data body (the first 8-aligned 1n, 2n, 3n).
  for (let i = 0; i + 8 <= bytes.length; i += 8) {
    if (v.getBigInt64(i, true) === from && v.getBigInt64(i - 8, true) !== 2n) {
      v.setBigInt64(i, to, true);
    }
  }
}
