// Copyright 2026 the Valise authors. Apache-2.0 license.
import type { RecordBatch } from "apache-arrow";
import type { ConfigRequest_Operation, ConfigResponse } from "@valise/protocol";
import type {
  ApplyFunction,
  ApplyInput,
  ApplyOptions,
  ApplyResult,
  ApplySummary,
} from "./apply.ts";
import type { ArtifactEntry, RemovedArtifacts } from "./artifacts.ts";
import { RuntimeConfig } from "./config.ts";
import type { ConnectOptions, RetryReport } from "./connect_options.ts";
import { type ConnectionString, parseConnectionString } from "./connection_string.ts";
import type { RunEvent, RunResult, RunSpec } from "./run.ts";
import { type AddArtifactsOptions, type AddedArtifact, ArtifactProgressEvent } from "./upload.ts";
import { applyBatches, collectApply } from "./_apply_call.ts";
import { listArtifacts, removeArtifacts } from "./_artifacts.ts";
import type { HealthStatus } from "./health.ts";
import { checkHealth } from "./_health.ts";
import { integrity, SessionCore } from "./_core.ts";
import { collectRun, runEvents } from "./_run.ts";
import { Uploader } from "./_upload.ts";
import { SessionPip } from "./pip.ts";

/**
 * One Spark Connect session on a Valise server (or on the nodes of a Valise cluster): artifacts,
 * config, runs. Create it with {@linkcode connect}. Every call sends the server-side session id
 * once known and checks that responses belong to this session. A call whose node is unreachable,
 * dies or answers `UNAVAILABLE` is retried, on the next endpoint when there are several, when
 * sending it again is safe (see `RetryOptions` and docs/client.md). Dispatches
 * {@linkcode ArtifactProgressEvent}s (`progress`) during uploads and {@linkcode RetryEvent}s
 * (`retry`) before retries.
 */
export class Session extends EventTarget {
  /** The session id (a UUID). */
  readonly sessionId: string;
  /** The user id sent in `user_context`, or `undefined`. */
  readonly userId: string | undefined;
  /** The parsed connection string. */
  readonly remote: ConnectionString;
  /** The session's runtime config (Spark's `spark.conf`). */
  readonly conf: RuntimeConfig;
  /** Every endpoint's URL, in the order they are tried. */
  readonly endpoints: readonly string[];
  /**
   * The session's packages: `pip.install(["requests==2.32.3"])`, `pip.list()`,
   * `pip.uninstall("requests")`, into a layer its workers see on `sys.path`.
   */
  readonly pip: SessionPip;
  #core: SessionCore;
  #uploads: Uploader;
  #options: ConnectOptions;

  /**
   * Use {@linkcode connect}.
   *
   * @param remote The parsed connection string.
   * @param options Connection options.
   */
  constructor(remote: ConnectionString, options: ConnectOptions = {}) {
    super();
    this.remote = remote;
    this.#options = options;
    this.#core = new SessionCore(remote, options, (r) => {
      options.onRetry?.(r);
      this.dispatchEvent(new RetryEvent(r));
    });
    this.#uploads = new Uploader(this.#core);
    this.sessionId = this.#core.sessionId;
    this.userId = this.#core.userId;
    this.endpoints = this.#core.pool.nodes.map((n) => n.baseUrl);
    this.conf = new RuntimeConfig((op) => this.#config(op));
    this.pip = new SessionPip(this.#core, (paths, options) => this.addArtifacts(paths, options));
  }

  /**
   * The URL the next call goes to (`https://…` when the connection string says
   * `use_ssl=true`): the first endpoint, unless it failed a moment ago.
   */
  get endpoint(): string {
    return this.#core.endpoint;
  }

  /** The server's id for this session, once a response has carried it. */
  get serverSideSessionId(): string | undefined {
    return this.#core.serverSideSessionId;
  }

  /** Whether {@linkcode Session.close} or {@linkcode Session.release} has run. */
  get closed(): boolean {
    return this.#core.closed;
  }

  /**
   * Adds local files as artifacts, with PySpark's names (see {@linkcode resolveArtifact}).
   * All paths are checked before anything is sent. Each file is hashed (streaming); the
   * server is asked which digests it holds, those are attached without sending bytes, and the
   * rest are uploaded, one AddArtifacts stream per file, streamed from disk in PySpark's
   * chunks. A failure of the node (unreachable, died mid-upload, `UNAVAILABLE`) is retried on
   * the next endpoint, if any: the artifact in progress is sent again from its start, read
   * again from disk and checked against its sha256 (a file changed meanwhile is never
   * committed: `TypeError`); artifacts already committed are not sent again.
   *
   * @param paths Local paths (`path#alias` for archives) or `file:` URLs.
   * @param options The kind flag, progress callback, base directory.
   * @returns One entry per path, in order.
   * @throws {TypeError} For bad paths or flags (before anything is sent).
   * @throws {ValiseClientError} For server errors, CRC failures (`CRC_MISMATCH`) and
   *   responses of another session (`INTEGRITY_ERROR`).
   */
  async addArtifacts(
    paths: string | readonly string[],
    options: AddArtifactsOptions = {},
  ): Promise<AddedArtifact[]> {
    this.#core.checkOpen();
    return await this.#uploads.add(typeof paths === "string" ? [paths] : paths, options, (p) => {
      options.onProgress?.(p);
      this.dispatchEvent(new ArtifactProgressEvent(p));
    });
  }

  /**
   * Asks which artifacts the session holds (Spark's ArtifactStatus).
   *
   * @param names Artifact names, e.g. `pyfiles/util.py` or `cache/<sha256>`.
   * @returns For each name, whether it exists.
   */
  async status(names: readonly string[]): Promise<Record<string, boolean>> {
    const core = this.#core;
    core.checkOpen();
    const res = await core.retry.call(
      "ArtifactStatus",
      (node) => node.spark.artifactStatus({ ...core.sparkRequest(), names: [...names] }),
    );
    core.verify(res);
    const out: Record<string, boolean> = {};
    for (const n of names) out[n] = res.statuses[n]?.exists ?? false;
    return out;
  }

  /**
   * Lists the session's artifacts by name: size, sha256, kind, alias, how the working directory
   * shows it, the tree an archive unpacked to. Listing a session the server does not have
   * returns `[]` and creates nothing.
   *
   * @example
   * ```ts ignore
   * for (const a of await session.list()) console.log(a.name, a.size, a.sha256);
   * ```
   *
   * @returns The artifacts.
   */
  async list(): Promise<ArtifactEntry[]> {
    this.#core.checkOpen();
    return await listArtifacts(this.#core);
  }

  /**
   * Removes artifacts from the session, all or none: a name the session does not hold fails
   * with `ARTIFACT_NOT_FOUND` and removes nothing. Listings, `status` and quotas see them gone
   * at once; runs in progress keep seeing them in their working directory until they end, runs
   * started later do not (see `inProgress`). Shared bytes stay while other sessions use them.
   *
   * @example
   * ```ts ignore
   * const { freedBytes } = await session.remove("archives/env.tar.gz#environment");
   * ```
   *
   * @param names Names as {@linkcode Session.list} gives them.
   * @returns What was removed and the bytes freed.
   * @throws {TypeError} When no name is given.
   * @throws {ValiseClientError} `ARTIFACT_NOT_FOUND`, `INVALID_ARTIFACT_NAME`.
   */
  async remove(names: string | readonly string[]): Promise<RemovedArtifacts> {
    this.#core.checkOpen();
    return await removeArtifacts(this.#core, typeof names === "string" ? [names] : names);
  }

  /**
   * Asks the server's standard health service whether it serves (no token needed). Creates no
   * session.
   *
   * @param service A service name, e.g. `valise.v1.WorkerService`; `""` for the server.
   * @returns `SERVING`, `NOT_SERVING` (shutting down), or another status of the protocol.
   */
  async health(service = ""): Promise<HealthStatus> {
    this.#core.checkOpen();
    return await checkHealth(this.#core, service);
  }

  /**
   * Runs Python in the session (its directory, interpreter and path), yielding events as
   * they happen. A call whose node fails (unreachable, died, `UNAVAILABLE`) is retried, on the
   * next endpoint if any, until any of its output (stdout, stderr, exit) was delivered: a
   * `started` alone does not stop it (the program died with its node; a second `started`
   * follows). Once output was delivered, or a streamed stdin read from, it is not, and the
   * error says so.
   *
   * @example
   * ```ts ignore
   * for await (const ev of session.run({ code: "print(1)" })) {
   *   if (ev.kind === "stdout") await Deno.stdout.write(ev.data);
   * }
   * ```
   *
   * @example Python's console on this terminal, stdin streamed as it is typed
   * ```ts ignore
   * const control = new RunControl();
   * Deno.addSignalListener("SIGINT", () => control.interrupt());
   * for await (const ev of session.run({ repl: true, stdin: Deno.stdin.readable, control })) {
   *   if (ev.kind === "stdout") await Deno.stdout.write(ev.data);
   *   if (ev.kind === "stderr") await Deno.stderr.write(ev.data);
   * }
   * ```
   *
   * @param spec `code`, `module`, `script` or `repl`, and options (stdin, control, …).
   * @returns The events, ending with `exited`.
   */
  async *run(spec: RunSpec): AsyncGenerator<RunEvent, void, undefined> {
    this.#core.checkOpen();
    yield* runEvents(this.#core, spec);
  }

  /**
   * Runs Python and collects its output.
   *
   * @example
   * ```ts ignore
   * const r = await session.runCollect({ code: "import sys; print(sys.argv[1])", args: ["hi"] });
   * // r.stdout === "hi\n", r.exitCode === 0
   * ```
   *
   * @param spec `code`, `module` or `script`, and options.
   * @returns Output, exit code, signal and whether it timed out.
   */
  runCollect(spec: RunSpec): Promise<RunResult> {
    return collectRun(this.run(spec));
  }

  /**
   * Runs a Python function over Arrow record batches in the session (its interpreter, path and
   * limits), once per input batch, yielding the output batches as the server produces them. The
   * input is streamed: an iterable is pulled one batch at a time as the call sends it. The
   * generator's return value is the {@linkcode ApplySummary}; {@linkcode Session.applyCollect}
   * gathers everything. Stopping the iteration early cancels the call (the server kills the
   * worker). A call whose node fails before any response is retried (on the next endpoint, if
   * any) when its input can be sent again (not an iterable).
   *
   * @example
   * ```ts ignore
   * import { tableFromArrays } from "apache-arrow";
   * const it = session.apply(
   *   { code: "def f(c):\n    return {'y': [x * 2 for x in c['x']]}\n", functionName: "f" },
   *   tableFromArrays({ x: Int32Array.of(1, 2, 3) }),
   * );
   * for await (const batch of it) console.log(batch.numRows);
   * ```
   *
   * @param fn `"pkg.mod:fn"` or `{ code, functionName }`.
   * @param input A `Table`, record batches, Arrow IPC bytes, or `{ cacheArtifact }`.
   * @param options Form, output schema, time limit, signal, stderr callback.
   * @returns The output batches; the return value is the summary.
   * @throws {TypeError} For a bad function name or input (before anything is sent).
   * @throws {ValiseClientError} For the server's errors (`APPLY_FUNCTION_FAILED` with the
   *   Python `traceback`, `APPLY_OUTPUT_TYPE_MISMATCH`, `APPLY_TIMEOUT`, …).
   */
  async *apply(
    fn: ApplyFunction,
    input: ApplyInput,
    options: ApplyOptions = {},
  ): AsyncGenerator<RecordBatch, ApplySummary, undefined> {
    this.#core.checkOpen();
    return yield* applyBatches(this.#core, fn, input, options);
  }

  /**
   * Runs {@linkcode Session.apply} and gathers the output into one table.
   *
   * @param fn `"pkg.mod:fn"` or `{ code, functionName }`.
   * @param input A `Table`, record batches, Arrow IPC bytes, or `{ cacheArtifact }`.
   * @param options Form, output schema, time limit, signal, stderr callback.
   * @returns The output table, the counts, the transport, the interpreter and what it printed.
   */
  applyCollect(
    fn: ApplyFunction,
    input: ApplyInput,
    options: ApplyOptions = {},
  ): Promise<ApplyResult> {
    return collectApply(this.apply(fn, input, options), options.outputSchema);
  }

  /**
   * Releases the session on the server (its files are deleted) and closes the connection.
   *
   * @returns When the server has released it.
   */
  async release(): Promise<void> {
    const core = this.#core;
    core.checkOpen();
    try {
      const res = await core.retry.call("ReleaseSession", (node) =>
        node.spark.releaseSession({
          sessionId: core.sessionId,
          userContext: core.userContext,
          clientType: core.clientType,
        }));
      if (res.sessionId !== core.sessionId) {
        throw integrity(`session id ${res.sessionId} != ${core.sessionId}`);
      }
    } finally {
      this.close();
    }
  }

  /**
   * Clones the session on the server (Spark 4.1's `CloneSession`, PySpark's
   * `spark.cloneSession()`): a new session holding this one's artifacts — shared by reference,
   * so an environment of any size costs no copy — and its config. The two are independent
   * afterwards; releasing one leaves the other.
   *
   * @param newSessionId The clone's session id (a UUID); a new one when omitted.
   * @returns A session connected to the clone, with this one's endpoints and options.
   * @throws {ValiseClientError} `INVALID_HANDLE.SESSION_NOT_FOUND` before the session's first
   *   call, `INVALID_CLONE_SESSION_REQUEST.*` for a target id that is taken or no UUID,
   *   `QUOTA_EXCEEDED`.
   */
  async clone(newSessionId?: string): Promise<Session> {
    const core = this.#core;
    core.checkOpen();
    // The id is chosen here, so that a repeat after a lost answer is recognised: it finds the
    // clone made (ALREADY_EXISTS) instead of making a second one.
    const target = newSessionId ?? crypto.randomUUID();
    const res = await core.retry.call(
      "CloneSession",
      (node) =>
        node.spark.cloneSession({
          ...core.sparkRequest(),
          newSessionId: target,
        }),
      { idempotent: false },
    );
    core.verify(res);
    if (res.newSessionId !== target) {
      throw integrity(`cloned session id ${res.newSessionId} != ${target}`);
    }
    return new Session({ ...this.remote, sessionId: target }, {
      ...this.#options,
      sessionId: target,
    });
  }

  /** Closes the connection; the session stays on the server. */
  close(): void {
    this.#core.close();
  }

  /** Closes the connection, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }

  async #config(operation: ConfigRequest_Operation): Promise<ConfigResponse> {
    const core = this.#core;
    core.checkOpen();
    const res = await core.retry.call(
      "Config",
      (node) => node.spark.config({ ...core.sparkRequest(), operation }),
    );
    core.verify(res);
    return res;
  }
}

/** The `retry` event a {@linkcode Session} dispatches before it tries a call again. */
export class RetryEvent extends Event {
  /** Which endpoint failed, how, and where the call goes next. */
  readonly report: RetryReport;
  /**
   * Creates the event.
   *
   * @param report The retry.
   */
  constructor(report: RetryReport) {
    super("retry");
    this.report = report;
  }
}

/**
 * Opens a session on a Valise (or Spark Connect) server. Nothing is sent until the first
 * call. The session id comes from `options.sessionId`, else the string's `session_id`, else a
 * new UUID; the user id from the string's `user_id`, else `options.userId`, else `$USER`.
 *
 * @example
 * ```ts ignore
 * import { connect } from "@valise/client";
 * const session = connect("sc://localhost:15002/;user_id=ada");
 * await session.conf.set("spark.sql.execution.pyspark.python", "environment/bin/python");
 * session.close();
 * ```
 *
 * @example The nodes of a cluster, tried in order
 * ```ts ignore
 * import { connect } from "@valise/client";
 * const session = connect("sc://n1:15002,n2:15002,n3:15002/;user_id=ada", {
 *   onRetry: (r) => console.error(`node ${r.endpoint} ${r.reason}, retrying on ${r.next}`),
 * });
 * ```
 *
 * @param remote A connection string `sc://host:port/;…` (or `sc://h1:port,h2:port/;…`), or the
 *   options (with `remote`).
 * @param options Options, when `remote` is a string.
 * @returns The session.
 * @throws {SyntaxError} When the connection string (or `options.endpoints`) is malformed.
 */
export function connect(remote?: string | ConnectOptions, options: ConnectOptions = {}): Session {
  const opts = typeof remote === "object" ? remote : options;
  const str = typeof remote === "string" ? remote : opts.remote ?? "sc://localhost:15002";
  return new Session(parseConnectionString(str), opts);
}
