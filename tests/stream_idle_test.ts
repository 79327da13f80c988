// A stalled AddArtifacts stream (a first message, then silence, never half-closed) is aborted
// by a real `serve` process after --stream-idle-timeout-s: DEADLINE_EXCEEDED with a message
// saying so, and what it staged is gone. Nothing here measures time: the test waits for the
// server to act and checks what it did.
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type AddArtifactsRequest, AddArtifactsRequestSchema, crc32 } from "@valise/protocol";
import { startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

Deno.test("a stalled AddArtifacts stream is aborted with DEADLINE_EXCEEDED and its staging removed", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-idle-" });
  const dataDir = join(tmp, "data");
  const server = await startServer({ dataDir, args: ["--stream-idle-timeout-s", "1"] });
  // Released when the test is done, so the stalled stream's generator can end.
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  try {
    const sessionId = crypto.randomUUID();
    const first = new Uint8Array(32 * 1024).fill(1);
    const stalled = (async function* (): AsyncGenerator<AddArtifactsRequest> {
      yield create(AddArtifactsRequestSchema, {
        sessionId,
        payload: {
          case: "beginChunk",
          value: {
            name: "files/big.bin",
            totalBytes: 10n * 1024n * 1024n,
            numChunks: 320n,
            initialChunk: { data: first, crc: BigInt(crc32(first)) },
          },
        },
      });
      await released; // silence, without half-closing
    })();
    let err: ConnectError | undefined;
    try {
      // The guard turns a server that never acts into a failure (CANCELED), not a hang.
      await server.clients.spark.addArtifacts(stalled, { signal: AbortSignal.timeout(30_000) });
    } catch (e) {
      err = ConnectError.from(e);
    }
    ok(err, "the stalled stream succeeded");
    equal(err.code, Code.DeadlineExceeded, err.rawMessage);
    ok(err.rawMessage.startsWith("[ARTIFACT_STREAM_IDLE] No AddArtifacts message arrived for 1 s"));
    // The first message was processed (its chunk staged) before the stream went quiet.
    ok(err.rawMessage.includes("(after 1 message)"), err.rawMessage);
    // The staging is removed before the error is sent.
    deepEqual(await Array.fromAsync(Deno.readDir(join(dataDir, "staging"))), []);
    // Nothing was committed, and the server serves the session as usual.
    const st = await server.clients.spark.artifactStatus({ sessionId, names: ["files/big.bin"] });
    equal(st.statuses["files/big.bin"]?.exists, false);
  } finally {
    release();
    await server.stop();
    await removeTree(tmp);
  }
});

Deno.test("a stream that never sends its first message is aborted too", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-idle-" });
  const dataDir = join(tmp, "data");
  const server = await startServer({ dataDir, args: ["--stream-idle-timeout-s", "1"] });
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  try {
    // deno-lint-ignore require-yield -- the point is a stream that never sends a message
    const silent = (async function* (): AsyncGenerator<AddArtifactsRequest> {
      await released;
    })();
    let err: ConnectError | undefined;
    try {
      await server.clients.spark.addArtifacts(silent, { signal: AbortSignal.timeout(30_000) });
    } catch (e) {
      err = ConnectError.from(e);
    }
    equal(err?.code, Code.DeadlineExceeded, err?.rawMessage);
    ok(err!.rawMessage.includes("(after 0 messages)"), err!.rawMessage);
    deepEqual(await Array.fromAsync(Deno.readDir(join(dataDir, "staging"))), []);
    deepEqual(await Array.fromAsync(Deno.readDir(join(dataDir, "sessions"))), []);
  } finally {
    release();
    await server.stop();
    await removeTree(tmp);
  }
});
