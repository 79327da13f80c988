// Copyright 2026 the Valise authors. Apache-2.0 license.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Launcher, type SessionSpec } from "./mod.ts";
import { bwrapWorks, collect } from "./testdata/helpers.ts";

const ignore = !bwrapWorks();

/** Python that tries `op` on each path and prints `path -> result` as JSON. */
const PROBE = `
import json, os, sys, errno
def attempt(f):
    try:
        r = f()
        return 'ok' if r is None else r
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
checks = json.loads(sys.argv[1])
out = {}
for name, (op, path) in checks.items():
    if op == 'list':
        out[name] = attempt(lambda: sorted(os.listdir(path)))
    elif op == 'read':
        out[name] = attempt(lambda: open(path).read())
    elif op == 'write':
        out[name] = attempt(lambda: open(path, 'a').write('x') and None)
    elif op == 'mkdir':
        out[name] = attempt(lambda: os.mkdir(path))
    elif op == 'exists':
        out[name] = os.path.exists(path)
print(json.dumps(out))
`;

async function probe(
  l: Launcher,
  s: SessionSpec,
  checks: Record<string, [string, string]>,
): Promise<Record<string, unknown>> {
  const r = await collect(l, s, { code: PROBE, args: [JSON.stringify(checks)] });
  assert.equal(r.exit.exitCode, 0, r.stderr);
  return JSON.parse(r.stdout);
}

Deno.test({
  name: "sandbox shows a worker its session and nothing of other sessions or the server",
  ignore,
  async fn() {
    const data = await Deno.makeTempDir({ prefix: "valise-data-" });
    const sessions = join(data, "sessions");
    const shared = join(data, "shared", "env1");
    const a: SessionSpec = { key: "A", root: join(sessions, "A"), pythonPath: [] };
    const b: SessionSpec = { key: "B", root: join(sessions, "B"), pythonPath: [] };
    for (const d of [a.root, b.root, shared]) await Deno.mkdir(d, { recursive: true });
    await Deno.writeTextFile(join(b.root, "secret.txt"), "B's data");
    await Deno.writeTextFile(join(a.root, "blob.txt"), "shared blob");
    await Deno.writeTextFile(join(shared, "lib.py"), "X = 1\n");
    await Deno.symlink(shared, join(a.root, "env"));
    a.readOnlyPaths = [join(a.root, "blob.txt")];
    a.sharedTrees = [shared];
    const l = new Launcher({ sandbox: "bwrap", logger: () => {} });
    try {
      assert.equal(l.sandboxed, true);
      const out = await probe(l, a, {
        listB: ["list", b.root],
        readB: ["read", join(b.root, "secret.txt")],
        writeB: ["write", join(b.root, "new.txt")],
        listParent: ["list", sessions],
        writeParent: ["write", join(sessions, "C")],
        listDataRoot: ["list", data],
        writeDataRoot: ["mkdir", join(data, "x")],
        serverCwd: ["exists", Deno.cwd()],
        writeOwn: ["write", join(a.root, "mine.txt")],
        readOwn: ["read", join(a.root, "mine.txt")],
        readBlob: ["read", join(a.root, "blob.txt")],
        writeBlob: ["write", join(a.root, "blob.txt")],
        readShared: ["read", join(a.root, "env", "lib.py")],
        writeShared: ["write", join(shared, "lib.py")],
        newInShared: ["write", join(shared, "new.py")],
        writeUsr: ["write", "/usr/lib/x"],
        writeRootfs: ["mkdir", "/newdir"],
        writeTmp: ["write", "/tmp/scratch"],
        listTmp: ["list", "/tmp"],
      });
      assert.equal(out.listB, "ENOENT");
      assert.equal(out.readB, "ENOENT");
      assert.equal(out.writeB, "ENOENT");
      assert.equal(out.listParent, "EACCES");
      assert.equal(out.writeParent, "EACCES");
      assert.equal(out.listDataRoot, "EACCES");
      assert.equal(out.writeDataRoot, "EACCES");
      assert.equal(out.serverCwd, false);
      assert.equal(out.writeOwn, "ok");
      assert.equal(out.readOwn, "x");
      assert.equal(out.readBlob, "shared blob");
      assert.equal(out.writeBlob, "EROFS");
      assert.equal(out.readShared, "X = 1\n");
      assert.equal(out.writeShared, "EROFS");
      assert.equal(out.newInShared, "EROFS");
      assert.equal(out.writeUsr, "EROFS");
      assert.equal(out.writeRootfs, "EROFS");
      assert.equal(out.writeTmp, "ok");
      assert.equal(await Deno.readTextFile(join(a.root, "blob.txt")), "shared blob");
      assert.equal(await Deno.readTextFile(join(shared, "lib.py")), "X = 1\n");
      // The private /tmp holds only the mount points leading to the session, not the host's.
      const top = data.startsWith("/tmp/") ? [data.split("/")[2]] : [];
      assert.deepEqual(out.listTmp, [...top, "scratch"].sort());
      // B's /tmp is its own.
      const outB = await probe(l, b, { tmp: ["exists", "/tmp/scratch"] });
      assert.equal(outB.tmp, false);
    } finally {
      await l.close();
      await Deno.remove(data, { recursive: true });
    }
  },
});

Deno.test({
  name: "sandbox gives a worker its own PID namespace and no capabilities",
  ignore,
  async fn() {
    const root = await Deno.makeTempDir();
    const l = new Launcher({ sandbox: "bwrap", logger: () => {} });
    try {
      const r = await collect(l, { key: "pid", root, pythonPath: [] }, {
        code: "import os\n" +
          "procs = [p for p in os.listdir('/proc') if p.isdigit()]\n" +
          "cap = [l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1]\n" +
          "print(len(procs) < 10, cap)",
      });
      assert.equal(r.stdout, "True 0000000000000000\n", r.stderr);
    } finally {
      await l.close();
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test({
  name: "sandbox has no network unless workerNetwork is set",
  ignore,
  async fn() {
    const root = await Deno.makeTempDir();
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const accepted = (async () => {
      for await (const conn of listener) conn.close();
    })();
    const code = "import socket, sys, errno\n" +
      "s = socket.socket()\n" +
      "try:\n    s.connect(('127.0.0.1', int(sys.argv[1]))); print('connected')\n" +
      "except OSError as e:\n    print(errno.errorcode[e.errno])\n" +
      "finally:\n    s.close()";
    const session = { key: "net", root, pythonPath: [] };
    const args = [String(listener.addr.port)];
    try {
      for (const workerNetwork of [false, true]) {
        const l = new Launcher({ sandbox: "bwrap", workerNetwork, logger: () => {} });
        try {
          const r = await collect(l, session, { code, args });
          assert.equal(r.stdout.trim(), workerNetwork ? "connected" : "ECONNREFUSED", r.stderr);
        } finally {
          await l.close();
        }
      }
    } finally {
      listener.close();
      await accepted.catch(() => {});
      await Deno.remove(root, { recursive: true });
    }
  },
});
