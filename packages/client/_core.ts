// Copyright 2026 the Valise authors. Apache-2.0 license.
// What every call of a session shares: its endpoints and their clients, the session's ids (and
// the server-side id it learns), the check that responses belong to it, and its retry policy.
import { create } from "@bufbuild/protobuf";
import type { CallOptions, Interceptor } from "@connectrpc/connect";
import { type UserContext, UserContextSchema } from "@valise/protocol";
import type { ConnectOptions, RetryReport } from "./connect_options.ts";
import { type ConnectionString, endpointsOf, parseEndpoints } from "./connection_string.ts";
import type { ValiseClientError } from "./error.ts";
import { clientError } from "./_client_error.ts";
import { EndpointPool } from "./_endpoints.ts";
import { RetryPolicy } from "./_retry.ts";
import { CLIENT_VERSION } from "./version.ts";

/** The fields that bind a request to the session once the server named its side of it. */
export interface Observed {
  /** The server-side session id seen so far, if any. */
  clientObservedServerSideSessionId?: string;
}

/** The endpoints, ids and checks of one session; the Session's calls are built on it. */
export class SessionCore {
  /** The session id (a UUID, lowercase). */
  readonly sessionId: string;
  /** The user id sent in `user_context`, or `undefined`. */
  readonly userId: string | undefined;
  /** `user_context` of every request. */
  readonly userContext: UserContext;
  /** `client_type` of the Spark Connect requests. */
  readonly clientType: string;
  /** The session's endpoints and their clients. */
  readonly pool: EndpointPool;
  /** How calls whose node failed are retried, and where. */
  readonly retry: RetryPolicy;
  #serverSideSessionId: string | undefined;
  #closed = false;

  /**
   * Sets up the transports; nothing is sent yet.
   *
   * @param remote The parsed connection string.
   * @param options Connection options.
   * @param report Told of every retry.
   * @throws {TypeError} When `options.sessionId` is not a UUID.
   * @throws {SyntaxError} When `options.endpoints` is not a list of `host[:port]`.
   */
  constructor(
    remote: ConnectionString,
    options: ConnectOptions,
    report?: (r: RetryReport) => void,
  ) {
    if (options.sessionId !== undefined && !isUuid(options.sessionId)) {
      throw new TypeError(`Cannot connect: session id "${options.sessionId}" is not a UUID`);
    }
    this.sessionId = (options.sessionId ?? remote.sessionId ?? crypto.randomUUID()).toLowerCase();
    this.userId = remote.userId ?? options.userId ?? envUser();
    this.userContext = create(
      UserContextSchema,
      this.userId === undefined ? {} : { userId: this.userId },
    );
    this.clientType = remote.userAgent ?? `valise-client/${CLIENT_VERSION}`;
    const headers: Record<string, string> = { ...remote.params, ...(options.headers ?? {}) };
    const token = remote.token ?? options.token;
    if (token !== undefined && token !== "") headers.authorization = `Bearer ${token}`;
    const auth: Interceptor = (next) => (req) => {
      for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
      return next(req);
    };
    // One token for every endpoint: they are nodes of one service (a cluster), so the list is
    // the user's to trust as a whole, as a single host is.
    const endpoints = options.endpoints === undefined
      ? endpointsOf(remote)
      : parseEndpoints(options.endpoints);
    this.pool = new EndpointPool(
      endpoints,
      remote.useSsl,
      [auth, ...(options.interceptors ?? [])],
      options.retry?.endpointCooldownMs ?? 10_000,
    );
    this.retry = new RetryPolicy(options.retry ?? {}, this.pool, report);
  }

  /** The URL the next call goes to: the first endpoint, unless it failed a moment ago. */
  get endpoint(): string {
    return this.pool.pick().baseUrl;
  }

  /** The server's id for this session, once a response has carried it. */
  get serverSideSessionId(): string | undefined {
    return this.#serverSideSessionId;
  }

  /** Whether {@linkcode SessionCore.close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The server-side session id to send, once known. */
  observed(): Observed {
    return this.#serverSideSessionId === undefined
      ? {}
      : { clientObservedServerSideSessionId: this.#serverSideSessionId };
  }

  /** What names this session in a Spark Connect request: ids, user, client type, observed id. */
  sparkRequest(): {
    sessionId: string;
    userContext: UserContext;
    clientType: string;
  } & Observed {
    return {
      sessionId: this.sessionId,
      userContext: this.userContext,
      clientType: this.clientType,
      ...this.observed(),
    };
  }

  /**
   * Checks a response is this session's: its session id, and its server-side id once known.
   *
   * @param res The response's ids.
   * @throws {ValiseClientError} `INTEGRITY_ERROR` for another session's response.
   */
  verify(res: { sessionId: string; serverSideSessionId: string }): void {
    if (res.sessionId !== this.sessionId) {
      throw integrity(
        `Received incorrect session identifier for request: ${res.sessionId} != ${this.sessionId}`,
      );
    }
    this.verifyServerSide(res.serverSideSessionId);
  }

  /**
   * Learns the server-side session id, or checks it has not changed.
   *
   * @param id The id a response carried (`""` when none).
   * @throws {ValiseClientError} `INTEGRITY_ERROR` when it differs from the one learned.
   */
  verifyServerSide(id: string): void {
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

  /**
   * Refuses calls once the session is closed on this client.
   *
   * @throws {ValiseClientError} `INVALID_HANDLE.SESSION_CLOSED`.
   */
  checkOpen(): void {
    if (this.#closed) {
      throw clientError(
        "INVALID_HANDLE.SESSION_CLOSED",
        "FailedPrecondition",
        `The session ${this.sessionId} is closed on this client.`,
      );
    }
  }

  /** Closes the connections (once). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.pool.close();
  }
}

/**
 * Call options with the caller's signal, when there is one.
 *
 * @param signal Cancels the call.
 * @returns The options.
 */
export function callOptions(signal: AbortSignal | undefined): CallOptions {
  return signal === undefined ? {} : { signal };
}

/**
 * The error of a response that belongs to another session.
 *
 * @param message Which ids differ.
 * @returns `INTEGRITY_ERROR`.
 */
export function integrity(message: string): ValiseClientError {
  return clientError("INTEGRITY_ERROR", "Internal", message);
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
