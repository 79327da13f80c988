// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Runs one archive unpack off the server's event loop: a multi-gigabyte environment must not
 * stall every other session's RPCs while it is written.
 *
 * @module
 */
/// <reference lib="deno.worker" />
import { isUnpackError, unpack, type UnpackOptions } from "@valise/archive";

const abort = new AbortController();
self.onmessage = async (ev: MessageEvent) => {
  const msg = ev.data as
    | { type: "abort" }
    | { type: "unpack"; archive: string; dest: string; options: UnpackOptions };
  if (msg.type === "abort") {
    abort.abort();
    return;
  }
  try {
    const r = await unpack(msg.archive, msg.dest, { ...msg.options, signal: abort.signal });
    self.postMessage({
      ok: true,
      bytes: r.bytesWritten,
      entries: r.entries,
      flavor: r.flavor,
      interpreterLinks: r.interpreterLinks.length,
    });
  } catch (e) {
    self.postMessage({
      ok: false,
      code: isUnpackError(e) ? e.code : "IO",
      entry: isUnpackError(e) ? e.entry : undefined,
      message: e instanceof Error ? e.message : String(e),
    });
  }
};
