// The client's several endpoints against a real Valise cluster (3 nodes on a 3-member NATS
// JetStream cluster, all on loopback): a client given sc://A,B,C whose first node is SIGKILLed
// mid-upload completes the upload on B by itself, with the same session; a closed port first is
// passed over; a run whose node dies before it wrote anything is started again on the next node,
// one that already streamed output is not, and the error says so. One NATS cluster for the file;
// each step is one scenario, and nodes killed by one step stay dead for the next (A is restarted).
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import type { Interceptor } from "@connectrpc/connect";
import {
  connect,
  type RetryReport,
  type RunEvent,
  sha256File,
  ValiseClientError,
} from "@valise/client";
import { hasNatsServer, type NatsCluster, startNatsCluster, startValiseNodes } from "./_nats.ts";
import { type ServerProcess, startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const USER = "ada";

/** Turns a hang into a failure: a generous deadline, never a timing assertion. */
async function guard<T>(p: Promise<T>, what: string, ms = 120_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no end after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

async function stagedBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) n += await stagedBytes(p).catch(() => 0);
    else if (e.isFile) n += (await Deno.stat(p).catch(() => ({ size: 0 }))).size;
  }
  return n;
}

/** SIGKILLs a node and waits until it is gone. */
async function kill(node: ServerProcess): Promise<void> {
  Deno.kill(node.pid, "SIGKILL");
  await node.child.status;
}

function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

const at = (n: ServerProcess) => `127.0.0.1:${n.port}`;
const remote = (...nodes: ServerProcess[]) => `sc://${nodes.map(at).join(",")}/;user_id=${USER}`;

Deno.test({
  name: hasNatsServer()
    ? "cluster failover: the client's several endpoints ride out nodes dying"
    : "cluster failover: IGNORED, nats-server is not installed (deno task setup installs it)",
  ignore: !hasNatsServer(),
  fn: async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-failover-" });
    let nats: NatsCluster | undefined;
    let nodes: Awaited<ReturnType<typeof startValiseNodes>> | undefined;
    let restarted: ServerProcess | undefined;
    const [da, db, dc] = ["a", "b", "c"].map((n) => join(tmp, n)) as [string, string, string];
    try {
      nats = await startNatsCluster();
      nodes = await startValiseNodes(nats, [da, db, dc]);
      let [a, b, c] = nodes.nodes as [ServerProcess, ServerProcess, ServerProcess];

      await t.step("a closed port first: the calls go to the next endpoint", async () => {
        const dead = closedPort();
        const reports: RetryReport[] = [];
        await using session = connect(`sc://127.0.0.1:${dead},${at(a)},${at(b)}/;user_id=ada`, {
          onRetry: (r) => reports.push(r),
        });
        await session.conf.set("spark.failover", "yes");
        deepEqual(reports.map((r) => [r.method, r.endpoint, r.next, r.reason, r.delayMs]), [
          ["Config", `127.0.0.1:${dead}`, at(a), "unreachable", 0],
        ]);
        equal(await session.conf.get("spark.failover"), "yes");
        equal(reports.length, 1, "the closed port is passed over by the next call");
        // The same session on another node: the cluster's.
        await using onB = connect(remote(b), { sessionId: session.sessionId });
        equal(await onB.conf.get("spark.failover"), "yes");
        equal(onB.serverSideSessionId, session.serverSideSessionId);
      });

      await t.step("A SIGKILLed mid-upload: the upload completes on B by itself", async () => {
        const size = 8 * 2 ** 20;
        const path = join(tmp, "big.bin");
        await Deno.writeFile(path, new Uint8Array(size).map((_, i) => (i * 2654435761) >>> 24));
        const digest = await sha256File(path);
        // The first AddArtifacts call (to A) holds its second half until A is dead: the kill
        // happens mid-upload, observed in A's staging directory, not timed.
        let release!: () => void;
        const gate = new Promise<void>((r) => (release = r));
        let addCalls = 0;
        const holdFirstUpload: Interceptor = (next) => (req) => {
          if (req.method.name !== "AddArtifacts" || addCalls++ > 0 || !req.stream) {
            return next(req);
          }
          const source = req.message;
          return next({
            ...req,
            message: (async function* () {
              let n = 0;
              for await (const m of source) {
                yield m;
                if (++n === 128) await gate; // 128 chunks of 32 KiB: 4 MiB sent
              }
            })(),
          });
        };
        const reports: RetryReport[] = [];
        await using session = connect(remote(a, b, c), {
          interceptors: [holdFirstUpload],
          onRetry: (r) => reports.push(r),
        });
        try {
          deepEqual(await session.status(["files/big.bin"]), { "files/big.bin": false });
          const serverSide = session.serverSideSessionId;
          ok(serverSide !== undefined);
          const staging = join(da, "staging");
          const watcher = Deno.watchFs(staging, { recursive: true });
          const added = session.addArtifacts(path, { file: true }).then(
            (r) => ({ ok: r }),
            (e) => ({ error: e }),
          );
          await guard(
            (async () => {
              for await (const _ of watcher) {
                if (await stagedBytes(staging) >= 2 ** 20) break;
              }
            })(),
            "A's staging directory holding a first MiB",
          );
          watcher.close();
          await kill(a);
          release();
          const r = await guard(added, "the upload");
          ok("ok" in r, `the caller saw no failure: ${"error" in r ? r.error : ""}`);
          deepEqual(r.ok.map((x) => [x.name, x.size, x.sha256, x.uploaded]), [
            ["files/big.bin", size, digest, true],
          ]);
          deepEqual(reports.map((x) => [x.method, x.endpoint, x.next, x.reason]), [
            ["AddArtifacts", at(a), at(b), "lost"],
          ]);
          equal(addCalls, 2, "sent again once, from its start");
          // The same session: the server-side id B answered with is the one A gave.
          equal(session.serverSideSessionId, serverSide);
          const check = "import hashlib, os\n" +
            "d = open('big.bin', 'rb').read()\n" +
            "print(len(d), hashlib.sha256(d).hexdigest())\n";
          const ran = await session.runCollect({ code: check });
          equal(ran.stdout.trim(), `${size} ${digest}`, ran.stderr);
          // And on C, which received nothing of it: the cluster recorded it whole.
          await using onC = connect(remote(c), { sessionId: session.sessionId });
          const onCRan = await onC.runCollect({ code: check });
          equal(onCRan.stdout.trim(), `${size} ${digest}`, onCRan.stderr);
        } finally {
          release();
        }
      });

      await t.step("A restarted on its data directory", async () => {
        restarted = await startServer({
          dataDir: da,
          args: ["--cluster", nats!.urls, "--node-id", "v1", "--cluster-replicas", "3"],
        });
        await restarted.waitForLog(/cluster: node v1 joined/);
        a = restarted;
      });

      await t.step("a run whose node dies before any output starts again on the next", async () => {
        const code = "import os, time\n" +
          `if os.getcwd().startswith(${JSON.stringify(db + "/")}):\n` +
          "    time.sleep(600)\n" +
          "print('ran past B')\n";
        const reports: RetryReport[] = [];
        await using session = connect(remote(b, c), { onRetry: (r) => reports.push(r) });
        const events: RunEvent[] = [];
        await guard(
          (async () => {
            for await (const ev of session.run({ code })) {
              events.push(ev);
              // B started it (and sleeps, silent): B dies now.
              if (ev.kind === "started" && ev.cwd.startsWith(db + "/")) await kill(b);
            }
          })(),
          "the run",
        );
        // Output may come in several pieces: the kinds in order, output once.
        const kinds = events.map((e) => e.kind)
          .filter((k, i, all) => k !== all[i - 1] || k === "started");
        deepEqual(kinds, ["started", "started", "stdout", "exited"]);
        const started = events.filter((e) => e.kind === "started");
        ok(started[0]!.cwd.startsWith(db + "/"), started[0]!.cwd);
        ok(started[1]!.cwd.startsWith(dc + "/"), started[1]!.cwd);
        const dec = new TextDecoder();
        const out = events.map((e) =>
          e.kind === "stdout" ? dec.decode(e.data, { stream: true }) : ""
        );
        equal(out.join(""), "ran past B\n");
        const exited = events.at(-1)!;
        equal(exited.kind === "exited" && exited.exitCode, 0);
        deepEqual(reports.map((x) => [x.method, x.endpoint, x.next, x.reason]), [
          ["Run", at(b), at(c), "lost"],
        ]);
      });

      await t.step(
        "a run that already streamed output is not run again: the error says so",
        async () => {
          const code = "import os, time\n" +
            "print('first', flush=True)\n" +
            `if os.getcwd().startswith(${JSON.stringify(dc + "/")}):\n` +
            "    time.sleep(600)\n" +
            "print('second')\n";
          const reports: RetryReport[] = [];
          await using session = connect(remote(c, a), { onRetry: (r) => reports.push(r) });
          const kinds: string[] = [];
          let text = "";
          const failure = await guard(
            (async () => {
              for await (const ev of session.run({ code })) {
                kinds.push(ev.kind);
                if (ev.kind !== "stdout") continue;
                text += new TextDecoder().decode(ev.data);
                // Its whole first line delivered: C dies now.
                if (text === "first\n") await kill(c);
              }
            })().then(() => undefined, (e) => e),
            "the run",
          );
          equal(text, "first\n");
          equal(kinds[0], "started");
          ok(kinds.slice(1).every((k) => k === "stdout"), kinds.join());
          ok(failure instanceof ValiseClientError, String(failure));
          deepEqual([failure.errorClass, failure.grpcCode], ["UNAVAILABLE", "Unavailable"]);
          ok(
            failure.message.includes(`node ${at(c)} died or dropped the connection`) &&
              failure.message.includes(
                "not sent again: the run's output (stdout, stderr or its exit) had already been " +
                  "delivered",
              ),
            failure.message,
          );
          deepEqual(reports, [], "no retry");
          // A was there to take it: a retry would have run it to its end.
          const after = await session.runCollect({ code });
          equal(after.stdout, "first\nsecond\n", after.stderr);
        },
      );
    } finally {
      await restarted?.stop();
      await nodes?.stop();
      await nats?.stop();
      await removeTree(tmp);
    }
  },
});
