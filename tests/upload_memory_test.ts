// Copyright 2026 the Valise authors. Apache-2.0 license.
// The server's memory does not follow the size of an upload: it receives, hashes and stages the
// bytes as they arrive, holding a few buffers per stream whatever the artifact's size.
import { deepEqual, ok } from "node:assert/strict";
import { join } from "node:path";
import { addArtifactsRequests, type ArtifactSource } from "@valise/protocol";
import { startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const MiB = 1024 * 1024;
const CHUNK = 32 * 1024;

/** An artifact of `mib` MiB in PySpark's 32 KiB chunks (one chunk repeated; read lazily). */
function source(mib: number, fill: number): ArtifactSource {
  const chunk = new Uint8Array(CHUNK).fill(fill);
  return {
    name: "files/big.bin",
    size: mib * MiB,
    *read() {
      for (let i = 0; i < mib * (MiB / CHUNK); i++) yield chunk;
    },
  };
}

/** Resets the process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0). */
function resetPeakRss(pid: number): void {
  Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
}

Deno.test({
  name:
    "a 1 GiB upload in PySpark's 32 KiB chunks: the server's peak RSS stays within 128 MiB of its " +
    "RSS after a 256 MiB upload (the artifact is never held in memory)",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "valise_upload_memory_" });
    const s = await startServer({ dataDir: join(dir, "data"), args: ["--quiet"] });
    try {
      const user = { userId: "mem" };
      const upload = async (mib: number, fill: number) => {
        const sessionId = crypto.randomUUID();
        const res = await s.clients.spark.addArtifacts(
          addArtifactsRequests([source(mib, fill)], { sessionId, userId: user.userId }),
        );
        deepEqual(
          res.artifacts.map((a) => [a.name, a.isCrcSuccessful]),
          [["files/big.bin", true]],
        );
        await s.clients.spark.releaseSession({ sessionId, userContext: user });
      };
      // Code compiled, buffers and the allocator's arenas at their working size.
      await upload(256, 1);
      const before = s.rss();
      resetPeakRss(s.pid);
      await upload(1024, 2);
      const grown = s.peakRss() - before;
      ok(grown < 128 * MiB, `the server's RSS grew by ${(grown / MiB).toFixed(0)} MiB`);
    } finally {
      await s.stop();
      await removeTree(dir);
    }
  },
});
