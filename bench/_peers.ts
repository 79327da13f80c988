// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * What the benchmarks against Apache Spark share: the real PySpark client as a driver process
 * (`bench/pyspark_client.py`, run by the project's `.venv/` interpreter), the grpcio reference
 * server started with that interpreter, and the memory and CPU of a server's whole process tree
 * read from /proc (Spark's JVM starts Python daemons and workers; Valise its fork servers).
 *
 * @module
 */
import { join } from "node:path";
import { VENV_PYTHON } from "../tests/_python.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const DRIVER = join(ROOT, "bench", "pyspark_client.py");

/** 2^20 bytes. */
export const MiB = 1024 * 1024;

/** A JSON line the driver printed. */
export type DriverEvent = Record<string, unknown> & { event: string };

/** The driver reported an error, or exited without the line the bench waited for. */
export class DriverError extends Error {
  override name = "DriverError";
}

/**
 * One run of `bench/pyspark_client.py`: its JSON lines are read one at a time; after the last
 * one the bench wants, {@linkcode Driver.finish} lets it release its session and exit.
 */
export class Driver {
  #child: Deno.ChildProcess;
  #lines: AsyncIterator<string>;
  #stderr: Promise<string>;

  /**
   * Starts the driver.
   *
   * @param args The command and its options (`upload --remote … --file …`).
   */
  constructor(args: string[]) {
    this.#child = new Deno.Command(VENV_PYTHON, {
      args: [DRIVER, ...args],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#lines = lines(this.#child.stdout)[Symbol.asyncIterator]();
    this.#stderr = new Response(this.#child.stderr).text();
  }

  /**
   * The next JSON line, which must be the event `want`.
   *
   * @param want The expected event name.
   * @returns The event.
   * @throws {DriverError} When the driver reports an error or exits first.
   */
  async next(want: string): Promise<DriverEvent> {
    const { value, done } = await this.#lines.next();
    if (done) {
      await this.#child.status;
      throw new DriverError(`the PySpark driver exited before "${want}":\n${await this.#stderr}`);
    }
    const ev = JSON.parse(value) as DriverEvent;
    if (ev.event !== want) {
      throw new DriverError(`the PySpark driver said ${value} (waiting for "${want}")`);
    }
    return ev;
  }

  /**
   * Tells the driver to release its session and waits for it to exit.
   *
   * @throws {DriverError} When it fails.
   */
  async finish(): Promise<void> {
    const w = this.#child.stdin.getWriter();
    await w.write(new TextEncoder().encode("\n"));
    await w.close();
    while (!(await this.#lines.next()).done) { /* drain */ }
    const status = await this.#child.status;
    const stderr = await this.#stderr;
    if (!status.success) throw new DriverError(`the PySpark driver failed:\n${stderr}`);
  }

  /** Kills the driver (after a failure). */
  async kill(): Promise<void> {
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await this.#child.status;
    await this.#stderr.catch(() => "");
  }
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let rest = "";
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    rest += text;
    const parts = rest.split("\n");
    rest = parts.pop() ?? "";
    for (const l of parts) if (l.trim()) yield l;
  }
  if (rest.trim()) yield rest;
}

/** A server process the bench started. */
export interface Peer {
  /** Its name in the tables. */
  readonly name: string;
  /** The root of its process tree. */
  readonly pid: number;
  /** `sc://127.0.0.1:<port>`. */
  readonly remote: string;
  /** Where it keeps what sessions upload. */
  readonly dir: string;
  /** It serves AddArtifacts alone: sessions are not released, their files removed by hand. */
  readonly addOnly?: boolean;
  /** Stops it. */
  stop(): Promise<void>;
}

/**
 * The grpcio reference server (`bench/grpcio_ref_server.py`) on the `.venv/` interpreter (the
 * grpcio the PySpark client uses), on a free loopback port.
 *
 * @param dataDir Its data directory.
 * @returns The running server.
 */
export async function startReference(dataDir: string): Promise<Peer> {
  const child = new Deno.Command(VENV_PYTHON, {
    args: [join(ROOT, "bench", "grpcio_ref_server.py"), "--port", "0", "--data-dir", dataDir],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const it = lines(child.stdout)[Symbol.asyncIterator]();
  const first = await it.next();
  const port = Number(/listening on [^\s]+:(\d+)/.exec(first.value ?? "")?.[1] ?? 0);
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // already gone
    }
    await child.status;
    while (!(await it.next()).done) { /* drain */ }
  };
  if (!port) {
    await stop();
    throw new Error(`the reference server did not start: ${first.value ?? "(no output)"}`);
  }
  return {
    name: "grpcio reference",
    pid: child.pid,
    remote: `sc://127.0.0.1:${port}`,
    dir: dataDir,
    addOnly: true,
    stop,
  };
}

/**
 * `pid` and its descendants, from /proc/<pid>/task/<tid>/children. A child of `pid` still
 * running `pid`'s program is left out: the JVM and Deno start programs with posix_spawn, whose
 * child shares the parent's memory until it execs, and /proc shows it the parent's whole RSS.
 * (Processes forked by the descendants, such as Python workers, have memory of their own.)
 */
export async function processTree(pid: number): Promise<number[]> {
  const exe = (p: number) => Deno.readLink(`/proc/${p}/exe`).catch(() => "");
  const rootExe = await exe(pid);
  const out: number[] = [];
  const todo = [pid];
  while (todo.length) {
    const p = todo.pop()!;
    out.push(p);
    let tasks: Deno.DirEntry[] = [];
    try {
      tasks = await Array.fromAsync(Deno.readDir(`/proc/${p}/task`));
    } catch {
      continue; // exited meanwhile
    }
    for (const t of tasks) {
      const text = await Deno.readTextFile(`/proc/${p}/task/${t.name}/children`).catch(() => "");
      for (const c of text.split(" ")) {
        if (!c.trim()) continue;
        if (p === pid && await exe(Number(c)) === rootExe) continue;
        todo.push(Number(c));
      }
    }
  }
  return out;
}

async function statusKb(pid: number, field: string): Promise<number> {
  const text = await Deno.readTextFile(`/proc/${pid}/status`).catch(() => "");
  return Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? 0) * 1024;
}

/** The summed VmRSS of a process tree, in bytes. */
export async function treeRss(pid: number): Promise<number> {
  let sum = 0;
  for (const p of await processTree(pid)) sum += await statusKb(p, "VmRSS");
  return sum;
}

/** VmHWM (peak RSS since start) of one process, in bytes. */
export function peakRssOf(pid: number): Promise<number> {
  return statusKb(pid, "VmHWM");
}

/** User + system CPU seconds a process has used (its threads, not its children). */
export async function cpuOf(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * Polls the summed RSS of a process tree every `everyMs` until stopped.
 *
 * @param pid The tree's root.
 * @param everyMs The polling interval.
 * @returns `stop()`, which resolves with the highest sum seen.
 */
export function pollTreeRss(pid: number, everyMs = 20): { stop(): Promise<number> } {
  let polling = true;
  let peak = 0;
  const loop = (async () => {
    while (polling) {
      peak = Math.max(peak, await treeRss(pid));
      await new Promise((ok) => setTimeout(ok, everyMs));
    }
  })();
  return {
    async stop() {
      polling = false;
      await loop;
      return Math.max(peak, await treeRss(pid));
    },
  };
}

/** Writes `bytes` random bytes to `path`. */
export async function writeRandomFile(path: string, bytes: number): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  const buf = new Uint8Array(MiB);
  for (let done = 0; done < bytes; done += MiB) {
    for (let i = 0; i < buf.length; i += 65536) crypto.getRandomValues(buf.subarray(i, i + 65536));
    const n = Math.min(MiB, bytes - done);
    let off = 0;
    while (off < n) off += await f.write(buf.subarray(off, n));
  }
  f.close();
}

/**
 * Whether a copy of `source` is somewhere under `dir`: a regular file of its size whose first
 * and last MiB are its bytes (enough to tell random files apart without reading them whole).
 */
export async function hasCopyOf(dir: string, source: string): Promise<boolean> {
  const size = (await Deno.stat(source)).size;
  const ends = async (path: string): Promise<Uint8Array> => {
    const n = Math.min(MiB, size);
    const out = new Uint8Array(2 * n);
    using f = await Deno.open(path);
    for (const [at, from] of [[0, 0], [n, size - n]] as const) {
      await f.seek(from, Deno.SeekMode.Start);
      let off = 0;
      while (off < n) {
        const got = await f.read(out.subarray(at + off, at + n));
        if (got === null) throw new Error(`${path} ended early`);
        off += got;
      }
    }
    return out;
  };
  const want = await ends(source);
  const walk = async (d: string): Promise<boolean> => {
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      if (e.isDirectory && await walk(p)) return true;
      if (
        e.isFile && (await Deno.stat(p)).size === size &&
        (await ends(p)).every((b, i) => b === want[i])
      ) return true;
    }
    return false;
  };
  return await walk(dir);
}

/** The median of a non-empty list. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Bytes as MiB, no decimals. */
export function mib(bytes: number): string {
  return (bytes / MiB).toFixed(0);
}
