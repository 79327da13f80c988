// Copyright 2026 the Valise authors. Apache-2.0 license.
// Test helpers: a real server on a loopback port over a temp data directory.
import { join } from "node:path";
import { type RunningServer, serve, type ServeOptions } from "@valise/server";

export interface TestServer {
  server: RunningServer;
  port: number;
  url: string;
  tmp: string;
  dataDir: string;
  /** Stops the server (idempotent). */
  stop(): Promise<void>;
  /** Starts a new server on the same port and data directory. */
  restart(): Promise<void>;
}

export async function withServer(
  fn: (t: TestServer) => Promise<void>,
  opts: Partial<ServeOptions> = {},
): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-client-" });
  const dataDir = join(tmp, "data");
  const options: ServeOptions = {
    dataDir,
    port: 0,
    workers: { limits: { maxQueue: 64, maxWorkersPerSession: 4, wallTimeMs: 20_000 } },
    ...opts,
  };
  let server = await serve(options);
  const port = server.port;
  let running = true;
  const t: TestServer = {
    server,
    port,
    url: `sc://127.0.0.1:${port}`,
    tmp,
    dataDir,
    async stop() {
      if (!running) return;
      running = false;
      await server.close();
    },
    async restart() {
      await t.stop();
      server = await serve({ ...options, port });
      t.server = server;
      running = true;
    },
  };
  try {
    await fn(t);
  } finally {
    await t.stop();
    await new Deno.Command("chmod", { args: ["-R", "u+w", tmp] }).output();
    await Deno.remove(tmp, { recursive: true });
  }
}

/** Writes `bytes` (or `size` pseudo-random bytes) to `dir/name`; returns the path. */
export async function writeFile(
  dir: string,
  name: string,
  content: string | Uint8Array | number,
): Promise<string> {
  const path = join(dir, name);
  const data = typeof content === "string"
    ? new TextEncoder().encode(content)
    : typeof content === "number"
    ? new Uint8Array(content).map((_, i) => (i * 2654435761) >>> 24)
    : content;
  await Deno.writeFile(path, data);
  return path;
}

/** The directory of a session on the server, found by its id. */
export async function sessionDir(dataDir: string, sessionId: string): Promise<string> {
  const base = join(dataDir, "sessions");
  for await (const u of Deno.readDir(base)) {
    const dir = join(base, u.name, sessionId);
    try {
      if ((await Deno.stat(dir)).isDirectory) return dir;
    } catch { /* not this user's */ }
  }
  throw new Error(`no session directory for ${sessionId}`);
}

/** Makes a tar archive `dir/name` holding one file `inner` with `content`. */
export async function makeTar(
  dir: string,
  name: string,
  inner: string,
  content: string | number,
): Promise<string> {
  const src = await Deno.makeTempDir({ dir, prefix: "tar-src-" });
  await writeFile(src, inner, content);
  const out = join(dir, name);
  const r = await new Deno.Command("tar", { args: ["-cf", out, "-C", src, inner] }).output();
  if (!r.success) throw new Error(new TextDecoder().decode(r.stderr));
  return out;
}
