// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, notEqual, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { crc32 } from "@valise/protocol";
import { SessionError } from "./errors.ts";
import { SessionStore } from "./store.ts";
import { addBytes } from "./_test_util.ts";

async function withStore(
  fn: (store: SessionStore, dataDir: string) => Promise<void>,
  options: { idleTimeoutMs?: number } = {},
): Promise<void> {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-store-" });
  const store = await SessionStore.open({ dataDir, ...options });
  try {
    await fn(store, dataDir);
  } finally {
    await store.close();
    await Deno.remove(dataDir, { recursive: true }).catch(async () => {
      await new Deno.Command("chmod", { args: ["-R", "u+w", dataDir] }).output();
      await Deno.remove(dataDir, { recursive: true });
    });
  }
}

async function errorClassOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof SessionError) return e.errorClass;
    throw e;
  }
  return "no error";
}

const sha = (b: Uint8Array | string) => createHash("sha256").update(b).digest("hex");
const uid = () => crypto.randomUUID();

Deno.test("SessionStore.session() validates ids like Spark and gives a server-side id", async () => {
  await withStore(async (store) => {
    equal(
      await errorClassOf(store.session({ userId: "u", sessionId: "nope" })),
      "INVALID_HANDLE.FORMAT",
    );
    const id = uid();
    const s = await store.session({ userId: "u", sessionId: id });
    notEqual(s.serverSideSessionId, id);
    equal(s.serverSideSessionId.length > 0, true);
    const again = await store.session({
      userId: "u",
      sessionId: id,
      clientObservedServerSideSessionId: s.serverSideSessionId,
    });
    equal(again, s);
    equal(
      await errorClassOf(
        store.session({ userId: "u", sessionId: id, clientObservedServerSideSessionId: uid() }),
      ),
      "INVALID_HANDLE.SESSION_CHANGED",
    );
  });
});

Deno.test("Session.commit() stores bytes exactly, in Spark's and the executor's layouts", async () => {
  await withStore(async (store) => {
    const s = await store.session({ userId: "ada", sessionId: uid() });
    const big = new Uint8Array(100_000).map((_, i) => (i * 7919) & 0xff);
    const r = await addBytes(s, [
      ["pyfiles/mylib.py", "VERSION = 1\n"],
      ["files\\data.csv", "a,b\n"],
      ["files/big.bin", big],
      ["jars/x.jar", "PK"],
    ]);
    deepEqual(r.errors, []);
    deepEqual(r.summaries.map((x) => x.crcOk), [true, true, true, true]);
    equal(await Deno.readTextFile(join(s.root, "mylib.py")), "VERSION = 1\n");
    equal(await Deno.readTextFile(join(s.root, "data.csv")), "a,b\n");
    deepEqual(await Deno.readFile(join(s.root, "big.bin")), big);
    deepEqual(await Deno.readFile(join(s.artifactsDir, "files/big.bin")), big);
    equal(await Deno.readTextFile(join(s.artifactsDir, "jars/x.jar")), "PK");
    // Jars have no place in the Python worker's directory.
    equal((await Array.fromAsync(Deno.readDir(s.root))).length, 3);
    const rec = s.artifact("files/big.bin")!;
    equal(rec.sha256, sha(big));
    equal(rec.size, 100_000);
  });
});

Deno.test("Session.commit() drops artifacts whose CRC failed and reports them", async () => {
  await withStore(async (store) => {
    const s = await store.session({ userId: "", sessionId: uid() });
    const big = new Uint8Array(70_000).fill(7);
    const r = await addBytes(s, [["files/a", "x"], ["files/b", "y"], ["files/big", big]], {
      badCrc: ["files/b", "files/big"],
    });
    deepEqual(r.summaries, [
      { name: "files/a", crcOk: true },
      { name: "files/b", crcOk: false },
      { name: "files/big", crcOk: false },
    ]);
    equal(s.artifact("files/b"), undefined);
    equal(s.artifact("files/big"), undefined);
    deepEqual((await Array.fromAsync(Deno.readDir(s.root))).map((e) => e.name), ["a"]);
  });
});

Deno.test("Session.commit() is idempotent for the same bytes and refuses different ones", async () => {
  await withStore(async (store) => {
    const s = await store.session({ userId: "", sessionId: uid() });
    await addBytes(s, [["pyfiles/m.py", "v1"]]);
    const same = await addBytes(s, [["pyfiles/m.py", "v1"]]);
    deepEqual(same.errors, []);
    const diff = await addBytes(s, [["pyfiles/m.py", "v2"], ["files/other", "ok"]]);
    equal(diff.errors.length, 1);
    equal(diff.errors[0]!.errorClass, "ARTIFACT_ALREADY_EXISTS");
    equal(diff.errors[0]!.message.includes("pyfiles/m.py"), true);
    equal(await Deno.readTextFile(join(s.root, "m.py")), "v1");
    // The rest of the stream was still committed.
    equal(await Deno.readTextFile(join(s.root, "other")), "ok");
  });
});

Deno.test("Session.commit() refuses two artifacts that take the same place in the working directory", async () => {
  await withStore(async (store) => {
    const s = await store.session({ userId: "", sessionId: uid() });
    await addBytes(s, [["pyfiles/x.py", "a"]]);
    const r = await addBytes(s, [["files/x.py", "b"]]);
    equal(r.errors[0]?.errorClass, "ARTIFACT_ALREADY_EXISTS");
    equal(r.errors[0]!.message.includes("./x.py"), true);
    equal(await Deno.readTextFile(join(s.root, "x.py")), "a");
  });
});

Deno.test("Session.commit() refuses a name that is a file and a directory of another", async () => {
  await withStore(async (store) => {
    const s = await store.session({ userId: "", sessionId: uid() });
    const r = await addBytes(s, [["root", "a"], ["root\\pyfiles/", "b"], ["x/y", "c"], ["x", "d"]]);
    deepEqual(r.errors.map((e) => e.errorClass), [
      "ARTIFACT_ALREADY_EXISTS",
      "ARTIFACT_ALREADY_EXISTS",
    ]);
    ok(
      r.errors[0]!.message.includes("root is already stored under a parent"),
      r.errors[0]!.message,
    );
    equal(await Deno.readTextFile(join(s.artifactsDir, "root")), "a");
    equal(await Deno.readTextFile(join(s.artifactsDir, "x/y")), "c");
  });
});

Deno.test("Session.commit() verifies cache/<sha256> names against the bytes", async () => {
  await withStore(async (store) => {
    const s = await store.session({ userId: "", sessionId: uid() });
    const blob = "arrow ipc bytes";
    const ok = await addBytes(s, [[`cache/${sha(blob)}`, blob]]);
    deepEqual(ok.errors, []);
    equal(s.artifact(`cache/${sha(blob)}`)?.size, blob.length);
    const bad = await addBytes(s, [[`cache/${sha("other")}`, blob]]);
    equal(bad.errors[0]?.errorClass, "CACHE_ARTIFACT_HASH_MISMATCH");
    equal(s.artifact(`cache/${sha("other")}`), undefined);
  });
});

Deno.test("Upload refuses broken chunk sequences, naming the artifact and counts", async () => {
  await withStore(async (store, dataDir) => {
    const s = await store.session({ userId: "", sessionId: uid() });
    const c = (n: number) => {
      const data = new Uint8Array(n).fill(1);
      return { data, crc: crc32(data) };
    };
    let up = await s.beginUpload();
    await rejects(up.chunk(c(10)), /no chunked artifact is open/);
    await up.abort();

    up = await s.beginUpload();
    await up.begin("files/a", 100, 2, c(50));
    await rejects(up.begin("files/b", 10, 1, c(10)), /files\/a is still open \(1 of 2 chunks/);
    await up.abort();

    up = await s.beginUpload();
    await up.begin("files/a", 100, 2, c(50));
    await rejects(
      up.chunk(c(51)),
      /Excessive data chunks for artifact: files\/a, expected 2 chunks/,
    );
    await up.abort();

    up = await s.beginUpload();
    await up.begin("files/a", 100, 3, c(50));
    await up.chunk(c(40));
    await rejects(
      up.finish(),
      /Missing data chunks for artifact: files\/a. Expected 3 chunks and received 2 chunks. Processed 90 bytes out of 100 bytes/,
    );
    await up.abort();

    up = await s.beginUpload();
    await up.begin("files/a", 100, 2, c(50));
    await rejects(
      up.chunk(c(10)),
      /Missing data chunks for artifact: files\/a. Expected 2 chunks and received 2 chunks. Processed 60 bytes/,
    );
    await up.abort();

    up = await s.beginUpload();
    await rejects(
      up.single("../escape", c(1)),
      (e: unknown) => e instanceof SessionError && e.errorClass === "INVALID_ARTIFACT_PATH",
    );
    // Spark's forward_to_fs/ would write to the server's own file system.
    await rejects(
      up.single("forward_to_fs/tmp/x", c(1)),
      (e: unknown) => e instanceof SessionError && e.reason === "FORWARD_TO_FS",
    );
    await up.abort();

    // Nothing was committed and no staging is left.
    equal(s.artifacts().length, 0);
    deepEqual(await Array.fromAsync(Deno.readDir(join(dataDir, "staging"))), []);
    deepEqual(await Array.fromAsync(Deno.readDir(s.root)), []);
  });
});

Deno.test("SessionStore keeps users apart: same session id, different user, different session", async () => {
  await withStore(async (store) => {
    const id = uid();
    const a = await store.session({ userId: "alice", sessionId: id });
    const b = await store.session({ userId: "bob", sessionId: id });
    notEqual(a.dir, b.dir);
    await addBytes(a, [["files/secret", "alice's"]]);
    equal(b.artifact("files/secret"), undefined);
    deepEqual(await Array.fromAsync(Deno.readDir(b.root)), []);
  });
});

Deno.test("SessionStore shares one blob between sessions that add the same bytes", async () => {
  await withStore(async (store) => {
    const a = await store.session({ userId: "", sessionId: uid() });
    const b = await store.session({ userId: "", sessionId: uid() });
    const bytes = crypto.getRandomValues(new Uint8Array(50_000));
    await addBytes(a, [["files/x.bin", bytes]]);
    await addBytes(b, [["files/y.bin", bytes]]);
    const [sa, sb] = await Promise.all([
      Deno.stat(join(a.root, "x.bin")),
      Deno.stat(join(b.root, "y.bin")),
    ]);
    equal(sa.ino, sb.ino);
    equal((await store.blobs.list()).length, 1);
    // Blobs are read-only so that a link cannot be written through by accident.
    equal(sa.mode! & 0o222, 0);
  });
});

Deno.test("SessionStore.release() removes the session's files and closes the pair", async () => {
  await withStore(async (store) => {
    const id = uid();
    const s = await store.session({ userId: "u", sessionId: id });
    await addBytes(s, [["pyfiles/m.py", "x"]]);
    let hooked = "";
    store.onRelease((sess) => {
      hooked = sess.sessionId;
    });
    equal(await store.release("u", id), s.serverSideSessionId);
    equal(hooked, id);
    await rejects(Deno.stat(s.dir), Deno.errors.NotFound);
    equal(
      await errorClassOf(store.session({ userId: "u", sessionId: id })),
      "INVALID_HANDLE.SESSION_CLOSED",
    );
    // Unknown sessions release quietly.
    equal(await store.release("u", uid()), undefined);
    // allow_reconnect leaves the pair open for a fresh session.
    const id2 = uid();
    const s2 = await store.session({ userId: "u", sessionId: id2 });
    await store.release("u", id2, { allowReconnect: true });
    const s3 = await store.session({ userId: "u", sessionId: id2 });
    notEqual(s3.serverSideSessionId, s2.serverSideSessionId);
    equal(s3.artifacts().length, 0);
  });
});

Deno.test("SessionStore restores sessions after a restart, and remembers closed ones", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-store-" });
  try {
    let store = await SessionStore.open({ dataDir });
    const id = uid();
    const closed = uid();
    const s = await store.session({ userId: "u", sessionId: id });
    await addBytes(s, [["pyfiles/m.py", "x"]]);
    await s.config.set(
      [{ key: "spark.sql.execution.pyspark.python", value: "env/bin/python" }],
      false,
    );
    await store.session({ userId: "u", sessionId: closed });
    await store.release("u", closed);
    // A crash mid-upload leaves staging behind.
    const up = await s.beginUpload();
    await up.single("files/half", { data: new Uint8Array(3), crc: 0 });
    await store.close();

    store = await SessionStore.open({ dataDir });
    const r = store.find("u", id)!;
    equal(r.serverSideSessionId, s.serverSideSessionId);
    equal(r.interpreter(), "env/bin/python");
    equal(r.artifact("pyfiles/m.py")?.sha256, sha("x"));
    equal(await Deno.readTextFile(join(r.root, "m.py")), "x");
    deepEqual(await Array.fromAsync(Deno.readDir(join(dataDir, "staging"))), []);
    equal(
      await errorClassOf(store.session({ userId: "u", sessionId: closed })),
      "INVALID_HANDLE.SESSION_CLOSED",
    );
    await store.close();
  } finally {
    await new Deno.Command("chmod", { args: ["-R", "u+w", dataDir] }).output();
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("SessionStore.expireIdle() releases idle sessions but not busy ones", async () => {
  await withStore(async (store) => {
    const idle = await store.session({ userId: "", sessionId: uid() });
    const busy = await store.session({ userId: "", sessionId: uid() });
    const done = busy.hold();
    const later = Date.now() + 10_000;
    deepEqual(await store.expireIdle(later), [idle.sessionId]);
    await rejects(Deno.stat(idle.dir), Deno.errors.NotFound);
    equal(store.find("", busy.sessionId), busy);
    done();
    deepEqual(await store.expireIdle(Date.now() + 10_000), [busy.sessionId]);
  }, { idleTimeoutMs: 5_000 });
});

Deno.test("concurrent commits of the same bytes in many sessions share one inode", async () => {
  await withStore(async (store) => {
    const sessions = await Promise.all(
      Array.from({ length: 8 }, () => store.session({ userId: "", sessionId: uid() })),
    );
    const bytes = new Uint8Array(200_000).map((_, i) => (i * 31) & 0xff);
    await Promise.all(sessions.map((s, i) => addBytes(s, [[`files/x${i}`, bytes]])));
    const blob = await Deno.stat(store.blobs.path(sha(bytes)));
    for (const [i, s] of sessions.entries()) {
      equal((await Deno.stat(join(s.root, `x${i}`))).ino, blob.ino);
    }
    equal(blob.nlink, 1 + 2 * sessions.length);
  });
});

Deno.test("a restart removes links an interrupted commit left, and keeps the workers' files", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-store-" });
  try {
    let store = await SessionStore.open({ dataDir });
    const s = await store.session({ userId: "", sessionId: uid() });
    await addBytes(s, [["files/kept", "recorded"]]);
    // What a crash between linking and writing the manifest leaves: links no record names,
    // including one whose by-name twin is gone already (so the blob has few links).
    const blob = store.blobs.path(sha("recorded"));
    await Deno.link(blob, join(s.root, "leftover"));
    await Deno.link(blob, join(s.artifactsDir, "files", "leftover"));
    await Deno.writeTextFile(join(s.root, "worker-output.txt"), "written by a worker");
    await store.close();
    store = await SessionStore.open({ dataDir });
    const r = store.find("", s.sessionId)!;
    deepEqual(
      (await Array.fromAsync(Deno.readDir(r.root))).map((e) => e.name).sort(),
      ["kept", "worker-output.txt"],
    );
    deepEqual(
      (await Array.fromAsync(Deno.readDir(join(r.artifactsDir, "files")))).map((e) => e.name),
      [
        "kept",
      ],
    );
    await store.close();
  } finally {
    await new Deno.Command("chmod", { args: ["-R", "u+w", dataDir] }).output();
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("a restart removes what interrupted atomic writes left", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-store-" });
  try {
    let store = await SessionStore.open({ dataDir });
    const s = await store.session({ userId: "", sessionId: uid() });
    const left = [
      join(s.dir, `.manifest.json.${uid()}.tmp`),
      join(dataDir, `.closed-sessions.json.${uid()}.tmp`),
      join(dataDir, "trees", `.${"a".repeat(64)}-fp.json.${uid()}.tmp`),
    ];
    for (const f of left) await Deno.writeTextFile(f, "half");
    await store.close();
    store = await SessionStore.open({ dataDir });
    for (const f of left) {
      let there = true;
      await Deno.stat(f).catch(() => (there = false));
      equal(there, false, f);
    }
    equal(store.find("", s.sessionId)?.serverSideSessionId, s.serverSideSessionId);
    await store.close();
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
