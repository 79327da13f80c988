// Issue 16, goal 1: a warm Run is served by a child its fork server forked ahead (its standby).
// Against a real server (workers in bubblewrap, a uid per session) and real Python: a standby
// belongs to one session and goes with its release; what a session leaves behind killing its
// standbys cannot break its runs nor make its fork server fork without end; nothing outlives the
// server
// (`withServer` checks the whole process tree on the way out).
import assert from "node:assert/strict";
import { join } from "node:path";
import { comm, descendants, run, sandboxMissing, setConf, until, withServer } from "./_hostile.ts";

const ignoreWhy = sandboxMissing();
const STANDBY = "valise-standby";

/** The standbys below a server: a fork server, bwrap's child, bears the name while it forks. */
function standbysOf(pid: number): number[] {
  return descendants(pid).filter((p) => comm(p) === STANDBY && comm(parentOf(p)) !== "bwrap");
}

function parentOf(pid: number): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return 0;
  }
}

function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

Deno.test({
  name: `issue 16: a warm Run's standby belongs to its session and goes with its release${
    ignoreWhy ? ` (ignored: ${ignoreWhy})` : ""
  }`,
  ignore: ignoreWhy !== undefined,
  async fn() {
    await withServer({}, async (s) => {
      const a = crypto.randomUUID();
      const b = crypto.randomUUID();
      await setConf(s, a, { "spark.pythonWorkerEnv.A_SECRET": "alice-only" }, "alice");
      const env = "import os; print(os.environ.get('A_SECRET'))";
      assert.equal((await run(s, a, env, { userId: "alice" })).stdout, "alice-only\n");
      const [standbyA] = await until(() => standbysOf(s.pid), (l) => l.length === 1, "A's standby");
      // Bob's runs never get Alice's standby, nor anything of her environment.
      for (let i = 0; i < 3; i++) {
        const r = await run(s, b, env, { userId: "bob" });
        assert.equal(r.stdout, "None\n", r.stderr);
      }
      assert.ok(alive(standbyA!), "Alice's standby served nothing of Bob's");
      await until(() => standbysOf(s.pid), (l) => l.length === 2, "A's and B's standbys");
      // Alice's warm runs still see her environment.
      assert.equal((await run(s, a, env, { userId: "alice" })).stdout, "alice-only\n");
      await until(() => standbysOf(s.pid), (l) => l.length === 2, "both standbys again");
      const before = standbysOf(s.pid);
      await s.clients.spark.releaseSession({ sessionId: a, userContext: { userId: "alice" } });
      const left = await until(
        () => standbysOf(s.pid),
        (l) => l.length === 1,
        "only B's standby after A's release",
      );
      // The one left is Bob's (his run is served by it); Alice's are gone.
      for (const p of before) if (!left.includes(p)) assert.equal(alive(p), false);
      assert.equal((await run(s, b, env, { userId: "bob" })).stdout, "None\n");
    });
  },
});

/**
 * Leaves a daemon behind (double fork, its own session: it outlives the run, as the fork server's
 * orphan) that kills every standby it sees in its sandbox (its siblings of that name: the fork
 * server bears it while it forks), waiting 30 s for the first, 1 s for each next, then writes how
 * many it killed to `killed.txt` in the session's directory.
 */
const DAEMON = `
import os, signal, sys, time
def standby(parent):
    for name in os.listdir('/proc'):
        if name.isdigit() and int(name) != os.getpid():
            try:
                stat = open('/proc/%s/stat' % name).read()
                comm = stat[stat.index('(') + 1:stat.rindex(')')]
                ppid = int(stat[stat.rindex(')') + 2:].split()[1])
                if comm == 'valise-standby' and ppid == parent:
                    return int(name)
            except (OSError, ValueError):
                pass
    return None
parent = os.getppid()  # the fork server
first = os.fork()
if first == 0:
    os.setsid()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)  # the run's pipes: the run is over only once they are closed
        killed = set()
        wait = 30.0
        while True:
            end = time.monotonic() + wait
            pid = standby(parent)
            while (pid is None or pid in killed) and time.monotonic() < end:
                time.sleep(0.005)
                pid = standby(parent)
            if pid is None or pid in killed:
                break
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
            wait = 1.0
        with open('killed.tmp', 'w') as f:
            f.write(str(len(killed)))
        os.rename('killed.tmp', 'killed.txt')
    os._exit(0)
os.waitpid(first, 0)  # it left our process group before it ended: the daemon did too
print('left a daemon')
`;

Deno.test({
  name:
    `issue 16: what a session leaves behind killing its standbys breaks no run and cannot make its fork server fork without end${
      ignoreWhy ? ` (ignored: ${ignoreWhy})` : ""
    }`,
  ignore: ignoreWhy !== undefined,
  async fn() {
    await withServer({}, async (s) => {
      const sid = crypto.randomUUID();
      const d = await run(s, sid, DAEMON);
      assert.equal(d.stdout, "left a daemon\n", d.stderr);
      // No run meanwhile: each would take the standby the daemon is after.
      const count = await until(
        () => Deno.readTextFile(join(d.cwd, "killed.txt")).catch(() => ""),
        (text) => text !== "",
        "the daemon's count",
      );
      const killed = Number(count);
      // At least the one it waited for; at most the fork server's budget of unused standbys
      // between two runs (3), whatever the timing: past it, none is forked until a run comes.
      assert.ok(killed >= 1 && killed <= 3, `killed ${killed}`);
      const r = await run(s, sid, "print('still fine')");
      assert.equal(r.stdout, "still fine\n", r.stderr);
      await until(() => standbysOf(s.pid), (l) => l.length === 1, "a standby after the runs");
      assert.equal((await run(s, sid, "print(2)")).stdout, "2\n");
    });
  },
});
