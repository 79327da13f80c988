// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The serving side of a parallel Apply in a cluster: this node volunteers for other nodes'
 * calls (`valise.apply.offer`), opens workers for them (`valise.apply.open.<node>`) in its own
 * copy of the session, and runs their units (`valise.apply.lane.<node>.<lane>`). A request is
 * served only for a session the cluster records for the user it names, checked on this node's
 * store; nothing in a message decides a path, a uid or a limit here.
 *
 * @module
 */
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import { isLaunchError, type Launcher, type SessionLimits } from "@valise/launcher";
import { isSessionError, type SessionStore } from "@valise/session-store";
import { parseSchemaMessage } from "../_ipc_pieces.ts";
import {
  type ApplyFn,
  type ApplyTask,
  asApplyError,
  checkedFunction,
  type FormName,
  type Transport,
} from "../_apply_common.ts";
import { type LaneItem, LocalLane } from "../_apply_lane.ts";
import type { LayerSource } from "../session_spec.ts";
import { UNITS_IN_FLIGHT } from "../_apply_parallel.ts";
import { DRIVER_FRAME_BYTES } from "../_apply_driver.ts";
import { isServerError } from "../errors.ts";
import type { Metrics } from "../metrics.ts";
import {
  ApplyWireError,
  decodeMessage,
  encodeMessage,
  field,
  laneSubject,
  OFFER_SUBJECT,
  openSubject,
} from "./_apply_wire.ts";

/** How long a `take` waits for output before it answers "nothing yet". */
export const LONG_POLL_MS = 1000;
/** A worker no request reached for this long is stopped (its caller is gone). */
export const LANE_IDLE_MS = 60_000;
/** Output of a worker held for its caller before the worker is paused. */
const OUTBOX_BYTES = 2 * 2 ** 20;
/** The body of one reply (below NATS's default 1 MiB message limit). */
export const CHUNK_BYTES = 512 * 1024;
/** Units in hand at once: the caller hands at most {@linkcode UNITS_IN_FLIGHT}. */
const MAX_IN_HAND = UNITS_IN_FLIGHT + 1;
/** What one item's entry in a reply's header may take (a mark's counts, an out's lengths). */
const ITEM_HEADER_BYTES = 160;
/** The longest user id accepted (Spark's are short; this only bounds what a message holds). */
const MAX_USER_CHARS = 4096;

/** What the serving side needs. */
export interface ApplyServeContext {
  /** The node's NATS connection. */
  readonly nc: NatsConnection;
  /** This node's id. */
  readonly nodeId: string;
  /** The node's session store (cluster-backed). */
  readonly store: SessionStore;
  /** The node's launcher. */
  readonly launcher: Launcher;
  /** The node's worker limits. */
  readonly limits: SessionLimits;
  /** The most workers this node runs for other nodes at once. */
  readonly maxLanes: number;
  /**
   * The largest Arrow IPC message.
   * @default {DRIVER_FRAME_BYTES}
   */
  readonly maxMessageBytes?: number | undefined;
  /** Counters. */
  readonly metrics?: Metrics | undefined;
  /** Notices. */
  readonly log?: ((line: string) => void) | undefined;
  /**
   * The node's pip layers: a worker run for another node gets the session's packages too.
   * @default {undefined} none
   */
  readonly pip?: LayerSource | undefined;
}

class Notifier {
  #waiters: (() => void)[] = [];
  wait(): Promise<void> {
    return new Promise((r) => this.#waiters.push(r));
  }
  notify(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const r of w) r();
  }
}

/** What a refusal says: a class and a message (never a stack or a path of this node's). */
function refusal(e: unknown): { errorClass: string; message: string } {
  const x = asApplyError(e);
  if (x instanceof ApplyWireError) {
    return { errorClass: "APPLY_INVALID_REQUEST", message: `Cannot open a worker: ${x.message}` };
  }
  if (isServerError(x)) return { errorClass: x.code, message: x.detail };
  if (isSessionError(x)) return { errorClass: x.errorClass, message: x.message };
  // The launcher's (shutting down, slots full, the session stopped): not the function's.
  if (isLaunchError(x)) return { errorClass: `LAUNCH_${x.code}`, message: x.message };
  return { errorClass: "APPLY_WORKER_FAILED", message: `Cannot open a worker: ${String(x)}` };
}

/** One worker this node runs for another node's call. */
class ServedLane {
  readonly id = crypto.randomUUID();
  readonly caller: string;
  readonly sessionId: string;
  lastSeen = Date.now();
  readonly lane: LocalLane;
  #release: () => void;
  #metrics: Metrics | undefined;
  #outbox: LaneItem[] = [];
  #cursor = 0;
  #outBytes = 0;
  #done = false;
  #error: unknown;
  #closed = false;
  #changed = new Notifier();
  #unit: { seq: number; parts: Uint8Array[]; bytes: number } | undefined;
  #nextSeq = -1;
  #inHand = 0;
  #maxUnitBytes: number;

  constructor(
    lane: LocalLane,
    release: () => void,
    caller: string,
    sessionId: string,
    maxUnitBytes: number,
    metrics: Metrics | undefined,
  ) {
    this.lane = lane;
    this.#release = release;
    this.caller = caller;
    this.sessionId = sessionId;
    this.#maxUnitBytes = maxUnitBytes;
    this.#metrics = metrics;
    this.#pump();
  }

  async #pump(): Promise<void> {
    try {
      for await (const item of this.lane.items()) {
        if (this.#closed) return;
        if (item.kind === "stderr") {
          // Pieces that fit a reply.
          for (let i = 0; i < item.data.length; i += CHUNK_BYTES) {
            this.#outbox.push({ kind: "stderr", data: item.data.subarray(i, i + CHUNK_BYTES) });
          }
        } else {
          this.#outbox.push(item);
          if (item.kind === "mark") {
            this.#inHand--;
            this.#metrics?.applyServedUnit();
          }
        }
        this.#outBytes += item.kind === "mark" ? 64 : item.data.length;
        this.#changed.notify();
        // The caller takes as it can; meanwhile the worker waits in write().
        while (!this.#closed && this.#outBytes >= OUTBOX_BYTES) await this.#changed.wait();
      }
      this.#done = true;
    } catch (e) {
      this.#error = e;
    } finally {
      this.#changed.notify();
    }
  }

  /** One part of unit `seq`; the last one hands the unit to the worker. */
  put(h: Record<string, unknown>, body: Uint8Array): void {
    const seq = field.int(h, "seq", 0, Number.MAX_SAFE_INTEGER);
    const last = field.bool(h, "last");
    if (!this.#unit) {
      if (seq <= this.#nextSeq) {
        throw new ApplyWireError(`unit ${seq} comes after ${this.#nextSeq}`);
      }
      if (this.#inHand >= MAX_IN_HAND) {
        throw new ApplyWireError(`more than ${MAX_IN_HAND} units in hand`);
      }
      this.#unit = { seq, parts: [], bytes: 0 };
    } else if (this.#unit.seq !== seq) {
      throw new ApplyWireError(`a part of unit ${seq} in the middle of unit ${this.#unit.seq}`);
    }
    const u = this.#unit;
    u.bytes += body.length;
    if (u.bytes > this.#maxUnitBytes) {
      throw new ApplyWireError(`unit ${seq} is over ${this.#maxUnitBytes} bytes`);
    }
    u.parts.push(body.slice());
    if (!last) return;
    const whole = new Uint8Array(u.bytes);
    let off = 0;
    for (const p of u.parts) {
      whole.set(p, off);
      off += p.length;
    }
    this.#unit = undefined;
    this.#nextSeq = seq;
    this.#inHand++;
    this.lane.send(seq, whole).catch(() => {});
  }

  /** Output so far (at most `max` bytes of it), waiting up to {@linkcode LONG_POLL_MS} for some. */
  async take(max: number): Promise<Uint8Array> {
    if (!this.#outbox.length && !this.#done && this.#error === undefined && !this.#closed) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#changed.wait(),
        new Promise<void>((r) => timer = setTimeout(r, LONG_POLL_MS)),
      ]);
      clearTimeout(timer);
    }
    const items: Record<string, unknown>[] = [];
    const body: Uint8Array[] = [];
    let bytes = 0;
    // Each item's header counts too: a reply stays under NATS's message limit however small
    // the items are.
    while (this.#outbox.length && (items.length === 0 || bytes < max)) {
      const item = this.#outbox[0]!;
      bytes += ITEM_HEADER_BYTES;
      if (item.kind === "mark") {
        items.push({ k: "mark", seq: item.seq, ...item.stats });
        this.#outbox.shift();
        this.#outBytes -= 64;
        continue;
      }
      if (max - bytes <= 0 && items.length) break;
      const take = Math.min(item.data.length - this.#cursor, Math.max(1, max - bytes));
      const part = item.data.subarray(this.#cursor, this.#cursor + take);
      this.#cursor += take;
      const last = this.#cursor === item.data.length;
      items.push(
        item.kind === "out"
          ? { k: "out", seq: item.seq, len: take, last }
          : { k: "stderr", len: take, last },
      );
      body.push(part);
      bytes += take;
      if (last) {
        this.#outbox.shift();
        this.#outBytes -= item.data.length;
        this.#cursor = 0;
      }
    }
    this.#changed.notify();
    const over = !this.#outbox.length;
    const header: Record<string, unknown> = { ok: true, items };
    if (over && this.#done) header.done = true;
    if (over && this.#error !== undefined) header.error = laneError(this.#error);
    return encodeMessage(header, body);
  }

  /** Stops the worker and lets the session go. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.lane.kill();
    this.#release();
    this.#changed.notify();
  }
}

/** A worker's failure as the caller gets it: its class, message and traceback. */
function laneError(e: unknown): { errorClass: string; message: string; traceback: string } {
  const x = asApplyError(e);
  if (isServerError(x)) return { errorClass: x.code, message: x.detail, traceback: x.traceback };
  const r = refusal(x);
  return { ...r, traceback: "" };
}

/**
 * Serves other nodes' parallel Apply calls: offers, opens and runs workers, stops the ones
 * whose caller went silent.
 */
export class ApplyServer {
  #ctx: ApplyServeContext;
  #lanes = new Map<string, ServedLane>();
  /** Workers being opened (counted against maxLanes until they are, or are not). */
  #opening = 0;
  #subs: Subscription[] = [];
  #timer: ReturnType<typeof setInterval> | undefined;
  #closed = false;

  /** @param ctx The connection, this node, its store, launcher and limits. */
  constructor(ctx: ApplyServeContext) {
    this.#ctx = ctx;
  }

  /** Workers this node runs for other nodes now. */
  get lanes(): number {
    return this.#lanes.size;
  }

  /** Subscribes to the offer, open and lane subjects. */
  start(): void {
    const { nc, nodeId } = this.#ctx;
    const on = (subject: string, fn: (m: Msg) => Promise<void>) =>
      this.#subs.push(nc.subscribe(subject, {
        callback: (err, m) => {
          if (err || this.#closed) return;
          fn(m).catch(() => {});
        },
      }));
    on(OFFER_SUBJECT, (m) => this.#offer(m));
    on(openSubject(nodeId), (m) => this.#open(m));
    on(laneSubject(nodeId, "*"), (m) => this.#lane(m));
    // A caller that died sends nothing more: its workers go after LANE_IDLE_MS.
    this.#timer = setInterval(() => {
      const now = Date.now();
      for (const l of this.#lanes.values()) {
        if (now - l.lastSeen > LANE_IDLE_MS) this.#drop(l, "its caller went silent");
      }
    }, 5000);
  }

  async #offer(m: Msg): Promise<void> {
    let from: string;
    try {
      const { header } = decodeMessage(m.data, 4096);
      field.uuid(header, "call");
      from = field.node(header, "from");
    } catch {
      return;
    }
    if (from === this.#ctx.nodeId || this.#busy()) return;
    // The least loaded answer first: a node with workers of other calls answers later.
    const load = this.#lanes.size + this.#opening;
    if (load) await new Promise((r) => setTimeout(r, 25 * load));
    if (this.#closed || this.#busy()) return;
    m.respond(encodeMessage({ node: this.#ctx.nodeId, load }));
  }

  async #open(m: Msg): Promise<void> {
    const ctx = this.#ctx;
    let caller = "?";
    let sessionId = "?";
    try {
      const { header: h } = decodeMessage(m.data);
      field.uuid(h, "call");
      caller = field.node(h, "from");
      const userId = field.string(h, "user", MAX_USER_CHARS);
      sessionId = field.sessionId(h, "session");
      const ssid = h.ssid === undefined ? undefined : field.uuid(h, "ssid");
      const fn: ApplyFn = h.module !== undefined
        ? checkedFunction({ case: "moduleFunction", value: field.string(h, "module", 4096) }, "")
        : checkedFunction(
          { case: "code", value: field.string(h, "code", 512 * 1024) },
          field.string(h, "name", 4096),
        );
      const form = field.oneOf<FormName>(h, "form", ["pyarrow", "pandas", "columns"]);
      const transport = field.oneOf<Transport>(h, "transport", ["arrow", "columnar"]);
      const timeoutMs = field.int(h, "timeoutMs", 0, 0xffffffff);
      const schema = field.string(h, "schema", 256 * 1024);
      let declaredBytes = new Uint8Array();
      let declared;
      if (schema) {
        try {
          declaredBytes = Uint8Array.from(atob(schema), (c) => c.charCodeAt(0));
        } catch {
          throw new ApplyWireError("field schema is not base64");
        }
        declared = parseSchemaMessage(declaredBytes);
      }
      if (this.#busy()) {
        throw new ApplyWireError(`this node runs ${this.#lanes.size} workers for others already`);
      }
      // The session must be the cluster's, for that user: looked up (and this node's copy
      // brought in line) by the store, never created here.
      this.#opening++;
      let session;
      try {
        session = await ctx.store.existing({
          userId,
          sessionId,
          clientObservedServerSideSessionId: ssid,
        });
      } finally {
        this.#opening--;
      }
      if (!session) {
        throw new ApplyWireError(`the cluster records no session ${sessionId} of that user`);
      }
      const task: ApplyTask = { fn, form, declared, declaredBytes, timeoutMs };
      const max = ctx.maxMessageBytes ?? DRIVER_FRAME_BYTES;
      const lane = new LocalLane(ctx, session, task, { transport });
      const served = new ServedLane(
        lane,
        session.hold(),
        caller,
        sessionId,
        2 * max,
        ctx.metrics,
      );
      this.#lanes.set(served.id, served);
      let ready;
      try {
        ready = await lane.ready;
      } catch (e) {
        this.#drop(served, "it could not start");
        throw e;
      }
      ctx.metrics?.applyServed("opened");
      ctx.log?.(`apply: serving a worker of session ${sessionId} for node ${caller}`);
      m.respond(encodeMessage({
        ok: true,
        lane: served.id,
        transport: ready.transport,
        interpreter: ready.interpreter,
      }));
    } catch (e) {
      ctx.metrics?.applyServed("refused");
      const r = refusal(e);
      ctx.log?.(
        `apply: refused a worker of session ${sessionId} for node ${caller}: [${r.errorClass}] ` +
          r.message,
      );
      m.respond(encodeMessage({ ok: false, ...r }));
    }
  }

  #busy(): boolean {
    return this.#lanes.size + this.#opening >= this.#ctx.maxLanes;
  }

  async #lane(m: Msg): Promise<void> {
    const id = m.subject.slice(m.subject.lastIndexOf(".") + 1);
    const lane = this.#lanes.get(id);
    if (!lane) {
      m.respond(encodeMessage({ ok: false, gone: true, message: "no such worker here" }));
      return;
    }
    lane.lastSeen = Date.now();
    try {
      const { header: h, body } = decodeMessage(m.data, 4096);
      const op = field.oneOf(h, "op", ["put", "take", "end", "close", "ping"]);
      if (op === "put") lane.put(h, body);
      else if (op === "take") {
        m.respond(await lane.take(field.int(h, "max", 1, CHUNK_BYTES)));
        lane.lastSeen = Date.now();
        return;
      } else if (op === "end") lane.lane.end();
      else if (op === "close") this.#drop(lane, "");
      m.respond(encodeMessage({ ok: true }));
    } catch (e) {
      // A caller that breaks the protocol loses its worker: nothing it sends later is used.
      this.#drop(lane, `a bad request (${e instanceof Error ? e.message : e})`);
      m.respond(encodeMessage({ ok: false, gone: true, message: String(e) }));
    }
  }

  #drop(lane: ServedLane, why: string): void {
    if (!this.#lanes.delete(lane.id)) return;
    lane.close();
    if (why) {
      this.#ctx.log?.(
        `apply: stopped a worker of session ${lane.sessionId} for node ${lane.caller}: ${why}`,
      );
    }
  }

  /** Stops serving: unsubscribes and stops every worker it runs for others. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    for (const s of this.#subs) s.unsubscribe();
    for (const l of [...this.#lanes.values()]) this.#drop(l, "");
    await Promise.resolve();
  }
}
