// End-to-end Run RPC: Python workers in each session's own directory, interpreter and path,
// over real gRPC, with real archives and real processes.
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  addArtifactsRequests,
  bytesArtifact,
  ConfigRequest_OperationSchema,
  ErrorInfoSchema,
  type RunRequest,
  RunRequestSchema,
  SparkConnectService,
  WorkerService,
} from "@valise/protocol";
import { serve } from "@valise/server";
import { makeCondaPackLike, makePex, makeVenvPack } from "./fixtures/envs.ts";
import { needsVenv } from "./_python.ts";
import { fileArtifact, removeTree } from "./_util.ts";

type Spark = ReturnType<typeof createClient<typeof SparkConnectService>>;
type Workers = ReturnType<typeof createClient<typeof WorkerService>>;

async function withServer(
  fn: (
    c: { spark: Spark; workers: Workers; tmp: string; dataDir: string; sandboxed: boolean },
  ) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-run-" });
  const dataDir = join(tmp, "data");
  const server = await serve({
    dataDir,
    port: 0,
    workers: { limits: { maxQueue: 256, maxWorkersPerSession: 4, wallTimeMs: 20_000 } },
  });
  const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` });
  try {
    await fn({
      spark: createClient(SparkConnectService, transport),
      workers: createClient(WorkerService, transport),
      tmp,
      dataDir,
      sandboxed: server.valise.launcher.sandboxed,
    });
  } finally {
    await server.close();
    await removeTree(tmp);
  }
}

async function setConf(spark: Spark, sessionId: string, key: string, value: string) {
  await spark.config({
    sessionId,
    operation: create(ConfigRequest_OperationSchema, {
      opType: { case: "set", value: { pairs: [{ key, value }] } },
    }),
  });
}

interface Ran {
  stdout: string;
  stderr: string;
  exitCode: number;
  signal: string;
  timedOut: boolean;
  truncated: boolean;
  interpreter: string;
  cwd: string;
}

async function run(
  workers: Workers,
  req: Partial<Omit<RunRequest, "$typeName">> & { sessionId: string },
  signal?: AbortSignal,
): Promise<Ran> {
  const r: Ran = {
    stdout: "",
    stderr: "",
    exitCode: NaN,
    signal: "",
    timedOut: false,
    truncated: false,
    interpreter: "",
    cwd: "",
  };
  const dec = new TextDecoder();
  for await (const ev of workers.run(create(RunRequestSchema, req), signal ? { signal } : {})) {
    const e = ev.event;
    if (e.case === "started") {
      r.interpreter = e.value.interpreter;
      r.cwd = e.value.cwd;
    } else if (e.case === "stdout") r.stdout += dec.decode(e.value);
    else if (e.case === "stderr") r.stderr += dec.decode(e.value);
    else if (e.case === "exited") {
      r.exitCode = e.value.exitCode;
      r.signal = e.value.signal;
      r.timedOut = e.value.timedOut;
      r.truncated = e.value.outputTruncated;
    }
  }
  return r;
}

const code = (c: string) => ({ target: { case: "code" as const, value: c } });

Deno.test(
  needsVenv("the seed scenario: a venv-pack session and a pyfile session, 50 concurrent runs each"),
  async () => {
    await withServer(async ({ spark, workers, tmp }) => {
      const a = crypto.randomUUID();
      const b = crypto.randomUUID();
      const { archive } = await makeVenvPack(join(tmp, "fx"), {
        packages: { mylib: "VERSION = 1\n" },
      });
      await spark.addArtifacts(
        addArtifactsRequests([fileArtifact("archives/env.tar.gz#environment", archive)], {
          sessionId: a,
        }),
      );
      await setConf(spark, a, "spark.sql.execution.pyspark.python", "environment/bin/python");
      await spark.addArtifacts(addArtifactsRequests([
        bytesArtifact("pyfiles/mylib.py", new TextEncoder().encode("VERSION = 2\n")),
      ], { sessionId: b }));
      const runs = await Promise.all([
        ...Array.from(
          { length: 50 },
          () => run(workers, { sessionId: a, ...code("import mylib; print(mylib.VERSION)") }),
        ),
        ...Array.from(
          { length: 50 },
          () => run(workers, { sessionId: b, ...code("import mylib; print(mylib.VERSION)") }),
        ),
      ]);
      for (const r of runs.slice(0, 50)) equal(r.stdout.trim(), "1", r.stderr);
      for (const r of runs.slice(50)) equal(r.stdout.trim(), "2", r.stderr);
      ok(runs[0]!.interpreter.endsWith("environment/bin/python"), runs[0]!.interpreter);
    });
  },
);

Deno.test(needsVenv("a PEX added as a file runs as the session's interpreter"), async () => {
  await withServer(async ({ spark, workers, tmp }) => {
    const sessionId = crypto.randomUUID();
    const pex = await makePex(join(tmp, "fx"), { packages: { pexlib: "WHO = 'pex'\n" } });
    await spark.addArtifacts(
      addArtifactsRequests([fileArtifact("files/app.pex", pex.path)], { sessionId }),
    );
    await setConf(spark, sessionId, "spark.sql.execution.pyspark.python", "app.pex");
    const r = await run(workers, { sessionId, ...code("import pexlib; print(pexlib.WHO)") });
    equal(r.stdout.trim(), "pex", r.stderr);
    equal(r.exitCode, 0);
  });
});

Deno.test("a conda-pack environment runs after conda-unpack, with its own packages", async () => {
  await withServer(async ({ spark, workers, tmp }) => {
    const sessionId = crypto.randomUUID();
    const fx = await makeCondaPackLike(join(tmp, "fx"), { packages: { condalib: "N = 7\n" } });
    await spark.addArtifacts(
      addArtifactsRequests([fileArtifact("archives/env.tar.gz#environment", fx.archive)], {
        sessionId,
      }),
    );
    await setConf(spark, sessionId, "spark.sql.execution.pyspark.python", "environment/bin/python");
    const r = await run(workers, {
      sessionId,
      ...code(
        "import condalib, condalib._prefix as p, os; print(condalib.N, p.PREFIX == os.path.realpath('environment'))",
      ),
    });
    equal(r.stdout.trim(), "7 True", r.stderr);
  });
});

Deno.test("runs stream output, take stdin and args, and report exit codes", async () => {
  await withServer(async ({ spark, workers }) => {
    const sessionId = crypto.randomUUID();
    await spark.addArtifacts(addArtifactsRequests([
      bytesArtifact(
        "files/tool.py",
        new TextEncoder().encode(
          "import sys\nprint('args', sys.argv[1:])\nprint('in', sys.stdin.read())\nsys.exit(3)\n",
        ),
      ),
    ], { sessionId }));
    const r = await run(workers, {
      sessionId,
      target: { case: "script", value: "tool.py" },
      args: ["x", "y"],
      stdin: new TextEncoder().encode("hello"),
    });
    equal(r.stdout, "args ['x', 'y']\nin hello\n");
    equal(r.exitCode, 3);
    const m = await run(workers, {
      sessionId,
      target: { case: "module", value: "json.tool" },
      stdin: new TextEncoder().encode('{"a":1}'),
    });
    equal(JSON.parse(m.stdout).a, 1);
    const t = await run(workers, {
      sessionId,
      ...code("import time; time.sleep(30)"),
      timeoutMs: 300,
    });
    equal(t.timedOut, true);
    equal(t.signal, "SIGKILL");
  });
});

Deno.test("a missing interpreter is FAILED_PRECONDITION naming the path and the config key", async () => {
  await withServer(async ({ spark, workers }) => {
    const sessionId = crypto.randomUUID();
    await setConf(spark, sessionId, "spark.sql.execution.pyspark.python", "nope/bin/python");
    let err: ConnectError | undefined;
    try {
      await run(workers, { sessionId, ...code("print(1)") });
    } catch (e) {
      err = ConnectError.from(e);
    }
    equal(err?.code, Code.FailedPrecondition);
    ok(err!.rawMessage.includes("nope/bin/python"), err!.rawMessage);
    ok(err!.rawMessage.includes("spark.sql.execution.pyspark.python"), err!.rawMessage);
    equal(
      err!.findDetails(ErrorInfoSchema)[0]?.metadata.errorClass,
      "PYTHON_INTERPRETER.NOT_FOUND",
    );
  });
});

Deno.test("ReleaseSession kills the session's running worker", async () => {
  await withServer(async ({ spark, workers }) => {
    const sessionId = crypto.randomUUID();
    const events = workers.run(create(RunRequestSchema, {
      sessionId,
      ...code("import time; print('up', flush=True); time.sleep(60)"),
    }));
    let signal = "";
    let released = false;
    for await (const ev of events) {
      // Release once the worker is surely running: its first output has arrived.
      if (ev.event.case === "stdout" && !released) {
        released = true;
        await spark.releaseSession({ sessionId });
      }
      if (ev.event.case === "exited") signal = ev.event.value.signal;
    }
    equal(released, true);
    equal(signal, "SIGKILL");
  });
});

Deno.test("with the sandbox, a session cannot see another session, the data root, or the network", async (t) => {
  await withServer(async ({ spark, workers, dataDir, sandboxed }) => {
    const a = crypto.randomUUID();
    const b = crypto.randomUUID();
    await spark.addArtifacts(addArtifactsRequests([
      bytesArtifact("files/secret.txt", new TextEncoder().encode("b's secret")),
    ], { sessionId: b }));
    await spark.addArtifacts(addArtifactsRequests([
      bytesArtifact("files/mine.txt", new TextEncoder().encode("a's")),
    ], { sessionId: a }));
    const probe = await run(workers, { sessionId: a, ...code("import os; print(os.getcwd())") });
    const bRoot = probe.cwd.replace(a, b);
    const r = await run(workers, {
      sessionId: a,
      ...code(`
import os, socket
def attempt(f):
    try:
        f(); return "allowed"
    except Exception as e:
        return type(e).__name__
print("list-b", attempt(lambda: os.listdir(${JSON.stringify(bRoot)})))
print("read-b", attempt(lambda: open(${JSON.stringify(join(bRoot, "secret.txt"))}).read()))
print("list-data", attempt(lambda: os.listdir(${JSON.stringify(dataDir)})))
print("write-own-artifact", attempt(lambda: open("mine.txt", "w").write("x")))
print("net", attempt(lambda: socket.create_connection(("127.0.0.1", 1), timeout=2)))
print("own", open("mine.txt").read())
`),
    });
    const got = Object.fromEntries(r.stdout.trim().split("\n").map((l) => l.split(" ")));
    equal(got["own"], "a's", r.stderr);
    if (!sandboxed) {
      t.step({
        name: "skipped: bubblewrap is not available, workers are not sandboxed",
        ignore: true,
        fn: () => {},
      });
      return;
    }
    equal(got["list-b"], "FileNotFoundError");
    equal(got["read-b"], "FileNotFoundError");
    ok(["FileNotFoundError", "PermissionError"].includes(got["list-data"]!), got["list-data"]);
    ok(
      ["OSError", "PermissionError"].includes(got["write-own-artifact"]!),
      got["write-own-artifact"],
    );
    ok(got["net"] !== "allowed", got["net"]);
  });
});

Deno.test(
  needsVenv("a worker cannot modify the shared environment tree or its session's artifacts"),
  async (t) => {
    await withServer(async ({ spark, workers, tmp, sandboxed }) => {
      const sessionId = crypto.randomUUID();
      const { archive } = await makeVenvPack(join(tmp, "fx"));
      await spark.addArtifacts(addArtifactsRequests([
        fileArtifact("archives/env.tar.gz#environment", archive),
        bytesArtifact("pyfiles/lib.py", new TextEncoder().encode("X = 1\n")),
      ], { sessionId }));
      const r = await run(workers, {
        sessionId,
        ...code(`
def attempt(f):
    try:
        f(); return "allowed"
    except Exception as e:
        return type(e).__name__
print("tree-file", attempt(lambda: open("environment/pyvenv.cfg", "a").write("x")))
print("tree-new", attempt(lambda: open("environment/new.txt", "w").write("x")))
print("artifact", attempt(lambda: open("lib.py", "a").write("x")))
print("own-new", attempt(lambda: open("output.txt", "w").write("x")))
`),
      });
      const got = Object.fromEntries(r.stdout.trim().split("\n").map((l) => l.split(" ")));
      equal(got["own-new"], "allowed", r.stderr);
      if (!sandboxed) {
        t.step({ name: "skipped: workers are not sandboxed here", ignore: true, fn: () => {} });
        return;
      }
      for (const k of ["tree-file", "tree-new", "artifact"]) {
        ok(["OSError", "PermissionError"].includes(got[k]!), `${k}: ${got[k]}`);
      }
    });
  },
);
