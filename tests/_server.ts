// A real `deno task serve` process for integration and hostile tests: started on a free loopback
// port, its stderr log observable line by line (tests wait on log lines, never on timers), its
// memory readable from /proc, stopped with SIGTERM.
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, SparkConnectService, StoreService, WorkerService } from "@valise/protocol";

const MAIN = new URL("../packages/server/main.ts", import.meta.url).pathname;

/** A running server process. */
export interface ServerProcess {
  /** The process. */
  readonly child: Deno.ChildProcess;
  /** Its pid. */
  readonly pid: number;
  /** The loopback port it listens on. */
  readonly port: number;
  /** `http://127.0.0.1:<port>`. */
  readonly baseUrl: string;
  /** Every stderr line so far. */
  readonly log: string[];
  /** Resolves with the first log line (past or future) that matches. */
  waitForLog(match: RegExp | string): Promise<string>;
  /** Resident set size in bytes (VmRSS), read from /proc. */
  rss(): number;
  /** Peak resident set size in bytes (VmHWM), read from /proc. */
  peakRss(): number;
  /** gRPC clients of the four services, over one transport. */
  readonly clients: {
    spark: ReturnType<typeof createClient<typeof SparkConnectService>>;
    store: ReturnType<typeof createClient<typeof StoreService>>;
    worker: ReturnType<typeof createClient<typeof WorkerService>>;
    health: ReturnType<typeof createClient<typeof Health>>;
  };
  /** SIGTERM, then the exit status. */
  stop(): Promise<Deno.CommandStatus>;
}

/** Options of {@linkcode startServer}. */
export interface StartOptions {
  /** The data directory. */
  dataDir: string;
  /** More `serve` flags. */
  args?: string[];
  /** More environment variables. */
  env?: Record<string, string>;
  /** Headers every client call sends (e.g. `authorization`). */
  headers?: Record<string, string>;
}

function statusField(pid: number, field: string): number {
  const text = Deno.readTextFileSync(`/proc/${pid}/status`);
  const m = text.match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/**
 * Starts `packages/server/main.ts` on port 0 and waits for its "listening" line.
 *
 * @param options Data directory, flags, environment.
 * @returns The running server.
 */
export async function startServer(options: StartOptions): Promise<ServerProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      MAIN,
      "--port",
      "0",
      "--data-dir",
      options.dataDir,
      ...(options.args ?? []),
    ],
    env: options.env ?? {},
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const log: string[] = [];
  const waiters: { match: RegExp | string; resolve: (l: string) => void }[] = [];
  const matches = (m: RegExp | string, l: string) =>
    typeof m === "string" ? l.includes(m) : m.test(l);
  let exited = false;
  const onLine = (line: string) => {
    log.push(line);
    for (let i = 0; i < waiters.length;) {
      const w = waiters[i]!;
      if (matches(w.match, line)) {
        waiters.splice(i, 1);
        w.resolve(line);
      } else i++;
    }
  };
  (async () => {
    let rest = "";
    for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) {
      rest += text;
      const lines = rest.split("\n");
      rest = lines.pop() ?? "";
      for (const l of lines) onLine(l);
    }
    if (rest) onLine(rest);
    exited = true;
    for (const w of waiters.splice(0)) {
      w.resolve(`(server exited; log:\n${log.join("\n")})`);
    }
  })();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let first = "";
  while (!first.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) {
      await child.status;
      throw new Error(`server exited before listening:\n${log.join("\n")}`);
    }
    first += value;
  }
  reader.releaseLock();
  child.stdout.cancel().catch(() => {});
  const m = first.match(/listening on [\d.]+:(\d+)/);
  if (!m) throw new Error(`unexpected first line: ${first}`);
  const port = Number(m[1]);
  const baseUrl = `http://127.0.0.1:${port}`;
  const headers = options.headers ?? {};
  const transport = createGrpcTransport({
    baseUrl,
    interceptors: [(next) => (req) => {
      for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
      return next(req);
    }],
  });
  return {
    child,
    pid: child.pid,
    port,
    baseUrl,
    log,
    waitForLog(match) {
      const seen = log.find((l) => matches(match, l));
      if (seen !== undefined) return Promise.resolve(seen);
      if (exited) return Promise.reject(new Error(`server exited; log:\n${log.join("\n")}`));
      return new Promise((resolve) => waiters.push({ match, resolve }));
    },
    rss: () => statusField(child.pid, "VmRSS"),
    peakRss: () => statusField(child.pid, "VmHWM"),
    clients: {
      spark: createClient(SparkConnectService, transport),
      store: createClient(StoreService, transport),
      worker: createClient(WorkerService, transport),
      health: createClient(Health, transport),
    },
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch {
        // already gone
      }
      return await child.status;
    },
  };
}

/** Whether bubblewrap works here (the server's sandbox can start). */
export function bwrapWorks(): boolean {
  try {
    return new Deno.Command("bwrap", {
      args: ["--unshare-all", "--ro-bind", "/", "/", "--", "true"],
      stdout: "null",
      stderr: "null",
    }).outputSync().success;
  } catch {
    return false;
  }
}
