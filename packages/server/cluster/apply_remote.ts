// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The calling side of a parallel Apply in a cluster: it asks every node for a free worker
 * (`valise.apply.offer`), opens workers on the first that answer, and drives each one over
 * NATS request/reply (`RemoteLane`). Every reply is another node's word: checked and capped
 * like a client's, and anything wrong makes the lane lost (its units run on this node), never
 * a decision of this node's.
 *
 * @module
 */
import type { NatsConnection } from "@nats-io/transport-node";
import type { Session } from "@valise/session-store";
import { applyFailure, type ApplyTask, type Transport } from "../_apply_common.ts";
import { type Lane, type LaneItem, LaneLostError, type LaneReady } from "../_apply_lane.ts";
import type { RemoteLanes } from "../_apply_parallel.ts";
import { DRIVER_FRAME_BYTES } from "../_apply_driver.ts";
import { isServerErrorCode } from "../errors.ts";
import {
  ApplyWireError,
  decodeMessage,
  encodeMessage,
  field,
  isNodeId,
  laneSubject,
  OFFER_SUBJECT,
  openSubject,
} from "./_apply_wire.ts";
import { CHUNK_BYTES, LANE_IDLE_MS, LONG_POLL_MS } from "./apply_serve.ts";

/**
 * How long nodes have to volunteer (the call runs on its first worker here meanwhile); an idle
 * node answers in a few milliseconds.
 */
export const OFFER_WAIT_MS = 250;
/** How long a node may take to open a worker (bringing its copy of the session in line). */
const OPEN_TIMEOUT_MS = 120_000;
/** How long a node may take to answer any other request: past it, the node is lost. */
const REQUEST_TIMEOUT_MS = 10_000;

/** What the calling side needs. */
export interface ClusterLanesContext {
  /** The node's NATS connection. */
  readonly nc: NatsConnection;
  /** This node's id. */
  readonly nodeId: string;
  /**
   * The largest Arrow IPC message (an output item of a worker).
   * @default {DRIVER_FRAME_BYTES}
   */
  readonly maxMessageBytes?: number | undefined;
  /** Notices (a worker ready on another node). */
  readonly log?: ((line: string) => void) | undefined;
  /**
   * How long nodes have to volunteer.
   * @default {OFFER_WAIT_MS}
   */
  readonly offerWaitMs?: number | undefined;
}

/** Workers of parallel Apply calls on other nodes of the cluster. */
export class ClusterLanes implements RemoteLanes {
  #ctx: ClusterLanesContext;

  /** @param ctx The connection and this node. */
  constructor(ctx: ClusterLanesContext) {
    this.#ctx = ctx;
  }

  /** Up to `count` nodes that can take a worker now, the least loaded first. */
  async offers(count: number, call: string): Promise<string[]> {
    const nodes: string[] = [];
    try {
      const replies = await this.#ctx.nc.requestMany(
        OFFER_SUBJECT,
        encodeMessage({ call, from: this.#ctx.nodeId }),
        {
          strategy: "count",
          maxMessages: count,
          maxWait: this.#ctx.offerWaitMs ?? OFFER_WAIT_MS,
        },
      );
      for await (const m of replies) {
        try {
          const node = field.node(decodeMessage(m.data, 4096).header, "node");
          if (node !== this.#ctx.nodeId && !nodes.includes(node)) nodes.push(node);
        } catch {
          // Not an offer: ignored.
        }
      }
    } catch {
      // No node answered (or NATS is away): the call runs here.
    }
    return nodes.slice(0, count);
  }

  /** {@inheritDoc RemoteLanes.open} */
  async open(
    count: number,
    session: Session,
    task: ApplyTask,
    transport: Transport,
    signal: AbortSignal,
  ): Promise<Lane[]> {
    const call = crypto.randomUUID();
    const nodes = await this.offers(count, call);
    if (signal.aborted) return [];
    const fn = "module" in task.fn
      ? { module: task.fn.module }
      : { code: task.fn.code, name: task.fn.name };
    const request = encodeMessage({
      call,
      from: this.#ctx.nodeId,
      user: session.userId,
      session: session.sessionId,
      ssid: session.serverSideSessionId,
      ...fn,
      form: task.form,
      transport,
      timeoutMs: task.timeoutMs,
      schema: task.declaredBytes.length ? btoa(String.fromCharCode(...task.declaredBytes)) : "",
    });
    return nodes.map((node) =>
      new RemoteLane(this.#ctx, node, request, session.sessionId, transport)
    );
  }
}

/** One worker on another node, driven over request/reply. */
export class RemoteLane implements Lane {
  readonly where: string;
  readonly remote = true;
  readonly ready: Promise<LaneReady>;
  #ctx: ClusterLanesContext;
  #laneId: string | undefined;
  #killed = false;
  #kill = new AbortController();
  #stopped: Promise<never>;
  #chain: Promise<void> = Promise.resolve();
  #lastSent = Date.now();
  #keepalive: ReturnType<typeof setInterval> | undefined;

  /**
   * Opens the worker (its `ready` settles when the node answers).
   *
   * @param ctx The connection and this node.
   * @param node The node.
   * @param request The open request.
   * @param sessionId For notices.
   * @param transport The call's transport (the node's worker must take it).
   */
  constructor(
    ctx: ClusterLanesContext,
    node: string,
    request: Uint8Array,
    sessionId: string,
    transport: Transport,
  ) {
    if (!isNodeId(node)) throw new RangeError(`Cannot open a worker on ${JSON.stringify(node)}`);
    this.#ctx = ctx;
    this.where = node;
    // What a stopped lane's requests end with: a dead node's pending request would otherwise
    // hold the call until it times out.
    this.#stopped = new Promise<never>((_, reject) =>
      this.#kill.signal.addEventListener(
        "abort",
        () => reject(new LaneLostError("stopped")),
        { once: true },
      )
    );
    this.#stopped.catch(() => {});
    this.ready = this.#open(request, sessionId, transport);
    this.ready.catch(() => {});
  }

  async #open(request: Uint8Array, sessionId: string, transport: Transport): Promise<LaneReady> {
    let h: Record<string, unknown>;
    try {
      const m = await Promise.race([
        this.#ctx.nc.request(openSubject(this.where), request, { timeout: OPEN_TIMEOUT_MS }),
        this.#stopped,
      ]);
      h = decodeMessage(m.data, 64 * 1024).header;
    } catch (e) {
      throw new LaneLostError(`node ${this.where} did not open a worker: ${message(e)}`);
    }
    if (h.ok !== true) {
      const cls = typeof h.errorClass === "string" ? h.errorClass.slice(0, 100) : "?";
      const why = typeof h.message === "string" ? h.message.slice(0, 1000) : "";
      throw new LaneLostError(`node ${this.where} refused a worker: [${cls}] ${why}`);
    }
    let ready: LaneReady;
    try {
      this.#laneId = field.uuid(h, "lane");
      ready = {
        transport: field.oneOf<Transport>(h, "transport", ["arrow", "columnar"]),
        interpreter: field.string(h, "interpreter", 4096),
      };
    } catch (e) {
      throw new LaneLostError(`node ${this.where} answered out of protocol: ${message(e)}`);
    }
    if (this.#killed) {
      this.#close();
      throw new LaneLostError("stopped before it was ready");
    }
    if (ready.transport !== transport) {
      this.#close();
      throw new LaneLostError(`node ${this.where}'s worker takes the ${ready.transport} transport`);
    }
    this.#ctx.log?.(`apply: a worker of session ${sessionId} is ready on node ${this.where}`);
    // The node stops a worker it hears nothing of for LANE_IDLE_MS; this one is alive even
    // while its output waits for its turn (no take is sent then).
    this.#keepalive = setInterval(() => {
      if (Date.now() - this.#lastSent > LANE_IDLE_MS / 4) {
        this.#request({ op: "ping" }).catch(() => {});
      }
    }, LANE_IDLE_MS / 4);
    return ready;
  }

  async #request(
    header: Record<string, unknown>,
    body: Uint8Array[] = [],
    timeout = REQUEST_TIMEOUT_MS,
  ): Promise<{ header: Record<string, unknown>; body: Uint8Array }> {
    if (!this.#laneId) throw new LaneLostError("not open");
    this.#lastSent = Date.now();
    let reply;
    try {
      const m = await Promise.race([
        this.#ctx.nc.request(
          laneSubject(this.where, this.#laneId),
          encodeMessage(header, body),
          { timeout },
        ),
        this.#stopped,
      ]);
      reply = decodeMessage(m.data, 1024 * 1024);
    } catch (e) {
      throw new LaneLostError(`node ${this.where}: ${message(e)}`);
    }
    if (reply.header.ok !== true) {
      const why = typeof reply.header.message === "string" ? reply.header.message : "";
      throw new LaneLostError(`node ${this.where} dropped the worker: ${why.slice(0, 1000)}`);
    }
    return reply;
  }

  send(seq: number, unit: Uint8Array): Promise<void> {
    const sent = this.#chain.then(async () => {
      const step = Math.min(CHUNK_BYTES, maxPayload(this.#ctx.nc));
      for (let off = 0; off < unit.length || off === 0; off += step) {
        const last = off + step >= unit.length;
        await this.#request({ op: "put", seq, last }, [unit.subarray(off, off + step)]);
        if (last) break;
      }
    });
    this.#chain = sent.catch(() => {});
    return sent;
  }

  end(): void {
    const ended = this.#chain.then(() => this.#request({ op: "end" }).then(() => {}));
    this.#chain = ended.catch(() => {});
  }

  async *items(): AsyncGenerator<LaneItem, void, undefined> {
    const max = (this.#ctx.maxMessageBytes ?? DRIVER_FRAME_BYTES) + 5;
    try {
      await Promise.race([this.ready, this.#stopped]);
      let part: { seq: number; parts: Uint8Array[]; bytes: number } | undefined;
      for (;;) {
        if (this.#killed) return;
        const { header, body } = await this.#request(
          { op: "take", max: CHUNK_BYTES },
          [],
          LONG_POLL_MS + REQUEST_TIMEOUT_MS,
        );
        const items = header.items;
        if (!Array.isArray(items) || items.length > 100_000) {
          throw new LaneLostError(`node ${this.where} answered out of protocol (items)`);
        }
        let off = 0;
        const bytes = (n: number): Uint8Array => {
          if (off + n > body.length) {
            throw new LaneLostError(`node ${this.where} answered out of protocol (lengths)`);
          }
          const b = body.subarray(off, off += n);
          return b;
        };
        for (const raw of items) {
          const it = raw as Record<string, unknown>;
          if (typeof it !== "object" || it === null) {
            throw new LaneLostError(`node ${this.where} answered out of protocol (item)`);
          }
          let kind: string;
          try {
            kind = field.oneOf(it, "k", ["out", "mark", "stderr"]);
            if (part && kind !== "out") throw new ApplyWireError("an item inside another");
            if (kind === "mark") {
              yield {
                kind: "mark",
                seq: field.int(it, "seq", 0, Number.MAX_SAFE_INTEGER),
                stats: {
                  rowsIn: field.int(it, "rowsIn", 0, Number.MAX_SAFE_INTEGER),
                  rowsOut: field.int(it, "rowsOut", 0, Number.MAX_SAFE_INTEGER),
                  batchesIn: field.int(it, "batchesIn", 0, Number.MAX_SAFE_INTEGER),
                  batchesOut: field.int(it, "batchesOut", 0, Number.MAX_SAFE_INTEGER),
                },
              };
              continue;
            }
            const data = bytes(field.int(it, "len", 0, CHUNK_BYTES));
            const last = field.bool(it, "last");
            if (kind === "stderr") {
              yield { kind: "stderr", data: data.slice() };
              continue;
            }
            const seq = field.int(it, "seq", 0, Number.MAX_SAFE_INTEGER);
            if (part && part.seq !== seq) throw new ApplyWireError("parts of two units mixed");
            part ??= { seq, parts: [], bytes: 0 };
            part.parts.push(data.slice());
            part.bytes += data.length;
            if (part.bytes > max) throw new ApplyWireError(`an output item over ${max} bytes`);
            if (!last) continue;
            const whole = new Uint8Array(part.bytes);
            let at = 0;
            for (const p of part.parts) {
              whole.set(p, at);
              at += p.length;
            }
            part = undefined;
            yield { kind: "out", seq, data: whole };
          } catch (e) {
            if (e instanceof LaneLostError) throw e;
            throw new LaneLostError(`node ${this.where} answered out of protocol: ${message(e)}`);
          }
        }
        if (off !== body.length) {
          throw new LaneLostError(`node ${this.where} answered out of protocol (extra bytes)`);
        }
        const error = header.error as Record<string, unknown> | undefined;
        if (error !== undefined) throw remoteFailure(this.where, error);
        if (header.done === true) {
          if (part) throw new LaneLostError(`node ${this.where} ended inside an output item`);
          return;
        }
      }
    } finally {
      clearInterval(this.#keepalive);
    }
  }

  kill(): void {
    if (this.#killed) return;
    this.#killed = true;
    this.#kill.abort();
    clearInterval(this.#keepalive);
    this.#close();
  }

  #close(): void {
    if (!this.#laneId) return;
    try {
      this.#ctx.nc.publish(laneSubject(this.where, this.#laneId), encodeMessage({ op: "close" }));
    } catch {
      // The connection is gone: the node stops the worker when it hears nothing more.
    }
  }
}

/**
 * What a remote worker failed with: the function's own failure (an `APPLY_*` class) fails the
 * call as it would here; anything else (the node shutting down, its copy of the session
 * released, its worker slots full) loses the lane and its units run here.
 */
function remoteFailure(node: string, e: Record<string, unknown>): Error {
  const cls = typeof e?.errorClass === "string" ? e.errorClass : "";
  const msg = typeof e?.message === "string" ? e.message.slice(0, 64 * 1024) : "";
  const tb = typeof e?.traceback === "string" ? e.traceback.slice(0, 256 * 1024) : "";
  if (isServerErrorCode(cls) && cls.startsWith("APPLY_") && cls !== "APPLY_INVALID_REQUEST") {
    return applyFailure(cls as Parameters<typeof applyFailure>[0], msg, tb);
  }
  return new LaneLostError(`node ${node}'s worker failed: [${cls.slice(0, 100)}] ${msg}`);
}

function maxPayload(nc: NatsConnection): number {
  const max = nc.info?.max_payload ?? 1024 * 1024;
  // Room for the header.
  return Math.max(4096, max - 16 * 1024);
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
