// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A lane of a parallel Apply: one worker fed units (each a whole Arrow IPC stream holding one
 * record batch) and giving back, per unit, its output items and a mark. The local lane is an
 * Apply driver in units mode run by this node's launcher in the session's fork server; the
 * cluster's remote lane (`cluster/apply_remote.ts`) speaks to one on another node.
 *
 * @module
 */
import type { Launcher, RunExitedEvent, SessionLimits } from "@valise/launcher";
import { ipcMessageReader } from "@valise/protocol";
import type { Session } from "@valise/session-store";
import type { RecordBatch } from "apache-arrow";
import { VerifiedReader } from "./_ipc_verify.ts";
import { type ColumnarField, columnarField, encodeColumnarBatch } from "./_columnar.ts";
import {
  DRIVER_FRAME_BYTES,
  DRIVER_STUB,
  DriverFrame,
  driverFrameHeader,
  DriverFrameReader,
} from "./_apply_driver.ts";
import {
  applyFailure,
  type ApplyTask,
  asApplyError,
  type DoneStats,
  driverError,
  exitFailure,
  type Hello,
  helloFailure,
  inputFailure,
  parseStats,
  readFrames,
  startFrame,
  type Transport,
} from "./_apply_common.ts";
import { type LayerSource, preparedSpec } from "./session_spec.ts";

/** What a lane gives back, in order. */
export type LaneItem =
  /** One output item of unit `seq`: an Arrow IPC message (arrow) or a columnar batch. */
  | { kind: "out"; seq: number; data: Uint8Array }
  /** Unit `seq` is done; what it counted. */
  | { kind: "mark"; seq: number; stats: DoneStats }
  /** What the function printed. */
  | { kind: "stderr"; data: Uint8Array };

/** A lane's worker, once it has said what it is. */
export interface LaneReady {
  /** The transport its interpreter allows. */
  transport: Transport;
  /** The interpreter, as resolved where it runs. */
  interpreter: string;
}

/** One worker of a parallel Apply. */
export interface Lane {
  /** Where it runs: `local`, or a node's id. */
  readonly where: string;
  /** Whether it runs on another node (its units may be run again elsewhere if it is lost). */
  readonly remote: boolean;
  /** Resolves once the worker can take units; rejects with why it cannot. */
  readonly ready: Promise<LaneReady>;
  /**
   * Hands it unit `seq`; units are taken in the order sent.
   *
   * @returns Resolves once the unit is handed over (rejects when the lane is lost).
   */
  send(seq: number, unit: Uint8Array): Promise<void>;
  /** No more units: the worker finishes and the items end. */
  end(): void;
  /** Its items, to one consumer, as pulled (an unpulled lane's worker waits); throws its failure. */
  items(): AsyncIterable<LaneItem>;
  /** Stops the worker. */
  kill(): void;
}

/** A remote lane that cannot go on (its node died or misbehaved): its units are run elsewhere. */
export class LaneLostError extends Error {
  override name = "LaneLostError";
}

/** What a local lane needs. */
export interface LocalLaneContext {
  /** The launcher that runs the driver. */
  readonly launcher: Launcher;
  /** The server's worker limits. */
  readonly limits: SessionLimits;
  /**
   * The largest Arrow IPC message and driver frame, in bytes.
   * @default {DRIVER_FRAME_BYTES}
   */
  readonly maxMessageBytes?: number | undefined;
  /**
   * The server's pip layers, applied before the driver starts.
   * @default {undefined} none
   */
  readonly pip?: LayerSource | undefined;
}

/** Options of {@linkcode LocalLane}. */
export interface LocalLaneOptions {
  /**
   * The transport the lane must have (the call's, decided by its first lane); another one fails
   * the lane with `APPLY_PROTOCOL`.
   * @default {undefined} whatever the interpreter allows
   */
  transport?: Transport | undefined;
  /**
   * Stops the worker when aborted.
   * @default {undefined}
   */
  signal?: AbortSignal | undefined;
}

const decoder = new TextDecoder();

/**
 * A lane run by this node's launcher: the Apply driver in units mode, in the session's fork
 * server (its sandbox, limits and worker slots: each lane is one run of the session).
 */
export class LocalLane implements Lane {
  readonly where = "local";
  readonly remote = false;
  readonly ready: Promise<LaneReady>;
  #ctx: LocalLaneContext;
  #session: Session;
  #task: ApplyTask;
  #want: Transport | undefined;
  #abort = new AbortController();
  #resolveReady!: (r: LaneReady) => void;
  #rejectReady!: (e: unknown) => void;
  #queue: { seq: number; unit: Uint8Array }[] = [];
  #ended = false;
  #wake: (() => void) | undefined;
  /** Units sent to the driver and not yet marked, in order. */
  #open: number[] = [];
  #transport: Transport | undefined;
  #fields: ColumnarField[] | undefined;
  #hello: Promise<boolean>;
  #resolveHello!: (ok: boolean) => void;
  #inputError: unknown;

  /**
   * @param ctx The launcher, limits and message cap.
   * @param session The session the worker runs in.
   * @param task The function, form and declared schema.
   * @param options The transport it must have, a signal.
   */
  constructor(
    ctx: LocalLaneContext,
    session: Session,
    task: ApplyTask,
    options: LocalLaneOptions = {},
  ) {
    this.#ctx = ctx;
    this.#session = session;
    this.#task = task;
    this.#want = options.transport;
    this.ready = new Promise((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    // Nobody may be waiting on it when a lane fails early: no unhandled rejection then.
    this.ready.catch(() => {});
    this.#hello = new Promise((r) => this.#resolveHello = r);
    const signal = options.signal;
    if (signal?.aborted) this.#abort.abort();
    signal?.addEventListener("abort", () => this.#abort.abort(), { once: true });
  }

  send(seq: number, unit: Uint8Array): Promise<void> {
    if (this.#ended) return Promise.reject(new Error("Cannot send a unit to an ended lane"));
    this.#queue.push({ seq, unit });
    this.#wake?.();
    return Promise.resolve();
  }

  end(): void {
    this.#ended = true;
    this.#wake?.();
  }

  kill(): void {
    this.#ended = true;
    this.#abort.abort();
    this.#wake?.();
  }

  async *#stdin(): AsyncGenerator<Uint8Array, void, undefined> {
    if (!await this.#hello || !this.#transport) return;
    yield* startFrame(this.#task, this.#transport, this.#fields, true);
    try {
      for (;;) {
        const next = this.#queue.shift();
        if (!next) {
          if (this.#ended) break;
          await new Promise<void>((r) => this.#wake = r);
          this.#wake = undefined;
          continue;
        }
        this.#open.push(next.seq);
        if (this.#transport === "arrow") {
          yield driverFrameHeader(DriverFrame.DATA, next.unit.length);
          yield next.unit;
        } else {
          const parts = columnarUnit(next.unit, this.#ctx.maxMessageBytes ?? DRIVER_FRAME_BYTES);
          yield driverFrameHeader(DriverFrame.DATA, parts.reduce((n, p) => n + p.length, 0));
          yield* parts;
        }
      }
      yield driverFrameHeader(DriverFrame.END, 0);
    } catch (e) {
      this.#inputError = e;
      throw e;
    }
  }

  async *items(): AsyncGenerator<LaneItem, void, undefined> {
    const max = this.#ctx.maxMessageBytes ?? DRIVER_FRAME_BYTES;
    const frames = new DriverFrameReader(max + 5);
    // Arrow transport: the unit's output stream, cut into whole messages.
    let messages = ipcMessageReader({ maxMessageBytes: max });
    let failure: unknown;
    let done = false;
    let exited: RunExitedEvent | undefined;
    let interpreter = "";
    let stderrTail = "";
    let releaseLayers = (): void => {};
    try {
      // Each lane holds the session's layers while it runs (a worker on another node too).
      const prepared = await preparedSpec(this.#session, this.#ctx.limits, this.#ctx.pip);
      releaseLayers = prepared.release;
      for await (
        const ev of this.#ctx.launcher.run(prepared.spec, {
          code: DRIVER_STUB,
          stdin: this.#stdin(),
          streamStdout: true,
          directStdio: true,
          timeoutMs: this.#task.timeoutMs,
        }, this.#abort.signal)
      ) {
        if (ev.kind === "started") {
          interpreter = ev.interpreter;
          continue;
        }
        if (ev.kind === "stderr") {
          stderrTail = (stderrTail + decoder.decode(ev.data, { stream: true })).slice(-4000);
          yield { kind: "stderr", data: ev.data };
          continue;
        }
        if (ev.kind === "exited") {
          exited = ev;
          continue;
        }
        for (const f of readFrames(frames, ev.data, max)) {
          if (f.type === DriverFrame.HELLO) {
            this.#onHello(JSON.parse(decoder.decode(f.payload)) as Hello, interpreter);
          } else if (f.type === DriverFrame.OUT) {
            const seq = this.#open[0];
            if (seq === undefined) throw protocol("output before any unit");
            if (this.#transport === "columnar") {
              yield { kind: "out", seq, data: f.payload };
              continue;
            }
            let got;
            try {
              got = messages.push(f.payload);
            } catch (e) {
              throw protocol(`its output is not an Arrow IPC stream (${(e as Error).message})`);
            }
            for (const m of got) if (m) yield { kind: "out", seq, data: m.bytes.slice() };
          } else if (f.type === DriverFrame.MARK) {
            const seq = this.#open.shift();
            if (seq === undefined) throw protocol("a mark for no unit");
            if (messages.pending > 0) throw protocol("a mark in the middle of an IPC message");
            messages = ipcMessageReader({ maxMessageBytes: max });
            yield { kind: "mark", seq, stats: parseStats(f.payload) };
          } else if (f.type === DriverFrame.ERROR) {
            failure = driverError(f.payload);
          } else if (f.type === DriverFrame.DONE) {
            parseStats(f.payload);
            done = true;
          } else {
            throw protocol(`unexpected driver frame ${f.type}`);
          }
        }
      }
      if (failure !== undefined) throw failure;
      if (this.#inputError !== undefined) throw asApplyError(inputFailure(this.#inputError));
      if (!done) throw exitFailure(exited, stderrTail, interpreter);
      if (this.#open.length) throw protocol(`${this.#open.length} unit(s) never marked`);
    } catch (e) {
      this.#rejectReady(e);
      throw e;
    } finally {
      releaseLayers();
      this.#resolveHello(false);
      this.#rejectReady(
        applyFailure("APPLY_WORKER_FAILED", "The worker ended before it was ready"),
      );
      this.#abort.abort();
    }
  }

  #onHello(h: Hello, interpreter: string): void {
    const refused = helloFailure(h, this.#task.form, interpreter);
    if (refused) throw refused;
    const transport: Transport = h.pyarrow ? "arrow" : "columnar";
    if (this.#want && transport !== this.#want) {
      throw protocol(
        `this worker's interpreter ${interpreter} takes the ${transport} transport, the call's ` +
          `other workers ${this.#want}: pyarrow must be importable everywhere or nowhere`,
      );
    }
    this.#transport = transport;
    if (transport === "columnar" && this.#task.declared) {
      this.#fields = this.#task.declared.fields.map(columnarField);
    }
    this.#resolveHello(true);
    this.#resolveReady({ transport, interpreter });
  }
}

function protocol(why: string): Error {
  return applyFailure("APPLY_PROTOCOL", `Cannot run a parallel Apply worker: ${why}`);
}

/**
 * A unit in the columnar encoding: its one record batch, decoded here (a unit holding more or
 * fewer is refused: the driver marks each columnar batch as one unit).
 */
function columnarUnit(unit: Uint8Array, maxRows: number): Uint8Array[] {
  const reader = VerifiedReader.from(unit);
  reader.open();
  const batches: RecordBatch[] = [...reader];
  if (batches.length !== 1) {
    throw applyFailure(
      "APPLY_INVALID_INPUT",
      `Cannot pass a unit of ${batches.length} record batches: a unit holds exactly one`,
    );
  }
  return encodeColumnarBatch(batches[0]!, maxRows);
}
