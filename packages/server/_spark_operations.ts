// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The query and operation RPCs of `spark.connect.SparkConnectService`: `spark.version` and DDL
 * parsing are known; plans of the Python-UDF subset are executed and analyzed (their schema)
 * in the session's environment (`_spark_execute.ts`); other plans are refused with an error
 * class that names what is not supported; and the housekeeping a client does around operations
 * (release, interrupt, error details) succeeds, since results are not kept for reattaching.
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type AnalyzePlanRequest,
  AnalyzePlanResponseSchema,
  FetchErrorDetailsResponseSchema,
  InterruptResponseSchema,
  type Plan,
  ReleaseExecuteResponseSchema,
  SPARK_CONNECT_VERSION,
  type SparkConnectService,
} from "@valise/protocol";
import type { SessionStore } from "@valise/session-store";
import { bindSession } from "./_bind.ts";
import { ServerError, toConnectError } from "./errors.ts";
import type { ApplyContext } from "./_apply_service.ts";
import { compileForSession, executeCompiled, resultSchema } from "./_spark_execute.ts";
import { parseDdl } from "./_spark_ddl.ts";

type Operations = Pick<
  ServiceImpl<typeof SparkConnectService>,
  | "executePlan"
  | "analyzePlan"
  | "reattachExecute"
  | "releaseExecute"
  | "interrupt"
  | "fetchErrorDetails"
>;

/** What a plan asks for, in the words of the error message. */
function describePlan(plan: Plan | undefined): string {
  switch (plan?.opType.case) {
    case "root":
      return "a DataFrame query";
    case "command":
      return "a command";
    case "compressedOperation":
      return "a compressed plan";
    default:
      return "an empty plan";
  }
}

/** The analyses of `AnalyzePlan` by their request field, for messages. */
const ANALYSES: Partial<Record<NonNullable<AnalyzePlanRequest["analyze"]["case"]>, string>> = {
  schema: "schema",
  explain: "explain",
  treeString: "tree_string",
  isLocal: "is_local",
  isStreaming: "is_streaming",
  inputFiles: "input_files",
  ddlParse: "ddl_parse",
  sameSemantics: "same_semantics",
  semanticHash: "semantic_hash",
  persist: "persist",
  unpersist: "unpersist",
  getStorageLevel: "get_storage_level",
  jsonToDdl: "json_to_ddl",
};

function noQueries(what: string): ServerError {
  return new ServerError(
    "UNSUPPORTED_CONNECT_FEATURE.QUERY_EXECUTION",
    `Valise does not execute queries: it serves Spark Connect's sessions, artifacts and config, ` +
      `and runs Python in a session's environment. This call asked for ${what}. Run queries ` +
      `against Spark, or run Python in the session with Valise's Run or Apply (valise run, ` +
      `session.apply()).`,
  );
}

/**
 * The operation handlers.
 *
 * @param store The session store.
 * @param apply What runs Python in sessions; without it, no plan is executed.
 * @returns Handlers to merge into the service.
 */
export function createOperationHandlers(store: SessionStore, apply?: ApplyContext): Operations {
  return {
    async *executePlan(req, call) {
      let release: (() => void) | undefined;
      try {
        const session = await bindSession(store, req);
        if (!apply || req.plan?.opType.case !== "root") throw noQueries(describePlan(req.plan));
        release = session.hold();
        const plan = await compileForSession(apply, session, req.plan.opType.value);
        yield* executeCompiled(apply, session, plan, {
          sessionId: req.sessionId,
          operationId: req.operationId || crypto.randomUUID(),
          clientType: req.clientType,
        }, call.signal);
      } catch (e) {
        throw toConnectError(e);
      } finally {
        release?.();
      }
    },
    async analyzePlan(req) {
      try {
        const session = await bindSession(store, req);
        const base = { sessionId: req.sessionId, serverSideSessionId: session.serverSideSessionId };
        const a = req.analyze;
        switch (a.case) {
          case "sparkVersion":
            return create(AnalyzePlanResponseSchema, {
              ...base,
              result: { case: "sparkVersion", value: { version: SPARK_CONNECT_VERSION } },
            });
          case "ddlParse":
            return create(AnalyzePlanResponseSchema, {
              ...base,
              result: { case: "ddlParse", value: { parsed: parseDdl(a.value.ddlString) } },
            });
          case "schema":
          case "isLocal":
          case "isStreaming": {
            if (!apply || a.value.plan?.opType.case !== "root") {
              throw noQueries(`the ${ANALYSES[a.case]} analysis of ${describePlan(a.value.plan)}`);
            }
            const plan = await compileForSession(apply, session, a.value.plan.opType.value);
            if (a.case === "schema") {
              return create(AnalyzePlanResponseSchema, {
                ...base,
                result: { case: "schema", value: { schema: resultSchema(plan) } },
              });
            }
            return create(AnalyzePlanResponseSchema, {
              ...base,
              result: a.case === "isLocal"
                ? { case: "isLocal", value: { isLocal: false } }
                : { case: "isStreaming", value: { isStreaming: false } },
            });
          }
          default: {
            const kind = a.case;
            throw noQueries(`the ${kind ? ANALYSES[kind] ?? kind : "(empty)"} analysis of a plan`);
          }
        }
      } catch (e) {
        throw toConnectError(e);
      }
    },
    // deno-lint-ignore require-yield
    async *reattachExecute(req) {
      try {
        await bindSession(store, req);
        throw new ServerError(
          "INVALID_HANDLE.OPERATION_NOT_FOUND",
          `The operation ${JSON.stringify(req.operationId)} was not found: Valise runs no ` +
            `queries, so there is no operation to reattach to.`,
          { parameters: { handle: req.operationId } },
        );
      } catch (e) {
        throw toConnectError(e);
      }
    },
    async releaseExecute(req) {
      try {
        const session = await bindSession(store, req);
        // As Spark answers for an operation it does not know: no operation_id.
        return create(ReleaseExecuteResponseSchema, {
          sessionId: req.sessionId,
          serverSideSessionId: session.serverSideSessionId,
        });
      } catch (e) {
        throw toConnectError(e);
      }
    },
    async interrupt(req) {
      try {
        const session = await bindSession(store, req);
        return create(InterruptResponseSchema, {
          sessionId: req.sessionId,
          serverSideSessionId: session.serverSideSessionId,
          interruptedIds: [],
        });
      } catch (e) {
        throw toConnectError(e);
      }
    },
    async fetchErrorDetails(req) {
      try {
        await bindSession(store, req);
        // Valise's errors carry no error id, so none is ever found; Spark answers an unknown id
        // with an empty response (not even the session ids).
        return create(FetchErrorDetailsResponseSchema, {});
      } catch (e) {
        throw toConnectError(e);
      }
    },
  };
}
