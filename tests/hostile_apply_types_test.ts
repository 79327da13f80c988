// Attacks on Apply's columnar transport (the server decodes Arrow itself) against a real server
// process with the bubblewrap sandbox on: IPC bytes whose lengths, offsets, dictionary indices
// and ids lie, and arbitrary mutations of a stream with every nested shape (fast-check). Each
// call ends at once with INVALID_ARGUMENT and an APPLY_* class (or succeeds), the server answers
// health meanwhile, and its memory stays bounded.
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import fc from "fast-check";
import {
  ApplyForm,
  type ApplyRequest,
  ApplyRequestSchema,
  ErrorInfoSchema,
  ipcMessages,
  IpcMessageType,
} from "@valise/protocol";
import { richStream } from "../packages/server/_ipc_test_util.ts";
import { bwrapWorks, type ServerProcess, startServer } from "./_server.ts";
import { answered, serving } from "./_hostile.ts";

const SANDBOX = bwrapWorks();
const GUARD_MS = 30_000;
const MiB = 1024 * 1024;

const within = <T>(p: Promise<T>, what: string): Promise<T> => answered(p, what, GUARD_MS);

const healthy = (server: ServerProcess, what: string): Promise<void> =>
  serving(server, what, GUARD_MS);

async function* requests(sessionId: string, input: Uint8Array): AsyncGenerator<ApplyRequest> {
  yield create(ApplyRequestSchema, {
    request: {
      case: "start",
      value: {
        sessionId,
        function: { case: "code", value: "def f(c):\n    return c\n" },
        functionName: "f",
        form: ApplyForm.COLUMNS,
        input: { case: "streamed", value: true },
      },
    },
  });
  yield create(ApplyRequestSchema, { request: { case: "arrowIpc", value: input } });
}

/** One call; its failure (undefined on success). Health is checked while it runs. */
async function call(
  server: ServerProcess,
  sessionId: string,
  input: Uint8Array,
): Promise<ConnectError | undefined> {
  const run = (async () => {
    try {
      for await (const _ of server.clients.worker.apply(requests(sessionId, input))) { /* drain */ }
      return undefined;
    } catch (e) {
      return ConnectError.from(e);
    }
  })();
  await healthy(server, "Health/Check while a hostile Apply runs");
  return await within(run, "a hostile Apply");
}

const classOf = (e: ConnectError | undefined) =>
  e?.findDetails(ErrorInfoSchema)[0]?.metadata.errorClass;

function find(hay: Uint8Array, needle: number[]): number {
  outer: for (let i = 0; i <= hay.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

const le32 = (n: number) => [n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >>> 24) & 255];
const le64 = (n: number) => [...le32(n), 0, 0, 0, 0];

/** The rich stream with `needle` replaced at its first occurrence (after `from`). */
function lie(needle: number[], replacement: number[], skip = 0): Uint8Array {
  const bytes = richStream();
  const at = find(bytes, needle);
  ok(at >= 0, `pattern ${needle} not found`);
  bytes.set(replacement, at + skip);
  return bytes;
}

Deno.test({
  name: SANDBOX
    ? "columnar Apply: lying offsets, dictionary indices and ids, rows and field counts fail INVALID_ARGUMENT at once; memory stays bounded"
    : "columnar Apply hostile IPC (ignored: bubblewrap does not work here)",
  ignore: !SANDBOX,
  async fn(t) {
    const tmp = await Deno.makeTempDir({ prefix: "valise-hostile-types-" });
    const server = await startServer({
      dataDir: join(tmp, "data"),
      args: ["--sandbox", "bwrap"],
    });
    try {
      await server.waitForLog("workers sandboxed with bubblewrap");
      const sessionId = crypto.randomUUID();
      equal(await call(server, sessionId, richStream()), undefined, "the honest stream passes");
      const before = server.rss();
      const refused = async (input: Uint8Array, column: string | undefined, what: RegExp) => {
        const e = await call(server, sessionId, input);
        equal(e?.code, Code.InvalidArgument, e?.rawMessage ?? "accepted");
        equal(classOf(e), "APPLY_INVALID_INPUT", e?.rawMessage);
        if (column) ok(e!.rawMessage.includes(`"${column}"`), e!.rawMessage);
        ok(what.test(e!.rawMessage), e!.rawMessage);
      };
      await t.step("a utf8 offset past the column's bytes", () =>
        refused(
          lie([...le32(0), ...le32(5), ...le32(10)], le32(1_000_000), 8),
          "s",
          /value offsets/,
        ));
      await t.step("a dictionary index past the dictionary", () =>
        refused(
          lie([...le32(0), ...le32(1), ...le32(0), ...le32(1)], le32(99), 8),
          "d",
          /dictionary entry 99/,
        ));
      await t.step("a dictionary id never sent", () =>
        // The dictionary batch carries id 0x5a5a5a5a; the schema's field still names it.
        refused(richStreamWithDictionaryId(0x12345678), undefined, /dictionar/i));
      await t.step("a batch of 2^40 rows in a few bytes", () =>
        // Every field node's and the batch's length is 4: all become 2^40.
        everyLength(4, 2 ** 40).then((b) => refused(b, undefined, /rows|values|bits/)));
      await t.step(
        "a schema claiming 2^31 fields",
        () => refused(fieldCount(0x7fffffff), undefined, /metadata/),
      );
      const growth = server.peakRss() - before;
      ok(growth < 64 * MiB, `server RSS grew by ${(growth / MiB).toFixed(0)} MiB`);

      await t.step("mutated streams (fast-check): each ends at once, never INTERNAL", async () => {
        const base = richStream();
        const value = fc.oneof(
          fc.constantFrom(0, 1, -1, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 40, -(2 ** 40)),
          fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
        );
        const mutation = fc.record({
          at: fc.integer({ min: 0, max: base.length - 8 }),
          width: fc.constantFrom(1, 4, 8),
          value,
        });
        const seen = new Map<string, number>();
        await fc.assert(
          fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 3 }), async (ms) => {
            const bytes = base.slice();
            const v = new DataView(bytes.buffer);
            for (const m of ms) {
              if (m.width === 1) v.setUint8(m.at, m.value & 255);
              else if (m.width === 4) v.setInt32(m.at, m.value | 0, true);
              else v.setBigInt64(m.at, BigInt(m.value), true);
            }
            const e = await call(server, sessionId, bytes);
            const key = e ? `${Code[e.code]} ${classOf(e)}` : "ok";
            seen.set(key, (seen.get(key) ?? 0) + 1);
            if (e) {
              equal(e.code, Code.InvalidArgument, e.rawMessage);
              ok(classOf(e)?.startsWith("APPLY_"), e.rawMessage);
            }
          }),
          { numRuns: 40 },
        );
        ok(seen.size > 1, JSON.stringify([...seen]));
        const growth = server.peakRss() - before;
        ok(growth < 96 * MiB, `server RSS grew by ${(growth / MiB).toFixed(0)} MiB`);
      });
    } finally {
      const status = await within(server.stop(), "SIGTERM");
      await new Deno.Command("chmod", { args: ["-R", "u+w", tmp] }).output();
      await Deno.remove(tmp, { recursive: true });
      ok(status.signal === null || status.signal === "SIGTERM", JSON.stringify(status));
    }
  },
});

/** The rich stream whose dictionary batch carries another id than the schema names. */
function richStreamWithDictionaryId(id: number): Uint8Array {
  const bytes = richStream();
  // The id appears twice: in the schema's field (first) and in the dictionary batch (second).
  const needle = le64(0x5a5a5a5a);
  const first = find(bytes, needle);
  const second = first + 8 + find(bytes.subarray(first + 8), needle);
  ok(first >= 0 && second > first, "the dictionary id appears in the schema and the batch");
  bytes.set(le64(id), second);
  return bytes;
}

/** The rich stream with every int64 equal to `from` in its record batch's metadata set to `to`. */
async function everyLength(from: number, to: number): Promise<Uint8Array> {
  const bytes = richStream();
  const v = new DataView(bytes.buffer);
  let at = 0;
  let last = -1;
  for await (const m of ipcMessages([bytes])) {
    if (m.type === IpcMessageType.RECORD_BATCH) last = at;
    at += m.bytes.length;
  }
  const meta = v.getInt32(last + 4, true);
  let hits = 0;
  for (let i = last + 8; i + 8 <= last + 8 + meta; i += 4) {
    if (v.getBigInt64(i, true) === BigInt(from)) {
      v.setBigInt64(i, BigInt(to), true);
      hits++;
    }
  }
  ok(hits >= 2, `${hits} lengths of ${from} found`);
  return bytes;
}

/** The rich stream whose schema claims `n` fields (it has 4). */
function fieldCount(n: number): Uint8Array {
  const bytes = richStream();
  const v = new DataView(bytes.buffer);
  const meta = v.getInt32(4, true);
  // The fields vector: a u32 count of 4 followed by 4 forward offsets.
  for (let i = 8; i + 20 <= 8 + meta; i += 4) {
    if (v.getUint32(i, true) !== 4) continue;
    const offsets = [1, 2, 3, 4].map((k) => v.getUint32(i + 4 * k, true));
    if (offsets.every((o) => o > 0 && o < meta)) {
      v.setUint32(i, n, true);
      return bytes;
    }
  }
  throw new Error("no fields vector found");
}
