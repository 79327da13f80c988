// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The seed's flows on Apache Spark and on Valise: a venv-pack environment (uv venv, uv pip
 * install of pandas and pyarrow, venv-pack) added as `archives/env.tar.gz#environment` with the
 * interpreter `environment/bin/python`, and a PEX (pex 2.x) added as a file with the interpreter
 * `./seed.pex`, each beside a pyfile and a file, all through the real PySpark client. On Spark
 * the session's Python workers import from them inside `spark.range(3).mapInPandas(...)` (the
 * PEX: a plain Python UDF); on Valise the same probe (`seed_probe.py`) runs through `Run`. Both
 * must see the same module versions, files and working-directory layout; what differs is
 * documented in docs/compatibility.md ("The seed's flows on both") and asserted here.
 *
 * @module
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { RunRequestSchema } from "@valise/protocol";
import { makePex, makeVenvPack } from "../fixtures/envs.ts";
import { pinned, VENV_PYTHON } from "../_python.ts";
import { startServer } from "../_server.ts";
import { sparkMissing, startSpark } from "../_spark.ts";
import { removeTree } from "../_util.ts";

const HERE = new URL(".", import.meta.url).pathname;
const PROBE = await Deno.readTextFile(join(HERE, "seed_probe.py"));
const ENV_MODULES = ["seedlib", "seedutil", "pandas", "pyarrow", "numpy"];
const PEX_MODULES = ["seedpex", "seedutil"];

/** What seed_probe.py's probe() returns. */
interface Seen {
  interpreter: string;
  python: string;
  cwd_entries: string[];
  cwd_on_path: boolean;
  modules: Record<string, { version?: string | null; file?: string; error?: string }>;
  "seed.txt": string | null;
}

interface SparkOutput {
  env: Seen;
  pex: Seen;
  pex_bare_name: {
    ok?: Seen;
    error?: { type: string; errorClass: string | null; message: string };
  };
}

interface ValiseOutput {
  sessions: Record<"env" | "pex", { user: string; session: string }>;
}

async function seedClient(remote: string, server: string, files: Record<string, string>) {
  const out = await new Deno.Command(VENV_PYTHON, {
    args: [
      join(HERE, "seed_client.py"),
      "--remote",
      remote,
      "--server",
      server,
      ...Object.entries(files).flatMap(([k, v]) => [`--${k}`, v]),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(
      `seed_client.py against ${server} failed (${out.code}):\n${text}\n` +
        new TextDecoder().decode(out.stderr),
    );
  }
  return JSON.parse(text);
}

const missing = sparkMissing();
const NAME = "the seed's flows (venv-pack archive, PEX) see the same modules and files on Spark " +
  "and on Valise";

Deno.test(
  { name: missing ? `${NAME} (ignored: ${missing})` : NAME, ignore: !!missing },
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-seed-flows-" });
    try {
      const [env, pex] = await Promise.all([
        makeVenvPack(tmp, {
          creator: "uv",
          requirements: ["pandas", "numpy", "pyarrow", "python-dateutil", "pytz", "tzdata"].map(
            pinned,
          ),
          packages: { seedlib: 'VERSION = "1.2.3"\n' },
          name: "env",
        }),
        makePex(tmp, {
          packages: { seedpex: 'VERSION = "4.5.6"\n' },
          // Spark's workers find pyspark on PYTHONPATH (its pyspark.zip); a PEX hides PYTHONPATH
          // unless it inherits the path.
          inheritPath: "fallback",
          name: "seed.pex",
        }),
      ]);
      const files = {
        env: env.archive,
        pex: pex.path,
        util: join(tmp, "seedutil.py"),
        data: join(tmp, "seed.txt"),
      };
      await Deno.writeTextFile(files.util, 'VERSION = "7.8.9"\n');
      await Deno.writeTextFile(files.data, "seed data\n");

      const [spark, valise] = await Promise.allSettled([
        startSpark(),
        startServer({ dataDir: join(tmp, "data"), args: ["--quiet"] }),
      ]);
      try {
        if (spark.status === "rejected") throw spark.reason;
        if (valise.status === "rejected") throw valise.reason;
        const v = valise.value;
        const [onSpark, prepared] = await Promise.all([
          seedClient(spark.value.remote, "spark", files) as Promise<SparkOutput>,
          seedClient(`sc://127.0.0.1:${v.port}`, "valise", files) as Promise<ValiseOutput>,
        ]);
        const run = async (flow: "env" | "pex", modules: string[]): Promise<Seen> => {
          const { user, session } = prepared.sessions[flow];
          let stdout = "";
          let stderr = "";
          let exit = NaN;
          const req = create(RunRequestSchema, {
            sessionId: session,
            userContext: { userId: user },
            target: {
              case: "code",
              value: `${PROBE}\nimport json\nprint(json.dumps(probe(${
                JSON.stringify(modules)
              })))\n`,
            },
          });
          for await (const ev of v.clients.worker.run(req)) {
            const e = ev.event;
            if (e.case === "stdout") stdout += new TextDecoder().decode(e.value);
            else if (e.case === "stderr") stderr += new TextDecoder().decode(e.value);
            else if (e.case === "exited") exit = e.value.exitCode;
          }
          equal(exit, 0, `Run of the probe in the ${flow} session failed:\n${stdout}\n${stderr}`);
          return JSON.parse(stdout) as Seen;
        };
        const onValise = { env: await run("env", ENV_MODULES), pex: await run("pex", PEX_MODULES) };

        // What the environment holds, at the versions it was built with, on both.
        const version = (r: string) => r.split("==")[1];
        for (const seen of [onSpark.env, onValise.env]) {
          equal(seen.interpreter, "environment/bin/python");
          equal(seen.modules.seedlib?.version, "1.2.3");
          equal(seen.modules.seedlib?.file, `environment/${env.sitePackages}/seedlib/__init__.py`);
          equal(seen.modules.pandas?.version, version(pinned("pandas")));
          equal(seen.modules.pyarrow?.version, version(pinned("pyarrow")));
          equal(seen.modules.seedutil?.file, "seedutil.py");
          equal(seen["seed.txt"], "seed data\n");
        }
        for (const seen of [onSpark.pex, onValise.pex]) {
          deepEqual(seen.modules.seedpex, { version: "4.5.6", file: "<pex>/seedpex/__init__.py" });
          equal(seen.modules.seedutil?.version, "7.8.9");
        }
        // The same layout and imports, but for the bytecode Valise's workers may cache in their
        // working directory (Spark's run with PYTHONDONTWRITEBYTECODE=1): documented.
        for (const flow of ["env", "pex"] as const) {
          const { cwd_entries: sparkEntries, ...sparkRest } = onSpark[flow];
          const { cwd_entries: valiseEntries, ...valiseRest } = onValise[flow];
          deepEqual(valiseRest, sparkRest, flow);
          ok(!sparkEntries.includes("__pycache__/"), `${flow}: ${sparkEntries}`);
          ok(valiseEntries.includes("__pycache__/"), `${flow}: ${valiseEntries}`);
          deepEqual(valiseEntries.filter((e) => e !== "__pycache__/"), sparkEntries, flow);
        }

        // A bare interpreter name: Spark looks it up on PATH, Valise in the session too.
        const bare = onSpark.pex_bare_name.error;
        ok(bare, `Spark ran the bare name seed.pex: ${JSON.stringify(onSpark.pex_bare_name)}`);
        ok(bare.message.includes('Cannot run program "seed.pex"'), bare.message);
        const { user, session } = prepared.sessions.pex;
        await v.clients.spark.config({
          sessionId: session,
          userContext: { userId: user },
          operation: {
            opType: {
              case: "set",
              value: { pairs: [{ key: "spark.sql.execution.pyspark.python", value: "seed.pex" }] },
            },
          },
        });
        deepEqual((await run("pex", PEX_MODULES)).modules.seedpex?.version, "4.5.6");
      } finally {
        if (spark.status === "fulfilled") await spark.value.stop();
        if (valise.status === "fulfilled") await valise.value.stop();
      }
    } finally {
      await removeTree(tmp);
    }
  },
);
