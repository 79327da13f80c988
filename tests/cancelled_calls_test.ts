// A client that gives up mid-upload — its call aborted (Ctrl-C in the CLI), or its process killed
// so that the connection drops — is a cancelled call: a real `serve` process logs it as
// `Canceled [CANCELLED] …` and counts it in `valise_rpcs_total{code="Canceled"}`, never as an
// internal error ("Premature close"), and removes what the stream staged.
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { type AddArtifactsRequest, AddArtifactsRequestSchema, crc32 } from "@valise/protocol";
import { type ServerProcess, startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const MiB = 1024 * 1024;
const CHUNKS = 200;
/**
 * More than HTTP/2 lets a client have in flight (the server's 4 MiB stream and 16 MiB connection
 * windows): once the client has sent this much, the server's handler has been reading it.
 */
const IN_FLIGHT_MAX = 40 * MiB;
const UPLOAD = "spark.connect.SparkConnectService/AddArtifacts";

/**
 * An upload of a 200 MiB artifact that sends 40 MiB, then calls `stalled()` and sends nothing
 * more, without half-closing.
 */
export async function* stallingUpload(
  sessionId: string,
  stalled: () => void,
): AsyncGenerator<AddArtifactsRequest> {
  const data = new Uint8Array(MiB).fill(7);
  const crc = BigInt(crc32(data));
  yield create(AddArtifactsRequestSchema, {
    sessionId,
    payload: {
      case: "beginChunk",
      value: {
        name: "files/big.bin",
        totalBytes: BigInt(CHUNKS * MiB),
        numChunks: BigInt(CHUNKS),
        initialChunk: { data, crc },
      },
    },
  });
  for (let sent = MiB; sent < CHUNKS * MiB; sent += MiB) {
    if (sent > IN_FLIGHT_MAX) {
      stalled();
      await new Promise<never>(() => {});
    }
    yield create(AddArtifactsRequestSchema, {
      sessionId,
      payload: { case: "chunk", value: { data, crc } },
    });
  }
}

async function metricsUrl(server: ServerProcess): Promise<string> {
  const line = await server.waitForLog(/metrics on http:\/\/\S+/);
  return line.match(/http:\/\/\S+/)![0];
}

async function rpcCounts(url: string, method: string): Promise<Record<string, number>> {
  const text = await (await fetch(url)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^valise_rpcs_total\{method="([^"]+)",code="([^"]+)"\} (\d+)$/gm)) {
    if (m[1] === method) out[m[2]!] = Number(m[3]);
  }
  return out;
}

async function checkCancelled(server: ServerProcess, dataDir: string): Promise<void> {
  const line = await server.waitForLog(`rpc ${UPLOAD} `);
  ok(
    line.includes(
      `rpc ${UPLOAD} Canceled [CANCELLED] The client cancelled the call, or its connection ` +
        `closed, before it completed (HTTP/2 stream closed with error code `,
    ),
    line,
  );
  ok(!line.includes("Internal [INTERNAL_ERROR]"), line);
  deepEqual(await rpcCounts(await metricsUrl(server), UPLOAD), { Canceled: 1 });
  // What the stream staged is gone, and the server serves on.
  deepEqual(await Array.fromAsync(Deno.readDir(join(dataDir, "staging"))), []);
  equal((await server.clients.health.check({})).status, 1);
}

Deno.test("an upload the client aborts is logged and counted as cancelled", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-cancel-" });
  const dataDir = join(tmp, "data");
  const server = await startServer({ dataDir, args: ["--metrics-port", "0"] });
  try {
    let stalled!: () => void;
    const sent = new Promise<void>((r) => (stalled = r));
    const ac = new AbortController();
    const call = server.clients.spark.addArtifacts(
      stallingUpload(crypto.randomUUID(), stalled),
      { signal: ac.signal },
    ).then(() => undefined, (e) => e);
    await sent;
    ac.abort();
    ok(await call, "the aborted upload succeeded");
    await checkCancelled(server, dataDir);
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
});

Deno.test("an upload whose client process dies is logged and counted as cancelled", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-cancel-" });
  const dataDir = join(tmp, "data");
  const server = await startServer({ dataDir, args: ["--metrics-port", "0"] });
  const script = join(tmp, "client.ts");
  await Deno.writeTextFile(
    script,
    `import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { SparkConnectService } from "@valise/protocol";
import { stallingUpload } from ${JSON.stringify(import.meta.url)};
const spark = createClient(SparkConnectService, createGrpcTransport({ baseUrl: Deno.args[0] }));
await spark.addArtifacts(stallingUpload(crypto.randomUUID(), () => console.log("stalled")));
`,
  );
  const config = new URL("../deno.json", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", config, script, server.baseUrl],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const first = await reader.read();
    equal(first.value?.trim(), "stalled");
    // The connection drops without a goodbye, as when a terminal is closed mid-upload.
    child.kill("SIGKILL");
    await child.status;
    reader.releaseLock();
    await checkCancelled(server, dataDir);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await child.status;
    await child.stdout.cancel().catch(() => {});
    await server.stop();
    await removeTree(tmp);
  }
});
