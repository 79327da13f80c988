// Copyright 2026 the Valise authors. Apache-2.0 license.
// WorkerService/RunInteractive: the start message, then stdin as the caller's stream produces it
// (read only as fast as the call takes it), interrupts as they are asked for, the end of stdin;
// the request stream ends once the run has exited, and the stream is then cancelled.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { type RunInput, RunInputSchema, type RunRequest } from "@valise/protocol";
import { ValiseClientError } from "./error.ts";
import type { RunEvent, RunSpec } from "./run.ts";
import { attachRunControl } from "./run_control.ts";
import { callOptions, type SessionCore } from "./_core.ts";
import { fromWire, isPrematureClose, RUN_SEEN } from "./_run_events.ts";

/** The most stdin one message carries; the server refuses messages over 1 MiB. */
export const STDIN_PIECE_BYTES = 64 * 1024;

type Input = NonNullable<MessageInitShape<typeof RunInputSchema>["input"]>;

/** A caller's stdin, read one chunk at a time and cancelled when the run is over. */
interface StdinSource {
  next(): Promise<IteratorResult<Uint8Array>>;
  cancel(): void;
}

/**
 * The stdin of a spec when it is to be streamed (a `ReadableStream` or an async iterable).
 *
 * @param stdin `RunOptions.stdin`.
 * @returns A reader of it, or `undefined` when it is given whole (or not at all).
 */
export function streamedStdin(stdin: RunSpec["stdin"]): (() => StdinSource) | undefined {
  if (stdin instanceof ReadableStream) {
    return () => {
      const reader = stdin.getReader();
      return {
        next: async () => {
          const r = await reader.read();
          return r.done ? { done: true, value: undefined } : { done: false, value: r.value };
        },
        cancel: () => void reader.cancel().catch(() => {}),
      };
    };
  }
  if (
    typeof stdin === "object" && stdin !== null && !(stdin instanceof Uint8Array) &&
    typeof (stdin as AsyncIterable<Uint8Array>)[Symbol.asyncIterator] === "function"
  ) {
    return () => {
      const it = (stdin as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
      return {
        next: () => it.next(),
        // Not awaited: a generator's return() waits behind its pending next().
        cancel: () => void it.return?.()?.catch(() => {}),
      };
    };
  }
  return undefined;
}

/** Interrupts asked for and not yet sent, with a wake-up for the request stream. */
class Pending {
  interrupts = 0;
  over = false;
  #wake: (() => void) | undefined;
  /** A promise that resolves at the next interrupt or at the end of the run. */
  next(): Promise<"signal"> {
    return new Promise((resolve) => this.#wake = () => resolve("signal"));
  }
  /** Wakes the request stream. */
  poke(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}

async function* inputs(
  start: RunRequest,
  open: (() => StdinSource) | undefined,
  pending: Pending,
  touched: { stdin: boolean },
  sources: StdinSource[],
  failure: { error?: unknown },
): AsyncGenerator<RunInput, void, undefined> {
  const msg = (input: Input) => create(RunInputSchema, { input });
  yield msg({ case: "start", value: start });
  // Bytes given whole travel in `start`: stdin ends with them.
  if (!open) yield msg({ case: "closeStdin", value: true });
  const source = open?.();
  if (source) sources.push(source);
  let read: Promise<IteratorResult<Uint8Array>> | undefined;
  let stdinOpen = source !== undefined;
  while (!pending.over) {
    if (pending.interrupts > 0) {
      pending.interrupts--;
      // An interrupt sent is not sent again to another node with a fresh run.
      touched.stdin = true;
      yield msg({ case: "interrupt", value: {} });
      continue;
    }
    if (stdinOpen && read === undefined) {
      touched.stdin = true;
      read = source!.next().catch((e) => {
        failure.error = e;
        throw e;
      });
    }
    const woke = pending.next();
    const got = await Promise.race(read ? [read, woke] : [woke]);
    if (got === "signal") continue;
    read = undefined;
    if (got.done) {
      stdinOpen = false;
      yield msg({ case: "closeStdin", value: true });
      continue;
    }
    const chunk = got.value;
    if (!(chunk instanceof Uint8Array)) {
      throw failure.error = new TypeError("Cannot stream stdin: a chunk is not a Uint8Array");
    }
    for (let at = 0; at < chunk.length && !pending.over; at += STDIN_PIECE_BYTES) {
      yield msg({ case: "stdin", value: chunk.subarray(at, at + STDIN_PIECE_BYTES) });
    }
  }
}

/**
 * Runs Python with stdin streamed and interrupts (RunInteractive), yielding the run's events.
 * Retried when its node fails only while none of its output was delivered (as Run), no stdin was
 * read and no interrupt sent.
 *
 * @param core The session.
 * @param spec The options (control, signal).
 * @param start The start message (its `stdin`: bytes given whole, when not streamed).
 * @param open Opens the stdin stream, if stdin is streamed.
 * @returns The events, ending with `exited`.
 */
export function interactiveEvents(
  core: SessionCore,
  spec: RunSpec,
  start: RunRequest,
  open: (() => StdinSource) | undefined,
): AsyncGenerator<RunEvent, void, undefined> {
  const touched = { stdin: false };
  return core.retry.stream("RunInteractive", async function* (call, node) {
    const pending = new Pending();
    const sources: StdinSource[] = [];
    const detach = spec.control
      ? attachRunControl(spec.control, () => {
        pending.interrupts++;
        pending.poke();
      })
      : undefined;
    let exited = false;
    const failure: { error?: unknown } = {};
    const requests = inputs(
      { ...start, ...core.observed() },
      open,
      pending,
      touched,
      sources,
      failure,
    );
    try {
      for await (const wire of node.workers.runInteractive(requests, callOptions(spec.signal))) {
        const ev = fromWire(wire);
        if (ev !== undefined && ev.kind !== "started") call.seen = true;
        if (ev?.kind === "exited") {
          exited = true;
          // The request stream ends now: the server then ends the call.
          pending.over = true;
          pending.poke();
        }
        if (ev) yield ev;
      }
    } catch (e) {
      // The caller's own stream failing is the cause, not the cancelled call it led to.
      if ("error" in failure) throw failure.error;
      if (exited && isPrematureClose(e)) return;
      throw ValiseClientError.from(e);
    } finally {
      detach?.();
      pending.over = true;
      pending.poke();
      for (const s of sources) s.cancel();
    }
  }, { signal: spec.signal, replayable: () => !touched.stdin, seenWhat: RUN_SEEN });
}
