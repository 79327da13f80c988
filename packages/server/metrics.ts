// Copyright 2026 the Valise authors. Apache-2.0 license.
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { ErrorInfoSchema } from "@valise/protocol";
import type { Launcher } from "@valise/launcher";
import type { SessionStore } from "@valise/session-store";
import { observingInterceptor } from "./_interceptors.ts";
import { type AccessToken, TokenSet } from "./_tokens.ts";
import type { StatusPage } from "./status_page.ts";
import type { ClusterView } from "./cluster/membership.ts";

const LATENCY_BUCKETS = [
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
];

class Histogram {
  readonly counts: number[] = LATENCY_BUCKETS.map(() => 0);
  sum = 0;
  count = 0;
  observe(seconds: number): void {
    this.sum += seconds;
    this.count++;
    LATENCY_BUCKETS.forEach((b, i) => {
      if (seconds <= b) this.counts[i]!++;
    });
  }
  render(name: string, labels: string): string[] {
    const l = labels ? `${labels},` : "";
    return [
      ...LATENCY_BUCKETS.map((b, i) => `${name}_bucket{${l}le="${b}"} ${this.counts[i]}`),
      `${name}_bucket{${l}le="+Inf"} ${this.count}`,
      `${name}_sum${labels ? `{${labels}}` : ""} ${this.sum}`,
      `${name}_count${labels ? `{${labels}}` : ""} ${this.count}`,
    ];
  }
}

/**
 * Counters of a Valise instance, rendered in Prometheus' text format: sessions, artifacts,
 * bytes stored and saved by deduplication, unpacks and their time, RPCs and runs with their
 * latency, the sandbox, quota refusals.
 */
export class Metrics {
  #rpcs = new Map<string, number>();
  #rpcLatency = new Map<string, Histogram>();
  #quota = new Map<string, number>();
  #runs = new Map<string, number>();
  #runLatency = new Histogram();
  #applies = new Map<string, number>();
  #applyLatency = new Histogram();
  #applyRows = { in: 0, out: 0 };
  #applyUnits = { local: 0, remote: 0 };
  #applyLanesLost = 0;
  #applyServed = new Map<string, number>();
  #applyServedUnits = 0;
  /** The pip layers' counters, when the instance installs packages for sessions. */
  pip: (() => Readonly<Record<string, number>>) | undefined;
  /** The cluster registry's counters, when the instance is a cluster's node. */
  cluster: (() => Readonly<Record<string, number>>) | undefined;
  /** The nodes this node sees, when the instance is a cluster's node. */
  membership: (() => ClusterView) | undefined;

  /** Counts a finished RPC. */
  rpc(method: string, code: Code | 0, seconds: number): void {
    const key = `method="${method}",code="${code === 0 ? "OK" : Code[code]}"`;
    this.#rpcs.set(key, (this.#rpcs.get(key) ?? 0) + 1);
    let h = this.#rpcLatency.get(method);
    if (!h) this.#rpcLatency.set(method, h = new Histogram());
    h.observe(seconds);
  }

  /** Counts a refusal for a quota, by its reason. */
  quotaRefusal(reason: string): void {
    this.#quota.set(reason, (this.#quota.get(reason) ?? 0) + 1);
  }

  /** Counts a finished run and its latency from request to exit. */
  run(outcome: "ok" | "error" | "timeout" | "cancelled", seconds: number): void {
    this.#runs.set(outcome, (this.#runs.get(outcome) ?? 0) + 1);
    this.#runLatency.observe(seconds);
  }

  /** Counts a finished Apply call, its latency and the rows it moved. */
  apply(
    outcome: "ok" | "error" | "cancelled",
    seconds: number,
    rowsIn: number,
    rowsOut: number,
  ): void {
    this.#applies.set(outcome, (this.#applies.get(outcome) ?? 0) + 1);
    this.#applyLatency.observe(seconds);
    this.#applyRows.in += rowsIn;
    this.#applyRows.out += rowsOut;
  }

  /** Counts a unit (one input batch) of a parallel Apply dealt to a worker here or elsewhere. */
  applyUnit(where: "local" | "remote"): void {
    this.#applyUnits[where]++;
  }

  /** Counts a parallel Apply's worker on another node lost (its units run here instead). */
  applyLaneLost(): void {
    this.#applyLanesLost++;
  }

  /** Counts a request of another node to run a parallel Apply's worker here, by outcome. */
  applyServed(outcome: "opened" | "refused"): void {
    this.#applyServed.set(outcome, (this.#applyServed.get(outcome) ?? 0) + 1);
  }

  /** Counts a unit run here for another node's parallel Apply. */
  applyServedUnit(): void {
    this.#applyServedUnits++;
  }

  /** An interceptor that counts every RPC and every quota refusal. */
  interceptor(): Interceptor {
    return observingInterceptor({
      end: (method, error, startedAt) => {
        const seconds = (performance.now() - startedAt) / 1000;
        if (error === undefined) return this.rpc(method, 0, seconds);
        const err = ConnectError.from(error);
        this.rpc(method, err.code, seconds);
        if (err.code === Code.ResourceExhausted) {
          const info = err.findDetails(ErrorInfoSchema)[0];
          this.quotaRefusal(info?.metadata["valise.reason"] ?? "UNKNOWN");
        }
      },
    });
  }

  /** Renders every metric in Prometheus' text exposition format. */
  async render(store: SessionStore, launcher: Launcher): Promise<string> {
    const sessions = store.sessions();
    const artifacts = sessions.flatMap((s) => s.artifacts());
    const logical = artifacts.reduce((n, a) => n + a.size, 0);
    let physical = 0;
    for (const d of await store.blobs.list()) {
      physical += (await Deno.stat(store.blobs.path(d)).catch(() => ({ size: 0 }))).size;
    }
    const ls = launcher.stats();
    const out: string[] = [];
    const gauge = (name: string, help: string, value: number) =>
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`, `${name} ${value}`);
    gauge("valise_sessions", "Live sessions.", sessions.length);
    gauge("valise_artifacts", "Artifacts held by live sessions.", artifacts.length);
    gauge("valise_artifact_bytes", "Bytes of artifacts as sessions see them.", logical);
    gauge("valise_blob_bytes", "Bytes of distinct artifact contents stored.", physical);
    gauge(
      "valise_dedup_saved_bytes",
      "Bytes not stored thanks to content addressing.",
      Math.max(0, logical - physical),
    );
    gauge("valise_trees", "Unpacked archive trees on disk.", (await store.trees.list()).length);
    out.push(
      "# HELP valise_unpacks_total Archives unpacked (not found ready-made).",
      "# TYPE valise_unpacks_total counter",
      `valise_unpacks_total ${store.trees.builds}`,
      "# HELP valise_unpack_seconds_total Time spent unpacking archives.",
      "# TYPE valise_unpack_seconds_total counter",
      `valise_unpack_seconds_total ${store.trees.buildSeconds}`,
    );
    const layers = (await store.layers.list()).length;
    gauge("valise_pip_layers", "Pip layers on disk (installed requirement sets).", layers);
    const p = this.pip?.();
    if (p) {
      const counter = (name: string, help: string, value: number | undefined) =>
        out.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`, `${name} ${value ?? 0}`);
      counter(
        "valise_pip_layer_builds_total",
        "Pip layers built (installer runs), failed ones included.",
        p.builds,
      );
      counter("valise_pip_layer_build_failures_total", "Pip layer builds that failed.", p.failures);
      counter(
        "valise_pip_layer_reuses_total",
        "Installs and runs that found their pip layer built already.",
        p.reuses,
      );
      counter(
        "valise_pip_layer_build_seconds_total",
        "Time spent building pip layers.",
        p.buildSeconds,
      );
      counter(
        "valise_pip_proxy_refusals_total",
        "Connections builds asked for that the package-index proxy refused.",
        p.proxyRefusals,
      );
    }
    gauge(
      "valise_sandbox_enabled",
      "1 when workers run in a bubblewrap sandbox.",
      launcher.sandboxed ? 1 : 0,
    );
    gauge("valise_workers_running", "Runs executing.", ls.running);
    gauge("valise_workers_queued", "Runs waiting for a slot.", ls.queued);
    gauge("valise_fork_servers", "Warm fork servers.", ls.forkServers);
    out.push(
      "# HELP valise_rpcs_total RPCs by method and status.",
      "# TYPE valise_rpcs_total counter",
    );
    for (const [k, v] of this.#rpcs) out.push(`valise_rpcs_total{${k}} ${v}`);
    out.push("# HELP valise_rpc_seconds RPC latency.", "# TYPE valise_rpc_seconds histogram");
    for (const [m, h] of this.#rpcLatency) {
      out.push(...h.render("valise_rpc_seconds", `method="${m}"`));
    }
    out.push(
      "# HELP valise_runs_total Worker runs by outcome.",
      "# TYPE valise_runs_total counter",
    );
    for (const [k, v] of this.#runs) out.push(`valise_runs_total{outcome="${k}"} ${v}`);
    out.push(
      "# HELP valise_run_seconds Run latency, request to exit.",
      "# TYPE valise_run_seconds histogram",
    );
    out.push(...this.#runLatency.render("valise_run_seconds", ""));
    out.push(
      "# HELP valise_applies_total Apply calls by outcome.",
      "# TYPE valise_applies_total counter",
    );
    for (const [k, v] of this.#applies) out.push(`valise_applies_total{outcome="${k}"} ${v}`);
    out.push(
      "# HELP valise_apply_seconds Apply call latency.",
      "# TYPE valise_apply_seconds histogram",
    );
    out.push(...this.#applyLatency.render("valise_apply_seconds", ""));
    out.push(
      "# HELP valise_apply_rows_total Rows through Apply, by direction.",
      "# TYPE valise_apply_rows_total counter",
      `valise_apply_rows_total{direction="in"} ${this.#applyRows.in}`,
      `valise_apply_rows_total{direction="out"} ${this.#applyRows.out}`,
    );
    out.push(
      "# HELP valise_apply_units_total Input batches of parallel Apply calls, by where they ran.",
      "# TYPE valise_apply_units_total counter",
      `valise_apply_units_total{where="local"} ${this.#applyUnits.local}`,
      `valise_apply_units_total{where="remote"} ${this.#applyUnits.remote}`,
      "# HELP valise_apply_lanes_lost_total Workers of parallel Apply calls on other nodes lost.",
      "# TYPE valise_apply_lanes_lost_total counter",
      `valise_apply_lanes_lost_total ${this.#applyLanesLost}`,
      "# HELP valise_apply_served_lanes_total Other nodes' requests for a parallel Apply worker.",
      "# TYPE valise_apply_served_lanes_total counter",
      `valise_apply_served_lanes_total{outcome="opened"} ${this.#applyServed.get("opened") ?? 0}`,
      `valise_apply_served_lanes_total{outcome="refused"} ${this.#applyServed.get("refused") ?? 0}`,
      "# HELP valise_apply_served_units_total Input batches run here for other nodes.",
      "# TYPE valise_apply_served_units_total counter",
      `valise_apply_served_units_total ${this.#applyServedUnits}`,
    );
    out.push(
      "# HELP valise_quota_refusals_total Requests refused for a quota, by reason.",
      "# TYPE valise_quota_refusals_total counter",
    );
    for (const [k, v] of this.#quota) out.push(`valise_quota_refusals_total{reason="${k}"} ${v}`);
    const c = this.cluster?.();
    if (c) {
      const counter = (name: string, help: string, value: number | undefined) =>
        out.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`, `${name} ${value ?? 0}`);
      counter("valise_cluster_blob_fetches_total", "Blobs fetched from the cluster.", c.fetches);
      counter(
        "valise_cluster_blob_fetch_bytes_total",
        "Bytes fetched from the cluster.",
        c.fetchedBytes,
      );
      counter(
        "valise_cluster_blob_refused_total",
        "Blobs the cluster returned with other bytes: refused.",
        c.refusedBlobs,
      );
      counter("valise_cluster_blob_puts_total", "Blobs copied to the cluster.", c.puts);
      counter("valise_cluster_blob_put_bytes_total", "Bytes copied to the cluster.", c.putBytes);
      counter(
        "valise_cluster_record_conflicts_total",
        "Session record writes that met another node's and were made again.",
        c.conflicts,
      );
      counter(
        "valise_cluster_record_repairs_total",
        "Session record writes found to have overwritten another's, repaired.",
        c.repairs,
      );
      counter(
        "valise_cluster_gc_runs_total",
        "Blob GC passes this node ran holding the cluster's GC lease.",
        c.gcRuns,
      );
      counter(
        "valise_cluster_gc_deleted_total",
        "Objects no session refers to that this node deleted from the object store.",
        c.gcDeleted,
      );
      counter(
        "valise_cluster_gc_deleted_bytes_total",
        "Bytes of the objects this node's blob GC deleted.",
        c.gcDeletedBytes,
      );
      counter(
        "valise_cluster_gc_skipped_in_flight_total",
        "Unreferenced objects the blob GC left because an upload of them was in flight.",
        c.gcSkippedInFlight,
      );
    }
    const m = this.membership?.();
    if (m) out.push(...renderMembership(m));
    return out.join("\n") + "\n";
  }
}

/** Escapes a label value (node ids, versions and addresses are checked already: defence in depth). */
function label(v: string): string {
  return v.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));
}

/** The cluster's nodes as this node sees them: one series per node and metric. */
function renderMembership(m: ClusterView): string[] {
  const out = [
    "# HELP valise_cluster_nodes Live nodes this node sees (itself included).",
    "# TYPE valise_cluster_nodes gauge",
    `valise_cluster_nodes ${m.nodes.filter((n) => n.live).length}`,
    "# HELP valise_cluster_node_records_refused_total Node records read from the cluster that " +
    "failed their checks: ignored.",
    "# TYPE valise_cluster_node_records_refused_total counter",
    `valise_cluster_node_records_refused_total ${m.stats.refusedRecords}`,
    "# HELP valise_cluster_node_id_conflicts_total Records under this node's id written by " +
    "another process.",
    "# TYPE valise_cluster_node_id_conflicts_total counter",
    `valise_cluster_node_id_conflicts_total ${m.stats.idConflicts}`,
    "# HELP valise_cluster_heartbeat_failures_total Heartbeats this node could not write.",
    "# TYPE valise_cluster_heartbeat_failures_total counter",
    `valise_cluster_heartbeat_failures_total ${m.stats.heartbeatFailures}`,
  ];
  const series = (
    name: string,
    help: string,
    value: (n: ClusterView["nodes"][number]) => number | string,
  ) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`);
    for (const n of m.nodes) out.push(`${name}{node="${label(n.nodeId)}"} ${value(n)}`);
  };
  out.push(
    "# HELP valise_cluster_node_info A node this node sees: its version, address and whether it " +
      "is this node.",
    "# TYPE valise_cluster_node_info gauge",
  );
  for (const n of m.nodes) {
    out.push(
      `valise_cluster_node_info{node="${label(n.nodeId)}",version="${label(n.record.version)}",` +
        `address="${label(n.record.address ?? "")}",self="${n.self ? 1 : 0}"} 1`,
    );
  }
  series(
    "valise_cluster_node_up",
    "1 while a node's last heartbeat is within its TTL.",
    (n) => n.live ? 1 : 0,
  );
  series(
    "valise_cluster_node_heartbeat_age_seconds",
    "Time since a node's last heartbeat was seen.",
    (n) => n.heartbeatAgeMs / 1000,
  );
  series(
    "valise_cluster_node_sessions",
    "Sessions a node holds, by its last heartbeat.",
    (n) => n.record.sessions,
  );
  series(
    "valise_cluster_node_cache_bytes",
    "Bytes of a node's blob and tree caches, by its last heartbeat.",
    (n) => n.record.blobBytes + n.record.treeBytes,
  );
  series(
    "valise_cluster_node_in_flight",
    "Runs executing or queued on a node, by its last heartbeat.",
    (n) => n.record.inFlight,
  );
  return out;
}

/** A running metrics endpoint. */
export interface MetricsServer {
  /** The address it listens on. */
  readonly hostname: string;
  /** The port it listens on. */
  readonly port: number;
  /** Stops it. */
  close(): Promise<void>;
}

/** Options of {@linkcode serveMetrics}. */
export interface MetricsServerOptions {
  /** Port to listen on; `0` picks a free one. */
  port: number;
  /** Address to listen on. */
  hostname: string;
  /**
   * When set, `/metrics` requires `authorization: Bearer <token>` with one of these.
   * @default {undefined} open
   */
  tokens?: readonly AccessToken[] | undefined;
  /**
   * The status page, served at `/status` (it checks admin tokens itself).
   * @default {undefined} `/status` answers 404, saying how to turn it on
   */
  status?: StatusPage | undefined;
}

/**
 * Serves `GET /metrics` (Prometheus text format), and the status page when given, on its own
 * port (HTTP/1.1, which browsers speak), apart from the RPC port.
 *
 * @param valise What to report on.
 * @param options Where to listen, and the tokens it requires.
 * @returns The running endpoint.
 */
export function serveMetrics(
  valise: { readonly metrics: Metrics; readonly store: SessionStore; readonly launcher: Launcher },
  options: MetricsServerOptions,
): MetricsServer {
  const tokens = options.tokens?.length ? new TokenSet(options.tokens) : undefined;
  const server = Deno.serve(
    { port: options.port, hostname: options.hostname, onListen() {} },
    async (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/status" || path.startsWith("/status/")) {
        return (await options.status?.handle(req)) ??
          new Response(
            "The status page is off: start the server with --admin-token-file FILE.\n",
            { status: 404 },
          );
      }
      if (path !== "/metrics") {
        return new Response("Not Found", { status: 404 });
      }
      const refused = tokens?.check(req.headers.get("authorization"));
      if (refused && !refused.ok) {
        return new Response(
          refused.problem === "WRONG"
            ? "The bearer token is wrong.\n"
            : "/metrics requires 'authorization: Bearer <token>'.\n",
          { status: 401, headers: { "www-authenticate": 'Bearer realm="valise-metrics"' } },
        );
      }
      return new Response(await valise.metrics.render(valise.store, valise.launcher), {
        headers: { "content-type": "text/plain; version=0.0.4" },
      });
    },
  );
  return {
    hostname: server.addr.hostname,
    port: server.addr.port,
    close: () => server.shutdown(),
  };
}
