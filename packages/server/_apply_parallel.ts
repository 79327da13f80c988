// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Apply with `parallelism` N: the input cut into units (one record batch each, as a whole IPC
 * stream), dealt to N lanes (workers of the session here, or on other nodes of a cluster), at
 * most {@linkcode UNITS_IN_FLIGHT} per lane, and the outputs put back in input order before
 * they go to the client. A lane's failure fails the call, except a remote lane lost (its node
 * died): its units are run again here. See `docs/apply.md`.
 *
 * @module
 */
import type { ApplyResponse } from "@valise/protocol";
import { ipcBatchStreams } from "@valise/protocol";
import type { Session } from "@valise/session-store";
import {
  addStats,
  applyFailure,
  type ApplyTask,
  asApplyError,
  doneResponse,
  type DoneStats,
  errorResponse,
  inputFailure,
  ipc,
  response,
  type Transport,
} from "./_apply_common.ts";
import { DRIVER_FRAME_BYTES } from "./_apply_driver.ts";
import {
  type Lane,
  LaneLostError,
  type LaneReady,
  LocalLane,
  type LocalLaneContext,
} from "./_apply_lane.ts";
import { OutputMerger } from "./_apply_merge.ts";
import { isServerError } from "./errors.ts";
import type { Metrics } from "./metrics.ts";

/** Units handed to a lane and not yet done: one being run, one waiting in its pipe. */
export const UNITS_IN_FLIGHT = 2;
/**
 * Output a lane may have waiting for its turn (its units are not the next to go out) before
 * its worker is paused; one item (at most one message) may pass it.
 */
export const LANE_BUFFER_BYTES: number = 4 * 2 ** 20;

/** Opens lanes on other nodes: the cluster's part of a parallel Apply. */
export interface RemoteLanes {
  /**
   * Lanes on up to `count` other nodes, each opening (its `ready` settles once that node's
   * worker is up); fewer, or none, when fewer nodes can take one.
   *
   * @param count The most lanes wanted.
   * @param session The session (its user and ids travel with the request).
   * @param task The function, form and declared schema.
   * @param transport The call's transport (decided by its first worker here).
   * @param signal Aborted when the call ends: the lanes are closed.
   */
  open(
    count: number,
    session: Session,
    task: ApplyTask,
    transport: Transport,
    signal: AbortSignal,
  ): Promise<Lane[]>;
}

/** What a parallel Apply needs. */
export interface ParallelContext extends LocalLaneContext {
  /** Counters for `/metrics`. */
  readonly metrics?: Metrics | undefined;
  /** Receives notices (a remote lane lost). */
  readonly log?: ((line: string) => void) | undefined;
  /** Lanes on other nodes, in a cluster. */
  readonly remote?: RemoteLanes | undefined;
  /**
   * The output of one unit held whole for a remote lane (it goes out only once the unit is
   * done, so that it can be run again here if that node dies); past it the unit runs here.
   * @default {the largest message}
   */
  readonly remoteUnitBytes?: number | undefined;
  /**
   * Output a lane may have waiting for its turn before its worker is paused.
   * @default {LANE_BUFFER_BYTES}
   */
  readonly laneBufferBytes?: number | undefined;
  /**
   * Makes a lane on this node (tests put other workers here).
   * @default {a LocalLane}
   */
  readonly newLocal?: ((signal: AbortSignal) => Lane) | undefined;
}

/** A parallel Apply's task, input and signal. */
export interface ParallelJob extends ApplyTask {
  /** The input: the bytes of one Arrow IPC stream. */
  input: AsyncIterable<Uint8Array>;
  /** Aborted when the call ends. */
  signal: AbortSignal;
}

interface LaneState {
  lane: Lane;
  ready: boolean;
  /** Given no more units (it finishes what it has). */
  ended: boolean;
  /** Killed or lost: nothing it says counts any more. */
  dead: boolean;
  /** Its items ended after its end. */
  finished: boolean;
  /** Units handed and not yet done, by seq (with their bytes, for a remote lane). */
  inflight: Map<number, Uint8Array | undefined>;
  /** Bytes of its output (and stderr) not yet sent to the client. */
  buffered: number;
}

interface Slot {
  st: LaneState | undefined;
  items: Uint8Array[];
  bytes: number;
  done: boolean;
  stats: DoneStats | undefined;
}

/** A wake-up for every loop waiting on a change (each checks its own condition again). */
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

/**
 * Runs a parallel Apply and yields its responses: stderr as printed, the output stream in
 * input order, `done` (or the failure).
 *
 * @param ctx The launcher, limits, metrics and, in a cluster, remote lanes.
 * @param session The session.
 * @param job The task, its input and signal.
 * @param parallelism Lanes (at least 2).
 * @returns The responses.
 */
export async function* driveParallel(
  ctx: ParallelContext,
  session: Session,
  job: ParallelJob,
  parallelism: number,
): AsyncGenerator<ApplyResponse, void, undefined> {
  const maxMessageBytes = ctx.maxMessageBytes ?? DRIVER_FRAME_BYTES;
  const remoteUnitBytes = ctx.remoteUnitBytes ?? maxMessageBytes;
  const laneBufferBytes = ctx.laneBufferBytes ?? LANE_BUFFER_BYTES;
  const abort = new AbortController();
  const aborted = new Promise<undefined>((r) =>
    abort.signal.addEventListener("abort", () => r(undefined), { once: true })
  );
  const onAbort = () => abort.abort();
  job.signal.addEventListener("abort", onAbort, { once: true });
  if (job.signal.aborted) abort.abort();
  const changed = new Notifier();
  const lanes: LaneState[] = [];
  const pumps: Promise<void>[] = [];
  const slots = new Map<number, Slot>();
  const redo: { seq: number; unit: Uint8Array }[] = [];
  const stderr: { st: LaneState; data: Uint8Array }[] = [];
  const stats: DoneStats = { rowsIn: 0, rowsOut: 0, batchesIn: 0, batchesOut: 0 };
  let failure: { error: unknown } | undefined;
  let head = 0;
  let total = 0;
  let allSent = false;
  let rotate = 0;
  let merger: OutputMerger | undefined;
  let first: LaneReady | undefined;
  // The first worker here to start decides the call's transport (they all run the session's
  // interpreter); which one gets a worker slot first is not known in advance.
  let resolveFirst!: (r: LaneReady) => void;
  const firstLocal = new Promise<LaneReady>((r) => resolveFirst = r);

  const fail = (e: unknown) => {
    if (failure) return;
    failure = { error: e };
    abort.abort();
    changed.notify();
  };
  const local = () =>
    ctx.newLocal?.(abort.signal) ?? new LocalLane(ctx, session, job, { signal: abort.signal });

  const lost = (st: LaneState, why: unknown) => {
    if (st.dead) return;
    st.dead = true;
    st.lane.kill();
    const redone = [...st.inflight.entries()];
    st.inflight.clear();
    for (const [seq, unit] of redone) {
      const slot = slots.get(seq)!;
      slot.st = undefined;
      slot.items = [];
      slot.bytes = 0;
      redo.push({ seq, unit: unit! });
    }
    redo.sort((a, b) => a.seq - b.seq);
    ctx.metrics?.applyLaneLost();
    ctx.log?.(
      `apply: the worker on node ${st.lane.where} is lost (${
        why instanceof Error ? why.message : why
      }); ${redone.length} unit(s) run on this node instead`,
    );
    // The call keeps its parallelism with a worker here.
    if (!allSent && !abort.signal.aborted) addLane(local());
    changed.notify();
  };

  const holdsHead = (st: LaneState) => slots.get(head)?.st === st;

  async function pump(st: LaneState): Promise<void> {
    try {
      for await (const item of st.lane.items()) {
        if (st.dead) return;
        if (item.kind === "stderr") {
          stderr.push({ st, data: item.data });
          st.buffered += item.data.length;
        } else {
          const slot = slots.get(item.seq);
          if (!slot || slot.st !== st || slot.done) {
            throw applyFailure(
              "APPLY_PROTOCOL",
              `Cannot run a parallel Apply: a worker on ${st.lane.where} answered for unit ` +
                `${item.seq}, which it does not hold`,
            );
          }
          if (item.kind === "out") {
            slot.items.push(item.data);
            slot.bytes += item.data.length;
            st.buffered += item.data.length;
            if (st.lane.remote && slot.bytes > remoteUnitBytes) {
              throw new LaneLostError(
                `unit ${item.seq}'s output passed ${remoteUnitBytes} bytes, more than a remote ` +
                  "unit's output may hold",
              );
            }
          } else {
            slot.done = true;
            slot.stats = item.stats;
            st.inflight.delete(item.seq);
          }
        }
        changed.notify();
        // A remote lane's next unit to go out is held whole: it is never paused then.
        while (
          !abort.signal.aborted && !st.dead && st.buffered >= laneBufferBytes &&
          !(st.lane.remote && holdsHead(st))
        ) await changed.wait();
      }
      if (st.dead || abort.signal.aborted) return;
      if (!st.ended) {
        throw st.lane.remote
          ? new LaneLostError("it ended before its input did")
          : applyFailure("APPLY_PROTOCOL", "Cannot run a parallel Apply: a worker ended early");
      }
      st.finished = true;
    } catch (e) {
      if (st.dead || (abort.signal.aborted && !failure)) return;
      if (st.lane.remote && (e instanceof LaneLostError || !st.ready)) lost(st, e);
      else fail(e);
    } finally {
      changed.notify();
    }
  }

  function addLane(lane: Lane): void {
    const st: LaneState = {
      lane,
      ready: false,
      ended: false,
      dead: false,
      finished: false,
      inflight: new Map(),
      buffered: 0,
    };
    lanes.push(st);
    if (!lane.remote) lane.ready.then(resolveFirst, () => {});
    lane.ready.then(async (r) => {
      const call = first ?? await firstLocal;
      if (st.dead) return;
      if (r.transport !== call.transport) {
        return lost(
          st,
          `its interpreter takes the ${r.transport} transport, not ${call.transport}`,
        );
      }
      st.ready = true;
      changed.notify();
    }).catch((e) => {
      if (st.dead) return;
      if (lane.remote) lost(st, e);
      else fail(e);
    });
    pumps.push(pump(st));
  }

  function pick(localOnly: boolean): LaneState | undefined {
    let best: LaneState | undefined;
    const n = lanes.length;
    for (let i = 0; i < n; i++) {
      const st = lanes[(rotate + i) % n]!;
      if (!st.ready || st.dead || st.ended || st.inflight.size >= UNITS_IN_FLIGHT) continue;
      if (localOnly && st.lane.remote) continue;
      if (!best || st.inflight.size < best.inflight.size) best = st;
    }
    if (best) rotate = (lanes.indexOf(best) + 1) % n;
    return best;
  }

  function assign(st: LaneState, seq: number, unit: Uint8Array): void {
    const slot = slots.get(seq)!;
    slot.st = st;
    st.inflight.set(seq, st.lane.remote ? unit : undefined);
    ctx.metrics?.applyUnit(st.lane.remote ? "remote" : "local");
    st.lane.send(seq, unit).catch((e) => {
      if (st.dead) return;
      if (st.lane.remote) lost(st, e);
      else fail(e);
    });
  }

  async function dispatch(): Promise<void> {
    first = await Promise.race([firstLocal, aborted]);
    if (!first) return;
    if (ctx.remote) {
      // Other nodes' workers, once this call's transport is known; the rest run here. The
      // call goes on meanwhile with its first worker.
      ctx.remote.open(parallelism - 1, session, job, first.transport, abort.signal).then(
        (remote) => {
          if (abort.signal.aborted) {
            for (const l of remote) l.kill();
            return;
          }
          for (const l of remote) addLane(l);
          for (let i = remote.length; i < parallelism - 1; i++) addLane(local());
        },
      ).catch(fail);
    }
    merger = new OutputMerger(first.transport, job.declared, job.declaredBytes, maxMessageBytes);
    const input = ipcBatchStreams(job.input, { maxMessageBytes })[Symbol.asyncIterator]();
    let inputDone = false;
    try {
      for (;;) {
        if (abort.signal.aborted) return;
        let next = redo.shift();
        // A lost node's units run here: another node could be lost the same way.
        const localOnly = next !== undefined;
        if (!next && !inputDone) {
          let r;
          try {
            // The client's next message may never come once the call failed: not waited for.
            r = await Promise.race([input.next(), aborted]);
          } catch (e) {
            throw inputFailure(e);
          }
          if (!r) return;
          if (r.done) inputDone = true;
          else {
            next = { seq: total++, unit: r.value };
            slots.set(next.seq, {
              st: undefined,
              items: [],
              bytes: 0,
              done: false,
              stats: undefined,
            });
          }
        }
        if (!next) {
          if (inputDone && head >= total) break;
          await changed.wait();
          continue;
        }
        let st;
        while (!(st = pick(localOnly))) {
          if (abort.signal.aborted) return;
          await changed.wait();
        }
        assign(st, next.seq, next.unit);
      }
    } finally {
      if (!inputDone) input.return?.().catch(() => {});
    }
    allSent = true;
    for (const st of lanes) {
      if (st.dead) continue;
      if (!st.ready) {
        // Never got a unit (still queued for a worker slot, or a node still opening).
        st.dead = true;
        st.lane.kill();
      } else {
        st.ended = true;
        st.lane.end();
      }
    }
    changed.notify();
  }

  /** The output that can go out now, in order; the head moves past units done. */
  function drainHead(): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (;;) {
      const slot = slots.get(head);
      if (!slot?.st || !merger) return out;
      if (!slot.st.lane.remote || slot.done) {
        for (const item of slot.items) out.push(...merger.item(item));
        slot.st.buffered -= slot.bytes;
        slot.items = [];
        slot.bytes = 0;
        changed.notify();
      }
      if (!slot.done) return out;
      addStats(stats, slot.stats!);
      slots.delete(head);
      head++;
    }
  }

  const finished = () => allSent && lanes.every((st) => st.dead || st.finished);

  addLane(local());
  if (!ctx.remote) { for (let i = 1; i < parallelism; i++) addLane(local()); }
  const dispatching = dispatch().catch(fail);
  try {
    for (;;) {
      const s = stderr.shift();
      if (s) {
        s.st.buffered -= s.data.length;
        changed.notify();
        yield response({ case: "stderr", value: s.data });
        continue;
      }
      if (failure) break;
      let out: Uint8Array[];
      try {
        out = drainHead();
      } catch (e) {
        fail(e);
        break;
      }
      if (out.length) {
        for (const p of out) yield ipc(p);
        continue;
      }
      if (finished()) break;
      await changed.wait();
    }
    if (failure) {
      const e = asApplyError(failure.error);
      if (isServerError(e) && e.traceback) yield errorResponse(e);
      throw e;
    }
    for (const p of merger!.end()) yield ipc(p);
    yield doneResponse(
      stats,
      first!.transport === "arrow" ? "pyarrow" : "columnar",
      first!.interpreter,
      parallelism,
    );
  } finally {
    job.signal.removeEventListener("abort", onAbort);
    abort.abort();
    for (const st of lanes) {
      st.dead = true;
      st.lane.kill();
    }
    changed.notify();
    await dispatching;
    await Promise.allSettled(pumps);
  }
}
