// Copyright 2026 the Valise authors. Apache-2.0 license.
import { createHash } from "node:crypto";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { type CallOptions, type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { type RecordBatch, RecordBatchReader, type Schema, Table, tableToIPC } from "apache-arrow";
import {
  addArtifactsRequests,
  ApplyForm,
  type ApplyRequest,
  ApplyRequestSchema,
  type ApplyStartSchema,
  type ArtifactSource,
  type BlobChallenge,
  type ConfigRequest_Operation,
  ConfigRequest_OperationSchema,
  type ConfigResponse,
  ipcRecordBatches,
  type RunRequest,
  RunRequestSchema,
  SparkConnectService,
  StoreService,
  type UserContext,
  UserContextSchema,
  WorkerService,
} from "@valise/protocol";
import { type ArtifactKindFlags, resolveArtifact } from "./artifact_path.ts";
import { type ConnectionString, parseConnectionString } from "./connection_string.ts";
import { ValiseClientError } from "./error.ts";
import {
  type ApplyFormName,
  type ApplyFunction,
  type ApplyInput,
  type ApplyOptions,
  type ApplyResult,
  type ApplySummary,
  resolveApplyInput,
} from "./apply.ts";
import { answerChallenge, attachRefused, type BlobProofInit } from "./_blob_proof.ts";

/** The client's version, sent in `client_type`. */
export const CLIENT_VERSION = "0.1.0";

/** How calls that fail with `UNAVAILABLE` are retried. */
export interface RetryOptions {
  /**
   * Attempts per call, the first included; `1` turns retries off.
   * @default {8}
   */
  maxAttempts?: number;
  /**
   * Wait before the first retry, in milliseconds.
   * @default {100}
   */
  initialDelayMs?: number;
  /**
   * Longest wait between attempts, in milliseconds.
   * @default {5000}
   */
  maxDelayMs?: number;
  /**
   * Factor by which the wait grows.
   * @default {2}
   */
  multiplier?: number;
}

/** Options of {@linkcode connect}. */
export interface ConnectOptions {
  /**
   * The connection string, when {@linkcode connect} is given only options.
   * @default {"sc://localhost:15002"}
   */
  remote?: string;
  /**
   * The session id (a UUID); it wins over the connection string's `session_id`.
   * @default {undefined} the connection string's, else a new random UUID
   */
  sessionId?: string;
  /**
   * The user id, used when the connection string has no `user_id`.
   * @default {undefined} then `$USER` when readable
   */
  userId?: string;
  /**
   * A bearer token, used when the connection string has no `token`.
   * @default {undefined}
   */
  token?: string;
  /**
   * Extra request headers.
   * @default {{}}
   */
  headers?: Record<string, string>;
  /**
   * Retries of `UNAVAILABLE`.
   * @default {{}} see {@linkcode RetryOptions}
   */
  retry?: RetryOptions;
  /**
   * Connect interceptors run on every call (after the client's own headers are set).
   * @default {[]}
   */
  interceptors?: Interceptor[];
}

/** One progress report of an upload. */
export interface ArtifactProgress {
  /** The artifact name. */
  readonly name: string;
  /**
   * `hash`: its digest is being computed; `upload`: bytes are being sent; `attached`: the
   * server already held the bytes, none were sent; `done`: the server committed it.
   */
  readonly phase: "hash" | "upload" | "attached" | "done";
  /** Bytes of this artifact sent so far on the current attempt (0 when attached). */
  readonly bytesSent: number;
  /** The artifact's size. */
  readonly totalBytes: number;
  /** Average send rate of the current attempt, in bytes per second (0 before any bytes). */
  readonly bytesPerSecond: number;
}

/** The `progress` event a {@linkcode Session} dispatches during uploads. */
export class ArtifactProgressEvent extends Event {
  /** The report. */
  readonly progress: ArtifactProgress;
  /**
   * Creates the event.
   *
   * @param progress The report.
   */
  constructor(progress: ArtifactProgress) {
    super("progress");
    this.progress = progress;
  }
}

/** Options of {@linkcode Session.addArtifacts}. */
export interface AddArtifactsOptions extends ArtifactKindFlags {
  /**
   * Receives progress reports (the session also dispatches them as `progress` events).
   * @default {undefined}
   */
  onProgress?: (progress: ArtifactProgress) => void;
  /**
   * Directory relative paths are resolved against.
   * @default {Deno.cwd()}
   */
  cwd?: string;
  /**
   * Ask the server for the bytes it already holds and attach those without sending them.
   * @default {true}
   */
  fastPath?: boolean;
  /**
   * Cancels the uploads.
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/** One added artifact. */
export interface AddedArtifact {
  /** The artifact name. */
  readonly name: string;
  /** The local file. */
  readonly path: string;
  /** Its size in bytes. */
  readonly size: number;
  /** Its sha256, lowercase hex. */
  readonly sha256: string;
  /** Whether its bytes were sent (false: the server held them and attached them). */
  readonly uploaded: boolean;
}

/** What {@linkcode Session.run} runs: exactly one of `code`, `module` or `script`. */
export type RunTarget = { code: string } | { module: string } | { script: string };

/** Options of a run. */
export interface RunOptions {
  /**
   * Arguments (`sys.argv[1:]`).
   * @default {[]}
   */
  args?: string[];
  /**
   * Bytes written to the program's stdin, which is then closed.
   * @default {undefined} empty
   */
  stdin?: Uint8Array | string;
  /**
   * Wall-clock limit in milliseconds; 0 means the server's default.
   * @default {0}
   */
  timeoutMs?: number;
  /**
   * Cancels the run (the server kills the worker).
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/** A run request: the target and its options. */
export type RunSpec = RunTarget & RunOptions;

/** One event of a run, in order. */
export type RunEvent =
  | { kind: "started"; pid: number; interpreter: string; cwd: string }
  | { kind: "stdout"; data: Uint8Array }
  | { kind: "stderr"; data: Uint8Array }
  | {
    kind: "exited";
    exitCode: number;
    signal: string;
    durationMs: number;
    timedOut: boolean;
    outputTruncated: boolean;
  };

/** The outcome of {@linkcode Session.runCollect}. */
export interface RunResult {
  /** Standard output, decoded as UTF-8. */
  stdout: string;
  /** Standard error, decoded as UTF-8. */
  stderr: string;
  /** Exit code, -1 when killed by a signal. */
  exitCode: number;
  /** The signal's name when killed by one, else `""`. */
  signal: string;
  /** Whether the time limit killed it. */
  timedOut: boolean;
  /** Whether output beyond the server's limit was dropped. */
  outputTruncated: boolean;
  /** The interpreter that ran it. */
  interpreter: string;
  /** Wall time in milliseconds, as the server measured it. */
  durationMs: number;
}

type ApplyStartInit = MessageInitShape<typeof ApplyStartSchema>;
type Spark = Client<typeof SparkConnectService>;
type Store = Client<typeof StoreService>;
type Workers = Client<typeof WorkerService>;

interface Pending {
  name: string;
  path: string;
  size: number;
  sha256: string;
  uploaded: boolean;
  committed: boolean;
}

/**
 * One Spark Connect session on a Valise server: artifacts, config, runs. Create it with
 * {@linkcode connect}. Every call sends the server-side session id once known and checks that
 * responses belong to this session; `UNAVAILABLE` is retried with exponential backoff.
 * Dispatches {@linkcode ArtifactProgressEvent}s (`progress`) during uploads.
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
  /** The URL calls go to: `https://…` when the connection string says `use_ssl=true`. */
  readonly endpoint: string;
  #serverSideSessionId: string | undefined;
  #spark: Spark;
  #store: Store;
  #workers: Workers;
  #applyWorkers: Workers;
  #manager: Http2SessionManager;
  #retry: Required<RetryOptions>;
  #closed = false;
  #fastPath = true;
  #userContext: UserContext;
  #clientType: string;

  /**
   * Use {@linkcode connect}.
   *
   * @param remote The parsed connection string.
   * @param options Connection options.
   */
  constructor(remote: ConnectionString, options: ConnectOptions = {}) {
    super();
    this.remote = remote;
    if (options.sessionId !== undefined && !isUuid(options.sessionId)) {
      throw new TypeError(`Cannot connect: session id "${options.sessionId}" is not a UUID`);
    }
    this.sessionId = (options.sessionId ?? remote.sessionId ?? crypto.randomUUID()).toLowerCase();
    this.userId = remote.userId ?? options.userId ?? envUser();
    this.#userContext = create(
      UserContextSchema,
      this.userId === undefined ? {} : { userId: this.userId },
    );
    this.#clientType = remote.userAgent ?? `valise-client/${CLIENT_VERSION}`;
    const r = options.retry ?? {};
    this.#retry = {
      maxAttempts: Math.max(1, r.maxAttempts ?? 8),
      initialDelayMs: r.initialDelayMs ?? 100,
      maxDelayMs: r.maxDelayMs ?? 5000,
      multiplier: r.multiplier ?? 2,
    };
    const host = remote.host.includes(":") ? `[${remote.host}]` : remote.host;
    const baseUrl = `${remote.useSsl ? "https" : "http"}://${host}:${remote.port}`;
    const headers: Record<string, string> = { ...remote.params, ...(options.headers ?? {}) };
    const token = remote.token ?? options.token;
    if (token !== undefined && token !== "") headers.authorization = `Bearer ${token}`;
    const auth: Interceptor = (next) => (req) => {
      for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
      return next(req);
    };
    this.endpoint = baseUrl;
    this.#manager = new Http2SessionManager(baseUrl);
    const transport = createGrpcTransport({
      baseUrl,
      sessionManager: this.#manager,
      interceptors: [auth, ...(options.interceptors ?? [])],
    });
    this.#spark = createClient(SparkConnectService, transport);
    this.#store = createClient(StoreService, transport);
    this.#workers = createClient(WorkerService, transport);
    // Arrow data compresses poorly and gzip would cost the server about half its CPU on Apply
    // (docs/apply.md): this call does not advertise it.
    this.#applyWorkers = createClient(
      WorkerService,
      createGrpcTransport({
        baseUrl,
        sessionManager: this.#manager,
        interceptors: [auth, ...(options.interceptors ?? [])],
        acceptCompression: [],
      }),
    );
    this.conf = new RuntimeConfig((op) => this.#config(op));
  }

  /** The server's id for this session, once a response has carried it. */
  get serverSideSessionId(): string | undefined {
    return this.#serverSideSessionId;
  }

  /** Whether {@linkcode Session.close} or {@linkcode Session.release} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Adds local files as artifacts, with PySpark's names (see {@linkcode resolveArtifact}).
   * All paths are checked before anything is sent. Each file is hashed (streaming); the
   * server is asked which digests it holds, those are attached without sending bytes, and the
   * rest are uploaded, one AddArtifacts stream per file, streamed from disk in PySpark's
   * chunks. `UNAVAILABLE` is retried; artifacts already committed are not sent again.
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
    this.#checkOpen();
    const list = typeof paths === "string" ? [paths] : [...paths];
    const resolved = list.map((p) => resolveArtifact(p, options, options.cwd ?? Deno.cwd()));
    const items: Pending[] = [];
    for (const r of resolved) {
      let info: Deno.FileInfo;
      try {
        info = await Deno.stat(r.path);
      } catch (e) {
        throw new TypeError(`Cannot add ${r.path}: ${(e as Error).message}`, { cause: e });
      }
      if (!info.isFile) throw new TypeError(`Cannot add ${r.path}: it is not a regular file`);
      items.push({ ...r, size: info.size, sha256: "", uploaded: false, committed: false });
    }
    const report = (p: ArtifactProgress) => {
      options.onProgress?.(p);
      this.dispatchEvent(new ArtifactProgressEvent(p));
    };
    for (const it of items) {
      report({
        name: it.name,
        phase: "hash",
        bytesSent: 0,
        totalBytes: it.size,
        bytesPerSecond: 0,
      });
      it.sha256 = await sha256File(it.path, options.signal);
    }
    const fast = options.fastPath ?? true;
    await this.#retrying(async () => {
      const pending = items.filter((i) => !i.committed);
      if (pending.length === 0) return;
      if (fast && this.#fastPath) {
        const { present, challenges } = await this.#hasBlobs(
          pending.map((i) => i.sha256),
          options.signal,
        );
        const proofs = new Map<string, BlobProofInit | undefined>();
        for (const i of pending) {
          const c = challenges.get(i.sha256);
          if (c && present.has(i.sha256) && !proofs.has(i.sha256)) {
            proofs.set(i.sha256, await answerChallenge(i.path, c, options.signal));
          }
        }
        // Content the user's sessions do not hold is attached only with a proof of holding it.
        const attach = pending.filter((i) =>
          present.has(i.sha256) && (!challenges.has(i.sha256) || proofs.get(i.sha256))
        );
        // A refused attach (no or a stale proof, an evicted blob) falls back to uploading.
        const res = attach.length === 0 ? undefined : await this.#store.attachArtifacts({
          sessionId: this.sessionId,
          userContext: this.#userContext,
          ...this.#observed(),
          artifacts: attach.map((i) => {
            const proof = proofs.get(i.sha256);
            return { name: i.name, sha256: i.sha256, ...(proof ? { proof } : {}) };
          }),
        }, callOptions(options.signal)).catch((e) => {
          if (attachRefused(ValiseClientError.from(e))) return undefined;
          throw e;
        });
        if (res) {
          this.#verify(res);
          const attached = new Set(res.attached);
          for (const i of attach) {
            if (!attached.has(i.name)) continue;
            i.committed = true;
            report({
              name: i.name,
              phase: "attached",
              bytesSent: 0,
              totalBytes: i.size,
              bytesPerSecond: 0,
            });
          }
        }
      }
      for (const it of items) {
        if (it.committed) continue;
        await this.#upload(it, report, options.signal);
        it.committed = true;
        it.uploaded = true;
        report({
          name: it.name,
          phase: "done",
          bytesSent: it.size,
          totalBytes: it.size,
          bytesPerSecond: 0,
        });
      }
    });
    return items.map((i) => ({
      name: i.name,
      path: i.path,
      size: i.size,
      sha256: i.sha256,
      uploaded: i.uploaded,
    }));
  }

  async #hasBlobs(
    digests: string[],
    signal: AbortSignal | undefined,
  ): Promise<{ present: Set<string>; challenges: Map<string, BlobChallenge> }> {
    try {
      const res = await this.#store.hasBlobs({
        sessionId: this.sessionId,
        userContext: this.#userContext,
        sha256: digests,
      }, callOptions(signal));
      this.#verifyServerSide(res.serverSideSessionId);
      return {
        present: new Set(res.present),
        challenges: new Map(res.challenges.map((c) => [c.sha256, c])),
      };
    } catch (e) {
      const err = ValiseClientError.from(e);
      // A plain Spark Connect server has no store service: upload everything.
      if (err.grpcCode === "Unimplemented") {
        this.#fastPath = false;
        return { present: new Set(), challenges: new Map() };
      }
      throw err;
    }
  }

  async #upload(
    it: Pending,
    report: (p: ArtifactProgress) => void,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    let sent = 0;
    let started = 0;
    const source: ArtifactSource = {
      name: it.name,
      size: it.size,
      async *read() {
        using f = await Deno.open(it.path);
        started = performance.now();
        for await (const piece of f.readable) {
          sent += piece.length;
          const secs = (performance.now() - started) / 1000;
          report({
            name: it.name,
            phase: "upload",
            bytesSent: sent,
            totalBytes: it.size,
            bytesPerSecond: secs > 0 ? sent / secs : 0,
          });
          yield piece;
        }
      },
    };
    const res = await this.#spark.addArtifacts(
      addArtifactsRequests([source], {
        sessionId: this.sessionId,
        ...(this.userId === undefined ? {} : { userId: this.userId }),
        ...(this.#serverSideSessionId === undefined
          ? {}
          : { clientObservedServerSideSessionId: this.#serverSideSessionId }),
      }),
      callOptions(signal),
    );
    this.#verify(res);
    const bad = res.artifacts.filter((a) => !a.isCrcSuccessful).map((a) => a.name);
    if (bad.length > 0) {
      throw new ValiseClientError(
        `[CRC_MISMATCH] The server reported a CRC mismatch for ${bad.join(", ")}; ` +
          `the artifact was not added.`,
        { errorClass: "CRC_MISMATCH", grpcCode: "DataLoss", parameters: { names: bad.join(",") } },
      );
    }
  }

  /**
   * Asks which artifacts the session holds (Spark's ArtifactStatus).
   *
   * @param names Artifact names, e.g. `pyfiles/util.py` or `cache/<sha256>`.
   * @returns For each name, whether it exists.
   */
  async status(names: readonly string[]): Promise<Record<string, boolean>> {
    this.#checkOpen();
    const res = await this.#retrying(() =>
      this.#spark.artifactStatus({
        sessionId: this.sessionId,
        userContext: this.#userContext,
        clientType: this.#clientType,
        names: [...names],
        ...this.#observed(),
      })
    );
    this.#verify(res);
    const out: Record<string, boolean> = {};
    for (const n of names) out[n] = res.statuses[n]?.exists ?? false;
    return out;
  }

  /**
   * Runs Python in the session (its directory, interpreter and path), yielding events as
   * they happen. A call that fails with `UNAVAILABLE` before the first event is retried; once
   * the worker started, it is not.
   *
   * @example
   * ```ts ignore
   * for await (const ev of session.run({ code: "print(1)" })) {
   *   if (ev.kind === "stdout") await Deno.stdout.write(ev.data);
   * }
   * ```
   *
   * @param spec `code`, `module` or `script`, and options.
   * @returns The events, ending with `exited`.
   */
  async *run(spec: RunSpec): AsyncGenerator<RunEvent, void, undefined> {
    this.#checkOpen();
    const req = this.#runRequest(spec);
    let attempt = 0;
    let seen = false;
    let exited = false;
    while (true) {
      try {
        for await (const ev of this.#workers.run(req, callOptions(spec.signal))) {
          seen = true;
          const e = ev.event;
          switch (e.case) {
            case "started":
              yield {
                kind: "started",
                pid: e.value.pid,
                interpreter: e.value.interpreter,
                cwd: e.value.cwd,
              };
              break;
            case "stdout":
            case "stderr":
              yield { kind: e.case, data: e.value };
              break;
            case "exited":
              exited = true;
              yield {
                kind: "exited",
                exitCode: e.value.exitCode,
                signal: e.value.signal,
                durationMs: Number(e.value.durationMs),
                timedOut: e.value.timedOut,
                outputTruncated: e.value.outputTruncated,
              };
              break;
          }
        }
        return;
      } catch (e) {
        // The run is over once `exited` arrived: Deno's node:http2 can still report the stream
        // closing under it as "Premature close", which is not the run's failure.
        if (exited && /premature close/i.test(String((e as Error)?.message ?? e))) return;
        const err = ValiseClientError.from(e);
        attempt++;
        if (seen || err.grpcCode !== "Unavailable" || attempt >= this.#retry.maxAttempts) throw err;
        await this.#backoff(attempt);
      }
    }
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
  async runCollect(spec: RunSpec): Promise<RunResult> {
    const out: Uint8Array[] = [];
    const err: Uint8Array[] = [];
    const result: RunResult = {
      stdout: "",
      stderr: "",
      exitCode: -1,
      signal: "",
      timedOut: false,
      outputTruncated: false,
      interpreter: "",
      durationMs: 0,
    };
    for await (const ev of this.run(spec)) {
      if (ev.kind === "stdout") out.push(ev.data);
      else if (ev.kind === "stderr") err.push(ev.data);
      else if (ev.kind === "started") result.interpreter = ev.interpreter;
      else {
        result.exitCode = ev.exitCode;
        result.signal = ev.signal;
        result.timedOut = ev.timedOut;
        result.outputTruncated = ev.outputTruncated;
        result.durationMs = ev.durationMs;
      }
    }
    result.stdout = decodeAll(out);
    result.stderr = decodeAll(err);
    return result;
  }

  /**
   * Runs a Python function over Arrow record batches in the session (its interpreter, path and
   * limits), once per input batch, yielding the output batches as the server produces them. The
   * input is streamed: an iterable is pulled one batch at a time as the call sends it. The
   * generator's return value is the {@linkcode ApplySummary}; {@linkcode Session.applyCollect}
   * gathers everything. Stopping the iteration early cancels the call (the server kills the
   * worker). A call that fails with `UNAVAILABLE` before any response is retried when its input
   * can be sent again (not an iterable).
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
    this.#checkOpen();
    const start = this.#applyStart(fn, options);
    const resolved = resolveApplyInput(input);
    const stderrParts: Uint8Array[] = [];
    let traceback: string | undefined;
    let summary: ApplySummary | undefined;
    let attempt = 0;
    while (true) {
      const ac = new AbortController();
      const signal = options.signal ? AbortSignal.any([options.signal, ac.signal]) : ac.signal;
      const inputFailure: { error?: unknown } = {};
      const requests = this.#applyRequests(start, resolved, inputFailure);
      let seen = false;
      const responses = this.#applyWorkers.apply(requests, { signal });
      const output = async function* (): AsyncGenerator<Uint8Array, void, undefined> {
        for await (const res of responses) {
          seen = true;
          const m = res.response;
          switch (m.case) {
            case "arrowIpc":
              yield m.value;
              break;
            case "stderr":
              stderrParts.push(m.value);
              options.onStderr?.(m.value);
              break;
            case "error":
              if (m.value.traceback !== "") traceback = m.value.traceback;
              break;
            case "done":
              summary = {
                rowsIn: Number(m.value.rowsIn),
                rowsOut: Number(m.value.rowsOut),
                batchesIn: Number(m.value.batchesIn),
                batchesOut: Number(m.value.batchesOut),
                transport: m.value.transport,
                interpreter: m.value.interpreter,
                stderr: "",
              };
              break;
          }
        }
      };
      try {
        // Drained: the call's last responses (stderr, done) follow the end-of-stream marker.
        yield* ipcRecordBatches<RecordBatch>(output(), RecordBatchReader, { drain: true });
        if (!summary) {
          throw new ValiseClientError(
            "[APPLY_PROTOCOL] The Apply call ended without its done response",
            { errorClass: "APPLY_PROTOCOL", grpcCode: "Internal" },
          );
        }
        summary.stderr = decodeAll(stderrParts);
        return summary;
      } catch (e) {
        // What the input threw (a bad batch, the caller's own generator failing) is the cause,
        // not the cancelled call it led to.
        if ("error" in inputFailure) throw inputFailure.error;
        // `done` is the server's last word: the call succeeded. The server may finish before
        // the client half-closes (it stops reading at the input's end-of-stream marker), and
        // the HTTP/2 stream closing under a pending write can then fail the call afterwards.
        if (summary) {
          summary.stderr = decodeAll(stderrParts);
          return summary;
        }
        if (e instanceof SyntaxError) {
          throw new ValiseClientError(`[APPLY_PROTOCOL] The Apply output: ${e.message}`, {
            errorClass: "APPLY_PROTOCOL",
            grpcCode: "Internal",
            cause: e,
          });
        }
        const err = withTraceback(ValiseClientError.from(e), traceback);
        attempt++;
        if (
          seen || !resolved.replayable || err.grpcCode !== "Unavailable" ||
          attempt >= this.#retry.maxAttempts || options.signal?.aborted
        ) {
          throw err;
        }
        await this.#backoff(attempt);
      } finally {
        // Also when the caller stops early: the server then kills the worker.
        ac.abort();
      }
    }
  }

  /**
   * Runs {@linkcode Session.apply} and gathers the output into one table.
   *
   * @param fn `"pkg.mod:fn"` or `{ code, functionName }`.
   * @param input A `Table`, record batches, Arrow IPC bytes, or `{ cacheArtifact }`.
   * @param options Form, output schema, time limit, signal, stderr callback.
   * @returns The output table, the counts, the transport, the interpreter and what it printed.
   */
  async applyCollect(
    fn: ApplyFunction,
    input: ApplyInput,
    options: ApplyOptions = {},
  ): Promise<ApplyResult> {
    const it = this.apply(fn, input, options);
    const batches: RecordBatch[] = [];
    while (true) {
      const r = await it.next();
      if (r.done) {
        const table = batches.length > 0
          ? new Table(batches)
          : options.outputSchema
          ? new Table(options.outputSchema)
          : new Table();
        return { ...r.value, table, batches: batches.length };
      }
      batches.push(r.value);
    }
  }

  #applyStart(fn: ApplyFunction, options: ApplyOptions): ApplyStartInit {
    let func: { case: "moduleFunction" | "code"; value: string };
    let functionName = "";
    if (typeof fn === "string") {
      if (!/^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$/.test(fn)) {
        throw new TypeError(`Cannot apply "${fn}": the function must look like "pkg.mod:fn"`);
      }
      func = { case: "moduleFunction", value: fn };
    } else if (
      typeof fn === "object" && fn !== null && typeof fn.code === "string" &&
      typeof fn.functionName === "string" && fn.functionName !== ""
    ) {
      func = { case: "code", value: fn.code };
      functionName = fn.functionName;
    } else {
      throw new TypeError(
        'Cannot apply: the function must be "pkg.mod:fn" or { code, functionName }',
      );
    }
    const form = options.form ?? "columns";
    const forms: Record<ApplyFormName, ApplyForm> = {
      columns: ApplyForm.COLUMNS,
      pandas: ApplyForm.PANDAS,
      pyarrow: ApplyForm.PYARROW,
    };
    if (!(form in forms)) {
      throw new TypeError(`Cannot apply: form "${form}" is not columns, pandas or pyarrow`);
    }
    const timeoutMs = options.timeoutMs ?? 0;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 0xffffffff) {
      throw new RangeError(`Cannot apply: timeoutMs ${timeoutMs} is not a non-negative integer`);
    }
    return {
      sessionId: this.sessionId,
      userContext: this.#userContext,
      function: func,
      functionName,
      form: forms[form],
      outputSchema: options.outputSchema ? schemaIpc(options.outputSchema) : new Uint8Array(),
      timeoutMs,
    };
  }

  async *#applyRequests(
    start: ApplyStartInit,
    input: ReturnType<typeof resolveApplyInput>,
    failure: { error?: unknown },
  ): AsyncGenerator<ApplyRequest, void, undefined> {
    // Built per attempt: the server-side session id may be known by now.
    yield create(ApplyRequestSchema, {
      request: {
        case: "start",
        value: {
          ...start,
          ...this.#observed(),
          input: input.cacheArtifact === undefined
            ? { case: "streamed", value: true }
            : { case: "cacheArtifact", value: input.cacheArtifact },
        },
      },
    });
    try {
      for await (const piece of input.chunks()) {
        yield create(ApplyRequestSchema, { request: { case: "arrowIpc", value: piece } });
      }
    } catch (e) {
      failure.error = e;
      throw e;
    }
  }

  /**
   * Releases the session on the server (its files are deleted) and closes the connection.
   *
   * @returns When the server has released it.
   */
  async release(): Promise<void> {
    this.#checkOpen();
    try {
      const res = await this.#retrying(() =>
        this.#spark.releaseSession({
          sessionId: this.sessionId,
          userContext: this.#userContext,
          clientType: this.#clientType,
        })
      );
      if (res.sessionId !== this.sessionId) {
        throw integrity(`session id ${res.sessionId} != ${this.sessionId}`);
      }
    } finally {
      this.close();
    }
  }

  /** Closes the connection; the session stays on the server. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#manager.abort();
  }

  /** Closes the connection, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }

  #runRequest(spec: RunSpec): RunRequest {
    const targets = (["code", "module", "script"] as const).filter((k) =>
      (spec as unknown as Record<string, unknown>)[k] !== undefined
    );
    if (targets.length !== 1) {
      throw new TypeError(
        `Cannot run: give exactly one of code, module or script (got ${
          targets.join(", ") || "none"
        })`,
      );
    }
    const k = targets[0]!;
    const value = (spec as unknown as Record<string, unknown>)[k];
    if (typeof value !== "string") throw new TypeError(`Cannot run: ${k} must be a string`);
    const timeoutMs = spec.timeoutMs ?? 0;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 0xffffffff) {
      throw new RangeError(`Cannot run: timeoutMs ${timeoutMs} is not a non-negative integer`);
    }
    const stdin = typeof spec.stdin === "string"
      ? new TextEncoder().encode(spec.stdin)
      : spec.stdin ?? new Uint8Array(0);
    return create(RunRequestSchema, {
      sessionId: this.sessionId,
      userContext: this.#userContext,
      ...this.#observed(),
      target: { case: k, value },
      args: spec.args ?? [],
      stdin,
      timeoutMs,
    });
  }

  async #config(operation: ConfigRequest_Operation): Promise<ConfigResponse> {
    this.#checkOpen();
    const res = await this.#retrying(() =>
      this.#spark.config({
        sessionId: this.sessionId,
        userContext: this.#userContext,
        clientType: this.#clientType,
        operation,
        ...this.#observed(),
      })
    );
    this.#verify(res);
    return res;
  }

  #observed(): { clientObservedServerSideSessionId?: string } {
    return this.#serverSideSessionId === undefined
      ? {}
      : { clientObservedServerSideSessionId: this.#serverSideSessionId };
  }

  #verify(res: { sessionId: string; serverSideSessionId: string }): void {
    if (res.sessionId !== this.sessionId) {
      throw integrity(
        `Received incorrect session identifier for request: ${res.sessionId} != ${this.sessionId}`,
      );
    }
    this.#verifyServerSide(res.serverSideSessionId);
  }

  #verifyServerSide(id: string): void {
    if (id === "") return;
    if (this.#serverSideSessionId === undefined) {
      this.#serverSideSessionId = id;
    } else if (id !== this.#serverSideSessionId) {
      throw integrity(
        `Received incorrect server side session identifier for request. Please create a new ` +
          `session to reconnect. (${id} != ${this.#serverSideSessionId})`,
      );
    }
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new ValiseClientError(
        `[INVALID_HANDLE.SESSION_CLOSED] The session ${this.sessionId} is closed on this client.`,
        { errorClass: "INVALID_HANDLE.SESSION_CLOSED", grpcCode: "FailedPrecondition" },
      );
    }
  }

  async #retrying<T>(fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1;; attempt++) {
      try {
        return await fn();
      } catch (e) {
        const err = ValiseClientError.from(e);
        if (err.grpcCode !== "Unavailable" || attempt >= this.#retry.maxAttempts) throw err;
        await this.#backoff(attempt);
      }
    }
  }

  #backoff(attempt: number): Promise<void> {
    const r = this.#retry;
    const base = Math.min(r.maxDelayMs, r.initialDelayMs * r.multiplier ** (attempt - 1));
    // Jitter keeps many clients of a restarted server from reconnecting in lockstep.
    const ms = base / 2 + Math.random() * base / 2;
    return new Promise((resolve) => setTimeout(resolve, ms));
  }
}

/** Spark's runtime config of a session (`spark.conf`), over the Config RPC. */
export class RuntimeConfig {
  #call: (op: ConfigRequest_Operation) => Promise<ConfigResponse>;

  /**
   * Use `session.conf`.
   *
   * @param call Sends one config operation.
   */
  constructor(call: (op: ConfigRequest_Operation) => Promise<ConfigResponse>) {
    this.#call = call;
  }

  /**
   * Sets a key (booleans and numbers are sent as their text, like PySpark).
   *
   * @param key The key.
   * @param value The value.
   * @returns The server's warnings (empty when none).
   */
  async set(key: string, value: string | number | boolean): Promise<string[]> {
    const res = await this.#call(op({
      case: "set",
      value: { pairs: [kv(key, String(value))] },
    }));
    return res.warnings;
  }

  /**
   * Reads a key; without `defaultValue`, a missing key throws `SQL_CONF_NOT_FOUND`.
   *
   * @param key The key.
   * @param defaultValue Returned when the key is unset.
   * @returns The value.
   */
  async get(key: string, defaultValue?: string): Promise<string> {
    const res = defaultValue === undefined
      ? await this.#call(op({ case: "get", value: { keys: [key] } }))
      : await this.#call(op({
        case: "getWithDefault",
        value: { pairs: [kv(key, defaultValue)] },
      }));
    return res.pairs[0]?.value ?? defaultValue ?? "";
  }

  /**
   * Reads a key that may be unset.
   *
   * @param key The key.
   * @returns The value, or `undefined`.
   */
  async getOption(key: string): Promise<string | undefined> {
    const res = await this.#call(op({ case: "getOption", value: { keys: [key] } }));
    return res.pairs[0]?.value;
  }

  /**
   * Unsets keys.
   *
   * @param keys One key or several.
   * @returns When done.
   */
  async unset(keys: string | readonly string[]): Promise<void> {
    await this.#call(op({
      case: "unset",
      value: { keys: typeof keys === "string" ? [keys] : [...keys] },
    }));
  }

  /**
   * Every set key, or those under a prefix (which the server strips, as Spark does).
   *
   * @param prefix Only keys starting with it.
   * @returns Key → value.
   */
  async getAll(prefix?: string): Promise<Record<string, string>> {
    const res = await this.#call(op({
      case: "getAll",
      value: prefix === undefined ? {} : { prefix },
    }));
    const out: Record<string, string> = {};
    for (const p of res.pairs) out[p.key] = p.value ?? "";
    return out;
  }

  /**
   * Whether a session may change a key.
   *
   * @param key The key.
   * @returns `true` when it may.
   */
  async isModifiable(key: string): Promise<boolean> {
    const res = await this.#call(op({ case: "isModifiable", value: { keys: [key] } }));
    return res.pairs[0]?.value === "true";
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
 * @param remote A connection string `sc://host:port/;…`, or the options (with `remote`).
 * @param options Options, when `remote` is a string.
 * @returns The session.
 * @throws {SyntaxError} When the connection string is malformed.
 */
export function connect(remote?: string | ConnectOptions, options: ConnectOptions = {}): Session {
  const opts = typeof remote === "object" ? remote : options;
  const str = typeof remote === "string" ? remote : opts.remote ?? "sc://localhost:15002";
  return new Session(parseConnectionString(str), opts);
}

type OpInit = NonNullable<MessageInitShape<typeof ConfigRequest_OperationSchema>["opType"]>;

function op(opType: OpInit): ConfigRequest_Operation {
  return create(ConfigRequest_OperationSchema, { opType });
}

function kv(key: string, value: string): { key: string; value: string } {
  return { key, value };
}

function callOptions(signal: AbortSignal | undefined): CallOptions {
  return signal === undefined ? {} : { signal };
}

function schemaIpc(schema: Schema): Uint8Array {
  return tableToIPC(new Table(schema), "stream");
}

function withTraceback(err: ValiseClientError, traceback: string | undefined): ValiseClientError {
  if (traceback === undefined || err.traceback !== undefined) return err;
  return new ValiseClientError(err.message, {
    errorClass: err.errorClass,
    grpcCode: err.grpcCode,
    sqlState: err.sqlState,
    reason: err.reason,
    parameters: err.parameters,
    traceback,
    cause: err.cause,
  });
}

function integrity(message: string): ValiseClientError {
  return new ValiseClientError(`[INTEGRITY_ERROR] ${message}`, {
    errorClass: "INTEGRITY_ERROR",
    grpcCode: "Internal",
  });
}

function isUuid(s: string): boolean {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s);
}

function envUser(): string | undefined {
  try {
    return Deno.env.get("USER") || undefined;
  } catch {
    return undefined;
  }
}

function decodeAll(parts: Uint8Array[]): string {
  const d = new TextDecoder();
  return parts.map((p) => d.decode(p, { stream: true })).join("") + d.decode();
}

/**
 * Computes a file's sha256 by streaming it.
 *
 * @param path The file.
 * @param signal Cancels the read.
 * @returns The digest, lowercase hex.
 */
export async function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  const h = createHash("sha256");
  using f = await Deno.open(path);
  for await (const piece of f.readable) {
    signal?.throwIfAborted();
    h.update(piece);
  }
  return h.digest("hex");
}
