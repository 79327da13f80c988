// Copyright 2026 the Valise authors. Apache-2.0 license.
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { guardHttp2Session } from "@valise/protocol";
import { createValise, type Valise, type ValiseOptions } from "./valise.ts";

/** Options of {@linkcode serve}. */
export interface ServeOptions extends ValiseOptions {
  /**
   * Address to listen on.
   * @default {"127.0.0.1"}
   */
  host?: string;
  /**
   * Port to listen on; `0` picks a free one.
   * @default {15002}
   */
  port?: number;
}

/** A running server. */
export interface RunningServer {
  /** The Valise instance it serves. */
  readonly valise: Valise;
  /** The address it listens on. */
  readonly host: string;
  /** The port it listens on. */
  readonly port: number;
  /** Stops accepting, ends open connections, stops the instance. */
  close(): Promise<void>;
}

/**
 * Starts a gRPC server (HTTP/2 cleartext via `node:http2`) serving Valise: real gRPC clients
 * such as PySpark's grpcio can connect, and so can Connect and gRPC-web clients.
 *
 * @example
 * ```ts
 * import { serve } from "@valise/server";
 * import { equal } from "node:assert/strict";
 *
 * const dataDir = await Deno.makeTempDir();
 * const server = await serve({ dataDir, port: 0 });
 * equal(server.port > 0, true);
 * await server.close();
 * await Deno.remove(dataDir, { recursive: true });
 * ```
 *
 * @param options Where to listen and what to serve.
 * @returns The running server.
 */
export async function serve(options: ServeOptions): Promise<RunningServer> {
  const valise = await createValise(options);
  // HTTP/2's default 64 KiB windows make an uploading client wait for a WINDOW_UPDATE every few
  // 32 KiB chunks; larger windows let uploads stream (about 1.5x here). Memory stays bounded:
  // the handler consumes the stream as it writes to disk. Larger DATA frames than the default
  // 16 KiB let a client send a 32 KiB chunk in one frame instead of three (fewer callbacks per
  // message); a frame is delivered in pieces as it arrives, so it is not buffered whole.
  const server = http2.createServer(
    { settings: { initialWindowSize: 4 * 2 ** 20, maxFrameSize: 2 ** 20 } },
    valise.nodeHandler,
  );
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    guardHttp2Session(s);
    sessions.add(s);
    try {
      s.setLocalWindowSize(16 * 2 ** 20);
    } catch {
      // An HTTP/2 implementation without connection-level window control keeps the default.
    }
    s.on("close", () => sessions.delete(s));
  });
  const host = options.host ?? "127.0.0.1";
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port ?? 15002, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (e) {
    // The data directory's lock goes with the instance: a retry on another port can take it.
    await valise.close();
    throw e;
  }
  const port = (server.address() as AddressInfo).port;
  // The other nodes see where this one serves from its next heartbeat.
  if (valise.membership) {
    valise.membership.address = `${host.includes(":") ? `[${host}]` : host}:${port}`;
  }
  let closing: Promise<void> | undefined;
  return {
    valise,
    host,
    port,
    close() {
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        await valise.close();
        // Connections are dropped, not drained with a GOAWAY: Deno 2.9's node:http2 can abort the
        // process on a graceful close while recently closed streams are still tracked (an
        // nghttp2 assertion in find_stream_on_goaway_func). Clients see UNAVAILABLE and retry.
        for (const s of sessions) s.destroy();
        await closed;
      })();
      return closing;
    },
  };
}
