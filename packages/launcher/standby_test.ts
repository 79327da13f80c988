// Copyright 2026 the Valise authors. Apache-2.0 license.
// Each fork server keeps one child forked ahead (its standby), set up as far as no spec is
// needed, so that a warm run skips the fork and the set-up. A standby must be exactly as
// isolated as a freshly forked child, carry nothing of any other run, never outlive its fork
// server, and be replaced when something kills it. These tests look at the real processes.
import assert from "node:assert/strict";
import { Launcher, type RunEvent, type SessionSpec } from "./mod.ts";
import {
  alive,
  collect,
  descendants,
  eachSandbox,
  eventually,
  innermostPid,
  reachablePython,
  standbys,
} from "./testdata/helpers.ts";

const quiet = () => {};

async function tempSession(key: string): Promise<SessionSpec> {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: `valise-standby-${key}-` }));
  return { key, root, pythonPath: [] };
}

async function withLauncher(
  sandbox: "none" | "bwrap",
  fn: (l: Launcher) => Promise<void>,
): Promise<void> {
  const l = new Launcher({ sandbox, logger: quiet, ...reachablePython(sandbox) });
  try {
    await fn(l);
  } finally {
    await l.close();
  }
}

/**
 * The one standby of the launcher's fork servers, once it is up: its host pid and its pid as its
 * sandbox sees it (what `started` reports).
 */
async function theStandby(l: Launcher): Promise<{ pid: number; inner: number }> {
  let found: { pid: number; inner: number } | undefined;
  await eventually("a standby is up", () => {
    const all = standbys(l.stats().pids);
    const inner = all.length === 1 ? innermostPid(all[0]!) : undefined;
    if (inner !== undefined) found = { pid: all[0]!, inner };
    return found !== undefined;
  });
  return found!;
}

function startedPid(events: RunEvent[]): number {
  const ev = events.find((e) => e.kind === "started");
  assert.ok(ev?.kind === "started");
  return ev.pid;
}

/** What a run's process looks like from inside: all that a child's set-up decides. */
const SETUP_PROBE = `
import json, os, resource, sys
print(json.dumps({
    'leader': os.getsid(0) == os.getpid() == os.getpgrp(),
    'cwd': os.getcwd(),
    'pwd': os.environ.get('PWD'),
    'argv': sys.argv,
    'path0': sys.path[0],
    'fds': sorted(os.listdir('/proc/self/fd')),
    'as': list(resource.getrlimit(resource.RLIMIT_AS)),
    'core': list(resource.getrlimit(resource.RLIMIT_CORE)),
    'comm': open('/proc/self/comm').read().strip(),
    'name': __name__,
    'stdin': sys.stdin.read(),
    'uid': os.getuid(),
    'mark': os.environ.get('MARK'),
}))
`;

Deno.test("a warm run is the child forked ahead of it, set up exactly as a fresh fork", async (t) => {
  const s = await tempSession("setup");
  s.limits = { memoryBytes: 768 * 1024 * 1024 };
  s.env = { MARK: "m1" };
  try {
    await eachSandbox(t, async (sandbox) => {
      await withLauncher(sandbox, async (l) => {
        assert.equal((await collect(l, s, { code: "print(1)" })).stdout, "1\n");
        const standby = await theStandby(l);
        const warm = await collect(l, s, { code: SETUP_PROBE, args: ["a", "b"] });
        assert.equal(warm.exit.exitCode, 0, warm.stderr);
        assert.equal(startedPid(warm.events), standby.inner, "served by the standby");
        // A spec too big for the standby's pipe goes to a fresh fork; the standby stays.
        const next = await theStandby(l);
        const padding = `# ${"x".repeat(80 * 1024)}\n`;
        const fresh = await collect(l, s, { code: SETUP_PROBE + padding, args: ["a", "b"] });
        assert.equal(fresh.exit.exitCode, 0, fresh.stderr);
        assert.notEqual(startedPid(fresh.events), next.inner);
        assert.ok(standbys(l.stats().pids).includes(next.pid));
        const w = JSON.parse(warm.stdout);
        const f = JSON.parse(fresh.stdout);
        assert.deepEqual(w, f);
        assert.deepEqual(w, {
          leader: true,
          cwd: s.root,
          pwd: s.root,
          argv: ["-c", "a", "b"],
          path0: s.root,
          fds: ["0", "1", "2", "3"], // 3: the listing's own
          as: [768 * 1024 * 1024, 768 * 1024 * 1024],
          core: [0, 0],
          comm: "python3",
          name: "__main__",
          stdin: "",
          uid: w.uid,
          mark: "m1",
        });
        // And the standby that was left waiting serves the next run.
        const later = await collect(l, s, { code: "print(2)" });
        assert.equal(startedPid(later.events), next.inner);
      });
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

/**
 * Counts the strings, bytes and buffers reachable from the run's own objects and stack (up to
 * the fork server's frames and globals it was forked from) that hold the needle. The needle is
 * built at run time, so that the probe's own source does not hold it.
 */
const SCAN = `
import gc, sys
needle = ''.join(sys.argv[1:])
raw = needle.encode()
hits = []
seen = set()
def look(o, where):
    if o is needle or o is raw or id(o) in seen:
        return
    seen.add(id(o))
    try:
        if isinstance(o, str) and needle in o:
            hits.append(where)
        elif isinstance(o, (bytes, bytearray)) and raw in o:
            hits.append(where)
        elif isinstance(o, memoryview) and raw in o.tobytes():
            hits.append(where)
    except Exception:
        pass
f = sys._getframe()
while f is not None:
    for k, v in list(f.f_locals.items()) + list(f.f_globals.items()):
        look(v, f.f_code.co_name + ':' + str(k))
        for r in gc.get_referents(v):
            look(r, f.f_code.co_name + ':' + str(k) + '/ref')
    f = f.f_back
for o in gc.get_objects():
    look(o, type(o).__name__)
    for r in gc.get_referents(o):
        look(r, type(o).__name__ + '/ref')
print(len(hits), sorted(set(hits))[:10])
`;

Deno.test("a standby carries nothing of the runs before it", async (t) => {
  const s = await tempSession("carry");
  try {
    await eachSandbox(t, async (sandbox) => {
      await withLauncher(sandbox, async (l) => {
        const secret = `S3CR3T-${crypto.randomUUID()}`;
        // The secret is in earlier runs' code, arguments and stdin (in the RUN frame, and
        // streamed): one ends on its own, the other is killed while it waits for more stdin.
        const r1 = await collect(l, s, {
          code: `import sys\n# ${secret}\nprint(sys.stdin.read() == sys.argv[1])`,
          args: [secret],
          stdin: new TextEncoder().encode(secret),
        });
        assert.equal(r1.stdout, "True\n", r1.stderr);
        const seen: string[] = [];
        for await (
          const ev of l.run(s, {
            code: `import sys\nprint(sys.stdin.readline().strip() == sys.argv[1], flush=True)\n` +
              "sys.stdin.read()",
            args: [secret],
            stdin: (async function* () {
              yield new TextEncoder().encode(`${secret}\n`);
              await new Promise(() => {}); // never more: the run is killed
            })(),
          })
        ) {
          seen.push(ev.kind);
          if (ev.kind === "stdout") break;
        }
        assert.deepEqual(seen, ["started", "stdout"]);
        // Forked once no run is in flight any more, after both RUN frames were read.
        await eventually("the killed run is over", () => l.stats().running === 0);
        const standby = await theStandby(l);
        const half = secret.length >> 1;
        const r = await collect(l, s, {
          code: SCAN,
          args: [secret.slice(0, half), secret.slice(half)],
        });
        assert.equal(r.exit.exitCode, 0, r.stderr);
        assert.equal(startedPid(r.events), standby.inner, "served by the standby");
        assert.equal(r.stdout, "0 []\n");
      });
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("a killed standby is replaced, and the replacement serves the next run", async (t) => {
  const s = await tempSession("killed");
  try {
    await eachSandbox(t, async (sandbox) => {
      await withLauncher(sandbox, async (l) => {
        assert.equal((await collect(l, s, { code: "print(1)" })).exit.exitCode, 0);
        const first = await theStandby(l);
        Deno.kill(first.pid, "SIGKILL");
        await eventually("the killed standby is reaped", () => !alive(first.pid));
        const second = await theStandby(l);
        assert.notEqual(second.pid, first.pid);
        const r = await collect(l, s, { code: "print(2)" });
        assert.equal(r.stdout, "2\n");
        assert.equal(startedPid(r.events), second.inner);
      });
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("stopSession() and close() kill the standbys with their fork servers", async (t) => {
  const s = await tempSession("stop");
  try {
    await eachSandbox(t, async (sandbox) => {
      const l = new Launcher({ sandbox, logger: quiet, ...reachablePython(sandbox) });
      try {
        await collect(l, s, { code: "print(1)" });
        const first = await theStandby(l);
        const roots = l.stats().pids;
        await l.stopSession(s.key);
        assert.equal(alive(first.pid), false, "the standby outlived stopSession()");
        assert.deepEqual([...descendants(roots).keys()], []);
        await collect(l, s, { code: "print(1)" });
        const second = await theStandby(l);
        const again = l.stats().pids;
        await l.close();
        assert.equal(alive(second.pid), false, "the standby outlived close()");
        assert.deepEqual([...descendants(again).keys()], []);
      } finally {
        await l.close();
      }
    });
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("a standby never serves another session, nor its own session once it changed", async (t) => {
  const a = await tempSession("a");
  const b = await tempSession("b");
  try {
    await eachSandbox(t, async (sandbox) => {
      a.env = { MARK: "a-one" };
      await withLauncher(sandbox, async (l) => {
        const mark = "import os; print(os.environ.get('MARK'), os.getcwd())";
        assert.equal((await collect(l, a, { code: mark })).stdout, `a-one ${a.root}\n`);
        const old = await theStandby(l);
        // Another session: its own fork server, never A's standby.
        const rb = await collect(l, b, { code: mark });
        assert.equal(rb.stdout, `None ${b.root}\n`);
        assert.notEqual(startedPid(rb.events), old.inner);
        // A's environment changed: a new fork server, and the old one's standby goes with it.
        a.env = { MARK: "a-two" };
        assert.equal((await collect(l, a, { code: mark })).stdout, `a-two ${a.root}\n`);
        await eventually("the retired fork server's standby is gone", () => !alive(old.pid));
        assert.equal((await collect(l, a, { code: mark })).stdout, `a-two ${a.root}\n`);
      });
    });
  } finally {
    await Deno.remove(a.root, { recursive: true });
    await Deno.remove(b.root, { recursive: true });
  }
});
