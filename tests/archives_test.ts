// End-to-end: archives added over gRPC are unpacked safely into shared trees that each
// session sees under its alias, once per archive however many sessions add it.
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  addArtifactsRequests,
  bytesArtifact,
  ErrorInfoSchema,
  SparkConnectService,
  StoreService,
} from "@valise/protocol";
import { serve } from "@valise/server";
import { makeCondaPackLike, makeVenvPack } from "./fixtures/envs.ts";
import { needsVenv } from "./_python.ts";
import { HOSTILE_CASES } from "../packages/archive/testdata/hostile_cases.ts";
import { fileArtifact, removeTree } from "./_util.ts";

async function withServer(
  fn: (c: {
    spark: ReturnType<typeof createClient<typeof SparkConnectService>>;
    store: ReturnType<typeof createClient<typeof StoreService>>;
    server: Awaited<ReturnType<typeof serve>>;
    tmp: string;
  }) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-arch-" });
  const server = await serve({ dataDir: join(tmp, "data"), port: 0 });
  const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` });
  try {
    await fn({
      spark: createClient(SparkConnectService, transport),
      store: createClient(StoreService, transport),
      server,
      tmp,
    });
  } finally {
    await server.close();
    await removeTree(tmp);
  }
}

async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  const out = await new Deno.Command(cmd, { args, ...(cwd ? { cwd } : {}) }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) throw new Error(`${cmd} failed: ${new TextDecoder().decode(out.stderr)}`);
  return text;
}

Deno.test(
  needsVenv("a venv-pack archive added by two sessions is unpacked once and seen by both"),
  async () => {
    await withServer(async ({ spark, store, server, tmp }) => {
      const { archive, sha256 } = await makeVenvPack(join(tmp, "fx"), {
        packages: { mylib: "VERSION = 1\n" },
      });
      const a = crypto.randomUUID();
      const b = crypto.randomUUID();
      for (const sessionId of [a, b]) {
        const res = await spark.addArtifacts(
          addArtifactsRequests([fileArtifact("archives/env.tar.gz#environment", archive)], {
            sessionId,
          }),
        );
        deepEqual(res.artifacts.map((x) => x.isCrcSuccessful), [true]);
      }
      equal(server.valise.store.trees.builds, 1);
      for (const id of [a, b]) {
        const s = server.valise.store.find("", id)!;
        const env = join(s.root, "environment");
        equal(
          await run(join(env, "bin/python"), ["-c", "import mylib; print(mylib.VERSION)"], s.root),
          "1",
        );
      }
      // Both views point at the same tree: one copy on disk.
      const [ra, rb] = [a, b].map((id) =>
        Deno.realPathSync(join(server.valise.store.find("", id)!.root, "environment"))
      );
      equal(ra, rb);
      // A third session attaches it by digest, without sending the bytes.
      const c = crypto.randomUUID();
      await store.attachArtifacts({
        sessionId: c,
        artifacts: [{ name: "archives/other-name.tgz#env", sha256 }],
      });
      equal(server.valise.store.trees.builds, 1);
      ok(Deno.statSync(join(server.valise.store.find("", c)!.root, "env/pyvenv.cfg")).isFile);
    });
  },
);

Deno.test(
  needsVenv("twenty sessions adding the same environment store and unpack it once"),
  async () => {
    await withServer(async ({ spark, server, tmp }) => {
      // A package with 2 MB of incompressible data makes the environment's size dominate.
      const noise = Array.from(crypto.getRandomValues(new Uint8Array(32768)))
        .map((b) => b.toString(16).padStart(2, "0")).join("");
      const { archive } = await makeVenvPack(join(tmp, "fx"), {
        packages: { big: `DATA = ${JSON.stringify(noise.repeat(32))}\n` },
        // New noise every run: nothing to reuse.
        cache: false,
      });
      const ids = Array.from({ length: 20 }, () => crypto.randomUUID());
      for (const [i, sessionId] of ids.entries()) {
        await spark.addArtifacts(
          addArtifactsRequests([fileArtifact(`archives/env${i % 2}.tar.gz#environment`, archive)], {
            sessionId,
          }),
        );
      }
      equal(server.valise.store.trees.builds, 1);
      equal((await server.valise.store.trees.list()).length, 1);
      equal((await server.valise.store.blobs.list()).length, 1);
      const fileBytes = async (root: string) => {
        // Bytes of distinct files: a hard link is counted once, as the disk holds it once.
        const seen = new Set<string>();
        let total = 0;
        const walk = async (dir: string): Promise<void> => {
          for await (const e of Deno.readDir(dir)) {
            const p = join(dir, e.name);
            const st = await Deno.lstat(p);
            if (st.isDirectory) await walk(p);
            else if (st.isFile && !seen.has(`${st.dev}:${st.ino}`)) {
              seen.add(`${st.dev}:${st.ino}`);
              total += st.size;
            }
          }
        };
        await walk(root);
        return total;
      };
      const data = join(tmp, "data");
      const oneCopy = await fileBytes(join(data, "trees")) + (await Deno.stat(archive)).size;
      const all = await fileBytes(data);
      ok(all < oneCopy * 1.1, `${all} bytes stored for 20 sessions; one copy is ${oneCopy}`);
      ok(oneCopy > 2_000_000, `the environment is too small to tell: ${oneCopy}`);
      for (const id of ids) {
        ok(
          Deno.statSync(join(server.valise.store.find("", id)!.root, "environment/pyvenv.cfg"))
            .isFile,
        );
      }
    });
  },
);

Deno.test(needsVenv("concurrent adds of the same archive unpack it once"), async () => {
  await withServer(async ({ spark, server, tmp }) => {
    const { archive } = await makeVenvPack(join(tmp, "fx"));
    const ids = Array.from({ length: 6 }, () => crypto.randomUUID());
    await Promise.all(ids.map((sessionId) =>
      spark.addArtifacts(
        addArtifactsRequests([fileArtifact("archives/env.tar.gz#environment", archive)], {
          sessionId,
        }),
      )
    ));
    equal(server.valise.store.trees.builds, 1);
    for (const id of ids) {
      ok(
        Deno.statSync(join(server.valise.store.find("", id)!.root, "environment/bin")).isDirectory,
      );
    }
  });
});

Deno.test("a conda-pack archive is fixed up by conda-unpack at its shared path", async () => {
  await withServer(async ({ spark, server, tmp }) => {
    const fx = await makeCondaPackLike(join(tmp, "fx"));
    const sessionId = crypto.randomUUID();
    await spark.addArtifacts(
      addArtifactsRequests([fileArtifact("archives/env.tar.gz#environment", fx.archive)], {
        sessionId,
      }),
    );
    const s = server.valise.store.find("", sessionId)!;
    const tree = Deno.realPathSync(join(s.root, "environment"));
    const prefix = await run(join(s.root, "environment/bin/python"), [
      "-c",
      `import ${fx.prefixPackage}._prefix as p; print(p.PREFIX)`,
    ], s.root);
    equal(prefix, tree);
    ok(tree.startsWith(join(tmp, "data", "trees")));
  });
});

Deno.test("hostile archives are refused with a clear error and commit nothing", async () => {
  await withServer(async ({ spark, server, tmp }) => {
    const cases = HOSTILE_CASES.filter((c) =>
      ["tar-slip", "tar-absolute", "symlink-escape", "file-through-symlink"].includes(c.name)
    );
    equal(cases.length, 4);
    for (const c of cases) {
      const sessionId = crypto.randomUUID();
      let info: Record<string, string> = {};
      let code: Code | undefined;
      try {
        await spark.addArtifacts(addArtifactsRequests([
          bytesArtifact(`archives/${c.name}.${c.ext}#env`, c.bytes()),
          bytesArtifact("pyfiles/ok.py", new TextEncoder().encode("x = 1\n")),
        ], { sessionId }));
      } catch (e) {
        const err = ConnectError.from(e);
        code = err.code;
        info = { ...err.findDetails(ErrorInfoSchema)[0]?.metadata, message: err.rawMessage };
      }
      equal(code, Code.InvalidArgument, c.name);
      equal(info.errorClass, "ARTIFACT_UNPACK_FAILED", c.name);
      equal(info["valise.reason"], c.expect, c.name);
      ok(info.message!.includes(`archives/${c.name}.${c.ext}#env`), info.message);
      const s = server.valise.store.find("", sessionId)!;
      equal(s.artifact(`archives/${c.name}.${c.ext}#env`), undefined);
      // The rest of the stream was committed; nothing of the archive is visible.
      deepEqual((await Array.fromAsync(Deno.readDir(s.root))).map((e) => e.name), ["ok.py"]);
    }
    deepEqual(await server.valise.store.trees.list(), []);
    let escaped = false;
    await Deno.stat(join(tmp, "evil")).then(() => (escaped = true), () => {});
    equal(escaped, false);
  });
});

Deno.test(needsVenv("shared trees are read-only on disk"), async () => {
  // Without the sandbox this is the only guard (and root ignores it); with the sandbox the
  // launcher binds trees read-only as well.
  await withServer(async ({ spark, server, tmp }) => {
    const { archive } = await makeVenvPack(join(tmp, "fx"));
    const sessionId = crypto.randomUUID();
    await spark.addArtifacts(
      addArtifactsRequests([fileArtifact("archives/env.tar.gz#environment", archive)], {
        sessionId,
      }),
    );
    const s = server.valise.store.find("", sessionId)!;
    equal(Deno.statSync(join(s.root, "environment/pyvenv.cfg")).mode! & 0o222, 0);
    equal(Deno.statSync(join(s.root, "environment/bin")).mode! & 0o222, 0);
  });
});

Deno.test("conda-unpack, code from the archive, runs in the sandbox, not with the server's rights", async (t) => {
  await withServer(async ({ spark, server, tmp }) => {
    const fx = await makeCondaPackLike(join(tmp, "fx"));
    // Rebuild the archive with a conda-unpack that also tries to reach outside its tree.
    const src = join(tmp, "src");
    await Deno.mkdir(src);
    await run("tar", ["-xzf", fx.archive, "-C", src]);
    const marker = join(tmp, "escaped-by-conda-unpack");
    const script = await Deno.readTextFile(join(src, "bin/conda-unpack"));
    await Deno.writeTextFile(
      join(src, "bin/conda-unpack"),
      script +
        `\ntry:\n    open(${JSON.stringify(marker)}, "w").write("x")\nexcept OSError:\n    pass\n`,
    );
    const hostile = join(tmp, "hostile-conda.tar.gz");
    await run("tar", ["-czf", hostile, "-C", src, "."]);
    const sessionId = crypto.randomUUID();
    await spark.addArtifacts(
      addArtifactsRequests([fileArtifact("archives/env.tar.gz#environment", hostile)], {
        sessionId,
      }),
    );
    const s = server.valise.store.find("", sessionId)!;
    // conda-unpack did its job at the tree's shared path...
    const prefix = await run(join(s.root, "environment/bin/python"), [
      "-c",
      `import ${fx.prefixPackage}._prefix as p; print(p.PREFIX)`,
    ], s.root);
    equal(prefix, Deno.realPathSync(join(s.root, "environment")));
    if (!server.valise.launcher.sandboxed) {
      t.step({ name: "skipped: workers are not sandboxed here", ignore: true, fn: () => {} });
      return;
    }
    // ...and nothing else.
    let escaped = true;
    await Deno.stat(marker).catch(() => (escaped = false));
    equal(escaped, false);
  });
});
