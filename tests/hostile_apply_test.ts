// Attacks on Apply against a real server process with the bubblewrap sandbox on (issue 10, items
// 4 and 5): an input whose Arrow IPC lengths lie, a function that forges a driver frame header
// and streams bytes behind it, and a function that floods its output past the session's
// `spark.valise.worker.streamBytes`. Each is blocked with the right code and error class, the
// server answers health while the hostile call runs, and its memory stays bounded.
import { deepEqual, equal, ok } from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { ConfigRequest_OperationSchema, ipcMessages, IpcMessageType } from "@valise/protocol";
import { Table, tableFromIPC, tableToIPC } from "apache-arrow";
import { bwrapWorks, type ServerProcess } from "./_server.ts";
import {
  applyCall,
  errorClassOf,
  healthy,
  inline,
  ints,
  ipcRequest,
  startRequest,
  within,
  withServer,
} from "./_hostile_apply.ts";

const SANDBOX = bwrapWorks();
const MiB = 1024 * 1024;

async function setConf(server: ServerProcess, sessionId: string, key: string, value: string) {
  await server.clients.spark.config({
    sessionId,
    operation: create(ConfigRequest_OperationSchema, {
      opType: { case: "set", value: { pairs: [{ key, value }] } },
    }),
  });
}

/** A normal call: the session's fork server is warm and the server's Arrow paths are loaded. */
async function warmUp(server: ServerProcess, sessionId: string): Promise<void> {
  const { outcome } = applyCall(server, /$^/, async function* () {
    yield startRequest({ sessionId, ...inline("def f(cols):\n    return cols\n") });
    yield ipcRequest(tableToIPC(new Table([ints([1, 2, 3])]), "stream"));
  });
  const r = await within(outcome, "a normal Apply");
  equal(r.failure, undefined, r.failure?.message);
  deepEqual([...tableFromIPC(r.ipc).getChild("n")!.toArray()], [1, 2, 3]);
}

Deno.test({
  name: SANDBOX
    ? "an Apply input with a negative Arrow body length fails INVALID_ARGUMENT; health answers meanwhile"
    : "an Apply input with a negative Arrow body length (ignored: bubblewrap does not work here)",
  ignore: !SANDBOX,
  fn: () =>
    withServer("valise-hostile-apply-", async (server) => {
      // Schema, a valid batch, then a batch whose bodyLength is -(prefix + metadata): the length
      // that once sent the IPC splitter back onto the same message forever, on the main thread.
      const stream = tableToIPC(new Table([ints([1, 2, 3]), ints([4, 5])]), "stream");
      const batches: number[] = [];
      let at = 0;
      for await (const m of ipcMessages([stream])) {
        if (m.type === IpcMessageType.RECORD_BATCH) batches.push(at);
        at += m.bytes.length;
      }
      const second = batches[1]!;
      const hostile = stream.slice();
      const v = new DataView(hostile.buffer, second);
      const metaLength = v.getInt32(4, true);
      const table = v.getUint32(8, true);
      const vtable = table - v.getInt32(8 + table, true);
      const bodyAt = v.getUint16(8 + vtable + 4 + 2 * 3, true);
      ok(bodyAt > 0, "the batch has a bodyLength field");
      v.setBigInt64(8 + table + bodyAt, BigInt(-(8 + metaLength)), true);

      const sessionId = crypto.randomUUID();
      const code = "import sys\ndef f(cols):\n" +
        "    sys.stderr.write('got %d rows\\n' % len(cols['n']))\n    sys.stderr.flush()\n" +
        "    return cols\n";
      let sent!: () => void;
      const hostileSent = new Promise<void>((r) => sent = r);
      const { outcome, seen } = applyCall(server, /got 3 rows/, async function* (seen) {
        yield startRequest({ sessionId, ...inline(code) });
        yield ipcRequest(hostile.subarray(0, second));
        // The worker has taken the valid batch: the call is in flight when the lie arrives.
        await seen;
        yield ipcRequest(hostile.subarray(second));
        sent();
      });
      await within(seen, "the worker's first batch");
      await within(hostileSent, "sending the hostile batch");
      await healthy(server, "Health/Check while the hostile Apply runs");
      const r = await within(outcome, "the hostile Apply");
      ok(r.failure, "the hostile Apply succeeded");
      equal(r.failure.code, Code.InvalidArgument, r.failure.message);
      equal(errorClassOf(r.failure), "APPLY_INVALID_INPUT");
      ok(r.failure.message.includes("Arrow IPC"), r.failure.message);
      ok(r.failure.message.includes(`body length ${-(8 + metaLength)}`), r.failure.message);
    }),
});

Deno.test({
  name: SANDBOX
    ? "an Apply function that forges a 4 GiB driver frame fails APPLY_OUTPUT_TOO_LARGE in bounded memory"
    : "an Apply function that forges a 4 GiB driver frame (ignored: bubblewrap does not work here)",
  ignore: !SANDBOX,
  fn: () =>
    withServer("valise-hostile-apply-", async (server) => {
      const sessionId = crypto.randomUUID();
      await warmUp(server, sessionId);
      // The driver keeps its frames on a duplicate of the real stdout (fd 1 is stderr for the
      // function); the function finds it in the driver's globals, one frame up. Without a cap
      // the server would buffer every byte behind the forged header: 512 MiB, then the worker
      // exits.
      const code = "import os, struct, sys\ndef f(cols):\n" +
        "    out = sys._getframe(1).f_globals['OUT_FD']\n" +
        "    sys.stderr.write('forging\\n')\n    sys.stderr.flush()\n" +
        "    os.write(out, struct.pack('>IB', 0xFFFFFFF0, 11))\n" +
        "    chunk = b'x' * 65536\n" +
        "    for _ in range(8192):\n        os.write(out, chunk)\n" +
        "    os._exit(3)\n";
      const before = server.rss();
      // Peak RSS from here on (the kernel's high-water mark, reset).
      await Deno.writeTextFile(`/proc/${server.pid}/clear_refs`, "5");
      const { outcome, seen } = applyCall(server, /forging/, async function* (seen) {
        yield startRequest({ sessionId, ...inline(code) });
        yield ipcRequest(tableToIPC(new Table([ints([1, 2, 3])]), "stream"));
        await seen;
      });
      await within(seen, "the function's first write");
      await healthy(server, "Health/Check while the hostile Apply runs");
      const r = await within(outcome, "the hostile Apply");
      const growth = server.peakRss() - before;
      ok(r.failure, "the hostile Apply succeeded");
      equal(r.failure.code, Code.ResourceExhausted, r.failure.message);
      equal(errorClassOf(r.failure), "APPLY_OUTPUT_TOO_LARGE");
      ok(r.failure.message.includes("larger than the limit of 67108864 bytes"), r.failure.message);
      ok(r.failure.message.includes("smaller batches"), r.failure.message);
      ok(growth < 128 * MiB, `the server grew by ${(growth / MiB).toFixed(0)} MiB`);
      // The session still works.
      await warmUp(server, sessionId);
    }),
});

Deno.test({
  name: SANDBOX
    ? "an Apply that floods its output past spark.valise.worker.streamBytes is killed, reported truncated"
    : "an Apply that floods its output past streamBytes (ignored: bubblewrap does not work here)",
  ignore: !SANDBOX,
  fn: () =>
    withServer("valise-hostile-apply-", async (server) => {
      const sessionId = crypto.randomUUID();
      await setConf(server, sessionId, "spark.valise.worker.streamBytes", String(2 * MiB));
      // 200 output batches of 50 KB for one input batch: 10 MB, five times the session's limit.
      const code = "import sys\ndef f(cols):\n" +
        "    sys.stderr.write('flooding\\n')\n    sys.stderr.flush()\n" +
        "    for _ in range(200):\n        yield {'n': [1] * 12500}\n";
      const { outcome, seen } = applyCall(server, /flooding/, async function* (seen) {
        yield startRequest({ sessionId, ...inline(code) });
        yield ipcRequest(tableToIPC(new Table([ints([1])]), "stream"));
        await seen;
      });
      await within(seen, "the function's start");
      await healthy(server, "Health/Check while the flooding Apply runs");
      const r = await within(outcome, "the flooding Apply");
      ok(r.failure, "the flooding Apply succeeded");
      equal(r.failure.code, Code.ResourceExhausted, r.failure.message);
      equal(errorClassOf(r.failure), "APPLY_OUTPUT_TOO_LARGE");
      ok(
        r.failure.message.includes(`output stream truncated at ${2 * MiB} bytes`),
        r.failure.message,
      );
      ok(r.failure.message.includes("spark.valise.worker.streamBytes"), r.failure.message);
      // What was delivered before the cut stays below it.
      ok(r.ipc.reduce((n, b) => n + b.length, 0) <= 2 * MiB + MiB, "more output than the cap");
      // Below the limit the same session's calls still succeed.
      await warmUp(server, sessionId);
    }),
});
