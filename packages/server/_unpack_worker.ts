// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Runs archive unpacks off the server's event loop: a multi-gigabyte environment must not stall
 * every other session's RPCs while it is written. One long-lived worker serves every unpack,
 * because starting a worker from inside a worker costs Deno about a second each time.
 *
 * @module
 */
/// <reference lib="deno.worker" />
import { isUnpackError, prestartWriterThread, unpack, type UnpackOptions } from "@valise/archive";

const running = new Map<number, AbortController>();
// Started once, kept across unpacks: a Worker started from a Worker costs Deno ~1 s.
prestartWriterThread();

self.onmessage = async (ev: MessageEvent) => {
  const msg = ev.data as
    | { type: "abort"; id: number }
    | { type: "unpack"; id: number; archive: string; dest: string; options: UnpackOptions };
  if (msg.type === "abort") {
    running.get(msg.id)?.abort();
    return;
  }
  const abort = new AbortController();
  running.set(msg.id, abort);
  try {
    const r = await unpack(msg.archive, msg.dest, {
      ...msg.options,
      keepWriterThread: true,
      signal: abort.signal,
    });
    self.postMessage({
      id: msg.id,
      ok: true,
      bytes: r.bytesWritten,
      entries: r.entries,
      flavor: r.flavor,
    });
  } catch (e) {
    self.postMessage({
      id: msg.id,
      ok: false,
      code: isUnpackError(e) ? e.code : "IO",
      entry: isUnpackError(e) ? e.entry : undefined,
      message: e instanceof Error ? e.message : String(e),
    });
  } finally {
    running.delete(msg.id);
  }
};
