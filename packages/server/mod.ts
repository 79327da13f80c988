// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The Valise server: Spark Connect's artifact, config and session RPCs, Valise's
 * content-addressed store service and the standard health service, as routes that mount
 * anywhere — a `node:http2` gRPC server ({@linkcode serve}, `deno task serve`), `Deno.serve`
 * or a Hono app (`valise.fetch`, Connect and gRPC-web protocols).
 *
 * ```ts
 * import { createValise } from "@valise/server";
 * import { equal } from "node:assert/strict";
 *
 * const dataDir = await Deno.makeTempDir();
 * const valise = await createValise({ dataDir });
 * // Connect protocol, unary JSON: ask for a config value PySpark reads.
 * const res = await valise.fetch(
 *   new Request("http://localhost/spark.connect.SparkConnectService/Config", {
 *     method: "POST",
 *     headers: { "content-type": "application/json" },
 *     body: JSON.stringify({
 *       sessionId: crypto.randomUUID(),
 *       operation: { get: { keys: ["spark.sql.session.timeZone"] } },
 *     }),
 *   }),
 * );
 * equal((await res.json()).pairs[0].value, "UTC");
 * await valise.close();
 * await Deno.remove(dataDir, { recursive: true });
 * ```
 *
 * @module
 */
export {
  type ClusterOptions,
  createValise,
  DEFAULT_WORKER_IDS,
  type FetchHandler,
  type MaybeFetchHandler,
  type NodeHandler,
  type Valise,
  type ValiseOptions,
} from "./valise.ts";
export { type RunningServer, serve, type ServeOptions } from "./serve.ts";
export {
  type ApplyErrorClass,
  isServerError,
  isServerErrorCode,
  ServerError,
  type ServerErrorCode,
  type ServerErrorOptions,
  toConnectError,
  type ToConnectErrorOptions,
} from "./errors.ts";
export { createSparkConnectService, type SparkServiceContext } from "./spark_service.ts";
export { createStoreService, type StoreServiceContext } from "./store_service.ts";
export { createSessionService, type SessionServiceContext } from "./session_service.ts";
export { createWorkerService } from "./worker_service.ts";
export { createPipService, type PipServiceContext } from "./pip_service.ts";
export {
  DEFAULT_INDEX_URL,
  PipLayers,
  type PipOptions,
  type PipState,
  type PipStats,
} from "./pip_layers.ts";
export { hostPort, PipProxy, type PipProxyOptions, type ProxyGrant } from "./pip_proxy.ts";
export { createHealthService, HEALTH_SERVICES } from "./health_service.ts";
export { type LayerSource, preparedSpec, sessionSpec, WORKER_LIMIT_KEYS } from "./session_spec.ts";
export {
  archiveUnpacker,
  type CondaUnpackRunner,
  sandboxedCondaUnpack,
  type ServerUnpackOptions,
  type WorkerIdLease,
} from "./unpacker.ts";
export {
  BlobProofs,
  type BlobProofsOptions,
  type BlobRange,
  type PossessionChallenge,
  type PossessionProof,
} from "./blob_proof.ts";
export {
  BLOBS_BUCKET,
  NatsRegistry,
  type NatsRegistryOptions,
  type RegistryStats,
  sessionKey,
  SESSIONS_BUCKET,
} from "./cluster/nats_registry.ts";
export {
  type ClusterView,
  DEFAULT_HEARTBEAT_MS,
  Membership,
  type MembershipOptions,
  type MembershipStats,
  type NodeCounts,
  NODES_BUCKET,
} from "./cluster/membership.ts";
export {
  decodeNodeRecord,
  encodeNodeRecord,
  MAX_NODE_RECORD_BYTES,
  MembershipError,
  type MembershipErrorCode,
  nodeIdProblem,
  type NodeRecord,
} from "./cluster/node_record.ts";
export { type NodeStatus } from "./cluster/node_view.ts";
export { type ClusterCredentials, readClusterCredentials } from "./cluster/credentials.ts";
export { Metrics, type MetricsServer, type MetricsServerOptions, serveMetrics } from "./metrics.ts";
export { type AdminServiceContext, createAdminService } from "./admin_service.ts";
export { type RecentError, RecentErrors } from "./recent_errors.ts";
export {
  type ArtifactStatus,
  type BlobStatus,
  collectStatus,
  type ServerStatus,
  type SessionStatus,
  sessionStatuses,
  type StatusSources,
  type TreeStatus,
  type UserStatus,
  userStatuses,
} from "./server_status.ts";
export {
  escapeHtml,
  formatSize,
  renderLoginPage,
  renderStatusPage,
  STATUS_PAGE_ROWS,
  StatusPage,
  type StatusPageOptions,
} from "./status_page.ts";
export { type AccessToken } from "./_tokens.ts";
