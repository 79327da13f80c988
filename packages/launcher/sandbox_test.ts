// Copyright 2026 the Valise authors. Apache-2.0 license.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Launcher, type SessionSpec } from "./mod.ts";
import { bwrapWorks, collect } from "./testdata/helpers.ts";

const ignore = !bwrapWorks();
const REFUSED = /^(EROFS|EACCES)$/;

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
    const a: SessionSpec = { key: "A", root: join(sessions, "A", "root"), pythonPath: [] };
    const b: SessionSpec = { key: "B", root: join(sessions, "B", "root"), pythonPath: [] };
    const view = join(sessions, "A", "ro");
    for (const d of [a.root, b.root, shared, view]) await Deno.mkdir(d, { recursive: true });
    await Deno.writeTextFile(join(b.root, "secret.txt"), "B's data");
    await Deno.writeTextFile(join(view, "blob.txt"), "shared blob");
    await Deno.symlink("../ro/blob.txt", join(a.root, "blob.txt"));
    await Deno.writeTextFile(join(shared, "lib.py"), "X = 1\n");
    await Deno.symlink(shared, join(a.root, "env"));
    a.readOnlyDirs = [view];
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
      // Read-only however the worker is mapped: the mount (EROFS) or, for a worker dropped to
      // its own uid, the file's owner (EACCES) refuses.
      assert.match(String(out.writeBlob), REFUSED);
      assert.equal(out.readShared, "X = 1\n");
      assert.match(String(out.writeShared), REFUSED);
      assert.match(String(out.newInShared), REFUSED);
      assert.equal(out.writeUsr, "EROFS");
      assert.equal(out.writeRootfs, "EROFS");
      assert.equal(out.writeTmp, "ok");
      assert.equal(await Deno.readTextFile(join(view, "blob.txt")), "shared blob");
      assert.equal(await Deno.readTextFile(join(shared, "lib.py")), "X = 1\n");
      // The private /tmp holds only the mount points leading to the session, not the host's.
      const top = data.startsWith("/tmp/") ? [data.split("/")[2]] : [];
      // And the one leading to the fork server's data socket (in the launcher's runtime
      // directory): traversable, not listable.
      const listed = out.listTmp as string[];
      const runtime = listed.filter((n) => n.startsWith("valise-run-"));
      const tmpIsTmp = (Deno.env.get("TMPDIR") ?? "/tmp").replace(/\/+$/, "") === "/tmp";
      assert.equal(runtime.length, tmpIsTmp ? 1 : 0, JSON.stringify(listed));
      assert.deepEqual(listed.filter((n) => !runtime.includes(n)), [...top, "scratch"].sort());
      for (const r of runtime) {
        const outRun = await probe(l, a, { list: ["list", `/tmp/${r}`] });
        assert.equal(outRun.list, "EACCES");
      }
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

Deno.test({
  name: "sandbox never runs a worker as host root, and what it plants carries no root setuid",
  ignore: ignore || Deno.uid() !== 0,
  async fn() {
    const data = await Deno.makeTempDir({ prefix: "valise-uid-" });
    const root = join(data, "root");
    await Deno.mkdir(root);
    const l = new Launcher({ sandbox: "bwrap", logger: () => {} });
    try {
      const session: SessionSpec = {
        key: "u",
        root,
        pythonPath: [],
        worker: { uid: 1_900_000_123, gid: 1_900_000_123 },
      };
      const r = await collect(l, session, {
        code: "import os, shutil, json, pwd\n" +
          "st = {l.split(':')[0]: l.split(':')[1].split() for l in open('/proc/self/status')}\n" +
          "shutil.copy('/usr/bin/true', 'planted'); os.chmod('planted', 0o4755)\n" +
          "import multiprocessing; multiprocessing.Lock()\n" +
          "print(json.dumps([st['Uid'], st['Gid'], st['CapBnd'], st['NoNewPrivs'], " +
          "os.getgroups(), pwd.getpwuid(os.getuid()).pw_name]))",
      });
      assert.equal(r.exit.exitCode, 0, r.stderr);
      const [uids, gids, capBnd, nnp, groups, name] = JSON.parse(r.stdout);
      assert.deepEqual(uids, Array(4).fill("1900000123"));
      assert.deepEqual(gids, Array(4).fill("1900000123"));
      assert.deepEqual(capBnd, ["0000000000000000"]);
      assert.deepEqual(nnp, ["1"]);
      assert.deepEqual(groups, []);
      assert.equal(name, "valise");
      // The file the worker planted is its own, never root's, whatever mode it asked for.
      const planted = await Deno.stat(join(root, "planted"));
      assert.equal(planted.uid, 1_900_000_123);
      // The session's directory is the worker's, and only the worker's.
      const st = await Deno.stat(root);
      assert.equal(st.uid, 1_900_000_123);
    } finally {
      await l.close();
      await Deno.remove(data, { recursive: true });
    }
  },
});

Deno.test({
  name: "sandbox binds never come from a session's files: pyvenv.cfg home and symlinks are ignored",
  ignore,
  async fn() {
    const data = await Deno.makeTempDir({ prefix: "valise-binds-" });
    const secret = join(data, "secret");
    const root = join(data, "session", "root");
    await Deno.mkdir(join(secret, "bin"), { recursive: true });
    await Deno.writeTextFile(join(secret, "token.txt"), "the server's secret");
    await Deno.mkdir(join(root, "env", "bin"), { recursive: true });
    // A venv whose python is the system's, with a pyvenv.cfg naming a directory to expose.
    await Deno.symlink("/usr/bin/python3", join(root, "env", "bin", "python"));
    await Deno.writeTextFile(join(root, "env", "pyvenv.cfg"), `home = ${join(secret, "bin")}\n`);
    // And an interpreter that is a symlink into that directory.
    await Deno.copyFile("/usr/bin/python3", join(secret, "bin", "python"));
    await Deno.chmod(join(secret, "bin", "python"), 0o755);
    await Deno.symlink(join(secret, "bin", "python"), join(root, "sneaky"));
    const l = new Launcher({ sandbox: "bwrap", logger: () => {} });
    try {
      const base = { key: "b", root, pythonPath: [] };
      const r = await collect(l, { ...base, interpreter: "env/bin/python" }, {
        code: "import os\nprint(os.path.exists(" + JSON.stringify(join(secret, "token.txt")) +
          "))",
      });
      assert.equal(r.exit.exitCode, 0, r.stderr);
      assert.equal(r.stdout.trim(), "False");
      await assert.rejects(
        collect(l, { ...base, interpreter: "sneaky" }, { code: "print(1)" }),
        (e: Error) => e.name === "LaunchError" && /does not allow/.test(e.message),
      );
    } finally {
      await l.close();
      await Deno.remove(data, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "a session's environment reaches only its interpreter, never the steps that set up the sandbox",
  ignore,
  async fn() {
    const data = await Deno.makeTempDir({ prefix: "valise-env-" });
    const root = join(data, "root");
    await Deno.mkdir(root);
    const l = new Launcher({ sandbox: "bwrap", logger: () => {} });
    try {
      // The dynamic loader of every process that gets LD_DEBUG_OUTPUT writes there: on the host
      // only if a step outside the sandbox (sh, prlimit, bwrap, setpriv) got it.
      const target = join(data, "loader-log");
      const session = { key: "env", root, pythonPath: [] };
      const debug = { LD_DEBUG: "statistics", LD_DEBUG_OUTPUT: target };
      // Inside, the loader cannot open the host path and writes to the fork server's frame
      // channel instead: that breaks the session's own fork server, which is its business.
      await collect(l, { ...session, env: debug }, { code: "" }).catch(() => {});
      const r = await collect(l, { ...session, env: { MARK: "on" } }, {
        code: "import os; print(os.environ['MARK'])",
      });
      assert.equal(r.stdout.trim(), "on", r.stderr);
      const written = [...Deno.readDirSync(data)].filter((e) => e.name.startsWith("loader-log"));
      assert.deepEqual(written, []);
      // A name env(1) could read as an option is refused, not passed.
      await assert.rejects(
        collect(l, { key: "env2", root, pythonPath: [], env: { "-u": "PATH" } }, { code: "" }),
        TypeError,
      );
    } finally {
      await l.close();
      await Deno.remove(data, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "layers go on sys.path after the pyfiles, read-only; a trusted file and the proxy socket are bound, nothing else of the host",
  ignore,
  async fn() {
    const data = await Deno.makeTempDir({ prefix: "valise-layers-" });
    const root = join(data, "root");
    const layer = join(data, "layers", "abc-pip");
    const tool = join(data, "tools", "tool.txt");
    const sockDir = await Deno.makeTempDir({ prefix: "valise-sock-" });
    const sock = join(sockDir, "p.sock");
    for (const d of [root, layer, join(data, "tools")]) await Deno.mkdir(d, { recursive: true });
    await Deno.writeTextFile(join(layer, "layered.py"), "WHERE = 'layer'\n");
    await Deno.writeTextFile(tool, "a trusted tool\n");
    await Deno.writeTextFile(join(data, "tools", "other.txt"), "not bound\n");
    const listener = Deno.listen({ transport: "unix", path: sock });
    await Deno.chmod(sock, 0o666);
    const served = (async () => {
      const c = await listener.accept();
      await c.write(new TextEncoder().encode("hello from the host\n"));
      c.close();
    })();
    const l = new Launcher({ sandbox: "bwrap", logger: () => {} });
    try {
      const session: SessionSpec = {
        key: "layers",
        root,
        pythonPath: [],
        layers: [layer],
        readOnlyFiles: [tool],
        proxySocket: sock,
      };
      const r = await collect(l, session, {
        code: [
          "import sys, socket, layered",
          "print(sys.path.index(sys.argv[1]) == 1, layered.WHERE)",
          "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[2]); print(s.recv(100).decode().strip())",
        ].join("\n"),
        args: [layer, sock],
      });
      assert.equal(r.stdout, "True layer\nhello from the host\n", r.stderr);
      await served;
      const seen = await probe(l, session, {
        layerWrite: ["write", join(layer, "layered.py")],
        layerNew: ["mkdir", join(layer, "new")],
        tool: ["read", tool],
        toolWrite: ["write", tool],
        other: ["exists", join(data, "tools", "other.txt")],
      });
      assert.match(String(seen.layerWrite), REFUSED);
      assert.match(String(seen.layerNew), REFUSED);
      assert.equal(seen.tool, "a trusted tool\n");
      assert.match(String(seen.toolWrite), REFUSED);
      assert.equal(seen.other, false);
      // A layer inside the session's own (writable) directory is refused.
      await assert.rejects(
        collect(l, { key: "bad", root, pythonPath: [], layers: [join(root, "x")] }, { code: "" }),
        RangeError,
      );
    } finally {
      listener.close();
      await l.close();
      await Deno.remove(data, { recursive: true });
      await Deno.remove(sockDir, { recursive: true });
    }
  },
});
