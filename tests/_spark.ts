// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The real Apache Spark Connect server, from the pyspark wheel in the project's `.venv/` (its
 * jars), as the peer Valise is measured against: started on a free loopback port, ready when its
 * log says so (never after a timer), stopped with its JVM. Its files (scratch space, unpacked
 * artifacts, warehouse) live in a temporary directory removed at the end.
 *
 * @module
 */
import { join } from "node:path";
import { sparkHome, VENV_PYTHON, venvMissing } from "./_python.ts";

/** A running Spark Connect server. */
export interface SparkServer {
  /** The JVM's pid (also its process group). */
  readonly pid: number;
  /** The loopback port it serves gRPC on. */
  readonly port: number;
  /** `sc://127.0.0.1:<port>`. */
  readonly remote: string;
  /** Its scratch directory (working directory, `spark.local.dir`, `java.io.tmpdir`). */
  readonly dir: string;
  /** Every log line so far (stdout and stderr). */
  readonly log: string[];
  /** Stops the JVM (SIGTERM to its process group, SIGKILL if it lingers) and removes `dir`. */
  stop(): Promise<void>;
}

/** Options of {@linkcode startSpark}. */
export interface StartSparkOptions {
  /**
   * More `--conf` pairs.
   * @default {{}}
   */
  conf?: Record<string, string>;
  /**
   * More environment variables of the JVM (and so of its Python workers).
   * @default {{}}
   */
  env?: Record<string, string>;
}

let javaChecked: string | undefined | null = null;

/**
 * Why the real Spark Connect server cannot run here, or `undefined` when it can: it needs the
 * project's `.venv/` (the pyspark wheel and its jars) and a Java runtime.
 *
 * @returns The reason, for an ignored test's name.
 */
export function sparkMissing(): string | undefined {
  const venv = venvMissing();
  if (venv) return venv;
  if (javaChecked === null) {
    try {
      const ok = new Deno.Command("java", { args: ["-version"], stdout: "null", stderr: "null" })
        .outputSync().success;
      javaChecked = ok ? undefined : "`java -version` fails: Spark needs Java 17 or later";
    } catch {
      javaChecked = "no `java` on PATH: Spark needs Java 17 or later";
    }
  }
  return javaChecked;
}

/** The log line Spark prints once its gRPC server listens. */
const READY = /Spark Connect server started at:? [^\s]*?:(\d+)/;

/** A test that gives up rather than hang when Spark never says it is ready. */
const START_GUARD_MS = 180_000;

/**
 * Starts `SparkConnectServer` with `spark-submit` on port 0 (Spark picks a free one and logs
 * it), bound to 127.0.0.1, `local[2]`, no UI; workers without a session interpreter use the
 * `.venv` Python. Resolves once the "started at" line is logged.
 *
 * @param options More Spark config and environment.
 * @returns The running server.
 */
export async function startSpark(options: StartSparkOptions = {}): Promise<SparkServer> {
  const missing = sparkMissing();
  if (missing) throw new Error(`cannot start Spark: ${missing}`);
  const home = sparkHome();
  const dir = await Deno.makeTempDir({ prefix: "valise-spark-" });
  const conf: Record<string, string> = {
    "spark.connect.grpc.binding.port": "0",
    "spark.connect.grpc.binding.address": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.local.dir": join(dir, "local"),
    "spark.sql.warehouse.dir": join(dir, "warehouse"),
    "spark.pyspark.python": VENV_PYTHON,
    "spark.driver.extraJavaOptions": `-Djava.io.tmpdir=${join(dir, "tmp")}`,
    ...options.conf,
  };
  await Deno.mkdir(join(dir, "local"));
  await Deno.mkdir(join(dir, "tmp"));
  // setsid: the JVM leads its own process group, so stopping it reaches every child it started.
  const child = new Deno.Command("setsid", {
    args: [
      join(home, "bin", "spark-submit"),
      "--class",
      "org.apache.spark.sql.connect.service.SparkConnectServer",
      "--master",
      "local[2]",
      "--driver-memory",
      "1g",
      ...Object.entries(conf).flatMap(([k, v]) => ["--conf", `${k}=${v}`]),
      "spark-internal",
    ],
    cwd: dir,
    env: { SPARK_HOME: home, ...options.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const log: string[] = [];
  let onReady: (port: number) => void = () => {};
  let onExit: (why: Error) => void = () => {};
  const ready = new Promise<number>((resolve, reject) => {
    onReady = resolve;
    onExit = reject;
  });
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let rest = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      rest += text;
      const lines = rest.split("\n");
      rest = lines.pop() ?? "";
      for (const l of lines) {
        log.push(l);
        const m = l.match(READY);
        if (m) onReady(Number(m[1]));
      }
    }
    if (rest) log.push(rest);
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const status = child.status.then((s) => {
    onExit(new Error(`Spark exited (${s.code}) before it was ready:\n${log.join("\n")}`));
    return s;
  });
  let guard: ReturnType<typeof setTimeout> | undefined;
  const stop = async (): Promise<void> => {
    clearTimeout(guard);
    const signal = (sig: Deno.Signal) => {
      try {
        Deno.kill(-child.pid, sig);
      } catch {
        // the group is gone
      }
    };
    signal("SIGTERM");
    const killer = setTimeout(() => signal("SIGKILL"), 30_000);
    await status;
    clearTimeout(killer);
    // Anything the JVM left in its group (the launcher's helper shell) goes with it.
    signal("SIGKILL");
    await pumps;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    const port = await Promise.race([
      ready,
      new Promise<never>((_, reject) => {
        guard = setTimeout(
          () => reject(new Error(`Spark not ready after ${START_GUARD_MS} ms:\n${log.join("\n")}`)),
          START_GUARD_MS,
        );
      }),
    ]);
    clearTimeout(guard);
    return { pid: child.pid, port, remote: `sc://127.0.0.1:${port}`, dir, log, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
