// One server per data directory: a second `serve` on a directory a running server holds refuses
// to start, naming that server's pid, and touches nothing of it (its sessions, its workers' files,
// its answers); a lock left by a server that was killed is taken over.
import { equal, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { LOCK_FILE, processStartTicks } from "@valise/session-store";
import { startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const MAIN = new URL("../packages/server/main.ts", import.meta.url).pathname;

/** Runs `serve` to its end (it should not start) and returns its exit code and stderr. */
async function serveOnce(dataDir: string): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--port", "0", "--data-dir", dataDir],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("a second serve on the same data directory refuses to start and names the first", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-lock-" });
  const dataDir = join(tmp, "data");
  const first = await startServer({ dataDir });
  try {
    const sessionId = crypto.randomUUID();
    await first.clients.spark.config({
      sessionId,
      userContext: { userId: "ada" },
      operation: {
        opType: { case: "set", value: { pairs: [{ key: "spark.app.name", value: "kept" }] } },
      },
    });
    const manifests = await Array.fromAsync(Deno.readDir(join(dataDir, "sessions")));
    const second = await serveOnce(dataDir);
    equal(second.code, 1, second.stderr);
    ok(
      second.stderr.includes(
        `valise: cannot start: Cannot use the data directory ${dataDir}: another Valise server ` +
          `(pid ${first.pid}, since `,
      ),
      second.stderr,
    );
    ok(second.stderr.includes("Stop that server first, or give this one another --data-dir."));
    // It restored nothing and removed nothing: the first still serves the session as it was.
    ok(!second.stderr.includes("restored"), second.stderr);
    equal(
      (await Array.fromAsync(Deno.readDir(join(dataDir, "sessions")))).length,
      manifests.length,
    );
    const got = await first.clients.spark.config({
      sessionId,
      userContext: { userId: "ada" },
      operation: { opType: { case: "get", value: { keys: ["spark.app.name"] } } },
    });
    equal(got.pairs[0]?.value, "kept");
    equal((await first.clients.health.check({})).status, 1);
  } finally {
    equal((await first.stop()).code, 0);
  }
  // Stopped cleanly, the lock names no one: the next server starts without taking anything over.
  equal(await Deno.readTextFile(join(dataDir, LOCK_FILE)), "");
  const next = await startServer({ dataDir });
  try {
    ok(!next.log.some((l) => l.includes("took over")), next.log.join("\n"));
  } finally {
    await next.stop();
    await removeTree(tmp);
  }
});

Deno.test("a killed server's lock is taken over by the next one", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-lock-" });
  const dataDir = join(tmp, "data");
  const killed = await startServer({ dataDir });
  const record = JSON.parse(await Deno.readTextFile(join(dataDir, LOCK_FILE)));
  equal(record.pid, killed.pid);
  equal(record.startTicks, processStartTicks(killed.pid));
  killed.child.kill("SIGKILL");
  await killed.child.status;
  const next = await startServer({ dataDir });
  try {
    await next.waitForLog(
      new RegExp(
        `took over the data directory's lock from pid ${killed.pid} \\(since .*\\), which is no longer running`,
      ),
    );
    equal(JSON.parse(await Deno.readTextFile(join(dataDir, LOCK_FILE))).pid, next.pid);
    // A third one is refused while this one runs.
    const third = await serveOnce(dataDir);
    equal(third.code, 1);
    ok(third.stderr.includes(`(pid ${next.pid}, since `), third.stderr);
  } finally {
    await next.stop();
    await removeTree(tmp);
  }
});

Deno.test("a lock record whose pid another process now has is taken over", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-lock-" });
  const dataDir = join(tmp, "data");
  await Deno.mkdir(dataDir);
  // This test's own pid runs, but not since the time the record says: a reused pid.
  await Deno.writeTextFile(
    join(dataDir, LOCK_FILE),
    JSON.stringify({
      pid: Deno.pid,
      startTicks: processStartTicks(Deno.pid)! + 1,
      since: "2026-01-01T00:00:00.000Z",
      host: Deno.hostname(),
    }),
  );
  const server = await startServer({ dataDir });
  try {
    await server.waitForLog(`took over the data directory's lock from pid ${Deno.pid}`);
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
  await rejects(Deno.stat(join(tmp, "data")));
});
