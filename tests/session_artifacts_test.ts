// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `valise.v1.SessionService` against a real `serve` process: artifacts listed and removed, and
 * the removal's attacks — names that climb out, another session's or user's artifact, names
 * that do not exist, a removal while a run is using the artifact — each blocked with the right
 * code while the victim's bytes stay as they were and the server keeps answering.
 *
 * @module
 */
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { SessionService } from "@valise/protocol";
import { connect, type Session } from "@valise/client";
import { type ServerProcess, startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const sha = (text: string) => createHash("sha256").update(text).digest("hex");

function sessionClient(server: ServerProcess, token?: string) {
  return createClient(
    SessionService,
    createGrpcTransport({
      baseUrl: server.baseUrl,
      interceptors: [(next) => (req) => {
        if (token) req.header.set("authorization", `Bearer ${token}`);
        return next(req);
      }],
    }),
  );
}

async function withServer(
  args: string[],
  fn: (server: ServerProcess, tmp: string) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-artifacts-" });
  const server = await startServer({ dataDir: join(tmp, "data"), args: ["--quiet", ...args] });
  try {
    await fn(server, tmp);
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
}

async function file(tmp: string, name: string, text: string): Promise<string> {
  const path = join(tmp, name);
  await Deno.writeTextFile(path, text);
  return path;
}

async function tarOf(tmp: string, name: string, inner: string, text: string): Promise<string> {
  const src = await Deno.makeTempDir({ dir: tmp });
  await Deno.writeTextFile(join(src, inner), text);
  const out = join(tmp, name);
  const r = await new Deno.Command("tar", { args: ["-cf", out, "-C", src, inner] }).output();
  ok(r.success);
  return out;
}

/** How a call ended: its gRPC code's name and message. */
async function outcome(call: Promise<unknown>): Promise<[string, string]> {
  try {
    await call;
    return ["OK", ""];
  } catch (e) {
    const c = ConnectError.from(e);
    return [Code[c.code], c.rawMessage];
  }
}

async function linesOf(session: Session, code: string): Promise<string[]> {
  const r = await session.runCollect({ code });
  equal(r.exitCode, 0, r.stderr);
  return r.stdout.trimEnd().split("\n");
}

Deno.test("a removal while a run uses the artifact: the run keeps its view to the end, later runs do not see it", async () => {
  await withServer([], async (server, tmp) => {
    const session = connect(`sc://127.0.0.1:${server.port}/;user_id=ada`);
    try {
      await session.addArtifacts(await file(tmp, "data.txt", "v1"), { file: true });
      await session.addArtifacts(`${await tarOf(tmp, "env.tar", "lib.py", "Y = 2\n")}#env`, {
        archive: true,
      });
      // The run reads the artifacts only once the removal is done (another run says "go").
      const events = session.run({
        code: `import os, time
print("started", flush=True)
while not os.path.exists("go"):
    time.sleep(0.01)
print(open("data.txt").read(), open("env/lib.py").read().strip(), flush=True)
`,
      });
      const first = await events.next();
      equal(first.value?.kind, "started");
      let out = "";
      const readUntil = async (want: string) => {
        while (!out.includes(want)) {
          const ev = await events.next();
          if (ev.done) throw new Error(`the run ended before printing ${want}: ${out}`);
          if (ev.value.kind === "stdout") out += new TextDecoder().decode(ev.value.data);
          if (ev.value.kind === "stderr") out += new TextDecoder().decode(ev.value.data);
        }
      };
      await readUntil("started\n");

      const r = await session.remove(["files/data.txt", "archives/env.tar#env"]);
      equal(r.inProgress, 1);
      // Gone at once for listings, ArtifactStatus and the quotas.
      deepEqual(await session.list(), []);
      deepEqual(await session.status(["files/data.txt"]), { "files/data.txt": false });

      await linesOf(session, "open('go', 'w').close()");
      for (let ev = await events.next(); !ev.done; ev = await events.next()) {
        if (ev.value.kind === "stdout") out += new TextDecoder().decode(ev.value.data);
        if (ev.value.kind === "stderr") out += new TextDecoder().decode(ev.value.data);
        if (ev.value.kind === "exited") equal(ev.value.exitCode, 0, out);
      }
      equal(out, "started\nv1 Y = 2\n");

      // The run has ended: runs from now on see neither.
      deepEqual(
        await linesOf(
          session,
          "import os; print(os.path.lexists('data.txt'), os.path.lexists('env'))",
        ),
        ["False False"],
      );
      // And the names are free again.
      await session.addArtifacts(await file(tmp, "data.txt", "v2"), { file: true });
      deepEqual(await linesOf(session, "print(open('data.txt').read())"), ["v2"]);
    } finally {
      await session.release();
    }
  });
});

Deno.test("removal attacks: climbing names, another session's or user's artifact, unknown names", async () => {
  const tmp0 = await Deno.makeTempDir({ prefix: "valise-artifacts-" });
  const tokens = join(tmp0, "tokens");
  await Deno.writeTextFile(tokens, "bob-token-0123456789 bob\nmallory-token-0123456789 mallory\n");
  await Deno.chmod(tokens, 0o600);
  try {
    await withServer(["--token-file", tokens], async (server, tmp) => {
      const bob = connect(`sc://127.0.0.1:${server.port}/;user_id=bob;token=bob-token-0123456789`);
      await bob.addArtifacts(await file(tmp, "secret.txt", "bob's secret"), { file: true });
      const bobList = await bob.list();
      const mallory = sessionClient(server, "mallory-token-0123456789");
      const own = crypto.randomUUID();
      const as = (userId: string, sessionId: string) => ({ sessionId, userContext: { userId } });
      // Names that climb out of the session are refused as names.
      for (
        const name of [
          "files/../../manifest.json",
          `files/../../../../${bob.sessionId}/artifacts/files/secret.txt`,
          "/etc/passwd",
          "..",
        ]
      ) {
        const [code, msg] = await outcome(
          mallory.removeArtifacts({ ...as("mallory", own), names: [name] }),
        );
        // Mallory's own session does not exist: nothing is created to find that out.
        ok(
          code === "InvalidArgument" || code === "NotFound",
          `${name}: ${code} ${msg}`,
        );
      }
      // With a session of her own, the name check comes first.
      const m = connect(
        `sc://127.0.0.1:${server.port}/;user_id=mallory;token=mallory-token-0123456789`,
      );
      await m.addArtifacts(await file(tmp, "mine.txt", "m"), { file: true });
      const [code, msg] = await outcome(mallory.removeArtifacts({
        ...as("mallory", m.sessionId),
        names: ["files/../../manifest.json"],
      }));
      equal(code, "InvalidArgument", msg);
      ok(msg.startsWith("[INVALID_ARTIFACT_NAME] Cannot accept artifact name"), msg);
      // Bob's artifact, named in her own session: not there.
      const [nf, nfMsg] = await outcome(mallory.removeArtifacts({
        ...as("mallory", m.sessionId),
        names: ["files/secret.txt"],
      }));
      equal(nf, "NotFound");
      equal(
        nfMsg,
        '[ARTIFACT_NOT_FOUND] Cannot remove "files/secret.txt": the session holds no artifact ' +
          'of that name. Names are as they were added, e.g. "files/mine.txt"; ListArtifacts ' +
          "lists them all.",
      );
      // Bob's session, by its id, acting as bob: her token is bound to her.
      for (
        const call of [
          () =>
            mallory.removeArtifacts({ ...as("bob", bob.sessionId), names: ["files/secret.txt"] }),
          () => mallory.listArtifacts(as("bob", bob.sessionId)),
        ]
      ) {
        const [denied, why] = await outcome(call());
        equal(denied, "PermissionDenied", why);
      }
      // Bob's session id as her own user names another (absent) session.
      const [other, otherMsg] = await outcome(mallory.removeArtifacts({
        ...as("mallory", bob.sessionId),
        names: ["files/secret.txt"],
      }));
      equal(other, "NotFound", otherMsg);
      ok(otherMsg.includes("does not exist on this server"), otherMsg);
      // Without a token, nothing at all.
      const [anon] = await outcome(sessionClient(server).listArtifacts(as("bob", bob.sessionId)));
      equal(anon, "Unauthenticated");
      // Bob's artifact is whole, and the server answers as before.
      deepEqual(await bob.list(), bobList);
      equal(
        (await bob.runCollect({ code: "print(open('secret.txt').read())" })).stdout,
        "bob's secret\n",
      );
      equal(bobList[0]!.sha256, sha("bob's secret"));
      equal((await server.clients.health.check({})).status, 1);
      await m.release();
      await bob.release();
    });
  } finally {
    await Deno.remove(tmp0, { recursive: true });
  }
});

Deno.test("a removed artifact's shared bytes stay while another session uses them; quotas give bytes back", async () => {
  await withServer(
    ["--cache-bytes", "0", "--max-session-bytes", "20"],
    async (server, tmp) => {
      const url = `sc://127.0.0.1:${server.port}/;user_id=ada`;
      const a = connect(url);
      const b = connect(url);
      const shared = await file(tmp, "shared.txt", "0123456789");
      await a.addArtifacts(shared, { file: true });
      await b.addArtifacts(shared, { file: true });
      const blob = join(
        tmp,
        "data",
        "blobs",
        "sha256",
        sha("0123456789").slice(0, 2),
        sha("0123456789"),
      );
      // The quota is full: 10 + 11 bytes would not fit in 20.
      const more = await file(tmp, "more.txt", "01234567890");
      await rejects(a.addArtifacts(more, { file: true }), /QUOTA_EXCEEDED/);
      const r = await a.remove("files/shared.txt");
      equal(r.freedBytes, 10);
      await a.addArtifacts(more, { file: true });
      // B still has it, on disk and in its working directory, with no cache to spare.
      equal(await Deno.readTextFile(blob), "0123456789");
      equal(
        (await b.runCollect({ code: "print(open('shared.txt').read())" })).stdout,
        "0123456789\n",
      );
      await b.remove(["files/shared.txt"]);
      // No session refers to it any more, and the cache keeps nothing.
      await rejects(Deno.stat(blob), Deno.errors.NotFound);
      await a.release();
      await b.release();
    },
  );
});
