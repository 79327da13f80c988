import { equal, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import {
  DataDirLockError,
  LOCK_FILE,
  lockDataDir,
  type LockHolder,
  processStartTicks,
} from "./data_dir_lock.ts";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "valise-lock-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function record(pid: number, startTicks: number): string {
  const h: LockHolder = {
    pid,
    startTicks,
    since: "2026-01-01T00:00:00.000Z",
    host: Deno.hostname(),
  };
  return JSON.stringify(h);
}

Deno.test("processStartTicks() reads field 22 of /proc/<pid>/stat, even past a ')' in the name", async () => {
  const ticks = processStartTicks(Deno.pid);
  ok(ticks !== undefined && ticks > 0);
  // A command name with spaces and parentheses must not shift the fields.
  const dir = await Deno.makeTempDir();
  const odd = join(dir, "a) b (c");
  await Deno.copyFile("/bin/sleep", odd);
  await Deno.chmod(odd, 0o755);
  const child = new Deno.Command(odd, { args: ["60"] }).spawn();
  try {
    const text = await Deno.readTextFile(`/proc/${child.pid}/stat`);
    ok(text.includes("(a) b (c)"), text);
    const want = Number(text.slice(text.lastIndexOf(")") + 2).split(" ")[19]);
    equal(processStartTicks(child.pid), want);
  } finally {
    child.kill("SIGKILL");
    await child.status;
    await Deno.remove(dir, { recursive: true });
  }
  equal(processStartTicks(2 ** 30), undefined);
});

Deno.test("lockDataDir() refuses a second holder, naming the first, until it is released", async () => {
  await withDir(async (dir) => {
    const first = await lockDataDir(dir);
    equal(first.holder.pid, Deno.pid);
    equal(first.tookOverFrom, undefined);
    await rejects(lockDataDir(dir), (e: unknown) => {
      ok(e instanceof DataDirLockError);
      equal(e.code, "DATA_DIR_IN_USE");
      equal(e.holder?.pid, Deno.pid);
      ok(e.message.includes(`another Valise server (pid ${Deno.pid}, since `), e.message);
      ok(e.message.includes("Stop that server first, or give this one another --data-dir"));
      return true;
    });
    await first.release();
    // Released cleanly: the file names no one, and the next holder takes nothing over.
    equal(await Deno.readTextFile(join(dir, LOCK_FILE)), "");
    const second = await lockDataDir(dir);
    equal(second.tookOverFrom, undefined);
    await second.release();
  });
});

Deno.test("lockDataDir() takes over a record of a process that is gone", async () => {
  await withDir(async (dir) => {
    const gone = new Deno.Command("true").spawn();
    await gone.status;
    await Deno.writeTextFile(join(dir, LOCK_FILE), record(gone.pid, 12345));
    const lock = await lockDataDir(dir);
    equal(lock.tookOverFrom?.pid, gone.pid);
    const now = JSON.parse(await Deno.readTextFile(join(dir, LOCK_FILE)));
    equal(now.pid, Deno.pid);
    equal(now.startTicks, processStartTicks(Deno.pid));
    await lock.release();
  });
});

Deno.test("lockDataDir() takes over a record whose pid now belongs to another process", async () => {
  await withDir(async (dir) => {
    const child = new Deno.Command("sleep", { args: ["60"] }).spawn();
    try {
      // The pid runs, but it started at another time than the record says: it was reused.
      const ticks = processStartTicks(child.pid)!;
      await Deno.writeTextFile(join(dir, LOCK_FILE), record(child.pid, ticks - 1));
      const lock = await lockDataDir(dir);
      equal(lock.tookOverFrom?.pid, child.pid);
      await lock.release();
    } finally {
      child.kill("SIGKILL");
      await child.status;
    }
  });
});

Deno.test("lockDataDir() refuses a record naming a running process even without its flock", async () => {
  await withDir(async (dir) => {
    const child = new Deno.Command("sleep", { args: ["60"] }).spawn();
    try {
      await Deno.writeTextFile(
        join(dir, LOCK_FILE),
        record(child.pid, processStartTicks(child.pid)!),
      );
      await rejects(lockDataDir(dir), (e: unknown) => {
        ok(e instanceof DataDirLockError);
        ok(e.message.includes(`(pid ${child.pid}, since 2026-01-01T00:00:00.000Z)`), e.message);
        return true;
      });
    } finally {
      child.kill("SIGKILL");
      await child.status;
    }
    // Once it is gone, its record is stale.
    const lock = await lockDataDir(dir);
    equal(lock.tookOverFrom?.pid, child.pid);
    await lock.release();
  });
});

Deno.test("lockDataDir() reads a damaged or oversized record as naming no one", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(join(dir, LOCK_FILE), "{not json" + "x".repeat(200_000));
    const lock = await lockDataDir(dir);
    equal(lock.tookOverFrom, undefined);
    equal(JSON.parse(await Deno.readTextFile(join(dir, LOCK_FILE))).pid, Deno.pid);
    await lock.release();
  });
});
