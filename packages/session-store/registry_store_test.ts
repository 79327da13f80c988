// Copyright 2026 the Valise authors. Apache-2.0 license.
// Stores of two nodes (two data directories) sharing one registry, held in memory here; the NATS
// registry and real Valise processes are tested in tests/cluster_test.ts. These cover what is
// hard to bring about there: a registry that fails in the middle of a commit.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { isSessionError } from "./errors.ts";
import { SessionStore } from "./store.ts";
import { addBytes } from "./_test_util.ts";
import { MemoryRegistry } from "./_memory_registry.ts";

async function twoNodes(
  fn: (a: SessionStore, b: SessionStore, reg: MemoryRegistry) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir();
  const reg = new MemoryRegistry();
  const a = await SessionStore.open({ dataDir: join(tmp, "a"), registry: reg });
  const b = await SessionStore.open({ dataDir: join(tmp, "b"), registry: reg });
  try {
    await fn(a, b, reg);
  } finally {
    await a.close();
    await b.close();
    await new Deno.Command("chmod", { args: ["-R", "u+w", tmp] }).output();
    await Deno.remove(tmp, { recursive: true });
  }
}

const ids = { userId: "ada", sessionId: "6d3e1c0a-4b7f-4a51-9c1e-2f0a8b9d7e11" };

Deno.test("a session committed on one node is served by the other, config and id included", async () => {
  await twoNodes(async (a, b) => {
    const sa = await a.session(ids);
    await addBytes(sa, [["pyfiles/lib.py", "X = 1\n"], ["files/data.txt", "data"]]);
    await sa.config.set([{ key: "spark.sql.session.timeZone", value: "Europe/Paris" }], false);
    const sb = await b.session(ids);
    equal(sb.serverSideSessionId, sa.serverSideSessionId);
    deepEqual(sb.artifacts().map((x) => x.name).sort(), ["files/data.txt", "pyfiles/lib.py"]);
    equal(await Deno.readTextFile(join(sb.root, "lib.py")), "X = 1\n");
    equal(sb.config.value("spark.sql.session.timeZone"), "Europe/Paris");
    // B adds too; A sees it at its next use.
    await addBytes(sb, [["pyfiles/more.py", "Y = 2\n"]]);
    const again = await a.session(ids);
    equal(await Deno.readTextFile(join(again.root, "more.py")), "Y = 2\n");
  });
});

Deno.test("a commit the cluster cannot record is undone on the node: nothing of it is visible", async () => {
  await twoNodes(async (a, b, reg) => {
    const sa = await a.session(ids);
    await addBytes(sa, [["pyfiles/kept.py", "K = 1\n"]]);
    reg.failPuts = true;
    await rejects(addBytes(sa, [["pyfiles/lost.py", "L = 1\n"]]), (e) => {
      ok(isSessionError(e) && e.errorClass === "CLUSTER_UNAVAILABLE", String(e));
      return true;
    });
    deepEqual(sa.artifacts().map((x) => x.name), ["pyfiles/kept.py"]);
    for (const dir of [sa.root, sa.viewDir, join(sa.artifactsDir, "pyfiles")]) {
      const names = [];
      for await (const e of Deno.readDir(dir)) names.push(e.name);
      ok(!names.includes("lost.py"), `${dir}: ${names}`);
    }
    reg.failPuts = false;
    deepEqual((await b.session(ids)).artifacts().map((x) => x.name), ["pyfiles/kept.py"]);
  });
});

Deno.test("a release on one node drops the other's copy and keeps the pair closed there", async () => {
  await twoNodes(async (a, b) => {
    await addBytes(await a.session(ids), [["files/f.txt", "f"]]);
    const sb = await b.session(ids);
    const dropped = new Promise<string>((r) => b.onRelease((s) => r(s.sessionId)));
    await a.release(ids.userId, ids.sessionId);
    equal(await dropped, ids.sessionId);
    equal(b.find(ids.userId, ids.sessionId), undefined);
    ok(!(await Deno.stat(sb.dir).then(() => true, () => false)), "B's directory is gone");
    await rejects(b.session(ids), /closed/);
  });
});

Deno.test("idle expiry in a cluster drops only this node's copy", async () => {
  await twoNodes(async (a, b) => {
    await addBytes(await a.session(ids), [["files/f.txt", "f"]]);
    const sb = await b.session(ids);
    sb.lastAccess = 0;
    const bIdle = await b.expireIdle(Date.now() + 10 * 3_600_000);
    deepEqual(bIdle, [ids.sessionId]);
    equal(b.find(ids.userId, ids.sessionId), undefined);
    // Still the cluster's: A keeps it, and B gets it back on its next use.
    ok(a.find(ids.userId, ids.sessionId));
    deepEqual((await b.session(ids)).artifacts().map((x) => x.name), ["files/f.txt"]);
  });
});
