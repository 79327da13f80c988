// Copyright 2026 the Valise authors. Apache-2.0 license.
// The endpoints of a session: one HTTP/2 connection and set of clients per endpoint, used in the
// order given; an endpoint that failed is passed over for a cool-down (which grows while it keeps
// failing) and then tried again, so a node that comes back gets its clients back.
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  guardHttp2Session,
  Health,
  PipService,
  SessionService,
  SparkConnectService,
  StoreService,
  WorkerService,
} from "@valise/protocol";
import { type Endpoint, formatEndpoint } from "./connection_string.ts";
import type { StreamCallTarget } from "./_server_stream.ts";

/** The longest cool-down, as a multiple of the first: a dead endpoint is still tried again. */
const MAX_COOLDOWN_FACTOR = 32;

/**
 * Connect's session manager, with each connection's teardown kept out of the runtime's frame
 * processing (see `guardHttp2Session`): a server that closes the connection as a call ends must
 * not take the client's process down.
 */
export class GuardedSessionManager extends Http2SessionManager {
  override async request(
    ...args: Parameters<Http2SessionManager["request"]>
  ): ReturnType<Http2SessionManager["request"]> {
    const stream = await super.request(...args);
    if (stream.session) guardHttp2Session(stream.session);
    return stream;
  }
}

/** One endpoint's clients, over one HTTP/2 connection. */
export class Node {
  /** `host:port`, as reports name it. */
  readonly label: string;
  /** The URL calls go to. */
  readonly baseUrl: string;
  /** Spark Connect's service. */
  readonly spark: Client<typeof SparkConnectService>;
  /** Valise's store service (HasBlobs, AttachArtifacts). */
  readonly store: Client<typeof StoreService>;
  /** Valise's session service (ListArtifacts, RemoveArtifacts). */
  readonly sessions: Client<typeof SessionService>;
  /** The standard health service. */
  readonly health: Client<typeof Health>;
  /** Valise's pip service (Install, Uninstall, List). */
  readonly pips: Client<typeof PipService>;
  /** Valise's worker service, for Run. */
  readonly workers: Client<typeof WorkerService>;
  /** The worker service without gzip, for Apply. */
  readonly applyWorkers: Client<typeof WorkerService>;
  /** The connection and interceptors, for calls made without Connect's transport. */
  readonly direct: StreamCallTarget;
  /** Failures in a row; 0 once a call went through. */
  failures = 0;
  /** Until when (ms since the epoch) other endpoints are preferred. */
  downUntil = 0;
  #manager: Http2SessionManager;

  /**
   * Sets up the endpoint's transport; nothing is sent yet.
   *
   * @param endpoint Host and port.
   * @param useSsl Whether to speak TLS.
   * @param interceptors Run on every call.
   */
  constructor(endpoint: Endpoint, useSsl: boolean, interceptors: Interceptor[]) {
    this.label = formatEndpoint(endpoint);
    this.baseUrl = `${useSsl ? "https" : "http"}://${this.label}`;
    this.#manager = new GuardedSessionManager(this.baseUrl);
    this.direct = { manager: this.#manager, baseUrl: this.baseUrl, interceptors };
    const transport = (acceptCompression?: []) =>
      createGrpcTransport({
        baseUrl: this.baseUrl,
        sessionManager: this.#manager,
        interceptors,
        ...(acceptCompression ? { acceptCompression } : {}),
      });
    const shared = transport();
    this.spark = createClient(SparkConnectService, shared);
    this.store = createClient(StoreService, shared);
    this.sessions = createClient(SessionService, shared);
    this.health = createClient(Health, shared);
    this.pips = createClient(PipService, shared);
    this.workers = createClient(WorkerService, shared);
    // Arrow data compresses poorly and gzip would cost the server about half its CPU on Apply
    // (docs/apply.md): this call does not advertise it.
    this.applyWorkers = createClient(WorkerService, transport([]));
  }

  /** Closes the connection. */
  close(): void {
    this.#manager.abort();
  }
}

/** A session's endpoints, in the order they are preferred. */
export class EndpointPool {
  /** Every endpoint, in order. */
  readonly nodes: readonly Node[];
  #cooldownMs: number;

  /**
   * Sets up every endpoint's transport; nothing is sent yet.
   *
   * @param endpoints Hosts and ports, at least one, in order.
   * @param useSsl Whether to speak TLS.
   * @param interceptors Run on every call.
   * @param cooldownMs How long an endpoint that failed is passed over at first.
   */
  constructor(
    endpoints: readonly Endpoint[],
    useSsl: boolean,
    interceptors: Interceptor[],
    cooldownMs: number,
  ) {
    if (endpoints.length === 0) throw new TypeError("Cannot connect: no endpoint given");
    if (!Number.isFinite(cooldownMs) || cooldownMs < 0) {
      throw new RangeError(`Cannot connect: endpointCooldownMs ${cooldownMs} is not >= 0`);
    }
    this.nodes = endpoints.map((e) => new Node(e, useSsl, interceptors));
    this.#cooldownMs = cooldownMs;
  }

  /**
   * The endpoint a call goes to: the first one not cooling down after a failure, else the one
   * whose cool-down ends first. Endpoints in `avoid` (those that already failed this call) come
   * last, so that a retry goes to each other endpoint before it goes back to one.
   *
   * @param avoid Endpoints to take only when no other is left.
   * @param now The time, in ms since the epoch.
   * @returns The endpoint.
   */
  pick(avoid: ReadonlySet<Node> = new Set(), now: number = Date.now()): Node {
    const fresh = this.nodes.filter((n) => !avoid.has(n));
    const among = fresh.length > 0 ? fresh : this.nodes;
    let soonest = among[0]!;
    for (const n of among) {
      if (n.downUntil <= now) return n;
      if (n.downUntil < soonest.downUntil) soonest = n;
    }
    return soonest;
  }

  /**
   * Whether an endpoint is cooling down after a failure.
   *
   * @param node The endpoint.
   * @param now The time, in ms since the epoch.
   * @returns `true` while other endpoints are preferred to it.
   */
  coolingDown(node: Node, now: number = Date.now()): boolean {
    return node.downUntil > now;
  }

  /**
   * Notes that a call failed because of the endpoint: it is passed over for a while, twice as
   * long each time in a row (up to 32 times the first).
   *
   * @param node The endpoint.
   */
  failed(node: Node): void {
    node.failures++;
    const factor = Math.min(MAX_COOLDOWN_FACTOR, 2 ** (node.failures - 1));
    node.downUntil = Date.now() + this.#cooldownMs * factor;
  }

  /**
   * Notes that the endpoint answered: it is preferred again in its place.
   *
   * @param node The endpoint.
   */
  succeeded(node: Node): void {
    node.failures = 0;
    node.downUntil = 0;
  }

  /** Closes every connection. */
  close(): void {
    for (const n of this.nodes) n.close();
  }
}
