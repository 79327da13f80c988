// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The only way out of a package build's sandbox: an HTTP proxy on a Unix socket of the
 * server's, bound into the sandbox (whose own network namespace has nothing but loopback). Each
 * build gets a socket of its own that connects to the hosts of its package indexes and to
 * nothing else: `CONNECT host:port` (HTTPS) and absolute-form requests (`GET http://host/…`,
 * for plain-HTTP indexes) whose `host:port` is not on the build's list get `403` and no
 * connection is made. Names are compared as given (lowercase), never resolved first: an IP
 * literal, `localhost` or another port of an allowed host is refused like any other name.
 *
 * @module
 */
import * as net from "node:net";
import { join } from "node:path";

/** Most bytes of a request's head (request line and headers). */
const MAX_HEAD = 16 * 1024;
/** Time a client has to send the head, and an upstream to accept the connection. */
const HEAD_TIMEOUT_MS = 30_000;

/** Options of {@linkcode PipProxy}. */
export interface PipProxyOptions {
  /**
   * Where the sockets are made (a directory only the server can list).
   * @default {a temporary directory, removed by close()}
   */
  dir?: string;
  /**
   * Connections one socket serves at once; more get `503`.
   * @default {64}
   */
  maxConnections?: number;
  /**
   * Told of each refused request (`host:port` and why).
   * @default {undefined}
   */
  onRefuse?: ((target: string, why: string) => void) | undefined;
}

/** A socket of the proxy, for one build. */
export interface ProxyGrant {
  /** The socket's path, to bind into the build's sandbox. */
  readonly path: string;
  /** `host:port`s refused so far (at most 100). */
  readonly refused: readonly string[];
  /** Connections opened to allowed hosts so far. */
  readonly connections: number;
  /** Stops accepting, closes every connection and removes the socket. */
  close(): Promise<void>;
}

/**
 * `host:port` of a URL, lowercase, with the scheme's port when it names none.
 *
 * @param url An `https://` or `http://` URL.
 * @returns The host and port, e.g. `pypi.org:443`.
 */
export function hostPort(url: string): string {
  const u = new URL(url);
  const port = u.port !== "" ? u.port : u.protocol === "http:" ? "80" : "443";
  return `${u.hostname.toLowerCase()}:${port}`;
}

/** The server's package-index proxy: one Unix socket per build, each with its own host list. */
export class PipProxy {
  #dir: string | undefined;
  #ownsDir: boolean;
  #options: PipProxyOptions;
  #grants = new Set<ProxyGrant>();

  /** @param options Where sockets go, connection limit, refusal callback. */
  constructor(options: PipProxyOptions = {}) {
    this.#options = options;
    this.#dir = options.dir;
    this.#ownsDir = options.dir === undefined;
  }

  /**
   * Opens a socket that connects only to `allowed`.
   *
   * @param allowed `host:port`s (lowercase), e.g. `pypi.org:443`.
   * @returns The socket.
   */
  async open(allowed: Iterable<string>): Promise<ProxyGrant> {
    if (this.#dir === undefined) {
      this.#dir = await Deno.makeTempDir({ prefix: "valise-pip-proxy-" });
    }
    // Traversable, not listable: an unsandboxed build's uid reaches its socket by a name it is
    // given and cannot guess another build's. (A sandbox gets its socket by a bind.)
    await Deno.chmod(this.#dir, 0o711);
    const path = join(this.#dir, `p-${crypto.randomUUID()}.sock`);
    await Deno.remove(path).catch(() => {});
    const hosts = new Set([...allowed].map((h) => h.toLowerCase()));
    const sockets = new Set<net.Socket>();
    const refused: string[] = [];
    let connections = 0;
    const max = this.#options.maxConnections ?? 64;
    const refuse = (c: net.Socket, status: string, target: string, why: string) => {
      if (refused.length < 100) refused.push(target);
      this.#options.onRefuse?.(target, why);
      c.end(`HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n${why}\n`);
    };
    const server = net.createServer((client) => {
      sockets.add(client);
      client.on("close", () => sockets.delete(client));
      client.on("error", () => client.destroy());
      if (sockets.size > max) {
        client.end("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n");
        return;
      }
      client.setTimeout(HEAD_TIMEOUT_MS, () => client.destroy());
      let head = Buffer.alloc(0);
      const onData = (chunk: Buffer) => {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) {
          if (head.length > MAX_HEAD) {
            client.off("data", onData);
            refuse(client, "431 Request Header Fields Too Large", "?", "request head too large");
          }
          return;
        }
        client.off("data", onData);
        client.pause();
        const request = parseHead(head.subarray(0, end).toString("latin1"));
        const rest = head.subarray(end + 4);
        if (!request) {
          refuse(client, "400 Bad Request", "?", "not a proxy request");
          return;
        }
        if (!hosts.has(request.target)) {
          refuse(
            client,
            "403 Forbidden",
            request.target,
            `${request.target} is not a host of this install's package indexes`,
          );
          return;
        }
        const [host, port] = splitTarget(request.target);
        const upstream = net.connect({ host, port });
        sockets.add(upstream);
        upstream.on("close", () => sockets.delete(upstream));
        upstream.setTimeout(HEAD_TIMEOUT_MS, () => upstream.destroy());
        upstream.on("error", () => {
          if (!client.destroyed) {
            client.end("HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n");
          }
        });
        upstream.on("connect", () => {
          connections++;
          upstream.setTimeout(0);
          client.setTimeout(0);
          if (request.connect) client.write("HTTP/1.1 200 Connection established\r\n\r\n");
          else upstream.write(request.forward!);
          if (rest.length) upstream.write(rest);
          client.pipe(upstream);
          upstream.pipe(client);
          client.resume();
          client.on("close", () => upstream.destroy());
          upstream.on("close", () => client.destroy());
        });
      };
      client.on("data", onData);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => resolve());
    });
    // The build runs as another uid: it may connect (on the host, only by this name; inside a
    // sandbox only this socket is bound).
    await Deno.chmod(path, 0o666);
    const grant: ProxyGrant = {
      path,
      refused,
      get connections() {
        return connections;
      },
      close: async () => {
        this.#grants.delete(grant);
        for (const s of sockets) s.destroy();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        await Deno.remove(path).catch(() => {});
      },
    };
    this.#grants.add(grant);
    return grant;
  }

  /** Closes every socket, and the directory when the proxy made it. */
  async close(): Promise<void> {
    await Promise.all([...this.#grants].map((g) => g.close()));
    if (this.#ownsDir && this.#dir) {
      await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
    }
  }
}

interface ProxyRequest {
  /** `host:port`, lowercase. */
  target: string;
  /** A CONNECT tunnel. */
  connect: boolean;
  /** For a plain-HTTP request: the head to send upstream (origin-form, `Connection: close`). */
  forward?: Buffer;
}

/** Reads a proxy request's head: a CONNECT, or an absolute-form `http://` request. */
function parseHead(text: string): ProxyRequest | undefined {
  const lines = text.split("\r\n");
  const first = /^([A-Z]{1,16}) (\S{1,8192}) HTTP\/1\.[01]$/.exec(lines[0] ?? "");
  if (!first) return undefined;
  const [, method, uri] = first as unknown as [string, string, string];
  if (method === "CONNECT") {
    const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):(\d{1,5})$/.exec(uri);
    if (!m || Number(m[2]) > 65535) return undefined;
    return { target: `${m[1]!.toLowerCase()}:${Number(m[2])}`, connect: true };
  }
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    return undefined;
  }
  if (u.protocol !== "http:" || u.username !== "" || u.password !== "") return undefined;
  const headers = lines.slice(1).filter((l) =>
    !/^(proxy-connection|proxy-authorization|connection|keep-alive)\s*:/i.test(l)
  );
  const forward = Buffer.from(
    [`${method} ${u.pathname}${u.search} HTTP/1.1`, ...headers, "Connection: close", "", ""]
      .join("\r\n"),
    "latin1",
  );
  return { target: hostPort(u.href), connect: false, forward };
}

function splitTarget(target: string): [string, number] {
  const i = target.lastIndexOf(":");
  const host = target.slice(0, i).replace(/^\[|\]$/g, "");
  return [host, Number(target.slice(i + 1))];
}
