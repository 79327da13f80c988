// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import type { ServeOptions } from "./serve.ts";
import { type AccessToken, readTokenFile } from "./_tokens.ts";
import { nodeIdProblem } from "./cluster/node_record.ts";
import { normalizeIndexUrl } from "@valise/protocol";
import type { PipOptions } from "./pip_layers.ts";

/** The usage text of `deno task serve`. */
export const USAGE = `Usage: deno task serve [options]

Serves Spark Connect's artifact RPCs (and Valise's own) over gRPC.

Listening and data:
  --host HOST                 address to listen on (env VALISE_HOST; default 127.0.0.1)
  --port PORT                 port; 0 picks a free one (env VALISE_PORT; default 15002)
  --data-dir DIR              sessions, blobs, trees (env VALISE_DATA_DIR; default ./.data)
  --token-file PATH           require 'authorization: Bearer TOKEN' with a TOKEN of the file:
                              one per line, 'TOKEN user-id' binds it to that user
                              (env VALISE_TOKEN_FILE)
  --token TOKEN               one token (env VALISE_TOKEN); on the command line it is
                              visible to every local user in ps: prefer the file or env
  --stream-idle-timeout-s N   abort an AddArtifacts stream silent for N s; 0 = never
                              (default 60)
  --idle-timeout-min N        release sessions idle for N minutes; 0 = never (default 60)

Storage (sizes take K, M, G, T suffixes, powers of 1024):
  --cache-bytes SIZE          unreferenced blobs/trees kept as a cache (default 10G)
  --max-session-bytes SIZE    artifacts one session may hold (default 64G)
  --max-session-artifacts N   artifacts one session may hold (default 10000)
  --max-user-bytes SIZE       artifacts all sessions of a user may hold (default 256G)
  --min-free-bytes SIZE       refuse and stop uploads below this much free disk (default 1G)
  --max-session-files N       files of unpacked archives one session may hold (default 1000000)
  --max-sessions-per-user N   live sessions one user may have (default 100)
  --max-sessions N            live sessions in all (default 10000)

Workers:
  --python PATH               interpreter of sessions that choose none (default python3)
  --allow-interpreter PATH    an absolute interpreter sessions may choose (repeatable)
  --sandbox MODE              auto | bwrap | none (default auto: bwrap when installed)
  --worker-network            let workers use the network (default: no network)
  --worker-timeout-ms N       wall time per run (default 60000)
  --interactive-timeout-ms N  wall time of a run whose stdin is streamed (valise python,
                              run -i, run --stdin -) (default 3600000)
  --max-workers-per-session N concurrent runs per session (default 4)
  --max-workers N             concurrent runs in total (default 16)
  --worker-memory SIZE        address-space limit per worker (default 2G)
  --worker-output-bytes SIZE  stdout+stderr per run (default 16M)
  --worker-processes N        processes+threads of one session's sandbox (default 512)
  --sandbox-memory SIZE       memory of one session's sandbox as a whole, with cgroups (default 8G)
  --max-fork-servers N        warm fork servers kept in total (default 64)
  --worker-ids FIRST:COUNT    host uids/gids for sessions' workers, one per session, when the
                              server runs as root; none = one uid, nobody (default 1900000000:1000000)
  --worker-stream-bytes SIZE  Apply output data per call (default 16G)
  --apply-max-parallelism N   workers one Apply call may spread its batches over; a call
                              asking for more gets N (default 4); in a cluster also the
                              workers this node runs for other nodes' calls at once

Packages (session-scoped pip install; docs/operations.md):
  --pip-installer PATH        uv, or a Python whose pip installs (default: uv on PATH, else
                              the default interpreter's pip)
  --pip-index-url URL         the package index sessions install from
                              (default https://pypi.org/simple)
  --pip-extra-index-url URL   another index every install uses (repeatable)
  --pip-allow-index URL       an index sessions may choose instead (repeatable)
  --pip-allow-host HOST[:PORT]  a host installs may reach besides their indexes' own, where an
                              index serves its files (repeatable; PyPI's is known)
  --pip-offline               no index: installs use the session's uploaded wheels only
  --pip-timeout N             seconds one install may take (default 600)
  --pip-allow-sdist           let installs build source distributions (runs their code, in
                              the sandbox; default: wheels only)

Cluster (several nodes sharing sessions over NATS JetStream; docs/operations.md):
  --cluster URL[,URL...]      join the cluster of these NATS servers (env VALISE_CLUSTER),
                              e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222
  --node-id NAME              this node's name (env VALISE_NODE_ID; default the host name)
  --cluster-replicas N        JetStream replicas of Valise's buckets: 1, 3 or 5 (default 1;
                              3 in production)
  --cluster-creds-file PATH   NATS credentials: a .creds file, 'user:password' or a token
                              (env VALISE_CLUSTER_CREDS_FILE; never on the command line)
  --cluster-heartbeat SECONDS how often this node writes its record in KV bucket valise_nodes;
                              other nodes count it gone after 3 times that (default 5)
  --cluster-gc-grace DURATION objects of the cluster's object store no session refers to
                              are deleted once older than this, e.g. 30m, 24h, 7d
                              (default 24h)
  --apply-offer-wait-ms N     how long a parallel Apply waits for other nodes to offer
                              workers before it runs the rest on this node (default 250)

Operators:
  --metrics-port PORT         serve HTTP on HOST:PORT (HOST: the --host address): Prometheus
                              metrics at /metrics, and with --admin-token-file the status
                              page at /status
  --metrics-token-file PATH   require 'authorization: Bearer TOKEN' on /metrics, a TOKEN of
                              the file, one per line (env VALISE_METRICS_TOKEN_FILE)
  --admin-token-file PATH     turn on the admin API (valise.v1.AdminService) and the status
                              page for the TOKENs of this file, one per line, none of them a
                              tenant's token (env VALISE_ADMIN_TOKEN_FILE); off without it

Other:
  --quiet                     no per-RPC log lines
  -h, --help                  this help
`;

/** A command-line problem, reported with the usage text. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** What `deno task serve` was asked to do. */
export interface ServeCommand {
  /** Print the usage and exit. */
  help: boolean;
  /** Per-RPC log lines off. */
  quiet: boolean;
  /** Port of the metrics endpoint, if any. */
  metricsPort: number | undefined;
  /** Tokens the metrics endpoint requires, if any. */
  metricsTokens: AccessToken[] | undefined;
  /** Everything else, ready for {@linkcode serve}. */
  options: ServeOptions;
}

/**
 * Parses a size such as `512M`, `10G`, `1.5GiB` or `1048576`.
 *
 * @param text The size.
 * @param flag The flag it came from, for the error message.
 * @returns Bytes.
 */
export function parseSize(text: string, flag: string): number {
  const m = text.trim().match(/^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i);
  if (!m) throw new UsageError(`${flag}: "${text}" is not a size (e.g. 512M, 10G)`);
  const unit = { "": 0, k: 1, m: 2, g: 3, t: 4 }[m[2]!.toLowerCase() as "" | "k" | "m" | "g" | "t"];
  return Math.round(Number(m[1]) * 1024 ** unit);
}

function int(text: string, flag: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(`${flag}: "${text}" is not a whole number from ${min} to ${max}`);
  }
  return n;
}

function tokensOf(path: string, flag: string): AccessToken[] {
  try {
    return readTokenFile(path);
  } catch (e) {
    throw new UsageError(`${flag}: ${e instanceof Error ? e.message : e}`);
  }
}

/**
 * Reads flags and environment variables into server options; token files are read here.
 *
 * @param args The command line (without the program).
 * @param env Environment lookup.
 * @param cwd The directory relative paths are taken from.
 * @returns The parsed command.
 * @throws {UsageError} For unknown flags or bad values.
 */
export function parseServeCommand(
  args: string[],
  env: (name: string) => string | undefined,
  cwd: string,
): ServeCommand {
  let v;
  try {
    v = parseArgs({
      args,
      options: {
        host: { type: "string" },
        port: { type: "string" },
        "data-dir": { type: "string" },
        token: { type: "string" },
        "token-file": { type: "string" },
        "stream-idle-timeout-s": { type: "string" },
        "metrics-token-file": { type: "string" },
        "admin-token-file": { type: "string" },
        "idle-timeout-min": { type: "string" },
        "cache-bytes": { type: "string" },
        "max-session-bytes": { type: "string" },
        "max-session-artifacts": { type: "string" },
        "max-user-bytes": { type: "string" },
        "min-free-bytes": { type: "string" },
        "max-session-files": { type: "string" },
        "max-sessions-per-user": { type: "string" },
        "max-sessions": { type: "string" },
        "worker-processes": { type: "string" },
        "sandbox-memory": { type: "string" },
        "max-fork-servers": { type: "string" },
        "worker-ids": { type: "string" },
        python: { type: "string" },
        "allow-interpreter": { type: "string", multiple: true },
        sandbox: { type: "string" },
        "worker-network": { type: "boolean" },
        "worker-timeout-ms": { type: "string" },
        "interactive-timeout-ms": { type: "string" },
        "max-workers-per-session": { type: "string" },
        "max-workers": { type: "string" },
        "worker-memory": { type: "string" },
        "worker-output-bytes": { type: "string" },
        "worker-stream-bytes": { type: "string" },
        "apply-max-parallelism": { type: "string" },
        "metrics-port": { type: "string" },
        "pip-installer": { type: "string" },
        "pip-index-url": { type: "string" },
        "pip-extra-index-url": { type: "string", multiple: true },
        "pip-allow-index": { type: "string", multiple: true },
        "pip-allow-host": { type: "string", multiple: true },
        "pip-offline": { type: "boolean" },
        "pip-timeout": { type: "string" },
        "pip-allow-sdist": { type: "boolean" },
        cluster: { type: "string" },
        "node-id": { type: "string" },
        "cluster-replicas": { type: "string" },
        "cluster-creds-file": { type: "string" },
        "cluster-heartbeat": { type: "string" },
        "cluster-gc-grace": { type: "string" },
        "apply-offer-wait-ms": { type: "string" },
        quiet: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : String(e));
  }
  const e = (k: string) => env(k) || undefined;
  const host = v.host ?? e("VALISE_HOST") ?? "127.0.0.1";
  const port = int(v.port ?? e("VALISE_PORT") ?? "15002", "--port", 0, 65535);
  const dataDir = resolve(cwd, v["data-dir"] ?? e("VALISE_DATA_DIR") ?? ".data");
  const idle = Number(v["idle-timeout-min"] ?? "60");
  if (!Number.isFinite(idle) || idle < 0) {
    throw new UsageError(
      `--idle-timeout-min: "${v["idle-timeout-min"]}" is not a number of minutes`,
    );
  }
  const quotas: NonNullable<ServeOptions["quotas"]> = {
    ...(v["max-session-bytes"]
      ? { maxSessionBytes: parseSize(v["max-session-bytes"], "--max-session-bytes") }
      : {}),
    ...(v["max-session-artifacts"]
      ? { maxSessionArtifacts: int(v["max-session-artifacts"], "--max-session-artifacts", 1) }
      : {}),
    ...(v["max-user-bytes"]
      ? { maxUserBytes: parseSize(v["max-user-bytes"], "--max-user-bytes") }
      : {}),
    ...(v["min-free-bytes"]
      ? { minFreeBytes: parseSize(v["min-free-bytes"], "--min-free-bytes") }
      : {}),
    ...(v["max-session-files"]
      ? { maxSessionEntries: int(v["max-session-files"], "--max-session-files", 1) }
      : {}),
    ...(v["max-sessions-per-user"]
      ? { maxSessionsPerUser: int(v["max-sessions-per-user"], "--max-sessions-per-user", 1) }
      : {}),
    ...(v["max-sessions"] ? { maxSessions: int(v["max-sessions"], "--max-sessions", 1) } : {}),
  };
  let workerIds: ServeOptions["workerIds"];
  if (v["worker-ids"] !== undefined) {
    if (v["worker-ids"] === "none") {
      workerIds = "none";
    } else {
      const m = /^(\d+):(\d+)$/.exec(v["worker-ids"]);
      if (!m) {
        throw new UsageError(`--worker-ids: "${v["worker-ids"]}" is not FIRST:COUNT or none`);
      }
      workerIds = {
        first: int(m[1]!, "--worker-ids FIRST", 1000, 2 ** 32 - 3),
        count: int(m[2]!, "--worker-ids COUNT", 1, 2 ** 31),
      };
    }
  }
  const sandbox = v.sandbox ?? "auto";
  if (!["auto", "bwrap", "none"].includes(sandbox)) {
    throw new UsageError(`--sandbox: "${sandbox}" is not one of auto, bwrap, none`);
  }
  for (const p of v["allow-interpreter"] ?? []) {
    if (!p.startsWith("/")) {
      throw new UsageError(`--allow-interpreter: "${p}" is not an absolute path`);
    }
  }
  const workerLimits = {
    ...(v["worker-timeout-ms"]
      ? { wallTimeMs: int(v["worker-timeout-ms"], "--worker-timeout-ms", 1) }
      : {}),
    ...(v["interactive-timeout-ms"]
      ? {
        interactiveTimeMs: int(v["interactive-timeout-ms"], "--interactive-timeout-ms", 1),
      }
      : {}),
    ...(v["max-workers-per-session"]
      ? { maxWorkersPerSession: int(v["max-workers-per-session"], "--max-workers-per-session", 1) }
      : {}),
    ...(v["max-workers"] ? { maxWorkersTotal: int(v["max-workers"], "--max-workers", 1) } : {}),
    ...(v["worker-memory"]
      ? { memoryBytes: parseSize(v["worker-memory"], "--worker-memory") }
      : {}),
    ...(v["worker-output-bytes"]
      ? { outputBytes: parseSize(v["worker-output-bytes"], "--worker-output-bytes") }
      : {}),
    ...(v["worker-processes"]
      ? { processes: int(v["worker-processes"], "--worker-processes", 0) }
      : {}),
    ...(v["sandbox-memory"]
      ? { sandboxMemoryBytes: parseSize(v["sandbox-memory"], "--sandbox-memory") }
      : {}),
    ...(v["worker-stream-bytes"]
      ? { streamBytes: parseSize(v["worker-stream-bytes"], "--worker-stream-bytes") }
      : {}),
  };
  const token = v.token ?? e("VALISE_TOKEN");
  const tokenFile = v["token-file"] ?? e("VALISE_TOKEN_FILE");
  const tokens = tokenFile ? tokensOf(resolve(cwd, tokenFile), "--token-file") : undefined;
  const metricsTokenFile = v["metrics-token-file"] ?? e("VALISE_METRICS_TOKEN_FILE");
  const metricsTokens = metricsTokenFile
    ? tokensOf(resolve(cwd, metricsTokenFile), "--metrics-token-file")
    : undefined;
  const bound = metricsTokens?.find((t) => t.userId !== undefined);
  if (bound) {
    throw new UsageError(
      `--metrics-token-file: a token is bound to user ${JSON.stringify(bound.userId)}; ` +
        `metrics tokens are not bound to users`,
    );
  }
  const cluster = clusterOf(v, e, cwd);
  const pip = pipOf(v, cwd);
  const adminTokenFile = v["admin-token-file"] ?? e("VALISE_ADMIN_TOKEN_FILE");
  const adminTokens = adminTokenFile
    ? tokensOf(resolve(cwd, adminTokenFile), "--admin-token-file")
    : undefined;
  const boundAdmin = adminTokens?.find((t) => t.userId !== undefined);
  if (boundAdmin) {
    throw new UsageError(
      `--admin-token-file: a token is bound to user ${JSON.stringify(boundAdmin.userId)}; ` +
        `admin tokens are not bound to users`,
    );
  }
  const tenantTokens = new Set([...(token ? [token] : []), ...(tokens ?? []).map((t) => t.token)]);
  if (adminTokens?.some((t) => tenantTokens.has(t.token))) {
    throw new UsageError(
      "--admin-token-file: a token of the file is also a tenant's token (--token-file or " +
        "--token); give operators tokens of their own",
    );
  }
  return {
    help: v.help ?? false,
    quiet: v.quiet ?? false,
    metricsPort: v["metrics-port"] !== undefined
      ? int(v["metrics-port"], "--metrics-port", 0, 65535)
      : undefined,
    metricsTokens,
    options: {
      host,
      port,
      dataDir,
      ...(token ? { token } : {}),
      ...(tokens ? { tokens } : {}),
      ...(adminTokens ? { adminTokens } : {}),
      ...(v["stream-idle-timeout-s"] !== undefined
        ? {
          streamIdleTimeoutMs:
            int(v["stream-idle-timeout-s"], "--stream-idle-timeout-s", 0, 86_400) *
            1000,
        }
        : {}),
      idleTimeoutMs: idle * 60_000,
      ...(v["cache-bytes"] ? { cacheBytes: parseSize(v["cache-bytes"], "--cache-bytes") } : {}),
      quotas,
      ...(workerIds !== undefined ? { workerIds } : {}),
      ...(cluster ? { cluster } : {}),
      ...(v["apply-max-parallelism"] !== undefined
        ? {
          applyMaxParallelism: int(v["apply-max-parallelism"], "--apply-max-parallelism", 1, 64),
        }
        : {}),
      ...(v["apply-offer-wait-ms"] !== undefined
        ? { applyOfferWaitMs: int(v["apply-offer-wait-ms"], "--apply-offer-wait-ms", 0, 60_000) }
        : {}),
      pip,
      workers: {
        sandbox: sandbox as "auto" | "bwrap" | "none",
        workerNetwork: v["worker-network"] ?? false,
        ...(v.python ? { defaultPython: v.python } : {}),
        allowedInterpreters: v["allow-interpreter"] ?? [],
        ...(v["max-fork-servers"]
          ? { maxForkServers: int(v["max-fork-servers"], "--max-fork-servers", 1) }
          : {}),
        limits: workerLimits,
      },
    },
  };
}

/**
 * Parses a duration such as `90s`, `30m`, `24h` or `7d` (also `500ms`).
 *
 * @param text The duration.
 * @param flag The flag it came from, for the error message.
 * @returns Milliseconds.
 */
export function parseDuration(text: string, flag: string): number {
  const m = text.trim().match(/^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/i);
  if (!m) {
    throw new UsageError(`${flag}: "${text}" is not a duration (e.g. 90s, 30m, 24h, 7d)`);
  }
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[
    m[2]!.toLowerCase() as "ms" | "s" | "m" | "h" | "d"
  ];
  return Math.round(Number(m[1]) * unit);
}

function pipOf(
  v: {
    "pip-installer"?: string | undefined;
    "pip-index-url"?: string | undefined;
    "pip-extra-index-url"?: string[] | undefined;
    "pip-allow-index"?: string[] | undefined;
    "pip-allow-host"?: string[] | undefined;
    "pip-offline"?: boolean | undefined;
    "pip-timeout"?: string | undefined;
    "pip-allow-sdist"?: boolean | undefined;
  },
  cwd: string,
): PipOptions {
  const url = (u: string, flag: string) => {
    try {
      return normalizeIndexUrl(u);
    } catch (e) {
      throw new UsageError(`${flag}: ${e instanceof Error ? e.message : e}`);
    }
  };
  for (const h of v["pip-allow-host"] ?? []) {
    if (!/^([A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:.]+\])(:\d{1,5})?$/.test(h)) {
      throw new UsageError(`--pip-allow-host: "${h}" is not HOST or HOST:PORT`);
    }
  }
  if (v["pip-offline"] && (v["pip-index-url"] || v["pip-extra-index-url"]?.length)) {
    throw new UsageError(
      "--pip-offline installs from uploaded wheels only: it takes no --pip-index-url or " +
        "--pip-extra-index-url",
    );
  }
  return {
    ...(v["pip-installer"] ? { installer: resolve(cwd, v["pip-installer"]) } : {}),
    ...(v["pip-index-url"] ? { indexUrl: url(v["pip-index-url"], "--pip-index-url") } : {}),
    extraIndexUrls: (v["pip-extra-index-url"] ?? []).map((u) => url(u, "--pip-extra-index-url")),
    allowedIndexUrls: (v["pip-allow-index"] ?? []).map((u) => url(u, "--pip-allow-index")),
    allowHosts: v["pip-allow-host"] ?? [],
    offline: v["pip-offline"] ?? false,
    ...(v["pip-timeout"]
      ? { timeoutMs: int(v["pip-timeout"], "--pip-timeout", 1, 86_400) * 1000 }
      : {}),
    allowSdist: v["pip-allow-sdist"] ?? false,
  };
}

function clusterOf(
  v: {
    cluster?: string | undefined;
    "node-id"?: string | undefined;
    "cluster-replicas"?: string | undefined;
    "cluster-creds-file"?: string | undefined;
    "cluster-heartbeat"?: string | undefined;
    "cluster-gc-grace"?: string | undefined;
    "apply-offer-wait-ms"?: string | undefined;
  },
  e: (k: string) => string | undefined,
  cwd: string,
): NonNullable<ServeOptions["cluster"]> | undefined {
  const urls = v.cluster ?? e("VALISE_CLUSTER");
  const creds = v["cluster-creds-file"] ?? e("VALISE_CLUSTER_CREDS_FILE");
  if (urls === undefined) {
    for (
      const f of [
        "node-id",
        "cluster-replicas",
        "cluster-creds-file",
        "cluster-heartbeat",
        "cluster-gc-grace",
        "apply-offer-wait-ms",
      ] as const
    ) {
      if (v[f] !== undefined) throw new UsageError(`--${f} needs --cluster`);
    }
    return undefined;
  }
  const servers = urls.split(",").map((u) => u.trim()).filter((u) => u);
  for (const u of servers) {
    if (!/^(nats|tls):\/\/[^\s/@]+:\d{1,5}$/.test(u)) {
      throw new UsageError(
        `--cluster: "${u}" is not a NATS URL such as nats://127.0.0.1:4222 (credentials go in ` +
          "--cluster-creds-file, never in the URL)",
      );
    }
  }
  if (!servers.length) throw new UsageError("--cluster: no NATS URL given");
  const nodeId = v["node-id"] ?? e("VALISE_NODE_ID") ?? Deno.hostname();
  const problem = nodeIdProblem(nodeId);
  if (problem) {
    throw new UsageError(
      `--node-id: ${problem}${v["node-id"] === undefined ? " (it is the host name)" : ""}`,
    );
  }
  const replicas = int(v["cluster-replicas"] ?? "1", "--cluster-replicas", 1, 5);
  if (replicas % 2 === 0) {
    throw new UsageError(
      `--cluster-replicas: ${replicas} is even; use 1, 3 or 5 (a Raft majority)`,
    );
  }
  let heartbeatMs: number | undefined;
  if (v["cluster-heartbeat"] !== undefined) {
    const s = Number(v["cluster-heartbeat"]);
    if (!/^\d+(\.\d+)?$/.test(v["cluster-heartbeat"]) || !(s >= 0.1 && s <= 600)) {
      throw new UsageError(
        `--cluster-heartbeat: "${v["cluster-heartbeat"]}" is not a number of seconds from ` +
          "0.1 to 600",
      );
    }
    heartbeatMs = Math.round(s * 1000);
  }
  let gcGraceMs: number | undefined;
  if (v["cluster-gc-grace"] !== undefined) {
    gcGraceMs = parseDuration(v["cluster-gc-grace"], "--cluster-gc-grace");
    // Shorter than a second the grace no longer covers an upload's own round trips to NATS.
    if (gcGraceMs < 1000 || gcGraceMs > 365 * 86_400_000) {
      throw new UsageError(
        `--cluster-gc-grace: "${v["cluster-gc-grace"]}" is not from 1s to 365d`,
      );
    }
  }
  return {
    servers,
    nodeId,
    replicas,
    ...(creds ? { credentialsFile: resolve(cwd, creds) } : {}),
    ...(heartbeatMs !== undefined ? { heartbeatMs } : {}),
    ...(gcGraceMs !== undefined ? { gcGraceMs } : {}),
  };
}
