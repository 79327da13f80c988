import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { addBytes } from "./_test_util.ts";
import type { ArchiveUnpacker } from "./session.ts";
import { SessionError } from "./errors.ts";
import { SessionStore } from "./store.ts";

/** Unpacks an "archive" into a directory holding its bytes as `content.txt`. */
const unpacker: ArchiveUnpacker = {
  fingerprint: "copy1",
  async unpack(archive, dest) {
    await Deno.mkdir(dest);
    await Deno.copyFile(archive, join(dest, "content.txt"));
    return { bytes: (await Deno.stat(archive)).size, entries: 2 };
  },
};

async function withStore(
  fn: (store: SessionStore, dataDir: string) => Promise<void>,
  options: { cacheBytes?: number } = {},
): Promise<void> {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-rm-" });
  const store = await SessionStore.open({ dataDir, unpack: unpacker, ...options });
  try {
    await fn(store, dataDir);
  } finally {
    await store.close();
    await new Deno.Command("chmod", { args: ["-R", "u+w", dataDir] }).output();
    await Deno.remove(dataDir, { recursive: true });
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

function sessionErrorOf(errorClass: string, includes: string) {
  return (e: unknown) => {
    ok(e instanceof SessionError, String(e));
    equal(e.errorClass, errorClass, e.message);
    ok(e.message.includes(includes), e.message);
    return true;
  };
}

Deno.test("remove() takes artifacts out of the manifest, Spark's layout, the view and the quotas", async () => {
  await withStore(async (store) => {
    const s = await store.session({ userId: "ada", sessionId: crypto.randomUUID() });
    await addBytes(s, [
      ["pyfiles/util.py", "X = 1\n"],
      ["files/data/rows.csv", "a,b\n"],
      ["archives/env.tar.gz#env", "archive bytes"],
      ["jars/keep.jar", "jar"],
    ]);
    ok(await exists(join(s.root, "env", "content.txt")));
    const before = s.bytes();
    const r = await s.remove(["pyfiles/util.py", "files/data/rows.csv", "archives/env.tar.gz#env"]);
    deepEqual(r.removed.map((a) => a.name), [
      "pyfiles/util.py",
      "files/data/rows.csv",
      "archives/env.tar.gz#env",
    ]);
    equal(r.freedBytes, 6 + 4 + 13 + 13);
    equal(r.inProgress, 0);
    equal(s.bytes(), before - r.freedBytes);
    deepEqual(s.artifacts().map((a) => a.name), ["jars/keep.jar"]);
    for (const gone of ["util.py", "rows.csv", "env"]) {
      ok(!(await exists(join(s.root, gone))), gone);
      ok(!(await exists(join(s.viewDir, gone))), gone);
    }
    // Spark's layout loses the files and the directories they leave empty.
    deepEqual((await Array.fromAsync(Deno.readDir(s.artifactsDir))).map((e) => e.name), ["jars"]);
    // The manifest on disk agrees: a restart brings back only what is left.
    await store.close();
    const again = await SessionStore.open({ dataDir: store.dataDir, unpack: unpacker });
    try {
      const restored = again.find("ada", s.sessionId)!;
      deepEqual(restored.artifacts().map((a) => a.name), ["jars/keep.jar"]);
      // The names are free again, with other bytes; a path's parts can become files.
      await addBytes(restored, [["pyfiles/util.py", "X = 2\n"], ["files/data", "now a file"]]);
      equal(await Deno.readTextFile(join(restored.root, "util.py")), "X = 2\n");
    } finally {
      await again.close();
    }
  });
});

Deno.test("remove() is all or none: a missing name removes nothing and says what exists", async () => {
  await withStore(async (store) => {
    const s = await store.session({ userId: "ada", sessionId: crypto.randomUUID() });
    await addBytes(s, [["pyfiles/util.py", "X = 1\n"], ["archives/env.tar.gz#env", "a"]]);
    await rejects(
      s.remove(["pyfiles/util.py", "pyfiles/nope.py"]),
      sessionErrorOf(
        "ARTIFACT_NOT_FOUND",
        `Cannot remove "pyfiles/nope.py": the session holds no artifact of that name. Names are ` +
          `as they were added, e.g. "archives/env.tar.gz#env"`,
      ),
    );
    equal(s.artifacts().length, 2);
    ok(await exists(join(s.root, "util.py")));
    // Close misses get the right name suggested.
    await rejects(
      s.remove(["archives/env.tar.gz"]),
      sessionErrorOf("ARTIFACT_NOT_FOUND", `Did you mean "archives/env.tar.gz#env"?`),
    );
    await rejects(
      s.remove(["env"]),
      sessionErrorOf("ARTIFACT_NOT_FOUND", `Did you mean "archives/env.tar.gz#env"?`),
    );
    await rejects(s.remove([]), sessionErrorOf("INVALID_ARTIFACT_NAME", "the request names none"));
    const empty = await store.session({ userId: "ada", sessionId: crypto.randomUUID() });
    await rejects(
      empty.remove(["files/x"]),
      sessionErrorOf("ARTIFACT_NOT_FOUND", "holds no artifacts"),
    );
  });
});

Deno.test("remove() refuses names that climb out, and never reaches another session's artifacts", async () => {
  await withStore(async (store) => {
    const victim = await store.session({ userId: "bob", sessionId: crypto.randomUUID() });
    await addBytes(victim, [["files/secret.txt", "bob's"]]);
    const s = await store.session({ userId: "mallory", sessionId: crypto.randomUUID() });
    await addBytes(s, [["files/mine.txt", "m"]]);
    const rel = `../../../u-x/${victim.sessionId}/artifacts/files/secret.txt`;
    for (
      const name of ["files/../../manifest.json", `files/${rel}`, "/etc/passwd", "..", "a\u0000b"]
    ) {
      await rejects(s.remove([name]), sessionErrorOf("INVALID_ARTIFACT_NAME", "Cannot accept"));
    }
    // The same name as the victim's artifact names only the caller's own (absent) one.
    await rejects(s.remove(["files/secret.txt"]), sessionErrorOf("ARTIFACT_NOT_FOUND", "secret"));
    equal(await Deno.readTextFile(join(victim.root, "secret.txt")), "bob's");
    equal(await Deno.readTextFile(join(victim.artifactsDir, "files", "secret.txt")), "bob's");
    equal(victim.artifacts().length, 1);
    equal(s.artifacts().length, 1);
  });
});

Deno.test("remove() leaves shared content to the sessions still using it, then to the cache", async () => {
  await withStore(async (store) => {
    const a = await store.session({ userId: "ada", sessionId: crypto.randomUUID() });
    const b = await store.session({ userId: "bob", sessionId: crypto.randomUUID() });
    await addBytes(a, [["archives/env.zip#env", "shared"], ["files/f", "shared"]]);
    await addBytes(b, [["archives/other.zip#env", "shared"]]);
    const sha = a.artifacts()[0]!.sha256;
    const tree = a.artifacts()[0]!.tree!;
    await a.remove(["archives/env.zip#env", "files/f"]);
    let removed = await store.collect({ cacheBytes: 0 });
    deepEqual(removed.blobs, []);
    deepEqual(removed.trees, []);
    equal(await Deno.readTextFile(join(b.root, "env", "content.txt")), "shared");
    await b.remove(["archives/other.zip#env"]);
    removed = await store.collect({ cacheBytes: 0 });
    deepEqual(removed.blobs, [sha]);
    deepEqual(removed.trees, [tree]);
  });
});

Deno.test("remove() while work is in progress keeps the working directory until that work ends", async () => {
  await withStore(async (store) => {
    const s = await store.session({ userId: "ada", sessionId: crypto.randomUUID() });
    await addBytes(s, [["files/data.txt", "v1"], ["archives/env.zip#env", "tree"]]);
    const running = s.hold();
    const r = await s.remove(["files/data.txt", "archives/env.zip#env"]);
    equal(r.inProgress, 1);
    // Gone from the record and the quotas at once ...
    deepEqual(s.artifacts(), []);
    equal(s.bytes(), 0);
    // ... while the run that was using them still sees them, trees kept from eviction.
    equal(await Deno.readTextFile(join(s.root, "data.txt")), "v1");
    equal(await Deno.readTextFile(join(s.root, "env", "content.txt")), "tree");
    await store.collect({ cacheBytes: 0 });
    equal(await Deno.readTextFile(join(s.root, "env", "content.txt")), "tree");
    // The name is not free while its entry stays; work started later does not keep it.
    await rejects(
      addBytes(s, [["files/data.txt", "v2"]]).then((c) => {
        if (c.errors[0]) throw c.errors[0];
      }),
      sessionErrorOf("ARTIFACT_ALREADY_EXISTS", "stays until they end"),
    );
    const later = s.hold();
    running();
    ok(!(await exists(join(s.root, "data.txt"))));
    ok(!(await exists(join(s.root, "env"))));
    ok(!(await exists(join(s.viewDir, "env"))));
    later();
    deepEqual((await addBytes(s, [["files/data.txt", "v2"]])).errors, []);
    equal(await Deno.readTextFile(join(s.root, "data.txt")), "v2");
  });
});

Deno.test("remove() leaves what the workers put in place of an artifact's link", async () => {
  await withStore(async (store) => {
    const s = await store.session({ userId: "ada", sessionId: crypto.randomUUID() });
    await addBytes(s, [["files/data.txt", "v1"]]);
    await Deno.remove(join(s.root, "data.txt"));
    await Deno.writeTextFile(join(s.root, "data.txt"), "the worker's own");
    await s.remove(["files/data.txt"]);
    equal(await Deno.readTextFile(join(s.root, "data.txt")), "the worker's own");
    ok(!(await exists(join(s.viewDir, "data.txt"))));
  });
});

Deno.test("a restart finishes the unlinks that waited for work in progress", async () => {
  await withStore(async (store, dataDir) => {
    const s = await store.session({ userId: "ada", sessionId: crypto.randomUUID() });
    await addBytes(s, [["files/data.txt", "v1"]]);
    s.hold(); // never ends: the server stops first
    await s.remove(["files/data.txt"]);
    ok(await exists(join(s.root, "data.txt")));
    await store.close();
    const again = await SessionStore.open({ dataDir, unpack: unpacker });
    try {
      ok(!(await exists(join(s.root, "data.txt"))));
      ok(!(await exists(join(s.viewDir, "data.txt"))));
      deepEqual(again.find("ada", s.sessionId)!.artifacts(), []);
    } finally {
      await again.close();
    }
  });
});
