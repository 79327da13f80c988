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

const CLI = new URL("./cli.ts", import.meta.url).pathname;

/** What a CLI run printed, and its exit code. */
export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI as a subprocess with `env` (and NO_COLOR), stdin from `opts.stdin` or none. */
export async function cli(
  args: string[],
  env: Record<string, string>,
  opts: { cwd?: string; stdin?: string } = {},
): Promise<Ran> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { NO_COLOR: "1", ...env },
    cwd: opts.cwd ?? Deno.cwd(),
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const r = await child.output();
  const d = new TextDecoder();
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
}

/** The sessions a CLI state file remembers, by remote; `{}` when there is no file. */
export function stateOf(path: string): Record<string, { sessionId: string }> {
  try {
    return JSON.parse(Deno.readTextFileSync(path)).sessions;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return {};
    throw e;
  }
}

/** The JSON lines of a `--json` run's stdout. */
export function jsonLines(stdout: string): Record<string, unknown>[] {
  return stdout.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l));
}
