// Copyright 2026 the Valise authors. Apache-2.0 license.
// Deno 2.9's node:http2 tears a session down inside nghttp2's own frame processing when a
// stream's close handler finds the session closing: `destroy()` submits a GOAWAY with last stream
// 0 and flushes it at once, re-entering nghttp2, whose GOAWAY then closes every open stream again,
// the one it is closing included. The process dies on an nghttp2 assertion
// (find_stream_on_goaway_func: `stream->closed_next == NULL`) or a segfault — denoland/deno#36788.
// Any peer triggers it by closing its connection while a stream ends: a client that drops its
// connection as its call is answered, a server that closes one under a client. Running the
// teardown on the next turn of the event loop, outside nghttp2's callbacks, takes the re-entry
// away (http2_session_guard_test.ts beside this file measures it; tests/front_door_test.ts on the
// real server).
import type * as http2 from "node:http2";
import { setImmediate } from "node:timers";

const guarded = new WeakSet<object>();

/**
 * Makes a `node:http2` session's `destroy()` take effect on the next turn of the event loop, so
 * the runtime never tears the session down from inside its own frame processing. Idempotent; the
 * first `destroy()` wins, as it does on a plain session.
 *
 * @example
 * ```ts
 * import * as http2 from "node:http2";
 * import { guardHttp2Session } from "@valise/protocol";
 *
 * const server = http2.createServer((_req, res) => res.end());
 * server.on("session", guardHttp2Session);
 * ```
 *
 * @param session A server or client session.
 */
export function guardHttp2Session(session: http2.Http2Session): void {
  if (guarded.has(session)) return;
  guarded.add(session);
  const destroy = session.destroy;
  let requested = false;
  Object.defineProperty(session, "destroy", {
    configurable: true,
    writable: true,
    value(error?: Error, code?: number): void {
      if (requested) return;
      requested = true;
      setImmediate(() => destroy.call(session, error, code));
    },
  });
}
