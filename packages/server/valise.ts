// Copyright 2026 the Valise authors. Apache-2.0 license.
import type * as http2 from "node:http2";
import { environmentChecker } from "./env_check.ts";
import { resolve } from "node:path";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  createConnectRouter,
  createContextValues,
  type Interceptor,
} from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { createFetchHandler, type UniversalHandler } from "@connectrpc/connect/protocol";
import { DEFAULT_LIMITS, Launcher, type LauncherOptions } from "@valise/launcher";
import {
  AdminService,
  assertCrc32Works,
  guardHttp2Session,
  Health,
  PipService,
  SessionService,
  SparkConnectService,
  StoreService,
  WorkerService,
} from "@valise/protocol";
import { type ArchiveUnpacker, type Quotas, SessionStore } from "@valise/session-store";
import { BlobProofs } from "./blob_proof.ts";
import { NatsRegistry } from "./cluster/nats_registry.ts";
import { type ClusterView, DEFAULT_HEARTBEAT_MS, Membership } from "./cluster/membership.ts";
import { type ClusterCredentials, readClusterCredentials } from "./cluster/credentials.ts";
import { ApplyServer } from "./cluster/apply_serve.ts";
import { ClusterLanes } from "./cluster/apply_remote.ts";
import { observingInterceptor } from "./_interceptors.ts";
import { cancelledInterceptor, peerResetValues } from "./_cancelled.ts";
import { archiveUnpacker, sandboxedCondaUnpack } from "./unpacker.ts";
import {
  ADMIN_SERVICES,
  adminGate,
  adminInterceptor,
  adminRefusal,
  authGate,
  authInterceptor,
  discardRefusedBodies,
  methodReadMaxBytes,
  OPEN_SERVICES,
  registerService,
} from "./_front_door.ts";
import { createAdminService } from "./admin_service.ts";
import { RecentErrors } from "./recent_errors.ts";
import { collectStatus, type ServerStatus } from "./server_status.ts";
import { PathRedactor, redactingInterceptor, serverSideMessage } from "./_redact.ts";
import { type AccessToken, TokenSet } from "./_tokens.ts";
import { createHealthService } from "./health_service.ts";
import { Metrics } from "./metrics.ts";
import { createSparkConnectService } from "./spark_service.ts";
import { createStoreService } from "./store_service.ts";
import { createSessionService } from "./session_service.ts";
import { createWorkerService } from "./worker_service.ts";
import { directRun } from "./_run_direct.ts";
import { directAddArtifacts } from "./_add_artifacts_direct.ts";
import meta from "./deno.json" with { type: "json" };
import { DEFAULT_APPLY_MAX_PARALLELISM } from "./_apply_service.ts";
import { PipLayers, type PipOptions } from "./pip_layers.ts";
import { createPipService } from "./pip_service.ts";

/** Options of {@linkcode createValise}. */
export interface ValiseOptions {
  /** The data directory: sessions, blobs, staging. */
  dataDir: string;
  /**
   * When set, every RPC must carry `authorization: Bearer <token>`.
   * @default {undefined}
   */
  token?: string | undefined;
  /**
   * More accepted tokens (with `token`, if both are set); one bound to a user id may act only
   * as that user (`user_context.user_id`).
   * @default {[]}
   */
  tokens?: readonly AccessToken[] | undefined;
  /**
   * Tokens of operators: they, and only they, open the admin API (`valise.v1.AdminService`) and
   * the status page. Never a tenant's token.
   * @default {undefined} the admin API is off
   */
  adminTokens?: readonly AccessToken[] | undefined;
  /**
   * An AddArtifacts stream with no message for this long is aborted; `0` waits forever.
   * @default {60_000}
   */
  streamIdleTimeoutMs?: number | undefined;
  /**
   * Sessions unused for this long are released; `0` disables expiry.
   * @default {3_600_000}
   */
  idleTimeoutMs?: number;
  /**
   * How often idle sessions are looked for.
   * @default {a quarter of `idleTimeoutMs`, between 1 s and 30 s}
   */
  maintenanceIntervalMs?: number;
  /**
   * Receives one line per RPC and start-up notices.
   * @default {undefined} silent
   */
  log?: ((line: string) => void) | undefined;
  /**
   * Unpacks `archives/` artifacts into shared trees; `false` stores archives without
   * unpacking them.
   * @default {archiveUnpacker()} `@valise/archive` with its safe defaults, in a worker
   */
  unpack?: ArchiveUnpacker | false | undefined;
  /**
   * Bytes of unreferenced blobs and trees kept as a cache.
   * @default {10_737_418_240}
   */
  cacheBytes?: number | undefined;
  /**
   * Storage limits per session and user, and the free-disk floor.
   * @default {{}} the store's defaults
   */
  quotas?: Partial<Quotas> | undefined;
  /**
   * How Python workers run: interpreter, sandbox, limits.
   * @default {{}} the launcher's defaults (bwrap when installed)
   */
  workers?: LauncherOptions | undefined;
  /**
   * The largest message accepted, in bytes.
   * @default {67_108_864}
   */
  readMaxBytes?: number;
  /**
   * Host uids/gids for sessions' workers, one per session, when the server runs as root (never
   * root itself); `"none"` runs every session's workers as `nobody`. Ignored when not root:
   * workers then run as the server's own user.
   * @default {DEFAULT_WORKER_IDS when root}
   */
  workerIds?: { first: number; count: number } | "none" | undefined;
  /**
   * The most workers one Apply call may spread its batches over (`parallelism`); a call asking
   * for more gets this many. In a cluster it is also the most workers this node runs for other
   * nodes' calls at once.
   * @default {4}
   */
  applyMaxParallelism?: number | undefined;
  /**
   * In a cluster, how long a parallel Apply waits for other nodes to volunteer workers before
   * it runs the rest of its workers on this node (it runs on its first worker meanwhile).
   * @default {250}
   */
  applyOfferWaitMs?: number | undefined;
  /**
   * Join a cluster of Valise nodes on NATS JetStream: sessions and blobs are shared, any node
   * serves any session (see `docs/operations.md`).
   * @default {undefined} a single node
   */
  cluster?: ClusterOptions | undefined;
  /**
   * How sessions' `pip install`s are built (installer, indexes, offline, sdists); `false`
   * turns them off (a session with a requirement set then fails its runs with
   * `PIP_INSTALL_FAILED`).
   * @default {{}} uv (or pip) from PyPI, wheels only
   */
  pip?: PipOptions | false | undefined;
}

/** How a node joins a cluster (`--cluster`). */
export interface ClusterOptions {
  /** NATS URLs of the cluster's members (`nats://host:4222`). */
  servers: readonly string[];
  /** This node's name. */
  nodeId: string;
  /**
   * JetStream replicas of Valise's buckets, when this node creates them.
   * @default {1}
   */
  replicas?: number | undefined;
  /**
   * A credentials file (`.creds`, `user:password` or a token).
   * @default {undefined} no credentials
   */
  credentialsFile?: string | undefined;
  /**
   * How often this node writes its membership record (KV bucket `valise_nodes`).
   * @default {5000}
   */
  heartbeatMs?: number | undefined;
  /**
   * How long without a heartbeat before the other nodes count this one as gone.
   * @default {3 × heartbeatMs}
   */
  nodeTtlMs?: number | undefined;
  /**
   * Blob GC: objects of the cluster's object store no session record refers to are deleted once
   * they are older than this (and no record written within it refers to them either).
   * @default {86_400_000} (24 h)
   */
  gcGraceMs?: number | undefined;
}

/**
 * The default range of worker uids/gids: above the ranges Linux distributions, container
 * user namespaces (subuid) and systemd allocate, below the signed 32-bit limit.
 */
export const DEFAULT_WORKER_IDS: Readonly<{ first: number; count: number }> = Object.freeze({
  first: 1_900_000_000,
  count: 1_000_000,
});

/** A request handler in the style of `fetch`: what `Deno.serve` and Hono's `mount` take. */
export type FetchHandler = (request: Request) => Promise<Response>;
/** A fetch handler that declines requests that are not for it, so a host can fall through. */
export type MaybeFetchHandler = (request: Request) => Promise<Response | undefined>;
/** A `node:http2` request listener. */
export type NodeHandler = (
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
) => void;

/** A Valise instance: its routes, mountable as a fetch handler or a `node:http2` listener. */
export interface Valise {
  /** The session store it serves. */
  readonly store: SessionStore;
  /** The launcher that runs the sessions' Python workers. */
  readonly launcher: Launcher;
  /** Counters, for `/metrics`. */
  readonly metrics: Metrics;
  /** Sessions' pip layers, when installs are on. */
  readonly pip: PipLayers | undefined;
  /** The most recent failed calls, for operators. */
  readonly recentErrors: RecentErrors;
  /** The admin tokens, when the admin API is on. */
  readonly adminTokens: TokenSet | undefined;
  /** Collects what the status page shows. */
  status(): Promise<ServerStatus>;
  /** Registers every Valise service on a Connect router. */
  readonly routes: (router: ConnectRouter) => void;
  /** The interceptors (auth, log) that the handlers run behind. */
  readonly interceptors: Interceptor[];
  /** Serves the Connect and gRPC-web protocols; unknown paths get 404. */
  readonly fetch: FetchHandler;
  /** Like `fetch`, but answers `undefined` for paths it does not serve. */
  readonly handle: MaybeFetchHandler;
  /** Serves gRPC, gRPC-web and Connect over `node:http2` (cleartext or TLS). */
  readonly nodeHandler: NodeHandler;
  /** Aborted when {@linkcode Valise.close} starts. */
  readonly shutdownSignal: AbortSignal;
  /** Who workers run as, in words (for the start-up log). */
  readonly workerIdentity: string;
  /** This node's membership of the cluster, when it is a cluster's node. */
  readonly membership: Membership | undefined;
  /** Stops maintenance and releases nothing: sessions stay on disk for the next start. */
  close(): Promise<void>;
}

/**
 * Creates a Valise instance over a data directory, ready to mount in any server.
 *
 * @example Mount in Deno.serve (Connect and gRPC-web protocols)
 * ```ts ignore
 * import { createValise } from "@valise/server";
 * const valise = await createValise({ dataDir: "./.data" });
 * Deno.serve({ port: 8080 }, valise.fetch);
 * ```
 *
 * @param options Data directory, auth, limits.
 * @returns The instance.
 */
export async function createValise(options: ValiseOptions): Promise<Valise> {
  assertCrc32Works();
  const log = options.log;
  const workerOptions = options.workers ?? {};
  const dataDir = resolve(options.dataDir);
  const launcher = new Launcher({
    ...workerOptions,
    // No interpreter home the sandboxes bind may hold the data directory.
    protectedPaths: [...(workerOptions.protectedPaths ?? []), dataDir],
    logger: workerOptions.logger ??
      ((level, message) => {
        if (level !== "info" || log) (log ?? console.error)(`workers: ${message}`);
      }),
  });
  let store: SessionStore;
  let registry: NatsRegistry | undefined;
  try {
    if (options.cluster) {
      const c = options.cluster;
      let credentials: ClusterCredentials | undefined;
      if (c.credentialsFile) credentials = readClusterCredentials(c.credentialsFile);
      registry = await NatsRegistry.connect({
        servers: c.servers,
        nodeId: c.nodeId,
        replicas: c.replicas ?? 1,
        credentials,
        limits: {
          maxArtifactBytes: 16 * 2 ** 30,
          maxArtifacts: options.quotas?.maxSessionArtifacts ?? 10_000,
        },
        log: (line) => (log ?? console.error)(line),
      });
    }
    const workerIds = options.workerIds === "none" || !launcher.canDropPrivileges
      ? undefined
      : options.workerIds ?? DEFAULT_WORKER_IDS;
    store = await SessionStore.open({
      dataDir,
      workerIds,
      workersReachByBinds: launcher.sandboxed,
      ...(options.idleTimeoutMs !== undefined ? { idleTimeoutMs: options.idleTimeoutMs } : {}),
      unpack: options.unpack === false ? undefined : (options.unpack ??
        archiveUnpacker({}, sandboxedCondaUnpack(launcher, () => store.leaseWorkerId()))),
      ...(options.cacheBytes !== undefined ? { cacheBytes: options.cacheBytes } : {}),
      ...(options.quotas ? { quotas: options.quotas } : {}),
      checkEnvironment: environmentChecker({
        interpreters: launcher,
        log: (line) => (log ?? console.error)(line),
      }),
      registry,
    });
  } catch (e) {
    await registry?.close();
    await launcher.close();
    throw e;
  }
  let membership: Membership | undefined;
  if (registry && options.cluster) {
    const c = options.cluster;
    try {
      membership = await Membership.join({
        connection: registry.connection,
        nodeId: c.nodeId,
        replicas: registry.replicas,
        heartbeatMs: c.heartbeatMs ?? DEFAULT_HEARTBEAT_MS,
        ...(c.nodeTtlMs !== undefined ? { ttlMs: c.nodeTtlMs } : {}),
        version: meta.version,
        counts: nodeCounts(store, launcher),
        previousHolder: store.tookOverLockFrom,
        log: (line) => (log ?? console.error)(line),
      });
    } catch (e) {
      await store.close();
      await registry.close();
      await launcher.close();
      throw e;
    }
    log?.(
      `cluster: node ${c.nodeId} joined ${c.servers.join(",")}; sessions in KV bucket ` +
        `valise_sessions, blobs in object store valise_blobs, replicas ${registry.replicas}; ` +
        `heartbeat every ${membership.heartbeatMs / 1000} s in KV bucket valise_nodes, TTL ` +
        `${membership.ttlMs / 1000} s`,
    );
  }
  registry?.startGc({
    graceMs: options.cluster?.gcGraceMs,
    log: (line) => (log ?? console.error)(line),
  });
  const previous = store.tookOverLockFrom;
  if (previous) {
    (log ?? console.error)(
      `took over the data directory's lock from pid ${previous.pid} (since ${previous.since}), ` +
        `which is no longer running`,
    );
  }
  // A crashed server's sandboxes may have outlived it; the restored sessions' uids name them.
  const strays = launcher.killWorkersOf(
    store.sessions().flatMap((s) => (s.worker ? [s.worker.uid] : [])),
  );
  if (strays > 0) {
    (log ?? console.error)(`killed ${strays} process(es) a previous run's workers left behind`);
  }
  const shutdown = new AbortController();
  const limits = { ...DEFAULT_LIMITS, ...workerOptions.limits };
  // Workers go before their session's files do.
  store.onRelease((s) => launcher.stopSession(`${s.userId}\u0000${s.sessionId}`));
  if (registry) {
    // After the workers' hook: they are stopped when this line is logged; the files go next.
    store.onRelease((s) =>
      log?.(`cluster: workers of session ${s.sessionId} stopped, its copy goes`)
    );
  }
  const metrics = new Metrics();
  const pip = options.pip === false ? undefined : new PipLayers({
    store,
    launcher,
    limits,
    log,
    minFreeBytes: options.quotas?.minFreeBytes,
  }, options.pip ?? {});
  if (pip) metrics.pip = () => pip.stats;
  if (registry) metrics.cluster = () => registry.stats as unknown as Record<string, number>;
  const clusterView = membership ? (): ClusterView => membership.view() : undefined;
  metrics.membership = clusterView;
  // One key for both transports (fetch and node:http2): a challenge from one verifies on the
  // other; in a cluster, one key for every node (a challenge from one verifies on any).
  let proofs: BlobProofs;
  try {
    proofs = new BlobProofs(registry ? { secret: await registry.proofKey() } : {});
  } catch (e) {
    await membership?.leave();
    await pip?.close();
    await launcher.close();
    await store.close();
    await registry?.close();
    throw e;
  }
  const readMaxBytes = options.readMaxBytes ?? 64 * 2 ** 20;
  const applyMaxParallelism = options.applyMaxParallelism ?? DEFAULT_APPLY_MAX_PARALLELISM;
  // In a cluster, parallel Apply calls take workers on other nodes, and this node runs
  // workers for theirs (docs/architecture.md, "Parallel Apply across nodes").
  let applyServer: ApplyServer | undefined;
  let remoteLanes: ClusterLanes | undefined;
  if (registry && options.cluster) {
    const nodeId = options.cluster.nodeId;
    const clusterLog = (line: string) => log?.(line);
    applyServer = new ApplyServer({
      nc: registry.connection,
      nodeId,
      store,
      launcher,
      limits,
      maxLanes: applyMaxParallelism,
      maxMessageBytes: readMaxBytes,
      metrics,
      log: clusterLog,
      pip,
    });
    applyServer.start();
    remoteLanes = new ClusterLanes({
      nc: registry.connection,
      nodeId,
      maxMessageBytes: readMaxBytes,
      log: clusterLog,
      offerWaitMs: options.applyOfferWaitMs,
    });
  }
  const accepted = [...(options.token ? [{ token: options.token }] : []), ...options.tokens ?? []];
  const tokens = accepted.length ? new TokenSet(accepted) : undefined;
  const adminTokens = options.adminTokens?.length ? new TokenSet(options.adminTokens) : undefined;
  const recentErrors = new RecentErrors();
  const redactor = new PathRedactor({
    dataDir: store.dataDir,
    pexRoots: workerOptions.pexRoot ? [workerOptions.pexRoot] : [],
  });
  const interceptors: Interceptor[] = [metrics.interceptor(), recordingInterceptor(recentErrors)];
  if (log) interceptors.push(logInterceptor(log));
  if (tokens) interceptors.push(authInterceptor(tokens));
  interceptors.push(adminInterceptor(adminTokens, tokens));
  interceptors.push(redactingInterceptor(redactor));
  // Innermost: the log and the metrics see a cancelled call as cancelled.
  interceptors.push(cancelledInterceptor(shutdown.signal));

  // The token is checked on the headers, before any body byte is read; each method reads at
  // most its own cap.
  const refused = (method: string, problem: string) => {
    metrics.rpc(method, Code.Unauthenticated, 0);
    recentErrors.record(method, "Unauthenticated", `token ${problem.toLowerCase()}`);
    log?.(
      `rpc ${method} Unauthenticated (token ${problem.toLowerCase()}, refused before the body)`,
    );
  };
  const door = { readMaxBytes, gate: tokens ? authGate(tokens, refused) : undefined };
  const adminDoor = {
    readMaxBytes,
    gate: adminGate(adminTokens, tokens, (method, e) => {
      metrics.rpc(method, e.code, 0);
      recentErrors.record(method, Code[e.code], e.rawMessage);
      log?.(`rpc ${method} ${Code[e.code]} ${e.rawMessage} (refused before the body)`);
    }),
  };
  const streamIdleTimeoutMs = options.streamIdleTimeoutMs;
  const workerCtx = {
    store,
    launcher,
    limits,
    metrics,
    maxMessageBytes: readMaxBytes,
    maxParallelism: applyMaxParallelism,
    remote: remoteLanes,
    log,
    pip,
  };
  // One service for both ways in: Connect's router and the direct Run path.
  const workerService = createWorkerService(workerCtx);
  // Likewise for Spark's service: Connect's router and the direct AddArtifacts path.
  const sparkService = createSparkConnectService({ store, streamIdleTimeoutMs, apply: workerCtx });
  const routes = (router: ConnectRouter): void => {
    registerService(router, SparkConnectService, sparkService, door);
    registerService(router, StoreService, createStoreService({ store, proofs }), door);
    registerService(router, SessionService, createSessionService({ store }), door);
    registerService(router, WorkerService, workerService, door);
    registerService(router, PipService, createPipService({ store, pip }), door);
    registerService(
      router,
      AdminService,
      createAdminService({ store, launcher, cluster: clusterView }),
      adminDoor,
    );
    registerService(router, Health, createHealthService(shutdown.signal), door);
  };

  // Compressed requests are accepted, responses are never compressed: artifacts, worker output
  // and Arrow data compress poorly, and gzip cost Apply about half of the server's CPU.
  const compressMinBytes = Number.MAX_SAFE_INTEGER;
  const router = createConnectRouter({ interceptors, readMaxBytes, compressMinBytes });
  routes(router);
  const byPath = new Map<string, FetchHandler>();
  for (const h of router.handlers as UniversalHandler[]) {
    byPath.set(h.requestPath, createFetchHandler(h));
  }
  const handle: MaybeFetchHandler = (request) => {
    const path = new URL(request.url).pathname;
    const h = byPath.get(path);
    return h ? h(request) : Promise.resolve(undefined);
  };
  const fetch: FetchHandler = async (request) =>
    (await handle(request)) ?? new Response("Not Found", { status: 404 });

  const contextValues = (req: object) => peerResetValues(createContextValues(), req);
  const connectHandler: NodeHandler = connectNodeAdapter({
    routes,
    interceptors,
    readMaxBytes,
    compressMinBytes,
    shutdownSignal: shutdown.signal,
    fallback: unimplementedFallback,
    contextValues,
  }) as NodeHandler;
  // Plain gRPC uploads skip Connect's request pipeline (see _add_artifacts_direct.ts).
  const uploadHandler = directAddArtifacts({
    addArtifacts: sparkService.addArtifacts!.bind(sparkService),
    interceptors,
    readMaxBytes: methodReadMaxBytes(SparkConnectService.method.addArtifacts, readMaxBytes),
    shutdownSignal: shutdown.signal,
    contextValues,
    refuses: (authorization) => tokens !== undefined && !tokens.check(authorization).ok,
  }, connectHandler);
  // Plain gRPC calls of WorkerService/Run skip Connect's pipelines (see _run_direct.ts).
  const runHandler = directRun({
    run: workerService.run,
    interceptors,
    readMaxBytes: methodReadMaxBytes(WorkerService.method.run, readMaxBytes),
    shutdownSignal: shutdown.signal,
    contextValues,
    refuses: (authorization) => tokens !== undefined && !tokens.check(authorization).ok,
  }, uploadHandler);
  const gated = discardRefusedBodies(runHandler, (service, authorization) => {
    if (ADMIN_SERVICES.has(service)) {
      return adminRefusal(adminTokens, tokens, authorization) !== undefined;
    }
    return !OPEN_SERVICES.has(service) && tokens !== undefined && !tokens.check(authorization).ok;
  });
  // An embedder's own node:http2 server gets the session guard from its first call to us: a
  // client that drops its connection as a call ends must not take the process down.
  const nodeHandler: NodeHandler = (req, res) => {
    if (req.stream?.session) guardHttp2Session(req.stream.session);
    gated(req, res);
  };

  // A short idle timeout is honoured within a quarter of itself, not only at the next 30 s tick.
  const idleMs = options.idleTimeoutMs ?? 3_600_000;
  const interval = options.maintenanceIntervalMs ??
    (idleMs > 0 ? Math.min(30_000, Math.max(1_000, idleMs / 4)) : 30_000);
  // One round at a time: a round waits for NATS while it is unavailable.
  let maintaining = false;
  const timer = setInterval(() => {
    if (maintaining) return;
    maintaining = true;
    (async () => {
      try {
        for (const id of await store.expireSharedIdle()) {
          log?.(`cluster: session ${id} released: idle on every node`);
        }
      } catch (e) {
        log?.(`cluster: idle expiry failed: ${e}`);
      }
      for (const id of await store.expireIdle()) log?.(`session ${id} expired after being idle`);
    })().catch((e) => log?.(`idle expiry failed: ${e}`)).finally(() => maintaining = false);
  }, interval);

  return {
    store,
    launcher,
    metrics,
    pip,
    recentErrors,
    adminTokens,
    status: () => collectStatus({ store, launcher, recentErrors, cluster: clusterView }),
    routes,
    interceptors,
    fetch,
    handle,
    nodeHandler,
    shutdownSignal: shutdown.signal,
    workerIdentity: store.workerIds
      ? `a uid of their session's own (from ${store.workerIds.first}, ${store.workerIds.count} ids)`
      : launcher.canDropPrivileges
      ? "nobody (65534)"
      : `the server's own user (uid ${Deno.uid()})`,
    membership,
    async close() {
      clearInterval(timer);
      // First: the other nodes see this one leave at once, not a TTL later.
      await membership?.leave();
      shutdown.abort();
      // Other nodes' workers first: their callers then run those units themselves.
      await applyServer?.close();
      await launcher.close();
      await pip?.close();
      await store.close();
      await registry?.close();
    },
  };
}

/** How often a heartbeat walks the caches for their sizes: they change slowly, walks cost. */
const CACHE_SIZES_EVERY_MS = 30_000;

/**
 * What a node's heartbeat says of it: sessions, runs in flight, and its cache sizes (walked at
 * most every {@linkcode CACHE_SIZES_EVERY_MS}).
 */
function nodeCounts(
  store: SessionStore,
  launcher: Launcher,
): () => Promise<{ sessions: number; blobBytes: number; treeBytes: number; inFlight: number }> {
  const sizes = { blobBytes: 0, treeBytes: 0, at: -Infinity };
  return async () => {
    if (performance.now() - sizes.at >= CACHE_SIZES_EVERY_MS) {
      let blobBytes = 0;
      for (const d of await store.blobs.list()) {
        blobBytes += (await Deno.stat(store.blobs.path(d)).catch(() => ({ size: 0 }))).size;
      }
      let treeBytes = 0;
      for (const k of await store.trees.list()) {
        treeBytes += (await store.trees.info(k).catch(() => ({ bytes: 0 }))).bytes;
      }
      Object.assign(sizes, { blobBytes, treeBytes, at: performance.now() });
    }
    const ls = launcher.stats();
    return {
      sessions: store.sessions().length,
      blobBytes: sizes.blobBytes,
      treeBytes: sizes.treeBytes,
      inFlight: ls.running + ls.queued,
    };
  };
}

/**
 * Methods of a served service that Valise does not implement, and unknown services, get a
 * proper gRPC `UNIMPLEMENTED`, not a bare HTTP 404. The status travels in trailers after the
 * request body is drained: Deno's `node:http2` resets a stream answered any earlier.
 */
function unimplementedFallback(
  req: {
    url?: string | undefined;
    headers: Record<string, string | string[] | undefined>;
    on(event: string, fn: () => void): unknown;
    resume(): unknown;
  },
  res: {
    writeHead(status: number, headers: Record<string, string>): unknown;
    addTrailers?(headers: Record<string, string>): unknown;
    end(): unknown;
  },
): void {
  const type = String(req.headers["content-type"] ?? "");
  req.on("end", () => {
    if (type.startsWith("application/grpc") && res.addTrailers) {
      res.writeHead(200, { "content-type": "application/grpc" });
      res.addTrailers({
        "grpc-status": String(Code.Unimplemented),
        "grpc-message": encodeURIComponent(`Method not implemented by Valise: ${req.url ?? ""}`),
      });
    } else {
      res.writeHead(404, { "content-type": "text/plain" });
    }
    res.end();
  });
  req.resume();
}

/** Failed calls go to the ring operators see (full messages: it is theirs only). */
function recordingInterceptor(errors: RecentErrors): Interceptor {
  return observingInterceptor({
    end: (method, error) => {
      if (error === undefined) return;
      const c = ConnectError.from(error);
      errors.record(method, Code[c.code], serverSideMessage(c));
    },
  });
}

function logInterceptor(log: (line: string) => void): Interceptor {
  return observingInterceptor({
    end: (method, error, startedAt) => {
      const ms = (performance.now() - startedAt).toFixed(1);
      log(`rpc ${method} ${error === undefined ? "OK" : describe(error)} ${ms}ms`);
    },
  });
}

/** The server's log has the full message, with the paths clients are not shown. */
function describe(e: unknown): string {
  const c = ConnectError.from(e);
  return `${Code[c.code]} ${serverSideMessage(c).slice(0, 1000)}`;
}
