// Copyright 2026 the Valise authors. Apache-2.0 license.
import assert from "node:assert/strict";
import { basename, join } from "node:path";
import {
  isLaunchError,
  Launcher,
  type LauncherOptions,
  LaunchError,
  type SessionSpec,
} from "./mod.ts";
import {
  alive,
  bwrapWorks,
  collect,
  descendants,
  eachSandbox,
  eventually,
  makeZip,
  memoryLogger,
  reachablePython,
  STANDBY_NAME,
  standbys,
  SYSTEM_PYTHON,
  until,
} from "./testdata/helpers.ts";

const HAS_BWRAP = bwrapWorks();
const MODES: ("none" | "bwrap")[] = HAS_BWRAP ? ["none", "bwrap"] : ["none"];
const quiet = () => {};

async function tempSession(key: string, files: Record<string, string> = {}): Promise<SessionSpec> {
  const root = await Deno.makeTempDir({ prefix: `valise-launcher-${key}-` });
  for (const [name, text] of Object.entries(files)) {
    await Deno.mkdir(join(root, name, ".."), { recursive: true });
    await Deno.writeTextFile(join(root, name), text);
  }
  return { key, root, pythonPath: [] };
}

async function withLauncher(
  options: LauncherOptions,
  fn: (l: Launcher) => Promise<void>,
): Promise<void> {
  const launcher = new Launcher({ logger: quiet, ...reachablePython(options.sandbox), ...options });
  try {
    await fn(launcher);
  } finally {
    await launcher.close();
  }
}

async function rejectsLaunch(p: Promise<unknown>, code: string, ...parts: string[]) {
  const err = await p.then(() => undefined, (e) => e);
  assert.ok(isLaunchError(err), `expected LaunchError ${code}, got ${err}`);
  assert.ok(err instanceof LaunchError);
  assert.equal(err.code, code, err.message);
  for (const part of parts) assert.ok(err.message.includes(part), `${err.message} lacks ${part}`);
}

/** Collapses runs of equal kinds: a pipe may deliver `print()` in one read or several. */
function squash(kinds: string[]): string[] {
  return kinds.filter((k, i) => k !== kinds[i - 1]);
}

/**
 * Processes of runs: below the launcher's fork servers, other than bwrap and the fork server
 * Python itself. Empty once every run is over.
 */
function runProcesses(l: Launcher): number[] {
  const roots = l.stats().pids;
  const procs = descendants(roots);
  const out: number[] = [];
  for (const [pid, [ppid, comm]] of procs) {
    // A standby (a child forked ahead, with no spec yet) is no run.
    if (comm === "bwrap" || comm === STANDBY_NAME) continue;
    const parent = procs.get(ppid);
    const isForkServer = roots.includes(ppid) || parent?.[1] === "bwrap";
    if (!isForkServer) out.push(pid);
  }
  return out;
}

Deno.test("Launcher.run() puts root, then pythonPath entries (a zip) first on sys.path", async () => {
  const s = await tempSession("zip");
  try {
    await makeZip(join(s.root, "lib.zip"), { "zipped.py": "WHERE = 'zip'\n" });
    s.pythonPath = ["lib.zip"];
    await withLauncher({ sandbox: MODES.at(-1)! }, async (l) => {
      const r = await collect(l, s, {
        code:
          "import sys, zipped, json; print(json.dumps([zipped.WHERE, zipped.__file__, sys.path[:2]]))",
      });
      assert.equal(r.exit.exitCode, 0, r.stderr);
      const [where, file, path] = JSON.parse(r.stdout);
      assert.equal(where, "zip");
      assert.equal(file, join(s.root, "lib.zip", "zipped.py"));
      assert.deepEqual(path, [s.root, join(s.root, "lib.zip")]);
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher.run() refuses interpreters it cannot or may not use", async (t) => {
  const s = await tempSession("interp", {
    "env/bin/notexec": "#!/bin/sh\n",
    "env/bin/broken": "#!/bin/sh\necho it is broken >&2\nexit 3\n",
  });
  await Deno.chmod(join(s.root, "env/bin/broken"), 0o755);
  try {
    await withLauncher({ sandbox: "none", allowedInterpreters: [SYSTEM_PYTHON] }, async (l) => {
      const run = (interpreter: string) => collect(l, { ...s, interpreter }, { code: "pass" });
      await t.step("relative path leaving the session", async () => {
        await rejectsLaunch(
          run("../other/bin/python"),
          "INTERPRETER_OUTSIDE_SESSION",
          "../other/bin/python",
          "spark.sql.execution.pyspark.python",
        );
      });
      await t.step("absolute path not on the allow-list", async () => {
        await rejectsLaunch(
          run("/usr/bin/python3.11"),
          "INTERPRETER_NOT_ALLOWED",
          "/usr/bin/python3.11",
          "spark.sql.execution.pyspark.python",
        );
      });
      await t.step("missing", async () => {
        await rejectsLaunch(
          run("env/bin/python"),
          "INTERPRETER_NOT_FOUND",
          join(s.root, "env/bin/python"),
          "spark.sql.execution.pyspark.python",
          "does not exist",
        );
      });
      await t.step("not executable", async () => {
        await rejectsLaunch(run("env/bin/notexec"), "INTERPRETER_NOT_FOUND", "is not executable");
      });
      await t.step("starts but fails", async () => {
        await rejectsLaunch(
          run("env/bin/broken"),
          "INTERPRETER_FAILED",
          join(s.root, "env/bin/broken"),
          "spark.sql.execution.pyspark.python",
          "it is broken",
        );
      });
      await t.step(
        "absolute path not allowed: the message names the choices and the flag",
        async () => {
          await rejectsLaunch(
            run("/usr/bin/python3.11"),
            "INTERPRETER_NOT_ALLOWED",
            SYSTEM_PYTHON,
            "--allow-interpreter /usr/bin/python3.11",
          );
        },
      );
      await t.step("a bare name is looked up on PATH among the allowed interpreters", async () => {
        // python3 on this PATH may be pyenv's default; /usr/bin/python3 is allowed either way.
        const r = await run(basename(SYSTEM_PYTHON));
        assert.equal(r.exit.exitCode, 0, r.stderr);
        const started = r.events[0];
        assert.ok(started?.kind === "started");
        assert.ok(
          [SYSTEM_PYTHON, await l.defaultInterpreter()].includes(started.interpreter),
          started.interpreter,
        );
      });
      await t.step("a bare name neither allowed nor in the session", async () => {
        await rejectsLaunch(
          run("python2.7"),
          "INTERPRETER_NOT_FOUND",
          "python2.7",
          "looked up on the server's PATH",
          SYSTEM_PYTHON,
        );
      });
      await t.step(
        "a bare name of a host interpreter that is not allowed is not used",
        async () => {
          // /bin/sh is on PATH but on no allow-list: the name falls to the session, which has none.
          await rejectsLaunch(run("sh"), "INTERPRETER_NOT_FOUND", "sh");
        },
      );
      await t.step("allowed absolute path", async () => {
        const r = await run(SYSTEM_PYTHON);
        assert.equal(r.exit.exitCode, 0, r.stderr);
        const started = r.events[0];
        assert.ok(started?.kind === "started");
        assert.equal(started.interpreter, SYSTEM_PYTHON);
      });
    });
    await rejectsLaunch(
      collect(
        new Launcher({ sandbox: "none", logger: quiet, defaultPython: "no-such-python-x" }),
        s,
        {
          code: "pass",
        },
      ),
      "INTERPRETER_NOT_FOUND",
      "no-such-python-x",
    );
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher refuses an allow-list entry that is no interpreter, at construction", () => {
  assert.throws(
    () => new Launcher({ sandbox: "none", logger: quiet, allowedInterpreters: ["/nope/python"] }),
    /Cannot allow interpreter \/nope\/python: it is not an executable file.*--allow-interpreter/,
  );
});

Deno.test("Launcher.run() gives the worker a fixed base environment and the session's", async (t) => {
  Deno.env.set("VALISE_TEST_SERVER_SECRET", "hunter2");
  const s = await tempSession("env");
  s.env = { MY_SETTING: "on", OTHER: "x=y" };
  try {
    await eachSandbox(t, async (sandbox) => {
      await withLauncher({ sandbox }, async (l) => {
        const r = await collect(l, s, {
          code: "import os, json; print(json.dumps(dict(os.environ)))",
        });
        assert.equal(r.exit.exitCode, 0, r.stderr);
        const env = JSON.parse(r.stdout) as Record<string, string>;
        assert.equal(env.VALISE_TEST_SERVER_SECRET, undefined);
        assert.ok(!r.stdout.includes("hunter2"));
        assert.equal(env.MY_SETTING, "on");
        assert.equal(env.OTHER, "x=y");
        assert.equal(env.PYTHONUNBUFFERED, "1");
        assert.equal(env.PYTHONNOUSERSITE, "1");
        assert.equal(env.HOME, s.root);
        assert.equal(env.LANG, "C.UTF-8");
        assert.match(env.PATH ?? "", /\/usr\/bin/);
        // Deno's spawn adds PWD (the session root), and Python may add LC_CTYPE.
        if ("PWD" in env) assert.equal(env.PWD, s.root);
        const keys = Object.keys(env).filter((k) => k !== "LC_CTYPE" && k !== "PWD").sort();
        assert.deepEqual(keys, [
          "HOME",
          "LANG",
          "MY_SETTING",
          "OTHER",
          "PATH",
          "PYTHONNOUSERSITE",
          "PYTHONUNBUFFERED",
        ]);
      });
    });
  } finally {
    Deno.env.delete("VALISE_TEST_SERVER_SECRET");
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher.run() feeds stdin and runs code, modules and scripts", async (t) => {
  const s = await tempSession("modes", {
    "pkg/__init__.py": "",
    "pkg/tool.py":
      "import sys\nif __name__ == '__main__':\n    print('tool', sys.argv[1:], __name__)\n",
    "scripts/hello.py":
      "import sys, os\nprint('hello', sys.argv, __name__, sys.path[0] == os.getcwd())\n",
  });
  try {
    await withLauncher({ sandbox: MODES.at(-1)! }, async (l) => {
      await t.step("stdin", async () => {
        const data = new Uint8Array(1 << 20).map((_, i) => i % 251);
        const r = await collect(l, s, {
          code:
            "import sys, hashlib; b = sys.stdin.buffer.read(); print(len(b), hashlib.sha256(b).hexdigest())",
          stdin: data,
        });
        const digest = Array.from(
          new Uint8Array(await crypto.subtle.digest("SHA-256", data)),
          (b) => b.toString(16).padStart(2, "0"),
        ).join("");
        assert.equal(r.stdout, `${data.length} ${digest}\n`);
      });
      await t.step("stdin closed when empty", async () => {
        const r = await collect(l, s, { code: "import sys; print(repr(sys.stdin.read()))" });
        assert.equal(r.stdout, "''\n");
      });
      await t.step("code with args", async () => {
        const r = await collect(l, s, { code: "import sys; print(sys.argv)", args: ["a", "b c"] });
        assert.equal(r.stdout, "['-c', 'a', 'b c']\n");
      });
      await t.step("module", async () => {
        const r = await collect(l, s, { module: "pkg.tool", args: ["x"] });
        assert.equal(r.exit.exitCode, 0, r.stderr);
        assert.equal(r.stdout, "tool ['x'] __main__\n");
      });
      await t.step("missing module", async () => {
        const r = await collect(l, s, { module: "no_such_mod" });
        assert.equal(r.exit.exitCode, 1);
        assert.match(r.stderr, /No module named no_such_mod/);
      });
      await t.step("script", async () => {
        const r = await collect(l, s, { script: "scripts/hello.py", args: ["1"] });
        assert.equal(r.exit.exitCode, 0, r.stderr);
        assert.equal(
          r.stdout,
          `hello ['${join(s.root, "scripts/hello.py")}', '1'] __main__ True\n`,
        );
      });
      await t.step("missing script", async () => {
        const r = await collect(l, s, { script: "nope.py" });
        assert.equal(r.exit.exitCode, 2);
        assert.match(r.stderr, /can't open file/);
      });
      await t.step("script outside the session", async () => {
        await assert.rejects(collect(l, s, { script: "../x.py" }), RangeError);
        await assert.rejects(collect(l, s, { script: "/etc/passwd" }), RangeError);
      });
      await t.step("no or two targets", async () => {
        await assert.rejects(collect(l, s, {} as never), TypeError);
        await assert.rejects(collect(l, s, { code: "1", module: "x" } as never), TypeError);
      });
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher.run() reports exit codes, signals and exceptions like python", async (t) => {
  const s = await tempSession("exit");
  try {
    await withLauncher({ sandbox: MODES.at(-1)! }, async (l) => {
      const cases: [string, number, string, RegExp | undefined][] = [
        ["pass", 0, "", undefined],
        ["import sys; sys.exit(3)", 3, "", undefined],
        ["import sys; sys.exit('bad thing')", 1, "", /^bad thing\n$/],
        ["raise ValueError('boom')", 1, "", /File "<string>", line 1[\s\S]*ValueError: boom/],
        ["import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -1, "SIGTERM", undefined],
        ["import os; os.abort()", -1, "SIGABRT", undefined],
        ["import os; os._exit(7)", 7, "", undefined],
        ["raise KeyboardInterrupt", -1, "SIGINT", /KeyboardInterrupt/],
        ["import atexit; atexit.register(print, 'bye')", 0, "", undefined],
        ["import os, sys; sys.exit(len(os.listdir('/proc/self/fd')))", 4, "", undefined],
      ];
      for (const [code, exitCode, signal, stderr] of cases) {
        await t.step(code, async () => {
          const r = await collect(l, s, { code });
          assert.equal(r.exit.exitCode, exitCode, r.stderr);
          assert.equal(r.exit.signal, signal);
          assert.equal(r.exit.timedOut, false);
          if (stderr) assert.match(r.stderr, stderr);
          assert.ok(!r.stderr.includes("valise-forkserver"), r.stderr);
          if (code.includes("atexit")) assert.equal(r.stdout, "bye\n");
        });
      }
      await t.step("output streams before the end", async () => {
        const kinds: string[] = [];
        for await (
          const ev of l.run(s, {
            code: "import os, time\nprint('a')\nwhile not os.path.exists('go'): time.sleep(0.01)",
          })
        ) {
          kinds.push(ev.kind);
          if (ev.kind === "stdout") await Deno.writeTextFile(join(s.root, "go"), "");
        }
        assert.deepEqual(squash(kinds), ["started", "stdout", "exited"]);
      });
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher.run() kills a run past its timeout, with its children", async (t) => {
  const s = await tempSession("timeout");
  try {
    await eachSandbox(t, async (sandbox) => {
      await withLauncher({ sandbox }, async (l) => {
        const r = await collect(l, s, {
          code:
            "import subprocess, time\nsubprocess.Popen(['sleep', '300'])\nprint('up', flush=True)\ntime.sleep(300)",
          // Room for a slow start on a loaded machine: the child must be up before the kill.
          timeoutMs: 2000,
        });
        assert.equal(r.stdout, "up\n");
        assert.equal(r.exit.timedOut, true);
        assert.equal(r.exit.signal, "SIGKILL");
        assert.equal(r.exit.exitCode, -1);
        assert.deepEqual(runProcesses(l), []);
      });
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher.run() caps the wall time at the session's limit", async () => {
  const s = await tempSession("walltime");
  s.limits = { wallTimeMs: 200 };
  try {
    await withLauncher({ sandbox: "none" }, async (l) => {
      const r = await collect(l, s, { code: "import time; time.sleep(300)", timeoutMs: 600_000 });
      assert.equal(r.exit.timedOut, true);
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher.run() is cancelled by its signal or by leaving the loop", async (t) => {
  const s = await tempSession("cancel");
  try {
    await withLauncher({ sandbox: MODES.at(-1)! }, async (l) => {
      await t.step("abort after start", async () => {
        const ctl = new AbortController();
        const kinds: string[] = [];
        let exit;
        for await (
          const ev of l.run(
            s,
            { code: "print('x', flush=True)\nimport time; time.sleep(300)" },
            ctl.signal,
          )
        ) {
          kinds.push(ev.kind);
          if (ev.kind === "stdout") ctl.abort();
          if (ev.kind === "exited") exit = ev;
        }
        assert.deepEqual(squash(kinds), ["started", "stdout", "exited"]);
        assert.equal(exit!.signal, "SIGKILL");
        assert.equal(exit!.timedOut, false);
      });
      await t.step("aborted before start", async () => {
        const ctl = new AbortController();
        ctl.abort(new Error("gone"));
        await assert.rejects(collect(l, s, { code: "pass" }, ctl.signal), /gone/);
      });
      await t.step("break out of the loop", async () => {
        for await (const ev of l.run(s, { code: "import time; time.sleep(300)" })) {
          if (ev.kind === "started") break;
        }
        await until(() => l.stats().running === 0);
        assert.deepEqual(runProcesses(l), []);
      });
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher.run() cuts output at the limit and ends with a marker", async () => {
  const s = await tempSession("cap");
  s.limits = { outputBytes: 1000 };
  try {
    await withLauncher({ sandbox: MODES.at(-1)! }, async (l) => {
      const r = await collect(l, s, { code: "while True: print('y' * 99)" });
      assert.equal(r.stdout.length, 1000);
      assert.equal(r.exit.outputTruncated, true);
      assert.equal(r.exit.signal, "SIGKILL");
      const last = r.events.at(-2);
      assert.ok(last?.kind === "stderr");
      assert.equal(
        new TextDecoder().decode(last.data),
        "\n[valise] output truncated at 1000 bytes\n",
      );
      const ok = await collect(l, s, { code: "print('y' * 500)" });
      assert.equal(ok.exit.outputTruncated, false);
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher.run() applies the memory limit", async () => {
  const s = await tempSession("mem");
  s.limits = { memoryBytes: 256 * 1024 * 1024 };
  try {
    await withLauncher({ sandbox: "none" }, async (l) => {
      const r = await collect(l, s, { code: "b = bytearray(512 * 1024 * 1024)" });
      assert.equal(r.exit.exitCode, 1);
      assert.match(r.stderr, /MemoryError/);
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher.stopSession() kills the session's running and queued runs", async (t) => {
  const s = await tempSession("stop");
  const other = await tempSession("other");
  s.limits = { maxWorkersPerSession: 1 };
  try {
    await eachSandbox(t, async (sandbox) => {
      await withLauncher({ sandbox }, async (l) => {
        const running = l.run(s, { code: "print('up', flush=True)\nimport time; time.sleep(300)" });
        const first = await running.next();
        assert.equal(first.value?.kind, "started");
        await running.next(); // "up": the process is surely running
        const queued = collect(l, s, { code: "pass" }).then(() => undefined, (e) => e);
        await until(() => l.stats().queued === 1);
        const survivor = collect(l, other, { code: "print('fine')" });
        survivor.catch(() => {});
        await l.stopSession(s.key);
        const rest = [];
        for await (const ev of running) rest.push(ev);
        const last = rest.pop();
        assert.ok(rest.every((ev) => ev.kind === "stdout"));
        assert.ok(last?.kind === "exited");
        assert.equal(last.signal, "SIGKILL");
        await rejectsLaunch(queued.then((e) => Promise.reject(e)), "SESSION_STOPPED", s.key);
        assert.equal((await survivor).stdout, "fine\n");
        assert.deepEqual(runProcesses(l), []);
        // The session works again afterwards, with a new fork server.
        assert.equal((await collect(l, s, { code: "print(1)" })).stdout, "1\n");
      });
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
    await Deno.remove(other.root, { recursive: true });
  }
});

Deno.test("Launcher.run() queues beyond the limits and refuses when the queue is full", async () => {
  const s = await tempSession("queue");
  try {
    await withLauncher(
      { sandbox: "none", limits: { maxWorkersTotal: 3, maxWorkersPerSession: 2, maxQueue: 2 } },
      async (l) => {
        await Deno.writeTextFile(join(s.root, "gate.py"), "");
        const code = "import os, time\nwhile not os.path.exists('go'): time.sleep(0.01)";
        const runs = [collect(l, s, { code }), collect(l, s, { code }), collect(l, s, { code })];
        await until(() => l.stats().running === 2 && l.stats().queued === 1);
        runs.push(collect(l, s, { code }));
        await until(() => l.stats().queued === 2);
        await rejectsLaunch(collect(l, s, { code }), "QUEUE_FULL", "maxQueue 2");
        await Deno.writeTextFile(join(s.root, "go"), "");
        for (const r of await Promise.all(runs)) assert.equal(r.exit.exitCode, 0);
        assert.deepEqual(l.stats().queued + l.stats().running, 0);
      },
    );
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher leaves no process behind after 200 runs, idle expiry and close()", async (t) => {
  const sessions = await Promise.all([tempSession("many1"), tempSession("many2")]);
  try {
    await eachSandbox(t, async (sandbox) => {
      const l = new Launcher({
        sandbox,
        ...reachablePython(sandbox),
        logger: quiet,
        forkServerIdleMs: 100,
        limits: { maxQueue: 200 },
      });
      try {
        const runs = [];
        for (let i = 0; i < 200; i++) {
          runs.push(collect(l, sessions[i % 2]!, {
            code: i % 10 === 0 ? "import subprocess; subprocess.run(['true'])" : "print(1)",
          }));
        }
        for (const r of await Promise.all(runs)) assert.equal(r.exit.exitCode, 0, r.stderr);
        assert.deepEqual(runProcesses(l), []);
        if (sandbox === "none") {
          // The fork servers hold no more descriptors after 200 runs than after one.
          const pids = l.stats().pids;
          const fds = () =>
            pids.filter(alive).map((p): [number, number] => [
              p,
              [...Deno.readDirSync(`/proc/${p}/fd`)].length,
            ]);
          // Each compared with its standby up (it holds that child's four pipes).
          const ready = () => pids.filter(alive).every((p) => standbys([p]).length === 1);
          await eventually("each fork server has its standby", ready);
          const after = fds();
          await Promise.all(
            [0, 1, 0, 1].map((i) => collect(l, sessions[i]!, { code: "print(1)" })),
          );
          await eventually("each fork server has its standby", ready);
          // (A fork server may have stopped on idle in between; compare those still there.)
          const now = new Map(fds());
          for (const [p, n] of after) if (now.has(p)) assert.equal(now.get(p), n);
          assert.ok(after.every(([, n]) => n < 16), String(after));
        }
        const before = l.stats().pids;
        assert.ok(before.length <= 2);
        await until(() => l.stats().forkServers === 0);
        assert.ok(before.every((pid) => !alive(pid)));
        // A run in flight at close(): its process and fork server must go too.
        const code = `import os, time\nprint('up', flush=True)\nwhile True: time.sleep(1)`;
        const blocked = l.run(sessions[0]!, { code });
        assert.equal((await blocked.next()).value?.kind, "started");
        const last = l.stats().pids;
        const lastTree = [...last, ...descendants(last).keys()];
        assert.equal(last.length, 1);
        assert.ok(lastTree.length >= 2);
        await l.close();
        assert.deepEqual(lastTree.filter((pid) => alive(pid)), []);
        const rest = [];
        for await (const ev of blocked) rest.push(ev);
        assert.equal(rest.at(-1)?.kind, "exited");
        const { forkServersStarted: _, ...stats } = l.stats();
        assert.deepEqual(stats, { forkServers: 0, running: 0, queued: 0, pids: [] });
      } finally {
        await l.close();
      }
    });
  } finally {
    for (const s of sessions) await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("Launcher logs once when workers are not sandboxed", async () => {
  const { lines, log } = memoryLogger();
  const l = new Launcher({ sandbox: "none", logger: log });
  assert.equal(l.sandboxed, false);
  assert.equal(lines.filter((x) => x.includes("not sandboxed")).length, 1);
  await rejectsLaunch(
    collect(l, { key: "x", root: "/nonexistent/session", pythonPath: [] }, { code: "" }),
    "SESSION_DIR_MISSING",
    "/nonexistent/session",
  );
  await l.close();
  await rejectsLaunch(
    collect(l, { key: "x", root: "/tmp/x", pythonPath: [] }, { code: "" }),
    "CLOSED",
  );
  if (HAS_BWRAP) {
    const m = memoryLogger();
    const sb = new Launcher({ sandbox: "auto", logger: m.log });
    assert.equal(sb.sandboxed, true);
    assert.equal(m.lines.filter((x) => x.includes("not sandboxed")).length, 0);
    await sb.close();
  }
  assert.throws(
    () => new Launcher({ sandbox: "bwrap", bwrapPath: "/nonexistent/bwrap", logger: quiet }),
    (e: unknown) => isLaunchError(e) && e.code === "SANDBOX_UNAVAILABLE",
  );
});

Deno.test("Launcher frees a run's slot when it ends even if nobody reads its events", async () => {
  const s = await tempSession("abandon");
  try {
    await withLauncher({ sandbox: "none", limits: { maxWorkersTotal: 1 } }, async (l) => {
      const abandoned = l.run(s, { code: "import time; time.sleep(300)", timeoutMs: 200 });
      assert.equal((await abandoned.next()).value?.kind, "started");
      // Not iterated again: the timeout still kills it and gives its slot to the next run.
      const r = await collect(l, s, { code: "print('next')" });
      assert.equal(r.stdout, "next\n");
      await abandoned.return();
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});
