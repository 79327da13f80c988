// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Environment-ready anchor, versus Apache Spark: a ~300 MB venv-pack archive (a real venv with
 * pyarrow, pandas, numpy and, for size, scipy, scikit-learn, polars, duckdb, matplotlib and
 * sympy, with their bytecode as `pip install` leaves it, packed by `venv-pack`; built once and
 * cached like the test fixtures, `tests/fixtures/envs.ts`) is added by the real PySpark client
 * as `env.tar.gz#environment` with
 * `spark.sql.execution.pyspark.python=environment/bin/python`, and the bench times from
 * `addArtifacts` returning to the first successful import in a worker of that session:
 *
 * - Spark (`tests/_spark.ts`): the first UDF task, `spark.range(1, numPartitions=1)
 *   .mapInPandas(f, …).collect()` with `f` importing the modules (`bench/import_probe.py`);
 * - Valise (`packages/server/main.ts`): the first `Run` of the session (`@valise/client`,
 *   the same probe as its code).
 *
 * Then a second session adds the same archive while the first is still open. Each system gets a
 * fresh server per repetition. Also reported: the add call itself (Valise unpacks before it
 * answers, Spark when the first task needs the archive, so add + ready is the whole wait), the
 * peak RSS of each server's process tree, and the disk the two sessions use.
 *
 * Env: VALISE_BENCH_ENV_REPS (default 1). Without `.venv/` or Java it says why and measures
 * nothing.
 *
 * @module
 */
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { connect } from "@valise/client";
import { makeVenvPack } from "../tests/fixtures/envs.ts";
import { pinned } from "../tests/_python.ts";
import { sparkMissing, startSpark } from "../tests/_spark.ts";
import { startServer } from "../tests/_server.ts";
import { Driver, median, mib, pollTreeRss } from "./_peers.ts";

const REPS = Number(Deno.env.get("VALISE_BENCH_ENV_REPS") ?? "1");
/** What the worker imports: what a `mapInPandas` UDF uses. */
const MODULES = "pyarrow,pandas,numpy";
/** The environment: the data stack, and real packages that bring it to ~300 MB packed. */
const REQUIREMENTS = [
  pinned("pyarrow"),
  pinned("pandas"),
  pinned("numpy"),
  "scipy==1.17.1",
  "scikit-learn==1.9.1",
  "polars==2.1.0",
  "duckdb==2.0.1",
  "matplotlib==3.11.2",
  "sympy==1.14.0",
];
const PROBE = await Deno.readTextFile(new URL("./import_probe.py", import.meta.url));

interface Ready {
  /** The `addArtifacts` call, s. */
  add: number;
  /** From the add returning to the import's answer, s. */
  ready: number;
  /** The imports themselves, timed by the probe in the worker, s. */
  imports: number;
}

interface Phase {
  sessions: Ready[];
  peakRss: number;
  diskBytes: number;
}

interface Probe {
  executable: string;
  cwd: string;
  modules: Record<string, { version: string; file: string }>;
  import_s: number;
}

/** The probe ran the environment's interpreter and found each module inside it. */
function checkProbe(p: Probe, where: string): void {
  ok(p.executable.endsWith("/environment/bin/python"), `${where}: ran ${p.executable}`);
  for (const m of MODULES.split(",")) {
    const file = p.modules[m]?.file ?? "";
    ok(file.includes("/environment/lib/"), `${where}: ${m} from ${file}, not the environment`);
  }
}

async function du(dir: string): Promise<number> {
  const out = await new Deno.Command("du", { args: ["-sb", dir], stdout: "piped" }).output();
  return Number(new TextDecoder().decode(out.stdout).split("\t")[0]);
}

async function sparkPhase(archive: string): Promise<Phase> {
  const spark = await startSpark();
  const drivers: Driver[] = [];
  const poll = pollTreeRss(spark.pid);
  try {
    const sessions: Ready[] = [];
    for (let i = 0; i < 2; i++) {
      const d = new Driver([
        "env",
        "--remote",
        spark.remote,
        "--archive",
        archive,
        "--udf",
        MODULES,
      ]);
      drivers.push(d);
      const added = await d.next("added");
      const ready = await d.next("ready");
      const probe = ready.result as Probe;
      checkProbe(probe, `Spark session ${i + 1}`);
      sessions.push({
        add: Number(added.elapsed_s),
        ready: Number(ready.ready_s),
        imports: probe.import_s,
      });
    }
    const peakRss = await poll.stop();
    const diskBytes = await du(spark.dir);
    for (const d of drivers.splice(0)) await d.finish();
    return { sessions, peakRss, diskBytes };
  } finally {
    await poll.stop();
    for (const d of drivers) await d.kill();
    await spark.stop();
  }
}

async function valisePhase(archive: string, dataDir: string): Promise<Phase> {
  const server = await startServer({ dataDir, args: ["--quiet"] });
  const drivers: Driver[] = [];
  const poll = pollTreeRss(server.pid);
  try {
    const sessions: Ready[] = [];
    for (let i = 0; i < 2; i++) {
      const remote =
        `sc://127.0.0.1:${server.port}/;user_id=bench;session_id=${crypto.randomUUID()}`;
      const d = new Driver(["env", "--remote", remote, "--archive", archive]);
      drivers.push(d);
      const added = await d.next("added");
      const session = connect(remote);
      try {
        const r = await session.runCollect({ code: PROBE, args: [MODULES] });
        const done = (performance.timeOrigin + performance.now()) / 1000;
        equal(r.exitCode, 0, `Valise session ${i + 1}: the probe failed:\n${r.stderr}`);
        const probe = JSON.parse(r.stdout) as Probe;
        checkProbe(probe, `Valise session ${i + 1}`);
        sessions.push({
          add: Number(added.elapsed_s),
          ready: done - Number(added.added_at),
          imports: probe.import_s,
        });
      } finally {
        session.close();
      }
    }
    const peakRss = await poll.stop();
    const diskBytes = await du(dataDir);
    for (const d of drivers.splice(0)) await d.finish();
    return { sessions, peakRss, diskBytes };
  } finally {
    await poll.stop();
    for (const d of drivers) await d.kill();
    await server.stop();
  }
}

const missing = sparkMissing();
if (missing) {
  console.log(`Not measured: ${missing}.`);
  Deno.exit(0);
}

const tmp = await Deno.makeTempDir({ prefix: "valise_env_ready_bench_" });
try {
  const built = performance.now();
  const env = await makeVenvPack(join(tmp, "env"), {
    requirements: REQUIREMENTS,
    packages: {},
    compileBytecode: true,
    name: "env",
  });
  const archiveBytes = (await Deno.stat(env.archive)).size;
  const buildS = (performance.now() - built) / 1000;
  const spark: Phase[] = [];
  const valise: Phase[] = [];
  for (let i = 0; i < REPS; i++) {
    spark.push(await sparkPhase(env.archive));
    valise.push(await valisePhase(env.archive, join(tmp, `valise-${i}`)));
  }

  const s = (x: number) => x.toFixed(2);
  const med = (ps: Phase[], i: number, f: (r: Ready) => number) =>
    median(ps.map((p) => f(p.sessions[i]!)));
  console.log(
    `venv-pack archive of ${(archiveBytes / 1e6).toFixed(0)} MB (${env.entries} members; ` +
      `${REQUIREMENTS.join(", ")}, installed with their bytecode as pip does; ready in ` +
      `${
        buildS.toFixed(1)
      } s, from the cache when built before) added by the real PySpark client as \`env.tar.gz#environment\`, ` +
      `\`spark.sql.execution.pyspark.python=environment/bin/python\`. Ready = from ` +
      `\`addArtifacts\` returning to the first import of ${MODULES} answering in a worker ` +
      `(Spark: one mapInPandas task; Valise: the session's first Run); "imports" is the part ` +
      `the probe timed around its imports in the worker (Spark's worker has imported pyarrow ` +
      `and pandas itself before the UDF runs). Session 2 adds the same ` +
      `archive while session 1 is open. ${REPS} repetition(s), each with fresh servers; ` +
      `medians. Peak RSS = highest summed VmRSS of the server's process tree (polled every ` +
      `20 ms); disk = \`du -sb\` of the server's files with both sessions open. ` +
      `${navigator.hardwareConcurrency} CPUs shared by client, server and workers.\n`,
  );
  console.log(
    "| server | session | addArtifacts s | ready s | add + ready s | of which imports s | " +
      "runs (add / ready s) |",
  );
  console.log("|---|---|---|---|---|---|---|");
  for (const [name, ps] of [["Apache Spark", spark], ["Valise", valise]] as const) {
    for (const i of [0, 1]) {
      const runs = ps.map((p) => `${s(p.sessions[i]!.add)} / ${s(p.sessions[i]!.ready)}`);
      console.log(
        `| ${name} | ${i + 1} | ${s(med(ps, i, (r) => r.add))} | ${
          s(med(ps, i, (r) => r.ready))
        } | ${s(med(ps, i, (r) => r.add + r.ready))} | ${s(med(ps, i, (r) => r.imports))} | ${
          runs.join(", ")
        } |`,
      );
    }
  }
  console.log("\n| server | peak RSS (tree) | disk, two sessions |\n|---|---|---|");
  for (const [name, ps] of [["Apache Spark", spark], ["Valise", valise]] as const) {
    console.log(
      `| ${name} | ${mib(Math.max(...ps.map((p) => p.peakRss)))} MiB | ${
        (median(ps.map((p) => p.diskBytes)) / 1e6).toFixed(0)
      } MB |`,
    );
  }
  console.log("\nValise / Spark (lower is better):");
  for (const i of [0, 1]) {
    const ready = med(valise, i, (r) => r.ready) / med(spark, i, (r) => r.ready);
    const whole = med(valise, i, (r) => r.add + r.ready) / med(spark, i, (r) => r.add + r.ready);
    console.log(
      `- session ${i + 1}: ready ${ready.toFixed(3)}x, add + ready ${whole.toFixed(3)}x`,
    );
  }
} finally {
  await Deno.remove(tmp, { recursive: true });
}
