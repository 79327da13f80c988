// Copyright 2026 the Valise authors. Apache-2.0 license.
// The workers' directory never holds a link to shared bytes; sessions get their own uids;
// a release never races a commit; an attach request writes its manifest once.
import { deepEqual, equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { SessionError } from "./errors.ts";
import { SessionStore } from "./store.ts";
import { addBytes } from "./_test_util.ts";

const sha = (b: string) => createHash("sha256").update(b).digest("hex");
const IS_ROOT = Deno.uid() === 0;

async function withData(fn: (dataDir: string) => Promise<void>): Promise<void> {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-layout-" });
  try {
    await fn(dataDir);
  } finally {
    await new Deno.Command("chmod", { args: ["-R", "u+w", dataDir] }).output();
    await Deno.remove(dataDir, { recursive: true });
  }
}

Deno.test("an artifact shows in the workers' directory as a symlink into the read-only view", async () => {
  await withData(async (dataDir) => {
    const store = await SessionStore.open({ dataDir });
    const s = await store.session({ userId: "u", sessionId: crypto.randomUUID() });
    await addBytes(s, [["pyfiles/m.py", "X = 1\n"], ["files/data.txt", "d"]]);
    for (const name of ["m.py", "data.txt"]) {
      const inRoot = await Deno.lstat(join(s.root, name));
      ok(inRoot.isSymlink, `${name} in root is a symlink`);
      equal(await Deno.readLink(join(s.root, name)), `../ro/${name}`);
      const inView = await Deno.lstat(join(s.viewDir, name));
      const blob = await Deno.lstat(store.blobs.path(sha(name === "m.py" ? "X = 1\n" : "d")));
      equal(inView.ino, blob.ino, "the view holds the blob itself");
    }
    equal(await Deno.readTextFile(join(s.root, "m.py")), "X = 1\n");
    await store.close();
  });
});

Deno.test("a session of the older layout (blob links in the workers' directory) is moved on restore", async () => {
  await withData(async (dataDir) => {
    let store = await SessionStore.open({ dataDir });
    const id = crypto.randomUUID();
    let s = await store.session({ userId: "u", sessionId: id });
    await addBytes(s, [["pyfiles/m.py", "X = 1\n"]]);
    await store.close();
    // What the older layout left: a hard link to the blob where workers write, no view.
    await Deno.remove(join(s.root, "m.py"));
    await Deno.remove(s.viewDir, { recursive: true });
    await Deno.link(store.blobs.path(sha("X = 1\n")), join(s.root, "m.py"));
    await Deno.writeTextFile(join(s.root, "own.txt"), "the worker's");
    store = await SessionStore.open({ dataDir });
    s = store.find("u", id)!;
    ok((await Deno.lstat(join(s.root, "m.py"))).isSymlink);
    equal(await Deno.readTextFile(join(s.root, "m.py")), "X = 1\n");
    equal(await Deno.readTextFile(join(s.root, "own.txt")), "the worker's");
    await store.close();
  });
});

Deno.test("a worker's file under an artifact's name is never replaced: the add is refused", async () => {
  await withData(async (dataDir) => {
    const store = await SessionStore.open({ dataDir });
    const s = await store.session({ userId: "u", sessionId: crypto.randomUUID() });
    await Deno.symlink("/etc", join(s.root, "m.py"));
    const r = await addBytes(s, [["pyfiles/m.py", "X = 1\n"]]);
    equal(r.errors[0]?.errorClass, "ARTIFACT_ALREADY_EXISTS");
    equal(await Deno.readLink(join(s.root, "m.py")), "/etc");
    equal(s.artifact("pyfiles/m.py"), undefined);
    // Nothing of the refused add is left in the view or the name layout.
    deepEqual([...Deno.readDirSync(s.viewDir)], []);
    await store.close();
  });
});

Deno.test({
  name: "each session gets its own worker uid, kept across restarts, with private directories",
  ignore: !IS_ROOT,
  async fn() {
    await withData(async (dataDir) => {
      const workerIds = { first: 1_900_100_000, count: 50 };
      let store = await SessionStore.open({ dataDir, workerIds });
      const a = await store.session({ userId: "u", sessionId: crypto.randomUUID() });
      const b = await store.session({ userId: "v", sessionId: crypto.randomUUID() });
      ok(a.worker && b.worker);
      ok(a.worker.uid !== b.worker.uid);
      for (const w of [a.worker, b.worker]) {
        ok(w.uid >= workerIds.first && w.uid < workerIds.first + workerIds.count);
      }
      const st = (p: string) => Deno.statSync(p);
      equal(st(a.root).uid, a.worker.uid);
      equal(st(a.root).mode! & 0o777, 0o700);
      equal(st(a.dir).mode! & 0o777, 0o710);
      equal(st(a.dir).gid, a.worker.gid);
      equal(st(a.viewDir).uid, 0);
      equal(st(a.viewDir).mode! & 0o777, 0o750);
      equal(st(store.blobs.root).mode! & 0o777, 0o700);
      const before = a.worker.uid;
      await store.close();
      store = await SessionStore.open({ dataDir, workerIds });
      equal(store.find("u", a.sessionId)?.worker?.uid, before);
      // A range that no longer holds it gives a new id, and the directory follows.
      await store.close();
      const moved = { first: 1_900_200_000, count: 10 };
      await Deno.writeTextFile(join(a.root, "own.txt"), "x");
      await Deno.chown(join(a.root, "own.txt"), before, before);
      store = await SessionStore.open({ dataDir, workerIds: moved });
      const again = store.find("u", a.sessionId)!;
      ok(again.worker!.uid >= moved.first && again.worker!.uid < moved.first + 10);
      equal(st(join(again.root, "own.txt")).uid, again.worker!.uid);
      // Released sessions give their id back.
      await store.release("u", a.sessionId);
      await store.release("v", b.sessionId);
      for (let i = 0; i < 10; i++) {
        await store.session({ userId: `w${i}`, sessionId: crypto.randomUUID() });
      }
      const err = await store.session({ userId: "x", sessionId: crypto.randomUUID() }).catch((
        e,
      ) => e);
      ok(err instanceof SessionError && err.reason === "WORKER_IDS", String(err));
      await store.close();
    });
  },
});

Deno.test("a release racing a commit never leaves the session to be restored", async () => {
  await withData(async (dataDir) => {
    for (let round = 0; round < 20; round++) {
      const store = await SessionStore.open({ dataDir });
      const id = crypto.randomUUID();
      const s = await store.session({ userId: "u", sessionId: id });
      const upload = await s.beginUpload();
      await upload.single(`files/f${round}.bin`, {
        data: new Uint8Array(round * 1000),
        crc: 0,
      }).catch(() => {});
      await upload.finish().catch(() => {});
      // Both at once: whichever runs first, the session must end released.
      const [commit] = await Promise.allSettled([
        s.commit(upload),
        ...(round % 2 ? [Promise.resolve().then(() => store.release("u", id))] : [
          store.release("u", id),
        ]),
      ]);
      if (commit.status === "rejected") {
        ok(commit.reason instanceof SessionError, String(commit.reason));
        equal(commit.reason.errorClass, "INVALID_HANDLE.SESSION_CLOSED");
      }
      await upload.abort();
      await store.close();
      const reopened = await SessionStore.open({ dataDir });
      equal(reopened.find("u", id), undefined, `round ${round}: released session restored`);
      await reopened.close();
    }
    // And nothing of any of them is left on disk.
    const users = [...Deno.readDirSync(join(dataDir, "sessions"))];
    for (const u of users) {
      deepEqual([...Deno.readDirSync(join(dataDir, "sessions", u.name))], []);
    }
  });
});

Deno.test("attaching many artifacts in one request writes the manifest once", async () => {
  await withData(async (dataDir) => {
    const store = await SessionStore.open({ dataDir });
    const src = await store.session({ userId: "u", sessionId: crypto.randomUUID() });
    await addBytes(src, [["files/blob.bin", "shared bytes"]]);
    const s = await store.session({ userId: "u", sessionId: crypto.randomUUID() });
    const watcher = Deno.watchFs(s.dir, { recursive: false });
    const writes = new Set<string>();
    const counting = (async () => {
      for await (const ev of watcher) {
        // An atomic write is a rename of a fresh temp file onto manifest.json: count renames.
        if (ev.kind === "rename" || ev.kind === "create") {
          for (const p of ev.paths) if (p.endsWith(".tmp")) writes.add(p);
        }
        if (ev.paths.some((p) => p.endsWith("/marker"))) return;
      }
    })();
    const items = Array.from({ length: 300 }, (_, i) => ({
      name: `files/copy-${i}.bin`,
      sha256: sha("shared bytes"),
    }));
    const r = await s.attachAll(items);
    equal(r.error, undefined);
    equal(r.attached.length, 300);
    // A marker written after the attach: once it is seen, every earlier event was too.
    await Deno.writeTextFile(join(s.dir, "marker"), "");
    await counting;
    watcher.close();
    equal(writes.size, 1, `one manifest write for 300 attachments: ${[...writes]}`);
    await store.close();
  });
});
