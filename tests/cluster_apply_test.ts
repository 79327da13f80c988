// Parallel Apply across a cluster: one real 3-member NATS JetStream cluster and 3 Valise nodes
// (A, B, C). An Apply with parallelism 3 sent to A runs batches on B and C too (their workers'
// output says where they ran, their counters count them) and gives the rows of parallelism 1;
// hand-made NATS messages (another user's session, no session, oversized, made-up workers) are
// refused with nothing run; a node SIGKILLed mid-Apply loses nothing: its batches run on A.
import { deepEqual, equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { connect as natsConnect } from "@nats-io/transport-node";
import { connect, type Session } from "@valise/client";
import { type RecordBatch, type Table, tableFromArrays } from "apache-arrow";
import { hasNatsServer, type NatsCluster, startNatsCluster, startValiseNodes } from "./_nats.ts";
import type { ServerProcess } from "./_server.ts";
import { removeTree } from "./_util.ts";
import { makeWheel } from "./fixtures/wheels.ts";
import { venvBin, venvMissing } from "./_python.ts";

const SYSTEM_PYTHON = "/usr/bin/python3";
// Offers are awaited long enough for a loaded machine (B's and C's end the wait at once).
const NODE_ARGS = [
  "--allow-interpreter",
  SYSTEM_PYTHON,
  "--metrics-port",
  "0",
  "--apply-offer-wait-ms",
  "20000",
  // Packages only from uploaded wheels: the cluster's pip step needs no index.
  ...(venvMissing() === undefined ? ["--pip-offline", "--pip-installer", venvBin("uv")] : []),
];
const USER = "ada";

/** A node's counters from its /metrics endpoint. */
async function counters(node: ServerProcess): Promise<Record<string, number>> {
  const line = await node.waitForLog(/metrics on http:\/\/[\d.]+:\d+\/metrics/);
  const url = line.match(/http:\/\/[\d.]+:\d+\/metrics/)![0];
  const text = await (await fetch(url)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^(valise_[a-z_]+(?:\{[^}]*\})?) (\d+)$/gm)) {
    out[m[1]!] = Number(m[2]);
  }
  return out;
}

const OPENED = 'valise_apply_served_lanes_total{outcome="opened"}';
const REFUSED = 'valise_apply_served_lanes_total{outcome="refused"}';
const SERVED_UNITS = "valise_apply_served_units_total";

/** The workers' directory of a session on a node (what `os.getcwd()` says there). */
function rootOf(dataDir: string, sessionId: string): string {
  const user = "u-" + createHash("sha256").update(USER).digest("hex").slice(0, 32);
  return join(dataDir, "sessions", user, sessionId, "root");
}

/**
 * y = 2x; each batch first says where it runs (its working directory names the node's data
 * directory) and, with `gate`, waits for a file `go` there (the 60 s bound only turns a hang
 * into a failure).
 */
function fn(gate: boolean): { code: string; functionName: string } {
  return {
    functionName: "f",
    code: `
import os, sys, time
def f(cols):
    sys.stderr.write("batch %d on %s\\n" % (cols["x"][0], os.getcwd()))
    deadline = time.time() + 60
    while ${gate ? "True" : "False"} and not os.path.exists("go"):
        if time.time() > deadline:
            raise RuntimeError("no go")
        time.sleep(0.01)
    return {"x": cols["x"], "y": [v * 2 for v in cols["x"]]}
`,
  };
}

function batch(i: number, rows = 4): RecordBatch {
  return tableFromArrays({ x: Int32Array.from({ length: rows }, (_, j) => i * rows + j) })
    .batches[0]!;
}

function rowsOf(t: Table): number[][] {
  return t.toArray().map((r) => [Number(r.x), Number(r.y)]);
}

function expected(batches: number, rows = 4): number[][] {
  return Array.from({ length: batches * rows }, (_, i) => [i, 2 * i]);
}

async function session(node: ServerProcess): Promise<Session> {
  const s = connect(`sc://127.0.0.1:${node.port}`, { userId: USER });
  await s.conf.set("spark.sql.execution.pyspark.python", SYSTEM_PYTHON);
  return s;
}

Deno.test({
  ...(hasNatsServer()
    ? { name: "cluster: parallel Apply over 3 nodes" }
    : { ignore: true, name: "cluster: parallel Apply: IGNORED, nats-server is not installed" }),
  fn: async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-cluster-apply-" });
    const dirs = ["a", "b", "c"].map((n) => join(tmp, n)) as [string, string, string];
    let nats: NatsCluster | undefined;
    let nodes: Awaited<ReturnType<typeof startValiseNodes>> | undefined;
    try {
      nats = await startNatsCluster();
      nodes = await startValiseNodes(nats, dirs, { args: NODE_ARGS });
      const [a, b, c] = nodes.nodes as [ServerProcess, ServerProcess, ServerProcess];
      const [da, db, dc] = dirs;
      let recorded = "";

      await t.step(
        "parallelism 3 sent to A runs batches on B and C; the rows of parallelism 1",
        async () => {
          await using s = await session(a);
          recorded = s.sessionId;
          const one = await s.applyCollect(
            fn(false),
            Array.from({ length: 12 }, (_, i) => batch(i)),
          );
          equal(one.parallelism, 1);
          deepEqual(rowsOf(one.table), expected(12));
          const before = { b: await counters(b), c: await counters(c) };
          // The first batch alone, then the rest once B's and C's workers are ready on A's side.
          async function* input(): AsyncGenerator<RecordBatch> {
            yield batch(0);
            await a.waitForLog(`a worker of session ${s.sessionId} is ready on node v2`);
            await a.waitForLog(`a worker of session ${s.sessionId} is ready on node v3`);
            for (let i = 1; i < 12; i++) yield batch(i);
          }
          const three = await s.applyCollect(fn(false), input(), { parallelism: 3 });
          equal(three.parallelism, 3);
          equal(three.rowsIn, 48);
          equal(three.rowsOut, 48);
          equal(three.batchesIn, 12);
          deepEqual(rowsOf(three.table), rowsOf(one.table));
          // Where each batch ran, in the workers' own words: every node ran some.
          for (const d of dirs) {
            ok(three.stderr.includes(` on ${rootOf(d, s.sessionId)}\n`), `none ran in ${d}`);
          }
          const after = { b: await counters(b), c: await counters(c) };
          for (const n of ["b", "c"] as const) {
            equal(after[n][OPENED], before[n][OPENED]! + 1, `${n} opened a worker`);
            ok(after[n][SERVED_UNITS]! > before[n][SERVED_UNITS]!, `${n} ran units`);
          }
          const ca = await counters(a);
          ok(ca['valise_apply_units_total{where="remote"}']! > 0);
          equal(ca["valise_apply_lanes_lost_total"], 0);
        },
      );

      await t.step({
        name: venvMissing() === undefined
          ? "a session's packages installed through A are there in its batches on B and C, and in a Run on B"
          : `a session's packages across nodes (ignored: ${venvMissing()})`,
        ignore: venvMissing() !== undefined,
        fn: async () => {
          const wheel = await makeWheel(join(tmp, "dist"), {
            name: "clusterlib",
            version: "2.5",
            modules: { clusterlib: 'VERSION = "2.5"\n' },
          });
          await using s = await session(a);
          const installed = await s.pip.install([wheel]);
          deepEqual(installed.distributions, [{ name: "clusterlib", version: "2.5" }]);
          const pkg = {
            functionName: "f",
            code: `
import clusterlib
def f(cols):
    return {"x": cols["x"], "v": [clusterlib.VERSION] * len(cols["x"])}
`,
          };
          async function* input(): AsyncGenerator<RecordBatch> {
            yield batch(0);
            await a.waitForLog(`a worker of session ${s.sessionId} is ready on node v2`);
            await a.waitForLog(`a worker of session ${s.sessionId} is ready on node v3`);
            for (let i = 1; i < 9; i++) yield batch(i);
          }
          const before = { b: await counters(b), c: await counters(c) };
          const r = await s.applyCollect(pkg, input(), { parallelism: 3 });
          equal(r.parallelism, 3);
          equal(r.rowsOut, 36);
          ok(r.table.toArray().every((row) => row.v === "2.5"), "every batch imported the package");
          const after = { b: await counters(b), c: await counters(c) };
          for (const n of ["b", "c"] as const) {
            ok(after[n][SERVED_UNITS]! > before[n][SERVED_UNITS]!, `${n} ran units`);
            // Each node built the session's layer itself, from the wheel the cluster holds.
            ok(after[n]["valise_pip_layers"]! >= 1, `${n} holds the session's layer`);
          }
          await using onB = connect(`sc://127.0.0.1:${b.port}`, {
            userId: USER,
            sessionId: s.sessionId,
          });
          const run = await onB.runCollect({
            code: "import clusterlib; print(clusterlib.VERSION)",
          });
          equal(run.exitCode, 0, run.stderr);
          equal(run.stdout.trim(), "2.5");
        },
      });

      await t.step("units and outputs over NATS's 1 MiB message limit go in parts", async () => {
        await using s = await session(a);
        const rows = 200_000; // 800 KB of int32 in, 2.4 MB out per batch (x, y as int64)
        const before = { b: await counters(b), c: await counters(c) };
        async function* input(): AsyncGenerator<RecordBatch> {
          yield batch(0, rows);
          await a.waitForLog(`a worker of session ${s.sessionId} is ready on node v2`);
          await a.waitForLog(`a worker of session ${s.sessionId} is ready on node v3`);
          for (let i = 1; i < 9; i++) yield batch(i, rows);
        }
        const r = await s.applyCollect(fn(false), input(), { parallelism: 3 });
        equal(r.rowsOut, 9 * rows);
        const got = r.table.getChild("y")!.toArray() as BigInt64Array;
        ok(got.every((v, i) => v === BigInt(2 * i)), "y = 2x, in order");
        const after = { b: await counters(b), c: await counters(c) };
        for (const n of ["b", "c"] as const) {
          ok(after[n][SERVED_UNITS]! > before[n][SERVED_UNITS]!, `${n} ran units`);
        }
      });

      await t.step(
        "hand-made NATS messages to B's apply subjects are refused; nothing runs",
        async () => {
          const nc = await natsConnect({ servers: nats!.urls.split(",") });
          try {
            const before = await counters(b);
            const serving = () => b.log.filter((l) => l.includes("serving a worker")).length;
            const servingBefore = serving();
            const enc = new TextEncoder();
            const message = (header: unknown, body = new Uint8Array()) => {
              const json = enc.encode(JSON.stringify(header));
              const out = new Uint8Array(4 + json.length + body.length);
              new DataView(out.buffer).setUint32(0, json.length);
              out.set(json, 4);
              out.set(body, 4 + json.length);
              return out;
            };
            const open = (over: Record<string, unknown>) =>
              message({
                call: crypto.randomUUID(),
                from: "v1",
                user: USER,
                session: recorded,
                code: "import os\ndef f(c):\n    os.system('touch /tmp/pwned')\n    return c\n",
                name: "f",
                form: "columns",
                transport: "columnar",
                timeoutMs: 0,
                schema: "",
                ...over,
              });
            const answer = async (subject: string, data: Uint8Array) => {
              const m = await nc.request(subject, data, { timeout: 30_000 });
              const n = new DataView(m.data.buffer, m.data.byteOffset).getUint32(0);
              return JSON.parse(new TextDecoder().decode(m.data.subarray(4, 4 + n)));
            };
            // Another user's session: the cluster records the pair (eve, that id) nowhere.
            const eve = await answer("valise.apply.open.v2", open({ user: "eve" }));
            equal(eve.ok, false);
            ok(/records no session/.test(eve.message), eve.message);
            // A session that does not exist.
            const none = await answer(
              "valise.apply.open.v2",
              open({ session: crypto.randomUUID() }),
            );
            equal(none.ok, false);
            ok(/records no session/.test(none.message), none.message);
            // Over the size a worker's code may have (NATS carries it; Valise refuses it).
            const big = await answer(
              "valise.apply.open.v2",
              open({ code: "x = 1\n".repeat(100_000) + "def f(c):\n    return c\n" }),
            );
            equal(big.ok, false);
            ok(/field code is not a string of at most/.test(big.message), big.message);
            // A header longer than the message, and bytes that are not a message.
            const liar = new Uint8Array(64);
            new DataView(liar.buffer).setUint32(0, 0x7fffffff);
            equal((await answer("valise.apply.open.v2", liar)).ok, false);
            equal((await answer("valise.apply.open.v2", enc.encode("\0\0\0\u0002{x"))).ok, false);
            // Over NATS's own 1 MiB limit: the client library refuses to send it at all.
            let sent = true;
            try {
              nc.publish("valise.apply.open.v2", new Uint8Array(2 * 1024 * 1024));
            } catch {
              sent = false;
            }
            equal(sent, false);
            // A worker nobody opened.
            const ghost = await answer(
              `valise.apply.lane.v2.${crypto.randomUUID()}`,
              message({ op: "put", seq: 0, last: true }, new Uint8Array(10)),
            );
            equal(ghost.ok, false);
            equal(ghost.gone, true);
            // A node that is not asked answers nothing, and an offer naming B itself goes nowhere.
            const after = await counters(b);
            equal(after[OPENED], before[OPENED], "no worker opened");
            equal(after[REFUSED], before[REFUSED]! + 5);
            equal(after[SERVED_UNITS], before[SERVED_UNITS]);
            equal(after["valise_workers_running"], 0);
            equal(serving(), servingBefore);
            equal(b.log.filter((l) => l.includes("refused a worker")).length, 5);
          } finally {
            await nc.close();
          }
        },
      );

      await t.step(
        "B SIGKILLed mid-Apply: its batches run on A, the rows are all there",
        async () => {
          await using s = await session(a);
          const printed: string[] = [];
          let startedOnB: () => void;
          const onB = new Promise<void>((r) => startedOnB = r);
          const bRoot = rootOf(db, s.sessionId);
          const onStderr = (data: Uint8Array) => {
            printed.push(new TextDecoder().decode(data));
            if (printed.join("").includes(` on ${bRoot}\n`)) startedOnB();
          };
          async function* input(): AsyncGenerator<RecordBatch> {
            yield batch(0);
            await a.waitForLog(`a worker of session ${s.sessionId} is ready on node v2`);
            await a.waitForLog(`a worker of session ${s.sessionId} is ready on node v3`);
            for (let i = 1; i < 15; i++) yield batch(i);
          }
          const call = s.applyCollect(fn(true), input(), { parallelism: 3, onStderr });
          // B is running a batch (and holds more): it dies now.
          await onB;
          b.child.kill("SIGKILL");
          await b.child.status;
          for (const d of [da, dc]) {
            await Deno.writeTextFile(join(rootOf(d, s.sessionId), "go"), "");
          }
          const r = await call;
          equal(r.parallelism, 3);
          deepEqual(rowsOf(r.table), expected(15));
          equal(r.rowsIn, 60);
          equal(r.batchesIn, 15);
          const ca = await counters(a);
          equal(ca["valise_apply_lanes_lost_total"], 1);
          ok(
            a.log.some((l) =>
              /the worker on node v2 is lost .* unit\(s\) run on this node/.test(l)
            ),
          );
          // The batch B was running when it died ran again on A.
          const all = printed.join("");
          const onBx = all.match(new RegExp(`batch (\\d+) on ${bRoot}`))![1];
          ok(all.includes(`batch ${onBx} on ${rootOf(da, s.sessionId)}\n`), all);
        },
      );
    } finally {
      await nodes?.stop();
      await nats?.stop();
      await removeTree(tmp);
    }
  },
});
