// Copyright 2026 the Valise authors. Apache-2.0 license.
// Stores of two nodes (two data directories) sharing one registry, held in memory here; the NATS
// registry and real Valise processes are tested in tests/cluster_test.ts. These cover what is
// hard to bring about there: a registry that fails in the middle of a commit.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { isSessionError, SessionError } from "./errors.ts";
import {
  decodeSharedSession,
  encodeSharedSession,
  type RegistryEntry,
  type SessionRegistry,
  type SharedSession,
} from "./registry.ts";
import { SessionStore } from "./store.ts";
import { addBytes } from "./_test_util.ts";

const limits = { maxArtifactBytes: 2 ** 34, maxArtifacts: 10_000 };

/** A registry in memory: records stored encoded (and decoded with the checks) as NATS would. */
class MemoryRegistry implements SessionRegistry {
  records = new Map<string, { bytes: Uint8Array; revision: number }>();
  blobs = new Map<string, Uint8Array>();
  revision = 0;
  failPuts = false;
  listeners = new Set<(v: SharedSession) => void>();

  get(userId: string, sessionId: string): Promise<RegistryEntry | undefined> {
    const r = this.records.get(`${userId}\u0000${sessionId}`);
    if (!r) return Promise.resolve(undefined);
    return Promise.resolve({
      value: decodeSharedSession(r.bytes, limits, { userId, sessionId }),
      revision: r.revision,
    });
  }

  async update(
    userId: string,
    sessionId: string,
    change: (current: SharedSession | undefined) => SharedSession,
  ): Promise<RegistryEntry> {
    const cur = await this.get(userId, sessionId);
    const value = change(cur?.value);
    const revision = ++this.revision;
    this.records.set(`${userId}\u0000${sessionId}`, {
      bytes: encodeSharedSession(value),
      revision,
    });
    for (const l of this.listeners) l(value);
    return { value, revision };
  }

  async putBlob(sha256: string, path: string): Promise<void> {
    if (this.failPuts) {
      throw new SessionError("CLUSTER_UNAVAILABLE", "The cluster's NATS service is down (test).");
    }
    this.blobs.set(sha256, await Deno.readFile(path));
  }

  async fetchBlob(sha256: string, size: number, dest: string): Promise<void> {
    const bytes = this.blobs.get(sha256);
    if (!bytes || bytes.length !== size) {
      throw new SessionError("CLUSTER_DATA_INVALID", `no blob ${sha256} of ${size} bytes`);
    }
    if (createHash("sha256").update(bytes).digest("hex") !== sha256) {
      throw new SessionError("CLUSTER_DATA_INVALID", `blob ${sha256} is not that content`);
    }
    await Deno.writeFile(dest, bytes, { createNew: true });
  }

  watch(listener: (v: SharedSession) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

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
