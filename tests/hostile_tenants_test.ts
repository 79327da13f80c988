// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Issue 10, items 2 and 3, performed against a real `serve` process running as root with the
 * bubblewrap sandbox. A running worker tries to poison the blob it shares with another tenant
 * (chmod, write, truncate, utime, hard links, a symlink swapped in for the server's link); a
 * worker plants setuid programs; an archive and a conda-unpack carry setuid files into a shared
 * tree; another host user tries to reach any session. The victim's bytes must stay the server's,
 * nothing a worker made may be root's or setuid in what the server keeps, and no other host
 * user may reach a session.
 *
 * @module
 */
import { equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { bytesArtifact } from "@valise/protocol";
import { makeTar } from "../packages/archive/testdata/archive_writers.ts";
import {
  add,
  asOtherUser,
  ATTEMPT,
  blobOnDisk,
  lines,
  run,
  sandboxMissing,
  sessionDirOf,
  setConf,
  withServer,
} from "./_hostile.ts";

const enc = new TextEncoder();
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const missing = sandboxMissing();

function sandboxTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name: missing ? `${name} (ignored: ${missing})` : name, ignore: !!missing, fn });
}

const blocked = (v: string | undefined) => v !== undefined && !v.startsWith("allowed");

sandboxTest(
  "issue 10 #2: a running worker cannot poison a blob it shares with another tenant",
  async () => {
    await withServer({}, async (s) => {
      const secret = crypto.randomUUID();
      const genuine = enc.encode(`SECRET = ${JSON.stringify(secret)}\n`);
      const digest = sha(genuine);
      const victim = crypto.randomUUID();
      await add(s, victim, [bytesArtifact("pyfiles/lib.py", genuine)], "victim");
      const before = blobOnDisk(s.dataDir, digest);
      equal(before.mode, 0o444);
      equal(before.uid, 0);

      const attacker = crypto.randomUUID();
      const j = JSON.stringify;
      // The worker waits for the artifact to appear in its directory (added while it runs), then
      // tries everything a tenant could do to the shared bytes behind it.
      const attack = `${ATTEMPT}
import time
deadline = time.time() + 60
while not os.path.lexists("lib.py"):
    if time.time() > deadline:
        print("never-appeared 1"); sys.exit(3)
    time.sleep(0.02)
print("seen", os.readlink("lib.py") if os.path.islink("lib.py") else "not-a-link")
def write():
    with open("lib.py", "r+b") as f:
        f.write(b"SECRET = 'poisoned'\\n")
print("chmod", attempt(lambda: os.chmod("lib.py", 0o666)))
print("chmod-view", attempt(lambda: os.chmod("../ro/lib.py", 0o666)))
print("write", attempt(write))
print("append", attempt(lambda: open("lib.py", "ab").write(b"x")))
print("truncate", attempt(lambda: os.truncate("lib.py", 0)))
print("utime", attempt(lambda: os.utime("lib.py", (0, 0))))
print("utime-now", attempt(lambda: os.utime("lib.py")))
print("chown", attempt(lambda: os.chown("lib.py", os.getuid(), os.getgid())))
print("link", attempt(lambda: os.link("lib.py", "hard")))
print("link-view", attempt(lambda: os.link("../ro/lib.py", "hard2")))
print("rename-view", attempt(lambda: os.rename("../ro/lib.py", "../ro/x")))
print("unlink-view", attempt(lambda: os.unlink("../ro/lib.py")))
print("list-session", attempt(lambda: os.listdir("..")))
# Swap the server's link for links out of the sandbox, for the next one to follow.
os.unlink("lib.py")
os.symlink("../../../..", "lib.py")
os.symlink(${j(s.dataDir)}, "data")
os.symlink(${j(join(s.dataDir, "blobs"))}, "blobs")
print("swapped", 1)
`;
      const events: string[] = [];
      const r = await run(s, attacker, attack, {
        userId: "attacker",
        onStarted: async () => {
          events.push("started");
          // Same bytes as the victim's: the store shares one blob between the two sessions.
          await add(s, attacker, [bytesArtifact("pyfiles/lib.py", genuine)], "attacker");
          events.push("added");
        },
      });
      equal(r.exitCode, 0, r.stderr);
      const got = lines(r.stdout);
      equal(got["seen"], "../ro/lib.py", r.stdout);
      for (
        const k of [
          "chmod",
          "chmod-view",
          "write",
          "append",
          "truncate",
          "utime",
          "utime-now",
          "chown",
          "link",
          "link-view",
          "rename-view",
          "unlink-view",
          "list-session",
        ]
      ) {
        ok(blocked(got[k]), `${k}: ${got[k]} (${r.stdout})`);
      }
      equal(got["swapped"], "1", r.stderr);

      // On the host the blob is the server's, as it was, byte for byte.
      const after = blobOnDisk(s.dataDir, digest);
      equal(new TextDecoder().decode(after.bytes), new TextDecoder().decode(genuine));
      equal(after.mode, 0o444);
      equal(after.uid, 0);

      // The victim's next run reads the genuine bytes.
      const v = await run(s, victim, "import lib; print(lib.SECRET)", { userId: "victim" });
      equal(v.stdout.trim(), secret, v.stderr);

      // A later upload of the genuine bytes (a third tenant) adopts a correct blob.
      const third = crypto.randomUUID();
      await add(s, third, [bytesArtifact("files/again.py", genuine)], "third");
      const t = await run(s, third, "print(open('again.py').read(), end='')", { userId: "third" });
      equal(t.stdout, new TextDecoder().decode(genuine));
      const view = Deno.statSync(join(sessionDirOf(t.cwd), "ro", "again.py"));
      const blob = Deno.statSync(join(s.dataDir, "blobs", "sha256", digest.slice(0, 2), digest));
      equal(view.ino, blob.ino, "the third tenant's file is not the stored blob");
      equal(blobOnDisk(s.dataDir, digest).mode, 0o444);

      // The attacker's next sandbox (a fresh one: its environment changed) follows none of its
      // planted links out.
      await setConf(s, attacker, { "spark.pythonWorkerEnv.AFTER": "1" }, "attacker");
      const next = await run(
        s,
        attacker,
        `${ATTEMPT}
print("via-lib", attempt(lambda: os.listdir("lib.py")))
print("via-lib-blobs", attempt(lambda: os.listdir("lib.py/blobs/sha256")))
print("via-data", attempt(lambda: os.listdir("data/blobs/sha256")))
print("via-blobs", attempt(lambda: os.listdir("blobs/sha256")))
print("blob", attempt(lambda: open(${
          j(join(s.dataDir, "blobs", "sha256", digest.slice(0, 2), digest))
        }).read()))
print("data", attempt(lambda: os.listdir(${j(s.dataDir)})))
print("sessions", attempt(lambda: os.listdir(${j(join(s.dataDir, "sessions"))})))
`,
        { userId: "attacker" },
      );
      const n = lines(next.stdout);
      for (
        const k of ["via-lib", "via-lib-blobs", "via-data", "via-blobs", "blob", "data", "sessions"]
      ) {
        ok(blocked(n[k]), `next sandbox, ${k}: ${n[k]} (${next.stderr})`);
      }
      equal(events.join(","), "started,added");
    });
  },
);

sandboxTest(
  "issue 10 #3: setuid programs a worker plants are not root's, and no other host user reaches any session",
  async () => {
    await withServer({}, async (s) => {
      const sid = crypto.randomUUID();
      await add(s, sid, [bytesArtifact("files/mine.txt", enc.encode("tenant data"))]);
      const r = await run(
        s,
        sid,
        `${ATTEMPT}
import shutil
shutil.copy("/usr/bin/id", "suid"); os.chmod("suid", 0o4755)
shutil.copy("/usr/bin/id", "sgid"); os.chmod("sgid", 0o2755)
os.mkdir("sgdir"); os.chmod("sgdir", 0o2777)
print("uid", os.getuid())
print("gid", os.getgid())
print("groups", os.getgroups())
print("chown-root", attempt(lambda: os.chown("suid", 0, 0)))
print("setuid-root", attempt(lambda: os.setuid(0)))
`,
      );
      const got = lines(r.stdout);
      ok(got["uid"] !== "0" && got["gid"] !== "0", r.stdout + r.stderr);
      equal(got["groups"], "[]");
      ok(blocked(got["chown-root"]), got["chown-root"]);
      ok(blocked(got["setuid-root"]), got["setuid-root"]);
      const dir = sessionDirOf(r.cwd);
      for (const f of ["suid", "sgid", "sgdir"]) {
        const st = Deno.lstatSync(join(r.cwd, f));
        equal(String(st.uid), got["uid"], `${f} is owned by ${st.uid}`);
        equal(String(st.gid), got["gid"], `${f} has group ${st.gid}`);
        ok(st.uid !== 0 && st.gid !== 0, `${f} is root's`);
      }
      // The session's directories: reachable by the server and the session's own workers only.
      const mode = (p: string) => (Deno.statSync(p).mode ?? 0) & 0o7777;
      // Sandboxed workers reach it through binds only: closed even to the session's own gid.
      equal(mode(dir), 0o700);
      equal(Deno.statSync(dir).uid, 0);
      equal(String(Deno.statSync(dir).gid), got["gid"]);
      equal(mode(join(dir, "ro")), 0o750);
      equal(mode(r.cwd), 0o700);
      equal(mode(join(dir, "artifacts")), 0o700);
      equal(mode(s.dataDir), 0o700, `data dir mode ${mode(s.dataDir).toString(8)}`);
      equal(mode(join(s.dataDir, "trees")), 0o700);

      // Another host user: nothing of the session, its planted programs or the blobs.
      const digest = sha(enc.encode("tenant data"));
      const probes: Record<string, string[]> = {
        "list-data": ["ls", s.dataDir],
        "list-sessions": ["ls", join(s.dataDir, "sessions")],
        "list-user": ["ls", join(dir, "..")],
        "list-session": ["ls", dir],
        "read-manifest": ["cat", join(dir, "manifest.json")],
        "stat-root": ["stat", r.cwd],
        "exec-suid": [join(r.cwd, "suid")],
        "exec-sgid": [join(r.cwd, "sgid")],
        "read-view": ["cat", join(dir, "ro", "mine.txt")],
        "list-blobs": ["ls", join(s.dataDir, "blobs")],
        "read-blob": ["cat", join(s.dataDir, "blobs", "sha256", digest.slice(0, 2), digest)],
      };
      for (const [what, args] of Object.entries(probes)) {
        const out = await asOtherUser(args);
        ok(out.code !== 0, `${what}: another host user got in: ${out.stdout}`);
        ok(!out.stdout.includes("tenant data"), what);
      }
      // Sanity: the probes themselves work (the same user can run a command it may run).
      const sane = await asOtherUser(["cat", "/etc/hostname"]);
      equal(sane.code, 0, sane.stderr);
    });
  },
);

/** Every entry under `dir` with its mode and owner, symlinks not followed. */
function walk(dir: string): { path: string; mode: number; uid: number; kind: string }[] {
  const out: { path: string; mode: number; uid: number; kind: string }[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const p = join(dir, e.name);
    const st = Deno.lstatSync(p);
    const kind = st.isSymlink ? "link" : st.isDirectory ? "dir" : st.isFile ? "file" : "other";
    out.push({ path: p, mode: (st.mode ?? 0) & 0o7777, uid: st.uid ?? -1, kind });
    if (st.isDirectory) out.push(...walk(p));
  }
  return out;
}

function treeOf(dataDir: string, archive: Uint8Array): string {
  const prefix = `${sha(archive)}-`;
  const found = [...Deno.readDirSync(join(dataDir, "trees"))]
    .filter((e) => e.isDirectory && e.name.startsWith(prefix));
  equal(found.length, 1, `no single tree for ${prefix}`);
  return join(dataDir, "trees", found[0]!.name);
}

function assertSealed(tree: string, what: string): void {
  const entries = walk(tree);
  ok(entries.length > 0, `${what}: empty tree`);
  for (const e of entries) {
    ok(e.kind !== "other", `${what}: ${e.path} is a device, FIFO or socket`);
    if (e.kind === "link") continue;
    equal(e.uid, 0, `${what}: ${e.path} is owned by ${e.uid}`);
    equal(e.mode & 0o6000, 0, `${what}: ${e.path} keeps setuid/setgid (${e.mode.toString(8)})`);
    equal(e.mode & 0o222, 0, `${what}: ${e.path} is writable (${e.mode.toString(8)})`);
  }
}

sandboxTest(
  "issue 10 #3: setuid bits from an uploaded archive or made by conda-unpack do not survive into the shared tree",
  async () => {
    await withServer({}, async (s) => {
      const sid = crypto.randomUUID();
      const tar = makeTar([
        { name: "bin/", type: "dir" },
        { name: "bin/suid", data: "#!/bin/sh\nid\n", mode: 0o4755 },
        { name: "bin/sgid", data: "#!/bin/sh\nid\n", mode: 0o2755 },
        { name: "open/", type: "dir", mode: 0o3777 },
        { name: "open/w", data: "x", mode: 0o666 },
      ]);
      await add(s, sid, [bytesArtifact("archives/suid.tar#plain", tar)]);
      assertSealed(treeOf(s.dataDir, tar), "uploaded archive");

      // conda-unpack is the archive's code: it runs as a uid of its own, then the tree is sealed.
      const unpack = `import os, shutil, socket
shutil.copy("/usr/bin/id", "bin/planted")
os.chmod("bin/planted", 0o4755)
shutil.copy("/usr/bin/id", "bin/planted-g")
os.chmod("bin/planted-g", 0o2755)
os.mkdir("world"); os.chmod("world", 0o3777)
open("world/f", "w").write("x"); os.chmod("world/f", 0o6777)
os.mkfifo("fifo")
s = socket.socket(socket.AF_UNIX); s.bind("sock")
open("uid.txt", "w").write(str(os.getuid()))
`;
      const conda = makeTar([
        { name: "bin/", type: "dir" },
        { name: "bin/python", type: "symlink", linkname: "/usr/bin/python3" },
        { name: "pyvenv.cfg", data: "home = /usr/bin\ninclude-system-site-packages = true\n" },
        { name: "bin/conda-unpack", data: unpack, mode: 0o755 },
        { name: "conda-meta/", type: "dir" },
        { name: "conda-meta/history", data: "==> 2020-01-01 00:00:00 <==\n" },
      ]);
      await add(s, sid, [bytesArtifact("archives/conda.tar#cenv", conda)]);
      const tree = treeOf(s.dataDir, conda);
      const unpackUid = Deno.readTextFileSync(join(tree, "uid.txt"));
      ok(unpackUid !== "0", "conda-unpack ran as root");
      const names = walk(tree).map((e) => e.path.slice(tree.length + 1));
      ok(names.includes("bin/planted"), `conda-unpack's files are missing: ${names}`);
      ok(!names.includes("fifo") && !names.includes("sock"), `special files kept: ${names}`);
      assertSealed(tree, "conda-unpack");
      // And the session's worker runs the planted program as itself, never as root.
      const r = await run(
        s,
        sid,
        "import subprocess; print(subprocess.run(['cenv/bin/planted', '-u'], capture_output=True, text=True).stdout)",
      );
      ok(r.stdout.trim() !== "0" && r.stdout.trim() !== "", `planted program ran as ${r.stdout}`);
    });
  },
);
