// SIGKILL at random moments during uploads and unpacks, 50 times: after each restart every
// session is whole (each recorded artifact has its exact bytes in both layouts), nothing
// partial is visible, and no staging or temporary tree is left.
import { equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { addArtifactsRequests, bytesArtifact, SparkConnectService } from "@valise/protocol";
import type { SessionManifest } from "@valise/session-store";
import { makeVenvPack } from "./fixtures/envs.ts";
import { removeTree } from "./_util.ts";

const MAIN = new URL("../packages/server/main.ts", import.meta.url).pathname;
const ROUNDS = 50;

async function startServer(dataDir: string): Promise<{ child: Deno.ChildProcess; port: number }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--port", "0", "--data-dir", dataDir, "--quiet"],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  while (!buf.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`server exited before listening: ${buf}`);
    buf += value;
  }
  reader.releaseLock();
  child.stdout.cancel().catch(() => {});
  const m = buf.match(/listening on [\d.]+:(\d+)/);
  if (!m) throw new Error(`unexpected first line: ${buf}`);
  return { child, port: Number(m[1]) };
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

async function listAll(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out;
}

/** Checks every invariant a restart must restore. */
async function verify(dataDir: string): Promise<number> {
  equal((await listAll(join(dataDir, "staging"))).length, 0, "staging left behind");
  const tmpLeft = (names: string[]) => names.filter((n) => n.endsWith(".tmp"));
  equal(tmpLeft(await listAll(dataDir)).length, 0, "temporary file left in the data dir");
  const trees = await listAll(join(dataDir, "trees"));
  for (const t of trees) {
    ok(!t.startsWith("."), `temporary tree left behind: ${t}`);
    if (!t.endsWith(".json")) ok(trees.includes(`${t}.json`), `unrecorded tree ${t}`);
  }
  let artifacts = 0;
  for (const u of await listAll(join(dataDir, "sessions"))) {
    for (const s of await listAll(join(dataDir, "sessions", u))) {
      ok(!s.startsWith("."), `half-released session left behind: ${s}`);
      const dir = join(dataDir, "sessions", u, s);
      equal(tmpLeft(await listAll(dir)).length, 0, `temporary file left in session ${s}`);
      const m = JSON.parse(await Deno.readTextFile(join(dir, "manifest.json"))) as SessionManifest;
      const views = new Set<string>();
      for (const r of Object.values(m.artifacts)) {
        artifacts++;
        equal(sha(await Deno.readFile(join(dir, "artifacts", r.key))), r.sha256, r.key);
        if (r.view) views.add(r.view);
        if (r.view && !r.tree) {
          equal(sha(await Deno.readFile(join(dir, "root", r.view))), r.sha256, r.view);
        }
        if (r.tree) {
          ok(trees.includes(`${r.tree}.json`), `tree of ${r.key} missing`);
          ok(Deno.statSync(join(dir, "root", r.view!, "pyvenv.cfg")).isFile);
        }
      }
      // Nothing in the view that no record explains (the test's workers write nothing).
      for (const name of await listAll(join(dir, "root"))) {
        ok(views.has(name), `unrecorded ${name} visible in ${s}`);
      }
    }
  }
  return artifacts;
}

Deno.test({
  name: "SIGKILL during uploads and unpacks never leaves partial state after restart",
  // Each round starts a server process; the whole loop is bounded by ROUNDS.
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "valise-crash-" });
    const dataDir = join(tmp, "data");
    const { archive } = await makeVenvPack(join(tmp, "fx"));
    const env = await Deno.readFile(archive);
    const sessions = Array.from({ length: 4 }, () => crypto.randomUUID());
    let seen = 0;
    try {
      for (let round = 0; round < ROUNDS; round++) {
        const { child, port } = await startServer(dataDir);
        try {
          seen = Math.max(seen, await verify(dataDir));
          const client = createClient(
            SparkConnectService,
            createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }),
          );
          const big = new Uint8Array(3_000_000).map((_, i) => (i * 13 + round) & 0xff);
          const uploads = sessions.map((sessionId, i) =>
            client.addArtifacts(addArtifactsRequests([
              bytesArtifact(`files/r${round}-small-${i}`, new Uint8Array([round, i])),
              bytesArtifact(`files/r${round}-big-${i}`, big),
              bytesArtifact(`archives/env-${round % 3}.tar.gz#env${round % 3}`, env),
            ], { sessionId })).catch(() => undefined)
          );
          await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 400)));
          child.kill("SIGKILL");
          await Promise.all(uploads);
        } finally {
          try {
            child.kill("SIGKILL");
          } catch { /* already dead */ }
          await child.status;
        }
      }
      // A last restart, and the last check.
      const { child } = await startServer(dataDir);
      try {
        seen = Math.max(seen, await verify(dataDir));
      } finally {
        child.kill("SIGKILL");
        await child.status;
      }
      // The kills landed at different moments: some rounds committed something.
      ok(seen > 0, "no upload ever committed: the kills all came too early to test anything");
    } finally {
      await removeTree(tmp);
    }
  },
});
