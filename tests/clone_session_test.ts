// Copyright 2026 the Valise authors. Apache-2.0 license.
// CloneSession (Spark 4.1) against a real server: a clone shares its source's artifacts by
// reference (a 1 GB environment costs no extra blocks or inodes), the two evolve independently,
// releasing one leaves the other intact; another user's session, an existing target id and a
// clone over quota are refused clearly, leaving nothing behind.
import { deepEqual, equal, notEqual, ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  addArtifactsRequests,
  bytesArtifact,
  CloneSessionRequestSchema,
  ConfigRequestSchema,
  ErrorInfoSchema,
  SparkConnectService,
} from "@valise/protocol";
import { serve, type ServeOptions } from "@valise/server";
import { fileArtifact, removeTree } from "./_util.ts";

type Spark = ReturnType<typeof createClient<typeof SparkConnectService>>;
type Server = Awaited<ReturnType<typeof serve>>;

async function withServer(
  options: Partial<ServeOptions>,
  fn: (spark: Spark, server: Server, tmp: string) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-clone-" });
  const server = await serve({ dataDir: join(tmp, "data"), port: 0, log: () => {}, ...options });
  const spark = createClient(
    SparkConnectService,
    createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` }),
  );
  try {
    await fn(spark, server, tmp);
  } finally {
    await server.close();
    await removeTree(tmp);
  }
}

function clone(spark: Spark, sessionId: string, user: string, newSessionId?: string) {
  return spark.cloneSession(create(CloneSessionRequestSchema, {
    sessionId,
    userContext: { userId: user },
    ...(newSessionId !== undefined ? { newSessionId } : {}),
  }));
}

async function setConf(spark: Spark, sessionId: string, user: string, key: string, value: string) {
  await spark.config(create(ConfigRequestSchema, {
    sessionId,
    userContext: { userId: user },
    operation: { opType: { case: "set", value: { pairs: [{ key, value }] } } },
  }));
}

async function failure(p: Promise<unknown>): Promise<{ code: Code; cls: string; message: string }> {
  try {
    await p;
  } catch (e) {
    const err = ConnectError.from(e);
    const info = err.findDetails(ErrorInfoSchema)[0];
    return { code: err.code, cls: info?.metadata.errorClass ?? "", message: err.rawMessage };
  }
  throw new Error("the call succeeded");
}

/** Blocks (512-byte units) and inodes under `dir`, each inode counted once, links not followed. */
export async function usage(dir: string): Promise<{ blocks: number; inodes: number }> {
  const seen = new Set<string>();
  let blocks = 0;
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      const st = await Deno.lstat(p);
      const id = `${st.dev}:${st.ino}`;
      if (!seen.has(id)) {
        seen.add(id);
        blocks += st.blocks ?? 0;
      }
      if (st.isDirectory) await walk(p);
    }
  };
  await walk(dir);
  return { blocks, inodes: seen.size };
}

/** An uncompressed tar holding one file of `bytes` (written from a sparse file: fast to make). */
export async function bigArchive(dir: string, bytes: number): Promise<string> {
  const env = join(dir, "bigenv");
  await Deno.mkdir(join(env, "lib"), { recursive: true });
  const f = await Deno.open(join(env, "lib", "weights.bin"), { write: true, create: true });
  await f.truncate(bytes);
  f.close();
  await Deno.writeTextFile(join(env, "marker.txt"), "big\n");
  const out = join(dir, "bigenv.tar");
  const r = await new Deno.Command("tar", { args: ["-cf", out, "-C", env, "."] }).output();
  ok(r.success, new TextDecoder().decode(r.stderr));
  await Deno.remove(env, { recursive: true });
  return out;
}

Deno.test("CloneSession of a session holding a 1 GB environment takes no extra disk", async () => {
  await withServer({}, async (spark, server, tmp) => {
    const archive = await bigArchive(tmp, 2 ** 30);
    const src = crypto.randomUUID();
    await spark.addArtifacts(
      addArtifactsRequests([fileArtifact("archives/big.tar#env", archive)], {
        sessionId: src,
        userId: "u",
      }),
    );
    await Deno.remove(archive);
    const data = join(tmp, "data");
    const before = await usage(data);
    const res = await clone(spark, src, "u");
    const after = await usage(data);
    const store = server.valise.store;
    const a = store.find("u", src)!;
    const b = store.find("u", res.newSessionId)!;
    // The same tree, the same blob: nothing of the gigabyte was copied.
    equal(await Deno.realPath(join(b.root, "env")), await Deno.realPath(join(a.root, "env")));
    const ia = await Deno.stat(join(a.artifactsDir, "archives/big.tar#env"));
    const ib = await Deno.stat(join(b.artifactsDir, "archives/big.tar#env"));
    equal(ib.ino, ia.ino);
    // A session's directory, manifest and links: a few KiB and a handful of inodes.
    const grew = (after.blocks - before.blocks) * 512;
    ok(grew < 1 << 20, `the clone took ${grew} bytes`);
    ok(after.inodes - before.inodes < 30, `the clone took ${after.inodes - before.inodes} inodes`);
    equal(await Deno.readTextFile(join(b.root, "env", "marker.txt")), "big\n");
    // Counted as Spark counts it: each session holds its artifacts.
    equal(b.bytes(), a.bytes());
  });
});

Deno.test("a clone and its source evolve independently; releasing one leaves the other", async () => {
  await withServer({}, async (spark, server) => {
    const src = crypto.randomUUID();
    const add = (sessionId: string, name: string, text: string) =>
      spark.addArtifacts(
        addArtifactsRequests([bytesArtifact(name, new TextEncoder().encode(text))], {
          sessionId,
          userId: "u",
        }),
      );
    await add(src, "files/shared.txt", "shared");
    await setConf(spark, src, "u", "spark.sql.shuffle.partitions", "7");
    const target = crypto.randomUUID();
    const res = await clone(spark, src, "u", target);
    equal(res.sessionId, src);
    equal(res.newSessionId, target);
    const store = server.valise.store;
    const a = store.find("u", src)!;
    const b = store.find("u", target)!;
    equal(res.serverSideSessionId, a.serverSideSessionId);
    equal(res.newServerSideSessionId, b.serverSideSessionId);
    notEqual(a.serverSideSessionId, b.serverSideSessionId);
    equal(b.config.value("spark.sql.shuffle.partitions"), "7");
    // Afterwards each goes its own way.
    await add(target, "files/only-clone.txt", "c");
    await add(src, "files/only-source.txt", "s");
    await setConf(spark, target, "u", "spark.sql.shuffle.partitions", "9");
    equal(a.config.value("spark.sql.shuffle.partitions"), "7");
    deepEqual(a.artifacts().map((r) => r.name).sort(), [
      "files/only-source.txt",
      "files/shared.txt",
    ]);
    deepEqual(b.artifacts().map((r) => r.name).sort(), [
      "files/only-clone.txt",
      "files/shared.txt",
    ]);
    // The workers of one cannot change what the other sees: the file is in the read-only view.
    await a.remove(["files/shared.txt"]);
    equal(await Deno.readTextFile(join(b.root, "shared.txt")), "shared");
    await store.release("u", src);
    equal(await Deno.readTextFile(join(b.root, "shared.txt")), "shared");
    equal(await Deno.readTextFile(join(b.root, "only-clone.txt")), "c");
    // And the other way round.
    const c = await clone(spark, target, "u");
    await store.release("u", target);
    const cs = store.find("u", c.newSessionId)!;
    equal(await Deno.readTextFile(join(cs.root, "shared.txt")), "shared");
  });
});

Deno.test("CloneSession refuses another user's session, an existing target, a clone over quota", async () => {
  await withServer(
    { quotas: { maxUserBytes: 2500, maxSessionsPerUser: 10 } },
    async (spark, server) => {
      const store = server.valise.store;
      const src = crypto.randomUUID();
      await spark.addArtifacts(
        addArtifactsRequests([bytesArtifact("files/a.bin", new Uint8Array(1000).fill(1))], {
          sessionId: src,
          userId: "alice",
        }),
      );
      // Mallory names Alice's session as her own source: there is no such session for her.
      const other = crypto.randomUUID();
      const r1 = await failure(clone(spark, src, "mallory", other));
      equal(r1.code, Code.NotFound);
      equal(r1.cls, "INVALID_HANDLE.SESSION_NOT_FOUND");
      equal(store.find("mallory", other), undefined);
      equal(store.find("alice", other), undefined);
      // Into an existing session (its own, or the source itself): refused, the target untouched.
      const existing = crypto.randomUUID();
      await setConf(spark, existing, "alice", "spark.sql.shuffle.partitions", "3");
      for (const target of [existing, src]) {
        const r = await failure(clone(spark, src, "alice", target));
        equal(r.code, Code.AlreadyExists);
        equal(r.cls, "INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_ALREADY_EXISTS");
      }
      deepEqual(store.find("alice", existing)!.artifacts(), []);
      const bad = await failure(clone(spark, src, "alice", "../../etc"));
      equal(bad.code, Code.InvalidArgument);
      equal(bad.cls, "INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_FORMAT");
      // 1000 bytes held; one clone makes 2000, a second would make 3000 > 2500.
      await clone(spark, src, "alice");
      const over = crypto.randomUUID();
      const r3 = await failure(clone(spark, src, "alice", over));
      equal(r3.code, Code.ResourceExhausted, r3.message);
      equal(r3.cls, "QUOTA_EXCEEDED");
      ok(/counts its artifacts as its own/.test(r3.message), r3.message);
      equal(store.find("alice", over), undefined);
      await Deno.stat(store.sessionDir("alice", over)).then(
        () => ok(false, "the refused clone left a directory"),
        () => {},
      );
    },
  );
});
