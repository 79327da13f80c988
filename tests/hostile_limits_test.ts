// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Issue 10, items 6–10, performed against a real `serve` process running as root with the
 * bubblewrap sandbox: fork bombs and memory hogs in one run, fork servers multiplied by
 * changing the worker environment, archives and attaches that break quotas, sessions beyond the
 * per-user bound, one AttachArtifacts of 3000 artifacts, releases racing commits; and a
 * session's interpreter that never becomes ready, or forges a giant control frame.
 *
 * @module
 */
import { equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import zlib from "node:zlib";
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  addArtifactsRequests,
  AttachArtifactsRequestSchema,
  bytesArtifact,
} from "@valise/protocol";
import { makeTar } from "../packages/archive/testdata/archive_writers.ts";
import {
  add,
  cgroupsMissing,
  comm,
  descendants,
  type HostileServer,
  refused,
  run,
  sandboxMissing,
  setConf,
  until,
  within,
  withServer,
} from "./_hostile.ts";
import { startServer } from "./_server.ts";

const enc = new TextEncoder();
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const PY = "spark.sql.execution.pyspark.python";
const MiB = 1 << 20;
const missing = sandboxMissing();
const noCgroups = cgroupsMissing();

function sandboxTest(name: string, fn: () => Promise<void>, why = missing): void {
  Deno.test({ name: why ? `${name} (ignored: ${why})` : name, ignore: !!why, fn });
}

/** Host pids (not zombies) whose real uid is `uid`. */
function processesOf(uid: number): number[] {
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const status = Deno.readTextFileSync(`/proc/${e.name}/status`);
      const u = /^Uid:\s+(\d+)/m.exec(status)?.[1];
      const state = /^State:\s+(\S)/m.exec(status)?.[1];
      if (Number(u) === uid && state !== "Z") out.push(Number(e.name));
    } catch { /* gone */ }
  }
  return out;
}

/** Kills (by pid) every process of a test's worker uid that is still alive. */
function killAll(uid: number): void {
  for (const pid of processesOf(uid)) {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch { /* gone */ }
  }
}

/** The URL of the server's metrics endpoint (`--metrics-port 0`). */
async function metricsUrl(s: HostileServer): Promise<string> {
  const line = await s.waitForLog(/metrics on http:\/\/\S+\/metrics/);
  return line.match(/(http:\/\/\S+\/metrics)/)![1]!;
}

async function gauge(url: string, name: string): Promise<number> {
  const text = await (await fetch(url)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no ${name} in the metrics`);
  return Number(line.split(" ")[1]);
}

/** bwrap processes the server started (its sandboxes). */
function sandboxes(s: HostileServer): number {
  return descendants(s.pid).filter((p) => comm(p) === "bwrap").length;
}

async function healthy(s: HostileServer): Promise<void> {
  const h = await within(s.clients.health.check({}), 30_000);
  ok(h !== undefined, "the server did not answer health");
}

// --- item 6 ---------------------------------------------------------------------------------

sandboxTest(
  "issue 10 #6: a run forking 1000 sleeping children is bounded by --worker-processes and leaves nothing behind",
  async () => {
    await withServer({ args: ["--worker-processes", "64"] }, async (s) => {
      const sid = crypto.randomUUID();
      const who = await run(s, sid, "import os; print(os.getuid())");
      const uid = Number(who.stdout.trim());
      try {
        const r = await run(
          s,
          sid,
          `import os, time, errno
n = 0
err = ""
for i in range(1000):
    try:
        pid = os.fork()
    except OSError as e:
        err = errno.errorcode.get(e.errno, str(e.errno))
        break
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    n += 1
print("forked", n)
print("error", err)
`,
        );
        const got = Object.fromEntries(r.stdout.trim().split("\n").map((l) => l.split(" ")));
        const forked = Number(got["forked"]);
        ok(forked > 0 && forked < 64, `forked ${forked} children (${r.stderr})`);
        equal(got["error"], "EAGAIN", r.stdout);
        await healthy(s);
        // The run is over: its children go with it; only the session's fork server remains
        // (and the child it forks ahead for the next run, its standby).
        await until(
          () => processesOf(uid).filter((p) => comm(p) !== "valise-standby").length,
          (n) => n <= 1,
          "the run's children to go",
          30_000,
        );
        // The session works again at once: the bound held the bomb, not the session.
        const after = await run(s, sid, "print('fine')");
        equal(after.stdout.trim(), "fine", after.stderr);
      } finally {
        killAll(uid);
      }
    });
  },
);

sandboxTest(
  "issue 10 #6: four children touching 300 MiB each cannot hold more than --sandbox-memory 512M",
  async () => {
    await withServer({ args: ["--sandbox-memory", "512M"] }, async (s) => {
      const sid = crypto.randomUUID();
      const rssBefore = s.rss();
      const r = await run(
        s,
        sid,
        `import os, select
held_r, held_w = os.pipe()
go_r, go_w = os.pipe()
kids = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        os.close(held_r); os.close(go_w)
        b = b"\\x01" * (300 << 20)   # allocated and written: resident
        os.write(held_w, bytes([i]))
        os.read(go_r, 1)             # hold it until the parent says go
        os._exit(0)
    kids.append(pid)
os.close(held_w); os.close(go_r)
held = set()
dead = {}
# Until every child has either reported that it holds its 300 MiB, or died.
while not all(p in held or p in dead for p in kids):
    if select.select([held_r], [], [], 0.05)[0]:
        for b in os.read(held_r, 16):
            held.add(kids[b])
    for p in kids:
        if p not in dead:
            q, st = os.waitpid(p, os.WNOHANG)
            if q:
                dead[p] = st
holding = [p for p in held if p not in dead]
print("alive-holding", len(holding))
print("killed", sum(1 for st in dead.values() if os.WIFSIGNALED(st) and os.WTERMSIG(st) == 9))
os.close(go_w)
for p in kids:
    if p not in dead:
        os.waitpid(p, 0)
`,
      );
      equal(r.exitCode, 0, r.stderr);
      const got = Object.fromEntries(r.stdout.trim().split("\n").map((l) => l.split(" ")));
      ok(
        Number(got["alive-holding"]) <= 1,
        `${got["alive-holding"]} children held 300 MiB at once`,
      );
      ok(Number(got["killed"]) >= 3, `only ${got["killed"]} children were killed: ${r.stdout}`);
      await healthy(s);
      const grown = s.rss() - rssBefore;
      ok(grown < 200 * MiB, `the server grew by ${grown} bytes`);
      const again = await run(s, sid, "print('fine')");
      equal(again.stdout.trim(), "fine", again.stderr);
    });
  },
  noCgroups,
);

sandboxTest(
  "issue 10 #6: a session's interpreter that never becomes ready cannot hang its runs, its release or the server, nor outlive them",
  async () => {
    await withServer({}, async (s) => {
      const sid = crypto.randomUUID();
      const made = await run(
        s,
        sid,
        `import os
open("hang.sh", "w").write("#!/bin/sh\\ntrap '' TERM INT HUP\\nexec sleep 100000\\n")
os.chmod("hang.sh", 0o755)
print(os.getuid())`,
      );
      const uid = Number(made.stdout.trim());
      try {
        await setConf(s, sid, { [PY]: "hang.sh" });
        const problems: string[] = [];
        // The server gives an interpreter 30 s to start its fork server; then the run fails.
        const e = await refused(run(s, sid, "print(1)", { guardMs: 90_000 }));
        if (e.errorClass !== "PYTHON_INTERPRETER.FAILED") problems.push(`the run: ${e.message}`);
        const released = await within(s.clients.spark.releaseSession({ sessionId: sid }), 30_000);
        if (released === undefined) problems.push("ReleaseSession did not return within 30 s");
        const left = await until(
          () => processesOf(uid).map((p) => `${p} ${comm(p)}`),
          (l) => l.length === 0,
          "",
          15_000,
        ).catch(() => processesOf(uid).map((p) => `${p} ${comm(p)}`));
        if (left.length) {
          problems.push(`processes of the session's uid ${uid} outlived it: ${left.join(", ")}`);
        }
        equal(problems.length, 0, problems.join("\n"));
        await healthy(s);
      } finally {
        killAll(uid);
      }
    });
  },
);

sandboxTest(
  "issue 10 #6: a conda-pack archive whose interpreter never answers cannot hang its add, nor leave processes",
  async () => {
    await withServer({}, async (s) => {
      const mark = 100_000 + Math.floor(Math.random() * 800_000);
      const conda = makeTar([
        { name: "bin/", type: "dir" },
        {
          name: "bin/python",
          data: `#!/bin/sh\ntrap '' TERM INT HUP\nexec sleep ${mark}\n`,
          mode: 0o755,
        },
        { name: "bin/conda-unpack", data: "print('never')\n", mode: 0o755 },
        { name: "conda-meta/", type: "dir" },
        { name: "conda-meta/history", data: "==> 2020-01-01 00:00:00 <==\n" },
      ]);
      const ours = () =>
        [...Deno.readDirSync("/proc")].filter((e) => /^\d+$/.test(e.name)).filter((e) => {
          try {
            return Deno.readTextFileSync(`/proc/${e.name}/cmdline`) === `sleep\0${mark}\0`;
          } catch {
            return false;
          }
        }).map((e) => Number(e.name));
      try {
        const problems: string[] = [];
        const sid = crypto.randomUUID();
        const outcome = await within(
          add(s, sid, [bytesArtifact("archives/hang.tar#henv", conda)]).then(
            () => "added",
            (e) => String(e),
          ),
          90_000,
        );
        if (outcome === undefined) problems.push("the add did not end within 90 s");
        else if (!outcome.includes("ARTIFACT_UNPACK_FAILED")) problems.push(`the add: ${outcome}`);
        const left = await until(ours, (l) => l.length === 0, "", 15_000).catch(ours);
        if (left.length) problems.push(`conda-unpack's processes outlived it: ${left.join(", ")}`);
        await healthy(s);
        equal(problems.length, 0, problems.join("\n"));
      } finally {
        for (const pid of ours()) {
          try {
            Deno.kill(pid, "SIGKILL");
          } catch { /* gone */ }
        }
      }
    });
  },
);

sandboxTest(
  "issue 10 #6: a sandbox that a crashed server left behind is killed when the server starts again",
  async () => {
    await withServer({}, async (s) => {
      const sid = crypto.randomUUID();
      // A working interpreter that, once its fork server has gone, stays behind as the
      // sandbox's init.
      const made = await run(
        s,
        sid,
        `import os
open("stay.sh", "w").write("#!/bin/sh\\n/usr/bin/python3 \\"$@\\"\\nexec sleep 100000\\n")
os.chmod("stay.sh", 0o755)
print(os.getuid())`,
      );
      const uid = Number(made.stdout.trim());
      ok(uid > 0, made.stderr);
      try {
        await setConf(s, sid, { [PY]: "stay.sh" });
        const r = await run(s, sid, "print('working')");
        equal(r.stdout.trim(), "working", r.stderr);
        s.child.kill("SIGKILL");
        await s.child.status;
        // The interpreter stays behind as the sandbox's init once its fork server has seen the
        // server go (a worker of its own uid cannot get the parent-death signal from a capless
        // root bwrap): the next start of the server kills it, before it serves anything.
        ok(processesOf(uid).length > 0, "the hostile interpreter did not stay: nothing shown");
        const again = await startServer({ dataDir: s.dataDir });
        try {
          const left = await until(() => processesOf(uid), (l) => l.length === 0, "", 15_000)
            .catch(() => processesOf(uid));
          equal(
            left.length,
            0,
            `the session's sandbox outlived the restart: ${left.map((p) => `${p} ${comm(p)}`)}`,
          );
          ok(again.log.some((l) => l.includes("a previous run's workers left behind")));
        } finally {
          await again.stop();
        }
      } finally {
        killAll(uid);
      }
    });
  },
);

sandboxTest(
  "issue 10 #5/#6: a session's interpreter cannot make the server buffer a forged 2 GiB control frame",
  async () => {
    await withServer({}, async (s) => {
      const sid = crypto.randomUUID();
      // The interpreter writes a frame header announcing ~2 GiB, then streams zeros.
      const made = await run(
        s,
        sid,
        `import os
open("forge.sh", "w").write("#!/bin/sh\\nprintf '\\\\177\\\\377\\\\377\\\\377'\\nexec head -c 1500000000 /dev/zero\\n")
os.chmod("forge.sh", 0o755)
print(os.getuid())`,
      );
      const uid = Number(made.stdout.trim());
      try {
        await setConf(s, sid, { [PY]: "forge.sh" });
        const before = s.rss();
        await run(s, sid, "print(1)", { guardMs: 90_000 }).catch(() => {});
        await healthy(s);
        const grown = s.peakRss() - before;
        ok(grown < 256 * MiB, `the server's memory grew by ${Math.round(grown / MiB)} MiB`);
      } finally {
        killAll(uid);
      }
    });
  },
);

// --- item 7 ---------------------------------------------------------------------------------

sandboxTest(
  "issue 10 #7: 40 runs, each after changing spark.pythonWorkerEnv, keep one fork server per session",
  async () => {
    await withServer({ args: ["--metrics-port", "0"] }, async (s) => {
      const url = await metricsUrl(s);
      const sid = crypto.randomUUID();
      for (let i = 0; i < 40; i++) {
        await setConf(s, sid, { "spark.pythonWorkerEnv.X": String(i) });
        const r = await run(s, sid, "import os; print(os.environ['X'])");
        equal(r.stdout.trim(), String(i), r.stderr);
        // The stale one stops as soon as it is idle: the count comes back to one every round.
        await until(() => gauge(url, "valise_fork_servers"), (n) => n <= 1, `round ${i}`, 30_000);
      }
      await until(() => sandboxes(s), (n) => n <= 1, "sandboxes to settle", 30_000);
    });
  },
);

sandboxTest(
  "issue 10 #7: several sessions changing their worker environment stay under --max-fork-servers",
  async () => {
    await withServer({ args: ["--metrics-port", "0", "--max-fork-servers", "3"] }, async (s) => {
      const url = await metricsUrl(s);
      const sessions = Array.from({ length: 6 }, () => crypto.randomUUID());
      let most = 0;
      for (let round = 0; round < 5; round++) {
        for (const sid of sessions) {
          await setConf(s, sid, { "spark.pythonWorkerEnv.X": `${round}` });
          const r = await run(s, sid, "import os; print(os.environ['X'])");
          equal(r.stdout.trim(), `${round}`, r.stderr);
          const n = await until(
            () => gauge(url, "valise_fork_servers"),
            (n) => n <= 3,
            "bound",
            30_000,
          );
          most = Math.max(most, n);
        }
      }
      await until(() => sandboxes(s), (n) => n <= 3, "sandboxes within the bound", 30_000);
      ok(most <= 3, `${most} fork servers`);
    });
  },
);

// --- item 8 ---------------------------------------------------------------------------------

/** A tar.gz of `files` files of `size` zero bytes each (tiny on the wire, big unpacked). */
function zeros(files: number, size: number): Uint8Array {
  const entries = Array.from({ length: files }, (_, i) => ({
    name: `z/f${i}`,
    data: new Uint8Array(size),
  }));
  return new Uint8Array(zlib.gzipSync(makeTar(entries)));
}

sandboxTest(
  "issue 10 #8: an archive that unpacks past --max-session-bytes or --max-session-files is refused",
  async () => {
    await withServer(
      {
        args: [
          "--max-session-bytes",
          "8M",
          "--max-session-files",
          "200",
          "--max-user-bytes",
          "20M",
        ],
      },
      async (s) => {
        const big = zeros(1, 32 * MiB);
        ok(big.length < MiB, `the archive is ${big.length} bytes`);
        const sid = crypto.randomUUID();
        const e = await refused(add(s, sid, [bytesArtifact("archives/big.tar.gz#big", big)]));
        equal(e.code, Code.ResourceExhausted, e.message);
        equal(e.errorClass, "QUOTA_EXCEEDED");
        equal(e.reason, "SESSION_BYTES");
        const many = zeros(500, 1);
        const f = await refused(add(s, sid, [bytesArtifact("archives/many.tar.gz#many", many)]));
        equal(f.errorClass, "QUOTA_EXCEEDED", f.message);
        equal(f.reason, "SESSION_ENTRIES");
        const r = await run(s, sid, "import os; print(sorted(os.listdir('.')))");
        equal(r.stdout.trim(), "[]", "a refused archive is visible");
        // Trees count against the user: two sessions of 6 MiB trees fit in 20M, a third does not.
        const mid = zeros(1, 6 * MiB);
        for (const _ of [0, 1]) {
          await add(s, crypto.randomUUID(), [bytesArtifact("archives/mid.tar.gz#mid", mid)]);
        }
        await add(s, crypto.randomUUID(), [
          bytesArtifact("files/pad.bin", new Uint8Array(3 * MiB)),
        ]);
        const u = await refused(
          add(s, crypto.randomUUID(), [bytesArtifact("archives/mid.tar.gz#mid", mid)]),
        );
        equal(u.reason, "USER_BYTES", u.message);
      },
    );
  },
);

sandboxTest(
  "issue 10 #8: what conda-unpack writes into its tree counts against --max-session-bytes",
  async () => {
    await withServer({ args: ["--max-session-bytes", "8M"] }, async (s) => {
      const sid = crypto.randomUUID();
      // A small archive whose own code (run once, at unpack) writes 32 MiB into the shared tree.
      const conda = makeTar([
        { name: "bin/", type: "dir" },
        { name: "bin/python", type: "symlink", linkname: "/usr/bin/python3" },
        { name: "pyvenv.cfg", data: "home = /usr/bin\ninclude-system-site-packages = true\n" },
        {
          name: "bin/conda-unpack",
          data: "open('grown.bin', 'wb').write(b'\\1' * (32 << 20))\n",
          mode: 0o755,
        },
        { name: "conda-meta/", type: "dir" },
        { name: "conda-meta/history", data: "==> 2020-01-01 00:00:00 <==\n" },
      ]);
      const outcome = await add(s, sid, [bytesArtifact("archives/grow.tar#genv", conda)]).then(
        () => "added",
        (e) => String(e),
      );
      const r = await run(
        s,
        sid,
        "import os; print(os.path.getsize('genv/grown.bin') if os.path.exists('genv/grown.bin') else 0)",
      );
      const held = Number(r.stdout.trim());
      ok(
        held <= 8 * MiB,
        `the session holds a ${held}-byte file its archive's conda-unpack wrote, past the 8 MiB ` +
          `quota (add: ${outcome})`,
      );
      ok(outcome.includes("QUOTA_EXCEEDED"), `the add: ${outcome}`);
    });
  },
);

sandboxTest(
  "issue 10 #8: AttachArtifacts by digest checks session and user byte quotas",
  async () => {
    await withServer(
      { args: ["--max-session-bytes", "8M", "--max-user-bytes", "14M"] },
      async (s) => {
        const sixBytes = new Uint8Array(6 * MiB).fill(9);
        sixBytes.set(enc.encode(crypto.randomUUID()));
        const four = new Uint8Array(4 * MiB).fill(7);
        const s1 = crypto.randomUUID();
        const s2 = crypto.randomUUID();
        const s3 = crypto.randomUUID();
        await add(s, s1, [bytesArtifact("files/six.bin", sixBytes)]);
        await add(s, s2, [bytesArtifact("files/four.bin", four)]);
        const attach = (sessionId: string) =>
          s.clients.store.attachArtifacts(create(AttachArtifactsRequestSchema, {
            sessionId,
            artifacts: [{ name: "files/six.bin", sha256: sha(sixBytes) }],
          }));
        const e = await refused(attach(s2));
        equal(e.code, Code.ResourceExhausted, e.message);
        equal(e.reason, "SESSION_BYTES", e.message);
        const u = await refused(attach(s3));
        equal(u.reason, "USER_BYTES", u.message);
        for (const sid of [s2, s3]) {
          const r = await run(s, sid, "import os; print(os.path.exists('six.bin'))");
          equal(r.stdout.trim(), "False", `${sid} holds the refused attachment`);
        }
      },
    );
  },
);

sandboxTest(
  "issue 10 #8: --max-sessions-per-user and --max-sessions bound session creation",
  async () => {
    await withServer(
      { args: ["--max-sessions-per-user", "3", "--max-sessions", "5"] },
      async (s) => {
        const conf = (sessionId: string, userId: string) =>
          setConf(s, sessionId, { "spark.x": "1" }, userId);
        const mine = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];
        for (const sid of mine) await conf(sid, "u");
        const e = await refused(conf(crypto.randomUUID(), "u"));
        equal(e.code, Code.ResourceExhausted, e.message);
        equal(e.reason, "USER_SESSIONS");
        // Runs and uploads create sessions too: they are bounded the same way.
        const r = await refused(run(s, crypto.randomUUID(), "print(1)", { userId: "u" }));
        equal(r.reason, "USER_SESSIONS", r.message);
        await conf(crypto.randomUUID(), "v");
        await conf(crypto.randomUUID(), "v");
        const t = await refused(conf(crypto.randomUUID(), "w"));
        equal(t.reason, "SESSIONS", t.message);
        await s.clients.spark.releaseSession({ sessionId: mine[0]!, userContext: { userId: "u" } });
        await conf(crypto.randomUUID(), "u");
      },
    );
  },
);

sandboxTest(
  "issue 10 #8: concurrent new sessions of one user cannot exceed --max-sessions-per-user",
  async () => {
    await withServer({ args: ["--max-sessions-per-user", "3"] }, async (s) => {
      const all = await Promise.allSettled(
        Array.from({ length: 20 }, () => setConf(s, crypto.randomUUID(), { "spark.x": "1" }, "u")),
      );
      const made = all.filter((p) => p.status === "fulfilled").length;
      ok(made <= 3, `one user created ${made} sessions at once under a limit of 3`);
    });
  },
);

sandboxTest(
  "issue 10 #8: concurrent uploads of one user cannot together exceed --max-user-bytes",
  async () => {
    await withServer({ args: ["--max-user-bytes", "10M"] }, async (s) => {
      const all = await Promise.allSettled(
        Array.from({ length: 8 }, (_, i) =>
          add(s, crypto.randomUUID(), [
            bytesArtifact("files/x.bin", new Uint8Array(4 * MiB).fill(i + 1)),
          ], "u")),
      );
      const stored = all.filter((p) => p.status === "fulfilled").length * 4;
      ok(stored <= 10, `one user stored ${stored} MiB at once under a limit of 10 MiB`);
    });
  },
);

// --- item 9 ---------------------------------------------------------------------------------

sandboxTest(
  "issue 10 #9: AttachArtifacts of 3000 artifacts writes the session's manifest once",
  async () => {
    await withServer({}, async (s) => {
      const files = Array.from({ length: 3000 }, (_, i) => enc.encode(`file ${i}\n`));
      const holder = crypto.randomUUID();
      await add(s, holder, files.map((b, i) => bytesArtifact(`files/f${i}.txt`, b)));
      const target = crypto.randomUUID();
      await setConf(s, target, { "spark.x": "1" });
      const dir = join(
        s.dataDir,
        "sessions",
        `u-${createHash("sha256").update("").digest("hex").slice(0, 32)}`,
        target,
      );
      const watcher = Deno.watchFs(dir, { recursive: false });
      let renames = 0;
      let overflow = false;
      let sentinelSeen!: () => void;
      const sentinelPromise = new Promise<void>((r) => sentinelSeen = r);
      const sentinel = join(dir, `.sentinel-${crypto.randomUUID()}`);
      const reading = (async () => {
        for await (const ev of watcher) {
          if (ev.flag !== null || ev.kind === "other") overflow = true;
          if (
            ev.kind === "rename" && ev.paths.length === 2 &&
            ev.paths[1] === join(dir, "manifest.json")
          ) renames++;
          if (ev.paths.includes(sentinel)) sentinelSeen();
        }
      })();
      try {
        // A write the watcher must see, so that a count of one means something.
        await setConf(s, target, { "spark.y": "1" });
        const start = performance.now();
        const res = await s.clients.store.attachArtifacts(create(AttachArtifactsRequestSchema, {
          sessionId: target,
          artifacts: files.map((b, i) => ({ name: `files/f${i}.txt`, sha256: sha(b) })),
        }));
        const seconds = (performance.now() - start) / 1000;
        equal(res.attached.length, 3000);
        // Events arrive in order: once the sentinel's is seen, every earlier one was counted.
        await Deno.writeTextFile(sentinel, "");
        await within(sentinelPromise, 30_000);
        ok(!overflow, "the watcher overflowed; the count is not trustworthy");
        equal(
          renames,
          2,
          `manifest.json was replaced ${renames - 1} times by one attach (${seconds} s)`,
        );
        const r = await run(
          s,
          target,
          "import os; print(len([n for n in os.listdir('.') if n.startswith('f')]))",
        );
        equal(r.stdout.trim(), "3000", r.stderr);
      } finally {
        watcher.close();
        await reading;
        await Deno.remove(sentinel).catch(() => {});
      }
    });
  },
);

// --- item 10 --------------------------------------------------------------------------------

sandboxTest(
  "issue 10 #10: ReleaseSession racing a commit never leaves a session to be restored",
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-hostile-" });
    const dataDir = join(tmp, "data");
    const released: string[] = [];
    try {
      await withServer({ dirs: { tmp, dataDir } }, async (s) => {
        const sizes = [0, 1, 100, 4096, 65536, 300_000, MiB, 3 * MiB];
        for (let round = 0; round < 24; round++) {
          const sessionId = crypto.randomUUID();
          const size = sizes[round % sizes.length]!;
          const bytes = new Uint8Array(size).fill(round);
          // Make the session exist first, so the release has something to race.
          await setConf(s, sessionId, { "spark.x": "1" });
          let releasing: Promise<unknown> | undefined;
          const requests = async function* () {
            yield* addArtifactsRequests([
              bytesArtifact(`files/a${round}.bin`, bytes),
              bytesArtifact(`pyfiles/b${round}.py`, enc.encode(`X = ${round}\n`)),
            ], { sessionId });
            // The client pulls once more when it half-closes: release right then.
            releasing = s.clients.spark.releaseSession({ sessionId });
          };
          const adding = s.clients.spark.addArtifacts(requests()).then(
            () => "ok",
            (e) => String(e),
          );
          await adding;
          await releasing;
          released.push(sessionId);
        }
        const user = join(
          dataDir,
          "sessions",
          `u-${createHash("sha256").update("").digest("hex").slice(0, 32)}`,
        );
        const left = [...Deno.readDirSync(user)].map((e) => e.name);
        equal(left.filter((n) => released.includes(n)).join(","), "", "released sessions on disk");
      });
      // After a restart nothing released comes back, on disk or on the wire.
      await withServer({ dirs: { tmp, dataDir } }, async (s) => {
        const line = await s.waitForLog(/session\(s\) restored/);
        ok(line.includes(" 0 session(s) restored"), line);
        const user = join(
          dataDir,
          "sessions",
          `u-${createHash("sha256").update("").digest("hex").slice(0, 32)}`,
        );
        const left = [...Deno.readDirSync(user)].map((e) => e.name);
        equal(left.filter((n) => released.includes(n)).join(","), "", "released sessions on disk");
        for (const sessionId of released.slice(0, 4)) {
          const e = await refused(setConf(s, sessionId, { "spark.x": "2" }));
          equal(e.errorClass, "INVALID_HANDLE.SESSION_CLOSED", e.message);
        }
      });
    } finally {
      await new Deno.Command("chmod", { args: ["-R", "u+w", tmp] }).output();
      await Deno.remove(tmp, { recursive: true });
    }
  },
);
