// Copyright 2026 the Valise authors. Apache-2.0 license.
// The launcher with real packed environments (venv-pack archives and PEX files from the real
// tools, a hand-made conda-pack look-alike, built by tests/fixtures/envs.ts): each session gets
// its own, in and out of the sandbox.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Launcher, type LauncherOptions, type SessionSpec } from "@valise/launcher";
import {
  collect,
  eachSandbox,
  reachablePython,
  sh,
  SYSTEM_PYTHON,
} from "../packages/launcher/testdata/helpers.ts";
import { makeCondaPackLike, makePex, makeVenvPack, type PexOptions } from "./fixtures/envs.ts";
import { needsVenv } from "./_python.ts";

/** A root launcher runs workers as another uid: root's own files are then out of their reach. */
const IS_ROOT = Deno.uid() === 0;
const quiet = () => {};

async function tempSession(key: string, files: Record<string, string> = {}): Promise<SessionSpec> {
  const root = await Deno.makeTempDir({ prefix: `valise-launcher-${key}-` });
  for (const [name, text] of Object.entries(files)) {
    await Deno.mkdir(join(root, name, ".."), { recursive: true });
    await Deno.writeTextFile(join(root, name), text);
  }
  return { key, root, pythonPath: [] };
}

async function withLauncher(
  options: LauncherOptions,
  fn: (l: Launcher) => Promise<void>,
): Promise<void> {
  const launcher = new Launcher({ logger: quiet, ...reachablePython(options.sandbox), ...options });
  try {
    await fn(launcher);
  } finally {
    await launcher.close();
  }
}

Deno.test(
  needsVenv("Launcher.run() gives each session its own mylib over 50 concurrent runs"),
  async (t) => {
    const out = await Deno.makeTempDir();
    const a = await tempSession("A");
    const b = await tempSession("B", { "mylib.py": "VERSION = 2\n" });
    try {
      const { archive } = await makeVenvPack(out, { packages: { mylib: "VERSION = 1\n" } });
      await Deno.mkdir(join(a.root, "environment"));
      await sh("tar", "-xzf", archive, "-C", join(a.root, "environment"));
      a.interpreter = "environment/bin/python";
      await eachSandbox(t, async (sandbox) => {
        await withLauncher({ sandbox, limits: { maxQueue: 200 } }, async (l) => {
          const code = "import mylib, sys; print(mylib.VERSION, sys.prefix)";
          const runs = [];
          for (let i = 0; i < 50; i++) {
            runs.push(collect(l, a, { code }), collect(l, b, { code }));
          }
          const results = await Promise.all(runs);
          for (let i = 0; i < results.length; i++) {
            const r = results[i]!;
            assert.equal(r.exit.exitCode, 0, r.stderr);
            const [version, prefix] = r.stdout.trim().split(" ");
            if (i % 2 === 0) {
              assert.equal(version, "1");
              assert.equal(prefix, join(a.root, "environment"));
              const started = r.events[0];
              assert.ok(started?.kind === "started");
              assert.equal(started.interpreter, join(a.root, "environment/bin/python"));
              assert.equal(started.cwd, a.root);
            } else {
              assert.equal(version, "2");
            }
          }
        });
      });
    } finally {
      for (const d of [out, a.root, b.root]) await Deno.remove(d, { recursive: true });
    }
  },
);

const PEX_KINDS: { name: string; options: PexOptions; inherits: boolean }[] = [
  { name: "zipapp.pex", options: {}, inherits: false },
  { name: "venv.pex", options: { venv: true }, inherits: false },
  { name: "inherit.pex", options: { inheritPath: "prefer" }, inherits: true },
];

Deno.test(
  needsVenv("Launcher runs a .pex as the interpreter with a server-owned PEX_ROOT"),
  async (t) => {
    const s = await tempSession("pex");
    const pexRoot = await Deno.makeTempDir({ prefix: "valise-pexroot-" });
    try {
      for (const { name, options, inherits } of PEX_KINDS) {
        await t.step(name, async (t) => {
          await makePex(s.root, { ...options, name, packages: { mylib: "VERSION = 3\n" } });
          await eachSandbox(t, async (sandbox) => {
            // Unsandboxed, a root launcher's workers run as nobody, who cannot reach root's home
            // (where a pyenv default interpreter lives): use the system's there.
            const python = sandbox === "none" && IS_ROOT ? { defaultPython: SYSTEM_PYTHON } : {};
            await withLauncher({ sandbox, pexRoot, ...python }, async (l) => {
              const session = { ...s, interpreter: name };
              // pex strips PEX_* variables before user code runs; where it put the code shows
              // the PEX_ROOT it had. --inherit-path keeps the interpreter's site-packages.
              const code = "import mylib, os, site, sys\n" +
                "print(mylib.VERSION, os.environ.get('PEX_ROOT'), mylib.__file__, " +
                "bool(set(site.getsitepackages([sys.base_prefix])) & set(sys.path)))";
              for (let i = 0; i < 3; i++) {
                const r = await collect(l, session, { code });
                assert.equal(r.exit.exitCode, 0, r.stderr);
                const [version, env, file, inherited] = r.stdout.trim().split(" ");
                assert.equal(version, "3");
                assert.equal(env, "None");
                assert.ok(file?.startsWith(pexRoot + "/"), file);
                assert.equal(inherited, inherits ? "True" : "False");
                const started = r.events[0];
                assert.ok(started?.kind === "started");
                assert.equal(started.interpreter, join(s.root, name));
              }
              // The session's PEX_ROOT goes when the session is stopped.
              assert.equal([...Deno.readDirSync(pexRoot)].length, 1);
              await l.stopSession(s.key);
              assert.equal([...Deno.readDirSync(pexRoot)].length, 0);
            });
          });
        });
      }
    } finally {
      await Deno.remove(s.root, { recursive: true });
      await Deno.remove(pexRoot, { recursive: true });
    }
  },
);

Deno.test("Launcher runs a conda-pack env unpacked once in a shared tree, read-only", async (t) => {
  const data = await Deno.makeTempDir({ prefix: "valise-conda-" });
  // Unsandboxed workers of a root launcher run as nobody: the way to the session must be open.
  await Deno.chmod(data, 0o711);
  try {
    const built = await makeCondaPackLike(join(data, "out"), {
      packages: { condalib: "VERSION = 4\n" },
    });
    const tree = join(data, "shared", built.sha256.slice(0, 16));
    await Deno.mkdir(tree, { recursive: true });
    await sh("tar", "-xzf", built.archive, "-C", tree);
    await sh(join(tree, "bin/python"), join(tree, "bin/conda-unpack"));
    const sessions: SessionSpec[] = [];
    for (const key of ["c1", "c2"]) {
      const root = join(data, "sessions", key);
      await Deno.mkdir(root, { recursive: true });
      await Deno.symlink(tree, join(root, "env"));
      sessions.push({
        key,
        root,
        pythonPath: [],
        interpreter: "env/bin/python",
        sharedTrees: [tree],
      });
    }
    const code = "import condalib, condalib._prefix as p, sys, os, errno\n" +
      "try:\n    open(os.path.join(p.PREFIX, 'poison.py'), 'w'); w = 'ok'\n" +
      "except OSError as e:\n    w = errno.errorcode[e.errno]\n" +
      "print(condalib.VERSION, p.PREFIX, w)";
    await eachSandbox(t, async (sandbox) => {
      await withLauncher({ sandbox }, async (l) => {
        for (const s of sessions) {
          const r = await collect(l, s, { code });
          assert.equal(r.exit.exitCode, 0, r.stderr);
          const [version, prefix, write] = r.stdout.trim().split(" ");
          assert.equal(version, "4");
          assert.equal(prefix, tree);
          // The mount (EROFS) or, for a worker of its own uid, the tree's owner (EACCES) refuses.
          if (sandbox === "bwrap" || IS_ROOT) assert.match(String(write), /^(EROFS|EACCES)$/);
        }
      });
      await Deno.remove(join(tree, "poison.py")).catch(() => {});
    });
  } finally {
    await Deno.remove(data, { recursive: true });
  }
});
