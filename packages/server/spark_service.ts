// Copyright 2026 the Valise authors. Apache-2.0 license.
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type AddArtifactsRequest,
  AddArtifactsResponseSchema,
  type ArtifactStatusesResponse_ArtifactStatus,
  ArtifactStatusesResponse_ArtifactStatusSchema,
  ArtifactStatusesResponseSchema,
  type ConfigRequest,
  type ConfigResponse,
  ConfigResponseSchema,
  type KeyValue,
  KeyValueSchema,
  ReleaseSessionResponseSchema,
  type SparkConnectService,
} from "@valise/protocol";
import { type Session, SessionError, type SessionStore, type Upload } from "@valise/session-store";
import { bindSession, userIdOf } from "./_bind.ts";
import { createOperationHandlers } from "./_spark_operations.ts";
import { createCloneHandler } from "./_spark_clone.ts";
import { ServerError, toConnectError } from "./errors.ts";
import { idleLimited } from "./_stream_idle.ts";
import type { ApplyContext } from "./_apply_service.ts";

/** What the Spark Connect handlers need. */
export interface SparkServiceContext {
  /** Where sessions live. */
  readonly store: SessionStore;
  /**
   * An AddArtifacts stream with no message for this long is aborted (DEADLINE_EXCEEDED) and
   * what it staged removed; `0` waits forever.
   * @default {60_000}
   */
  readonly streamIdleTimeoutMs?: number | undefined;
  /**
   * What runs Python in sessions (the Apply machinery): with it, ExecutePlan runs the
   * Python-UDF subset of plans; without it, every plan is refused.
   * @default {undefined}
   */
  readonly apply?: ApplyContext | undefined;
}

/**
 * The handlers of `spark.connect.SparkConnectService` that Valise serves — AddArtifacts,
 * ArtifactStatus, Config, ReleaseSession, CloneSession, and ExecutePlan/AnalyzePlan for the
 * Python-UDF subset of plans — as a plain object any Connect router can mount.
 *
 * @param ctx The session store to serve.
 * @returns The service implementation.
 */
export function createSparkConnectService(
  ctx: SparkServiceContext,
): Partial<ServiceImpl<typeof SparkConnectService>> {
  const { store } = ctx;
  const idleMs = ctx.streamIdleTimeoutMs ?? 60_000;
  return {
    ...createOperationHandlers(store, ctx.apply),
    ...createCloneHandler(store),
    async addArtifacts(requests, call) {
      let session: Session | undefined;
      let upload: Upload | undefined;
      let done: (() => void) | undefined;
      let committed = false;
      let received = 0;
      try {
        let first: AddArtifactsRequest | undefined;
        // A stalled stream would hold a staging directory and an open file until the peer
        // went away, which a hostile peer never does.
        const messages = idleLimited(requests, idleMs, () => streamIdle(idleMs, received));
        for await (const req of messages) {
          if (!session) {
            first = req;
            // Spark binds the stream to the session named by its first message.
            session = await bindSession(store, req);
            done = session.hold();
            upload = await session.beginUpload();
          }
          const p = req.payload;
          switch (p.case) {
            case "batch":
              for (const a of p.value.artifacts) {
                await upload!.single(a.name, a.data ?? { data: new Uint8Array(0), crc: 0 });
              }
              break;
            case "beginChunk":
              await upload!.begin(
                p.value.name,
                p.value.totalBytes,
                p.value.numChunks,
                p.value.initialChunk ?? { data: new Uint8Array(0), crc: 0 },
              );
              break;
            case "chunk":
              await upload!.chunk(p.value);
              break;
            default:
              throw new SessionError(
                "INVALID_ARTIFACT_STREAM",
                "Unsupported data transfer request: the message has no batch, begin_chunk or chunk.",
              );
          }
          received++;
        }
        // A stream the client reset can look like one that ended: it is never committed, even
        // when all its chunks had arrived.
        call.signal.throwIfAborted();
        if (!session || !upload) {
          // No message means no session to answer for; Spark fails such a stream too.
          throw new SessionError(
            "INVALID_ARTIFACT_STREAM",
            "The AddArtifacts stream ended without a message: there is nothing to add.",
          );
        }
        await upload.finish();
        const result = await session.commit(upload);
        committed = true;
        if (result.errors.length) throw combine(result.errors);
        return create(AddArtifactsResponseSchema, {
          sessionId: first!.sessionId,
          serverSideSessionId: session.serverSideSessionId,
          artifacts: result.summaries.map((s) => ({ name: s.name, isCrcSuccessful: s.crcOk })),
        });
      } catch (e) {
        throw toConnectError(e);
      } finally {
        // After a commit only leftovers remain in staging (e.g. the second copy of content the
        // store already held): removing them need not delay the answer. A failed stream is
        // cleaned before its error is sent, so nothing half-written outlives it.
        if (committed) upload?.abort().catch(() => {});
        else await upload?.abort();
        done?.();
      }
    },

    async artifactStatus(req) {
      try {
        const session = await bindSession(store, req);
        const statuses: Record<string, ArtifactStatusesResponse_ArtifactStatus> = {};
        for (const name of req.names) {
          statuses[name] = create(ArtifactStatusesResponse_ArtifactStatusSchema, {
            exists: session.artifact(name) !== undefined,
          });
        }
        return create(ArtifactStatusesResponseSchema, {
          sessionId: req.sessionId,
          serverSideSessionId: session.serverSideSessionId,
          statuses,
        });
      } catch (e) {
        throw toConnectError(e);
      }
    },

    async config(req) {
      try {
        const session = await bindSession(store, req);
        const res = await runConfig(session, req);
        res.sessionId = req.sessionId;
        res.serverSideSessionId = session.serverSideSessionId;
        return res;
      } catch (e) {
        throw toConnectError(e);
      }
    },

    async releaseSession(req) {
      try {
        const id = await store.release(userIdOf(req.userContext), req.sessionId, {
          allowReconnect: req.allowReconnect,
        });
        return create(ReleaseSessionResponseSchema, {
          sessionId: req.sessionId,
          serverSideSessionId: id ?? "",
        });
      } catch (e) {
        throw toConnectError(e);
      }
    },
  };
}

async function runConfig(session: Session, req: ConfigRequest): Promise<ConfigResponse> {
  const res = create(ConfigResponseSchema, {});
  const op = req.operation?.opType;
  const conf = session.config;
  switch (op?.case) {
    case "set":
      res.warnings = await conf.set(
        op.value.pairs.map((p) => ({ key: p.key, value: p.value })),
        op.value.silent ?? false,
      );
      break;
    case "get":
      res.pairs = conf.get(op.value.keys).map(kv);
      break;
    case "getWithDefault":
      res.pairs = conf.getWithDefault(op.value.pairs.map((p) => ({ key: p.key, value: p.value })))
        .map(kv);
      break;
    case "getOption":
      res.pairs = conf.getOption(op.value.keys).map(kv);
      break;
    case "getAll":
      res.pairs = conf.getAll(op.value.prefix).map(kv);
      break;
    case "unset":
      await conf.unset(op.value.keys);
      break;
    case "isModifiable":
      res.pairs = conf.isModifiable(op.value.keys).map(kv);
      break;
    default:
      throw new SessionError("INVALID_CONF_VALUE", "The config request names no operation.");
  }
  return res;
}

function kv(p: { key: string; value: string | undefined }): KeyValue {
  // An absent value must be left unset on the wire: PySpark reads HasField("value").
  return create(KeyValueSchema, p.value === undefined ? { key: p.key } : p);
}

function streamIdle(idleMs: number, received: number): ServerError {
  const s = idleMs / 1000;
  return new ServerError(
    "ARTIFACT_STREAM_IDLE",
    `No AddArtifacts message arrived for ${s} s (after ${received} message` +
      `${received === 1 ? "" : "s"}): the stream was aborted and what it had staged removed. ` +
      `Send the stream without long pauses, or ask the operator to raise --stream-idle-timeout-s.`,
  );
}

/** Spark reports every refused artifact of a stream; the first one's class leads. */
function combine(errors: SessionError[]): SessionError {
  if (errors.length === 1) return errors[0]!;
  const first = errors[0]!;
  const rest = errors.slice(1).map((e) => e.message).join(" ");
  return new SessionError(
    first.errorClass,
    `${first.message.replace(/^\[[^\]]+\] /, "")} (${errors.length - 1} more: ${rest})`,
    first.reason ? { reason: first.reason } : {},
  );
}
