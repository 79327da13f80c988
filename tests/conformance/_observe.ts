// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Runs the conformance client (`client.py`, the real PySpark client and the raw stub of its
 * wheel) once against Apache Spark's Spark Connect server and once against a Valise server
 * process, both on loopback ports, and returns what it observed on each.
 *
 * @module
 */
import { join } from "node:path";
import { startServer } from "../_server.ts";
import { startSpark } from "../_spark.ts";
import { VENV_PYTHON } from "../_python.ts";
import { removeTree } from "../_util.ts";

const CLIENT = new URL("./client.py", import.meta.url).pathname;

/**
 * Both servers (and the client, which checks what "the host's zone" is) run in this zone, so
 * Spark's default session zone (its JVM's) is the same on every machine that runs the suite.
 */
export const SERVERS_TZ = "Asia/Tokyo";

/** One thing the client did and what came back. */
export interface Observation {
  /** A stable name, e.g. `add.changed_bytes`. */
  key: string;
  /** What was done, in words. */
  what: string;
  /** What came back: a value, or `{ error: {...} }`. */
  value: unknown;
}

/** The observations of both runs. */
export interface Runs {
  /** Against Apache Spark. */
  spark: Observation[];
  /** Against Valise. */
  valise: Observation[];
}

/**
 * How long a session may stay unused before either server expires it: long enough that no
 * session of the client's run pauses that long, short enough to keep the suite quick.
 */
export const IDLE_TIMEOUT_S = 20;

/** A guard that turns a server that never expires the idle session into a failure. */
const IDLE_GUARD_MS = 180_000;

interface ClientOutput {
  observations: Observation[];
  idle_session?: string;
}

async function runClient(remote: string, work: string, extra: string[]): Promise<ClientOutput> {
  const out = await new Deno.Command(VENV_PYTHON, {
    args: [CLIENT, "--remote", remote, "--work", work, ...extra],
    env: { TZ: SERVERS_TZ },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(
      `client.py ${extra.join(" ")} against ${remote} failed (${out.code}):\n${text}\n` +
        new TextDecoder().decode(out.stderr),
    );
  }
  return JSON.parse(text) as ClientOutput;
}

/**
 * Runs the client against one server: the whole script, then, once the server logged that it
 * expired the session the script left idle, the observations of that session.
 *
 * @param remote `sc://127.0.0.1:<port>`.
 * @param work A scratch directory for the files the client adds.
 * @param expired Resolves once the server's log says it expired the session (a guard rejects).
 * @returns The observations, in the client's order.
 */
export async function observe(
  remote: string,
  work: string,
  expired: (sessionId: string) => Promise<unknown>,
): Promise<Observation[]> {
  await Deno.mkdir(work, { recursive: true });
  const first = await runClient(remote, work, []);
  const idle = first.idle_session;
  if (!idle) throw new Error(`client.py against ${remote} printed no idle_session`);
  let guard: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      expired(idle),
      new Promise((_, reject) => {
        guard = setTimeout(
          () => reject(new Error(`${remote} did not expire the idle session ${idle}`)),
          IDLE_GUARD_MS,
        );
      }),
    ]);
  } finally {
    clearTimeout(guard);
  }
  const after = await runClient(remote, work, ["--after-idle", idle]);
  return [...first.observations, ...after.observations];
}

/**
 * Starts Spark and Valise side by side, both expiring sessions idle for
 * {@linkcode IDLE_TIMEOUT_S}, runs the client against each, stops both.
 *
 * @returns What the client observed on each.
 */
export async function observeBoth(): Promise<Runs> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-conformance-" });
  const [spark, valise] = await Promise.allSettled([
    startSpark({
      env: { TZ: SERVERS_TZ },
      conf: {
        "spark.connect.session.manager.defaultSessionTimeout": `${IDLE_TIMEOUT_S}s`,
        "spark.connect.session.manager.maintenanceInterval": "1s",
      },
    }),
    startServer({
      dataDir: join(tmp, "data"),
      env: { TZ: SERVERS_TZ },
      args: ["--idle-timeout-min", String(IDLE_TIMEOUT_S / 60)],
    }),
  ]);
  try {
    if (spark.status === "rejected") throw spark.reason;
    if (valise.status === "rejected") throw valise.reason;
    const s = spark.value;
    const v = valise.value;
    const [sparkRun, valiseRun] = await Promise.all([
      observe(
        s.remote,
        join(tmp, "spark"),
        (id) => s.waitForLog(new RegExp(`Found session SessionHolderInfo\\(alice,${id},.*expired`)),
      ),
      observe(
        `sc://127.0.0.1:${v.port}`,
        join(tmp, "valise"),
        (id) => v.waitForLog(`session ${id} expired after being idle`),
      ),
    ]);
    return { spark: sparkRun, valise: valiseRun };
  } finally {
    if (spark.status === "fulfilled") await spark.value.stop();
    if (valise.status === "fulfilled") await valise.value.stop();
    await removeTree(tmp);
  }
}
