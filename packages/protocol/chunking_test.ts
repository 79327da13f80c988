// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, rejects } from "node:assert/strict";
import fc from "fast-check";
import {
  addArtifactsRequests,
  type ArtifactSource,
  bytesArtifact,
  CHUNK_SIZE,
} from "./chunking.ts";
import { crc32 } from "./crc32.ts";

const SID = "0b3f6c2e-7e61-4d0e-8a55-3f8f5f0c9f10";

function bytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

/** Reads a request stream back into artifacts, checking every protocol rule on the way. */
async function replay(
  reqs: AsyncIterable<import("./gen/spark/connect/base_pb.ts").AddArtifactsRequest>,
  chunkSize: number,
): Promise<{ name: string; data: Uint8Array }[]> {
  const out: { name: string; data: Uint8Array }[] = [];
  let open: { name: string; parts: Uint8Array[]; left: number; total: number } | undefined;
  for await (const r of reqs) {
    equal(r.sessionId, SID);
    const p = r.payload;
    if (p.case === "batch") {
      equal(open, undefined, "batch while a chunked artifact is open");
      let total = 0;
      for (const a of p.value.artifacts) {
        equal(Number(a.data!.crc), crc32(a.data!.data));
        total += a.data!.data.length;
        out.push({ name: a.name, data: a.data!.data });
      }
      equal(total <= chunkSize, true, "batch larger than a chunk");
    } else if (p.case === "beginChunk") {
      equal(open, undefined);
      const c = p.value.initialChunk!;
      equal(Number(c.crc), crc32(c.data));
      equal(c.data.length, chunkSize);
      open = {
        name: p.value.name,
        parts: [c.data],
        left: Number(p.value.numChunks) - 1,
        total: Number(p.value.totalBytes),
      };
      equal(open.total > chunkSize, true);
      equal(Number(p.value.numChunks), Math.ceil(open.total / chunkSize));
    } else if (p.case === "chunk") {
      if (!open) throw new Error("chunk without begin");
      equal(Number(p.value.crc), crc32(p.value.data));
      open.parts.push(p.value.data);
      open.left--;
    } else {
      throw new Error("empty payload");
    }
    if (open && open.left === 0) {
      const data = new Uint8Array(open.parts.reduce((n, x) => n + x.length, 0));
      let at = 0;
      for (const x of open.parts) {
        data.set(x, at);
        at += x.length;
      }
      equal(data.length, open.total);
      out.push({ name: open.name, data });
      open = undefined;
    }
  }
  equal(open, undefined, "stream ended with a chunked artifact open");
  return out;
}

Deno.test("addArtifactsRequests() follows PySpark at the chunk-size edges", async () => {
  const kinds = async (sizes: number[]) => {
    const out: string[] = [];
    for await (
      const r of addArtifactsRequests(
        sizes.map((n, i) => bytesArtifact(`files/f${i}`, bytes(n, i))),
        { sessionId: SID },
      )
    ) {
      out.push(
        r.payload.case === "batch" ? `batch${r.payload.value.artifacts.length}` : r.payload.case!,
      );
    }
    return out.join(",");
  };
  equal(await kinds([0]), "batch1");
  equal(await kinds([CHUNK_SIZE]), "batch1");
  equal(await kinds([CHUNK_SIZE + 1]), "beginChunk,chunk");
  equal(await kinds([CHUNK_SIZE * 2]), "beginChunk,chunk");
  equal(await kinds([CHUNK_SIZE - 1, 1]), "batch2");
  equal(await kinds([CHUNK_SIZE - 1, 2]), "batch1,batch1");
  equal(await kinds([10, 100_000, 10]), "batch1,beginChunk,chunk,chunk,chunk,batch1");
});

Deno.test("addArtifactsRequests() sets user_context only when a user is given", async () => {
  const [withUser] = await Array.fromAsync(
    addArtifactsRequests([bytesArtifact("files/a", bytes(3, 1))], { sessionId: SID, userId: "u" }),
  );
  equal(withUser!.userContext!.userId, "u");
  equal(withUser!.clientType, undefined);
  equal(withUser!.clientObservedServerSideSessionId, undefined);
});

Deno.test("addArtifactsRequests() refuses a source whose size is wrong", async () => {
  const liar: ArtifactSource = { name: "files/x", size: 100_000, read: () => [bytes(10, 0)] };
  await rejects(
    Array.fromAsync(addArtifactsRequests([liar], { sessionId: SID })),
    /declared as 100000 bytes but 10 bytes were read/,
  );
});

Deno.test("addArtifactsRequests() round-trips any artifacts through the wire rules", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.integer({ min: 0, max: 3000 }), { maxLength: 12 }),
      fc.integer({ min: 1, max: 1024 }),
      fc.integer({ min: 1, max: 700 }),
      async (sizes, chunkSize, readPiece) => {
        const sources: ArtifactSource[] = sizes.map((n, i) => {
          const data = bytes(n, i);
          return {
            name: `files/f${i}`,
            size: n,
            *read() {
              for (let at = 0; at < n; at += readPiece) yield data.subarray(at, at + readPiece);
            },
          };
        });
        const got = await replay(
          addArtifactsRequests(sources, { sessionId: SID, chunkSize }),
          chunkSize,
        );
        deepEqual(
          got.map((a) => a.name),
          sizes.map((_, i) => `files/f${i}`),
        );
        got.forEach((a, i) => deepEqual(a.data, bytes(sizes[i]!, i)));
      },
    ),
    { numRuns: 200 },
  );
});
