// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Issue 10, item 12: a digest is not a capability. Against a real `serve` process: a user who
 * knows only the sha256 of another user's upload cannot get it attached (PERMISSION_DENIED,
 * nothing of it in their session); a user who holds the bytes attaches them with a proof of
 * possession and sends no bytes; the uploader's own sessions attach by digest alone; the
 * Valise client takes the right path in each case and falls back to uploading when refused.
 *
 * @module
 */
import { deepEqual, equal, notEqual, ok } from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  addArtifactsRequests,
  type AttachArtifactsRequest,
  type BlobChallenge,
  bytesArtifact,
  ErrorInfoSchema,
  type HasBlobsResponse,
} from "@valise/protocol";
import { connect } from "@valise/client";
import { type ServerProcess, startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const enc = new TextEncoder();
const hex = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const ctx = (userId: string) => ({ userId });

/** A server with a metrics endpoint, in a fresh data directory, stopped after `fn`. */
async function withServer(
  fn: (
    s: ServerProcess & { dataDir: string; tmp: string; addCalls(): Promise<number> },
  ) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-digest-" });
  const dataDir = join(tmp, "data");
  const server = await startServer({ dataDir, args: ["--metrics-port", "0"] });
  try {
    const line = await server.waitForLog(/metrics on http:\/\/[^/]+\/metrics/);
    const url = line.match(/(http:\/\/\S+\/metrics)/)![1]!;
    /** AddArtifacts calls the server finished, whatever their outcome. */
    const addCalls = async () => {
      const text = await (await fetch(url)).text();
      return text.split("\n")
        .filter((l) =>
          l.startsWith('valise_rpcs_total{method="spark.connect.SparkConnectService/AddArtifacts"')
        )
        .reduce((n, l) => n + Number(l.split(" ").at(-1)), 0);
    };
    await fn(Object.assign(server, { dataDir, tmp, addCalls }));
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
}

/** The call's ConnectError, with its error class and reason. */
async function refused(p: Promise<unknown>) {
  try {
    await p;
  } catch (e) {
    const err = ConnectError.from(e);
    const info = err.findDetails(ErrorInfoSchema)[0];
    return {
      code: err.code,
      errorClass: info?.metadata.errorClass,
      reason: info?.metadata["valise.reason"],
      message: err.rawMessage,
    };
  }
  throw new Error("the call was expected to fail");
}

/** What a holder of `bytes` answers to a challenge. */
function prove(c: BlobChallenge, bytes: Uint8Array): { nonce: Uint8Array; sha256: Uint8Array } {
  const h = createHash("sha256").update(c.nonce);
  for (const r of c.ranges) h.update(bytes.subarray(Number(r.offset), Number(r.offset + r.length)));
  return { nonce: c.nonce, sha256: new Uint8Array(h.digest()) };
}

/** Every file under a directory, with its bytes. */
async function filesUnder(dir: string): Promise<{ path: string; bytes: Uint8Array }[]> {
  const out: { path: string; bytes: Uint8Array }[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) out.push(...await filesUnder(p));
    else if (e.isFile) out.push({ path: p, bytes: await Deno.readFile(p) });
  }
  return out;
}

function userDir(dataDir: string, userId: string): string {
  return join(dataDir, "sessions", "u-" + hex(enc.encode(userId)).slice(0, 32));
}

function includes(hay: Uint8Array, needle: Uint8Array): boolean {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}

Deno.test("a digest is not a capability: another user who knows only the sha256 gets nothing", async () => {
  await withServer(async ({ clients: { spark, store }, dataDir }) => {
    // Alice uploads a settings file with a secret in it.
    const secret = `token=${crypto.randomUUID()}`;
    const bytes = enc.encode(`# settings\n${secret}\n`);
    const digest = hex(bytes);
    const sa = crypto.randomUUID();
    await spark.addArtifacts(addArtifactsRequests([bytesArtifact("files/settings.env", bytes)], {
      sessionId: sa,
      userId: "alice",
    }));

    // Mallory learned the digest (from a log, a manifest) and holds something of her own.
    const sm = crypto.randomUUID();
    const own = enc.encode("mallory's own file\n");
    await spark.addArtifacts(addArtifactsRequests([bytesArtifact("files/own.txt", own)], {
      sessionId: sm,
      userId: "mallory",
    }));
    const has: HasBlobsResponse = await store.hasBlobs({
      sessionId: sm,
      userContext: ctx("mallory"),
      sha256: [digest, hex(own)],
    });
    // Presence and a challenge for Alice's content; none for Mallory's own.
    deepEqual(has.present, [digest, hex(own)]);
    deepEqual(has.challenges.map((c) => c.sha256), [digest]);
    const challenge = has.challenges[0]!;
    // A small blob is proven whole.
    deepEqual(
      challenge.ranges.map((r) => [r.offset, r.length]),
      [[0n, BigInt(bytes.length)]],
    );

    const attach = (proof?: { nonce: Uint8Array; sha256: Uint8Array }, extra = false) =>
      store.attachArtifacts({
        sessionId: sm,
        userContext: ctx("mallory"),
        artifacts: [
          ...(extra ? [{ name: "files/own-again.txt", sha256: hex(own) }] : []),
          { name: "files/stolen.env", sha256: digest, ...(proof ? { proof } : {}) },
        ],
      });
    const attempts = [
      // The digest alone.
      { e: await refused(attach()), want: ["BLOB_PROOF_REQUIRED", undefined] },
      // Guesses from what she knows: the digest, and the digest hashed with the nonce.
      {
        e: await refused(attach({ nonce: challenge.nonce, sha256: Buffer.from(digest, "hex") })),
        want: ["BLOB_PROOF_INVALID", "MISMATCH"],
      },
      {
        e: await refused(attach({
          nonce: challenge.nonce,
          sha256: createHash("sha256").update(challenge.nonce).update(Buffer.from(digest, "hex"))
            .digest(),
        })),
        want: ["BLOB_PROOF_INVALID", "MISMATCH"],
      },
      // A forged nonce.
      {
        e: await refused(attach({ nonce: new Uint8Array(41), sha256: new Uint8Array(32) })),
        want: ["BLOB_PROOF_INVALID", "NOT_ISSUED"],
      },
      // With something she may attach in the same request: nothing at all is attached.
      { e: await refused(attach(undefined, true)), want: ["BLOB_PROOF_REQUIRED", undefined] },
    ];
    // Alice holds her own upload: no challenge for her.
    const aliceHas = await store.hasBlobs({
      sessionId: crypto.randomUUID(),
      userContext: ctx("alice"),
      sha256: [digest],
    });
    equal(aliceHas.challenges.length, 0);
    // A genuine proof by Trent, who holds the bytes, replayed by Mallory: it is Trent's only.
    const trentHas = await store.hasBlobs({
      sessionId: crypto.randomUUID(),
      userContext: ctx("trent"),
      sha256: [digest],
    });
    attempts.push({
      e: await refused(attach(prove(trentHas.challenges[0]!, bytes))),
      want: ["BLOB_PROOF_INVALID", "NOT_ISSUED"],
    });
    for (const { e, want } of attempts) {
      equal(e.code, Code.PermissionDenied, e.message);
      deepEqual([e.errorClass, e.reason], want, e.message);
      ok(e.message.includes("Upload the bytes"), e.message);
      ok(!e.message.includes(secret), "the error does not carry the content");
    }

    // Mallory's session holds only her own file; no byte of Alice's content is under her user.
    const st = await spark.artifactStatus({
      sessionId: sm,
      userContext: ctx("mallory"),
      names: ["files/stolen.env", "files/own-again.txt", "files/own.txt"],
    });
    deepEqual(
      Object.fromEntries(Object.entries(st.statuses).map(([k, v]) => [k, v.exists])),
      { "files/stolen.env": false, "files/own-again.txt": false, "files/own.txt": true },
    );
    const files = await filesUnder(userDir(dataDir, "mallory"));
    ok(files.some((f) => f.path.endsWith("own.txt")));
    for (const f of files) ok(!includes(f.bytes, enc.encode(secret)), `${f.path} has the secret`);
    // Alice's bytes are unchanged.
    const aliceFiles = await filesUnder(join(userDir(dataDir, "alice"), sa));
    ok(aliceFiles.some((f) => f.path.endsWith("ro/settings.env") && hex(f.bytes) === digest));
  });
});

Deno.test("a user who holds the bytes attaches with a proof and sends none; the uploader by digest alone", async () => {
  await withServer(async ({ clients: { spark, store }, dataDir, addCalls }) => {
    // 3 MiB + 5 bytes: proven by sampled ranges, not whole.
    const bytes = new Uint8Array(3 * 2 ** 20 + 5);
    for (let i = 0; i < bytes.length; i += 65536) {
      crypto.getRandomValues(bytes.subarray(i, Math.min(i + 65536, bytes.length)));
    }
    const digest = hex(bytes);
    const sa = crypto.randomUUID();
    await spark.addArtifacts(addArtifactsRequests([bytesArtifact("files/data.bin", bytes)], {
      sessionId: sa,
      userId: "alice",
    }));
    const adds = await addCalls();
    equal(adds, 1);

    // Bob has the same file: he answers the challenge and attaches without sending it.
    const sb = crypto.randomUUID();
    const has = await store.hasBlobs({ sessionId: sb, userContext: ctx("bob"), sha256: [digest] });
    const c = has.challenges[0]!;
    equal(c.sha256, digest);
    equal(c.ranges.length, 16);
    ok(c.ranges.every((r) => r.length === 4096n && r.offset + r.length <= BigInt(bytes.length)));
    const res = await store.attachArtifacts({
      sessionId: sb,
      userContext: ctx("bob"),
      clientObservedServerSideSessionId: has.serverSideSessionId,
      artifacts: [{ name: "files/data.bin", sha256: digest, proof: prove(c, bytes) }],
    });
    deepEqual(res.attached, ["files/data.bin"]);
    const bobRoot = join(userDir(dataDir, "bob"), sb, "root");
    equal(hex(await Deno.readFile(join(bobRoot, "data.bin"))), digest);
    equal(await addCalls(), adds, "no AddArtifacts call reached the server");
    // A proof is good for its challenge's lifetime, not more than its user: Carol cannot use it.
    const e = await refused(store.attachArtifacts({
      sessionId: crypto.randomUUID(),
      userContext: ctx("carol"),
      artifacts: [{ name: "files/data.bin", sha256: digest, proof: prove(c, bytes) }],
    }));
    deepEqual([e.code, e.errorClass, e.reason], [
      Code.PermissionDenied,
      "BLOB_PROOF_INVALID",
      "NOT_ISSUED",
    ]);

    // Alice, in a second session, attaches by digest alone: no challenge, no proof.
    const sa2 = crypto.randomUUID();
    const mine = await store.hasBlobs({
      sessionId: sa2,
      userContext: ctx("alice"),
      sha256: [digest],
    });
    deepEqual([mine.present, mine.challenges.length], [[digest], 0]);
    const res2 = await store.attachArtifacts({
      sessionId: sa2,
      userContext: ctx("alice"),
      artifacts: [{ name: "files/again.bin", sha256: digest }],
    });
    deepEqual(res2.attached, ["files/again.bin"]);
    equal(await addCalls(), adds);

    // Once Alice released every session, she no longer holds it either: a challenge again.
    for (const id of [sa, sa2]) {
      await spark.releaseSession({ sessionId: id, userContext: ctx("alice") });
    }
    const after = await store.hasBlobs({
      sessionId: crypto.randomUUID(),
      userContext: ctx("alice"),
      sha256: [digest],
    });
    deepEqual(after.challenges.map((x) => x.sha256), [digest]);
  });
});

Deno.test("a challenge does not survive a restart; the uploader's sessions still hold after one", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-digest-restart-" });
  const dataDir = join(tmp, "data");
  try {
    const bytes = enc.encode("shared module\n");
    const digest = hex(bytes);
    let server = await startServer({ dataDir });
    await server.clients.spark.addArtifacts(
      addArtifactsRequests([bytesArtifact("pyfiles/m.py", bytes)], {
        sessionId: crypto.randomUUID(),
        userId: "alice",
      }),
    );
    const sb = crypto.randomUUID();
    const has = await server.clients.store.hasBlobs({
      sessionId: sb,
      userContext: ctx("bob"),
      sha256: [digest],
    });
    const proof = prove(has.challenges[0]!, bytes);
    await server.stop();
    server = await startServer({ dataDir });
    try {
      const e = await refused(server.clients.store.attachArtifacts({
        sessionId: sb,
        userContext: ctx("bob"),
        artifacts: [{ name: "pyfiles/m.py", sha256: digest, proof }],
      }));
      deepEqual([e.code, e.errorClass, e.reason], [
        Code.PermissionDenied,
        "BLOB_PROOF_INVALID",
        "NOT_ISSUED",
      ]);
      // A new challenge from the new server works.
      const again = await server.clients.store.hasBlobs({
        sessionId: sb,
        userContext: ctx("bob"),
        sha256: [digest],
      });
      notEqual(Buffer.from(again.challenges[0]!.nonce).toString("hex"), "");
      deepEqual(
        (await server.clients.store.attachArtifacts({
          sessionId: sb,
          userContext: ctx("bob"),
          artifacts: [{
            name: "pyfiles/m.py",
            sha256: digest,
            proof: prove(again.challenges[0]!, bytes),
          }],
        })).attached,
        ["pyfiles/m.py"],
      );
      // Alice's restored session still holds it: her new session needs no proof.
      const mine = await server.clients.store.hasBlobs({
        sessionId: crypto.randomUUID(),
        userContext: ctx("alice"),
        sha256: [digest],
      });
      equal(mine.challenges.length, 0);
    } finally {
      await server.stop();
    }
  } finally {
    await removeTree(tmp);
  }
});

Deno.test("the Valise client: proves what it holds, attaches its own by digest, uploads when refused", async () => {
  await withServer(async ({ port, tmp, dataDir, addCalls }) => {
    const remote = (user: string) => `sc://127.0.0.1:${port}/;user_id=${user}`;
    const small = join(tmp, "settings.env");
    await Deno.writeTextFile(small, `token=${crypto.randomUUID()}\n`);
    const big = join(tmp, "big.bin");
    const bigBytes = new Uint8Array(2 * 2 ** 20 + 1).map((_, i) => (i * 7919) % 251);
    await Deno.writeFile(big, bigBytes);

    // Alice uploads both.
    {
      await using alice = connect(remote("alice"));
      const added = await alice.addArtifacts([small, big], { file: true });
      deepEqual(added.map((a) => a.uploaded), [true, true]);
    }
    equal(await addCalls(), 2);

    // Alice's second session: by digest alone (the server asks no proof).
    const calls: { method: string; challenges?: number; proofs?: number }[] = [];
    const spy: Interceptor = (next) => async (req) => {
      const res = await next(req);
      const m = req.method.name;
      if (m === "HasBlobs" && !res.stream) {
        calls.push({ method: m, challenges: (res.message as HasBlobsResponse).challenges.length });
      } else if (m === "AttachArtifacts" && !req.stream) {
        const artifacts = (req.message as unknown as AttachArtifactsRequest).artifacts;
        calls.push({ method: m, proofs: artifacts.filter((a) => a.proof).length });
      } else calls.push({ method: m });
      return res;
    };
    {
      await using alice2 = connect(remote("alice"), { interceptors: [spy] });
      const added = await alice2.addArtifacts([small, big], { file: true });
      deepEqual(added.map((a) => a.uploaded), [false, false]);
    }
    deepEqual(calls, [
      { method: "HasBlobs", challenges: 0 },
      { method: "AttachArtifacts", proofs: 0 },
    ]);
    equal(await addCalls(), 2);

    // Bob has the same files: he proves both and sends no bytes.
    calls.length = 0;
    let bobSession: string;
    {
      await using bob = connect(remote("bob"), { interceptors: [spy] });
      bobSession = bob.sessionId;
      const added = await bob.addArtifacts([small, big], { file: true });
      deepEqual(added.map((a) => a.uploaded), [false, false]);
      const run = await bob.runCollect({
        code: "import hashlib; print(hashlib.sha256(open('big.bin','rb').read()).hexdigest())",
      });
      equal(run.stdout.trim(), hex(bigBytes));
    }
    deepEqual(calls.slice(0, 2), [
      { method: "HasBlobs", challenges: 2 },
      { method: "AttachArtifacts", proofs: 2 },
    ]);
    equal(await addCalls(), 2);
    equal(
      hex(await Deno.readFile(join(userDir(dataDir, "bob"), bobSession, "root/settings.env"))),
      hex(await Deno.readFile(small)),
    );

    // Carol's proofs are refused (here: a nonce damaged on the way, as after a restart): she
    // uploads instead, and ends with the same bytes.
    const damage: Interceptor = (next) => async (req) => {
      const res = await next(req);
      if (req.method.name === "HasBlobs" && !res.stream) {
        for (const c of (res.message as HasBlobsResponse).challenges) c.nonce[9]! ^= 1;
      }
      return res;
    };
    // Dave's server gives him no challenge at all (an older server's answer): refused, uploads.
    const strip: Interceptor = (next) => async (req) => {
      const res = await next(req);
      if (req.method.name === "HasBlobs" && !res.stream) {
        (res.message as HasBlobsResponse).challenges = [];
      }
      return res;
    };
    let adds = 2;
    for (const [user, interceptor] of [["carol", damage], ["dave", strip]] as const) {
      await using s = connect(remote(user), { interceptors: [interceptor] });
      const added = await s.addArtifacts([small, big], { file: true });
      deepEqual(added.map((a) => a.uploaded), [true, true], user);
      adds += 2;
      equal(await addCalls(), adds);
      equal(
        hex(await Deno.readFile(join(userDir(dataDir, user), s.sessionId, "root/big.bin"))),
        hex(bigBytes),
      );
    }
  });
});
