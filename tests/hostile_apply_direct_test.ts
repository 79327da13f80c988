// Attacks on Apply's direct data plane against a real server process with the bubblewrap sandbox
// on: the worker's stdin and stdout are a Unix socket to the server (the fork server's data
// socket), which the session's code can find and reach. A function that floods that socket with
// connections and garbage, one that writes garbage behind the driver's frames on it, and one that
// never reads its input: each is blocked with the right code and error class (or does no harm),
// the server answers health meanwhile and its memory stays bounded.
import { deepEqual, equal, ok } from "node:assert/strict";
import { Code } from "@connectrpc/connect";
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

/** A normal call: returns its column back. */
async function normalCall(server: ServerProcess, sessionId: string, what: string): Promise<void> {
  const { outcome } = applyCall(server, /$^/, async function* () {
    yield startRequest({ sessionId, ...inline("def f(cols):\n    return cols\n") });
    yield ipcRequest(tableToIPC(new Table([ints([1, 2, 3])]), "stream"));
  });
  const r = await within(outcome, what);
  equal(r.failure, undefined, r.failure?.message);
  deepEqual([...tableFromIPC(r.ipc).getChild("n")!.toArray()], [1, 2, 3]);
}

/** Python: the data socket's path, from the sandbox's mounts (it is bound there). */
const FIND_SOCKET = "def data_socket():\n" +
  "    for line in open('/proc/self/mountinfo'):\n" +
  "        point = line.split()[4]\n" +
  "        if point.rsplit('/', 1)[-1].startswith('d-') and point.endswith('.sock'):\n" +
  "            return point\n";

Deno.test({
  name: SANDBOX
    ? "an Apply function flooding its data socket with connections and garbage harms no call"
    : "an Apply function flooding its data socket (ignored: bubblewrap does not work here)",
  ignore: !SANDBOX,
  fn: () =>
    withServer("valise-hostile-direct-", async (server) => {
      const sessionId = crypto.randomUUID();
      const other = crypto.randomUUID();
      await normalCall(server, sessionId, "a normal Apply");
      await normalCall(server, other, "another session's Apply");
      // 300 connections: wrong tokens, short ones, random bytes, and 100 held open silently
      // (kept in a global until the worker exits) while the call goes on.
      const code = "import os, socket, sys\n" + FIND_SOCKET + "held = []\n" +
        "def f(cols):\n" +
        "    path = data_socket()\n" +
        "    for i in range(300):\n" +
        "        s = socket.socket(socket.AF_UNIX)\n" +
        "        try:\n" +
        "            s.connect(path)\n" +
        "            if i % 3 == 0:\n                s.sendall(b'0' * 64)\n" +
        "            elif i % 3 == 1:\n                s.sendall(os.urandom(1000))\n" +
        "        except OSError:\n            pass\n" +
        "        held.append(s)\n" +
        "    sys.stderr.write('flooded %s\\n' % path)\n    sys.stderr.flush()\n" +
        "    return cols\n";
      const before = server.rss();
      await Deno.writeTextFile(`/proc/${server.pid}/clear_refs`, "5");
      const { outcome, seen } = applyCall(server, /flooded /, async function* (seen) {
        yield startRequest({ sessionId, ...inline(code) });
        yield ipcRequest(tableToIPC(new Table([ints([1, 2, 3])]), "stream"));
        await seen;
      });
      await within(seen, "the flood");
      await healthy(server, "Health/Check while the flood is held");
      // Another session's socket is its own: its calls go on meanwhile.
      await normalCall(server, other, "another session's Apply during the flood");
      const r = await within(outcome, "the flooding Apply");
      equal(r.failure, undefined, r.failure?.message);
      ok(/flooded \/.*\/d-[0-9a-f-]+\.sock/.test(r.stderr), r.stderr);
      deepEqual([...tableFromIPC(r.ipc).getChild("n")!.toArray()], [1, 2, 3]);
      const growth = server.peakRss() - before;
      ok(growth < 64 * MiB, `the server grew by ${(growth / MiB).toFixed(0)} MiB`);
      // The flooder's session still works once its worker is gone.
      await normalCall(server, sessionId, "the flooding session's next Apply");
    }),
});

Deno.test({
  name: SANDBOX
    ? "garbage a function writes on the worker's socket fails APPLY_PROTOCOL, after what it printed"
    : "garbage on the worker's socket (ignored: bubblewrap does not work here)",
  ignore: !SANDBOX,
  fn: () =>
    withServer("valise-hostile-direct-", async (server) => {
      const sessionId = crypto.randomUUID();
      await normalCall(server, sessionId, "a normal Apply");
      // A whole frame of a type the driver never writes (lying lengths: the forged 4 GiB frame
      // of hostile_apply_test.ts takes this path too). What
      // the function printed before (through the fork server's stderr pipe) still comes first.
      const code = "import os, struct, sys\ndef f(cols):\n" +
        "    out = sys._getframe(1).f_globals['OUT_FD']\n" +
        "    sys.stderr.write('about to lie\\n')\n    sys.stderr.flush()\n" +
        "    os.write(out, struct.pack('>IB', 6, 99) + b'abcde')\n" +
        "    os._exit(3)\n";
      const { outcome } = applyCall(server, /$^/, async function* () {
        yield startRequest({ sessionId, ...inline(code) });
        yield ipcRequest(tableToIPC(new Table([ints([1, 2, 3])]), "stream"));
      });
      await healthy(server, "Health/Check while the lying Apply runs");
      const r = await within(outcome, "the lying Apply");
      ok(r.failure, "the lying Apply succeeded");
      equal(r.failure.code, Code.Internal, r.failure.message);
      equal(errorClassOf(r.failure), "APPLY_PROTOCOL");
      ok(r.failure.message.includes("Unexpected driver frame 99"), r.failure.message);
      ok(r.stderr.includes("about to lie"), JSON.stringify(r.stderr));
      await normalCall(server, sessionId, "the same session's next Apply");
    }),
});

Deno.test({
  name: SANDBOX
    ? "a worker that never reads its input holds the client back; the call ends at its limit"
    : "a worker that never reads its input (ignored: bubblewrap does not work here)",
  ignore: !SANDBOX,
  fn: () =>
    withServer("valise-hostile-direct-", async (server) => {
      const sessionId = crypto.randomUUID();
      await normalCall(server, sessionId, "a normal Apply");
      const code = "import sys, time\ndef f(cols):\n" +
        "    sys.stderr.write('asleep\\n')\n    sys.stderr.flush()\n    time.sleep(3600)\n";
      // 1 MiB batches, up to 512 of them, as fast as the call takes them.
      const batch = tableToIPC(new Table([ints(Array.from({ length: MiB / 4 }, (_, i) => i))]));
      let pulled = 0;
      const before = server.rss();
      await Deno.writeTextFile(`/proc/${server.pid}/clear_refs`, "5");
      const { outcome, seen } = applyCall(server, /asleep/, async function* () {
        yield startRequest({ sessionId, timeoutMs: 4000, ...inline(code) });
        for (let i = 0; i < 512; i++) {
          pulled += batch.length;
          yield ipcRequest(batch);
        }
      });
      await within(seen, "the worker's first batch");
      await healthy(server, "Health/Check while the worker does not read");
      const r = await within(outcome, "the stalled Apply");
      ok(r.failure, "the stalled Apply succeeded");
      equal(r.failure.code, Code.DeadlineExceeded, r.failure.message);
      equal(errorClassOf(r.failure), "APPLY_TIMEOUT");
      // What the client got to send is bounded by the windows on the way (HTTP/2, the
      // server's stdin window, the socket's buffers), far below what it offered.
      ok(pulled < 96 * MiB, `the client sent ${(pulled / MiB).toFixed(0)} MiB`);
      const growth = server.peakRss() - before;
      ok(growth < 128 * MiB, `the server grew by ${(growth / MiB).toFixed(0)} MiB`);
      await normalCall(server, sessionId, "the same session's next Apply");
    }),
});
