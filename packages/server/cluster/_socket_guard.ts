// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Keeps a NATS socket's late error from ending the server. `@nats-io/transport-node` drops all
 * of a socket's listeners when it gives the socket up (an authorization failure, a reconnect)
 * and destroys it; under Deno's `node:net` the peer's reset can still arrive after that, and an
 * `error` event nobody listens to is an uncaught exception: the process ended on `read
 * ECONNRESET` instead of reporting `CLUSTER_UNAVAILABLE` (seen here about one start in two
 * with two NATS URLs and no credentials).
 *
 * @module
 */
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

type Connect = (...args: unknown[]) => NodeSocket;

interface NodeSocket {
  on(event: string, listener: (...args: unknown[]) => void): NodeSocket;
  listenerCount(event: string): number;
  removeAllListeners(event?: string): NodeSocket;
}

const ignore = (): void => {};
let installed = false;

/**
 * Makes every socket `node:net`/`node:tls` create from now on keep one listener for `error`
 * that ignores it, also after `removeAllListeners()`: errors still reach the listeners their
 * owner adds; one that nobody else listens to any more is dropped. Only the NATS client
 * creates sockets with these modules in the server (HTTP/2 is served by Deno itself).
 * Idempotent.
 */
export function guardAbandonedSockets(): void {
  if (installed) return;
  installed = true;
  for (const [mod, fn] of [["node:net", "createConnection"], ["node:tls", "connect"]] as const) {
    const m = require(mod) as Record<string, Connect>;
    const original = m[fn]!;
    m[fn] = function (this: unknown, ...args: unknown[]): NodeSocket {
      return guard(original.apply(this, args));
    };
  }
}

function guard(socket: NodeSocket): NodeSocket {
  if (socket.listenerCount("error") === 0) socket.on("error", ignore);
  const removeAll = socket.removeAllListeners.bind(socket);
  socket.removeAllListeners = (...event: [string?]): NodeSocket => {
    // Passed on as given: `removeAllListeners(undefined)` removes nothing (it names an event).
    removeAll(...event);
    if (event[0] === undefined || event[0] === "error") {
      if (socket.listenerCount("error") === 0) socket.on("error", ignore);
    }
    return socket;
  };
  return socket;
}
