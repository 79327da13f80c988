// Copyright 2026 the Valise authors. Apache-2.0 license.
// A commit's hooks for the cluster's blob GC (`SessionRegistry.beginCommit`), with a registry in
// memory: the blobs are announced before they are put and the record written, withdrawn after;
// a blob the GC deleted just before the record was written is put back; an upload announces each
// blob as soon as its bytes are in; an announcement that fails undoes the commit. Without
// beginCommit nothing of this happens (registry_store_test.ts, store_test.ts).
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { crc32 } from "@valise/protocol";
import { isSessionError, SessionError } from "./errors.ts";
import type { SharedSession } from "./registry.ts";
import { MemoryRegistry } from "./_memory_registry.ts";
import { SessionStore } from "./store.ts";
import { addBytes } from "./_test_util.ts";

const ids = { userId: "ada", sessionId: "0b7a6d1e-3c2f-4e5a-8b9c-1d2e3f4a5b6c" };
const sha = (s: string) => createHash("sha256").update(s).digest("hex");

/** The shared test registry with blob GC hooks; `events` lists what the store asked, in order. */
class GcRegistry extends MemoryRegistry {
  events: string[] = [];
  live = new Set<string>();
  /** Runs after a record is written (the GC deleting a blob it judged unreferenced). */
  afterUpdate: (() => void) | undefined;
  failBegin = false;

  override put(userId: string, sessionId: string, value: SharedSession): void {
    super.put(userId, sessionId, value);
    if (value.artifacts.length) this.events.push("update");
    const hook = this.afterUpdate;
    this.afterUpdate = undefined;
    hook?.();
  }

  override async putBlob(sha256: string, path: string): Promise<void> {
    const there = this.blobs.has(sha256);
    this.events.push(there ? `check ${sha256.slice(0, 6)}` : `put ${sha256.slice(0, 6)}`);
    if (!there) await super.putBlob(sha256, path);
  }

  beginCommit(sha256s: readonly string[]): Promise<() => Promise<void>> {
    if (this.failBegin) {
      return Promise.reject(
        new SessionError("CLUSTER_UNAVAILABLE", "The cluster's NATS service is down (test)."),
      );
    }
    const names = sha256s.map((s) => s.slice(0, 6));
    this.events.push(`begin ${names}`);
    const id = crypto.randomUUID();
    this.live.add(id);
    return Promise.resolve(() => {
      this.events.push(`release ${names}`);
      this.live.delete(id);
      return Promise.resolve();
    });
  }
}

async function twoNodes(
  fn: (a: SessionStore, b: SessionStore, reg: GcRegistry) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir();
  const reg = new GcRegistry();
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

Deno.test("a commit announces its blobs before putting them and withdraws after the check", async () => {
  await twoNodes(async (a, _b, reg) => {
    const sa = await a.session(ids);
    const x = sha("X = 1\n").slice(0, 6);
    await addBytes(sa, [["pyfiles/x.py", "X = 1\n"]]);
    // The upload's own announcement (as the bytes came in) and the commit's, around the put,
    // the record, and the check that the blob is still there.
    const commit = reg.events.slice(reg.events.lastIndexOf(`begin ${x}`)).slice(0, 5);
    deepEqual(commit, [`begin ${x}`, `put ${x}`, "update", `check ${x}`, `release ${x}`]);
    // Withdrawn: the commit's at once, the upload's when it was aborted (not awaited there).
    await new Promise((r) => setTimeout(r, 0));
    equal(reg.events.filter((e) => e === `begin ${x}`).length, 2, reg.events.join("\n"));
    equal(reg.events.filter((e) => e === `release ${x}`).length, 2, reg.events.join("\n"));
    equal(reg.live.size, 0);
  });
});

Deno.test("a blob the GC deleted just before the record was written is put back", async () => {
  await twoNodes(async (a, b, reg) => {
    const sa = await a.session(ids);
    const digest = sha("Y = 2\n");
    reg.afterUpdate = () => reg.blobs.delete(digest);
    await addBytes(sa, [["pyfiles/y.py", "Y = 2\n"]]);
    ok(reg.blobs.has(digest), "put back");
    const sb = await b.session(ids);
    equal(await Deno.readTextFile(join(sb.root, "y.py")), "Y = 2\n");
  });
});

Deno.test("an upload announces a blob as soon as its bytes are in, before the commit", async () => {
  await twoNodes(async (a, _b, reg) => {
    const sa = await a.session(ids);
    const upload = await sa.beginUpload();
    const data = new TextEncoder().encode("Z = 3\n");
    await upload.single("pyfiles/z.py", { data, crc: crc32(data) });
    // A second artifact still streaming: the first is announced already.
    await upload.begin("files/big.bin", 4, 2, {
      data: new Uint8Array(2),
      crc: crc32(new Uint8Array(2)),
    });
    await new Promise((r) => setTimeout(r, 0));
    deepEqual(reg.events, [`begin ${sha("Z = 3\n").slice(0, 6)}`]);
    equal(reg.live.size, 1);
    await upload.abort();
    await new Promise((r) => setTimeout(r, 0));
    equal(reg.live.size, 0, "withdrawn with the upload");
  });
});

Deno.test("a commit whose announcement fails is undone: nothing of it is visible", async () => {
  await twoNodes(async (a, _b, reg) => {
    const sa = await a.session(ids);
    reg.failBegin = true;
    await rejects(addBytes(sa, [["pyfiles/lost.py", "L = 1\n"]]), (e) => {
      ok(isSessionError(e) && e.errorClass === "CLUSTER_UNAVAILABLE", String(e));
      return true;
    });
    deepEqual(sa.artifacts(), []);
    equal(reg.blobs.size, 0);
  });
});
