// The hand-written envelopes of an upload are byte for byte what `toBinary` gives for the message
// attached to them, and those messages are the ones `addArtifactsRequests` (PySpark's way of
// chunking) builds for the same file: for any bytes, sizes around the chunk size, names and ids.
import { deepEqual, equal, rejects } from "node:assert/strict";
import { join } from "node:path";
import { createHash } from "node:crypto";
import fc from "fast-check";
import { toBinary } from "@bufbuild/protobuf";
import {
  addArtifactsRequests,
  AddArtifactsRequestSchema,
  bytesArtifact,
  grpcEnvelope,
} from "@valise/protocol";
import { envelopeOf } from "./_client_stream.ts";
import { uploadMessages } from "./_client_stream_upload.ts";

/** The envelopes `withEnvelope` attached (what the call writes), and `toBinary`'s. */
function envelopesOf(
  messages: readonly object[],
): { wire: Uint8Array[]; encoded: Uint8Array[] } {
  const wire: Uint8Array[] = [];
  const encoded: Uint8Array[] = [];
  for (const m of messages) {
    wire.push(envelopeOf(m)!);
    encoded.push(grpcEnvelope(toBinary(AddArtifactsRequestSchema, m as never)));
  }
  return { wire, encoded };
}

Deno.test("uploadMessages: envelopes equal toBinary, messages equal addArtifactsRequests", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f");
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 200 }),
        fc.integer({ min: 1, max: 64 }),
        fc.string({ maxLength: 40 }),
        fc.option(fc.string({ maxLength: 20 }), { nil: undefined }),
        fc.option(fc.uuid(), { nil: undefined }),
        async (data, chunkSize, name, userId, observed) => {
          await Deno.writeFile(path, data);
          const sha256 = createHash("sha256").update(data).digest("hex");
          const fields = {
            sessionId: "6d0f4c37-5b1c-4b4e-9b39-0a8b56f1d2a1",
            userId,
            clientObservedServerSideSessionId: observed,
          };
          const mine = await Array.fromAsync(
            uploadMessages({ name, path, size: data.length, sha256 }, fields, chunkSize, () => {}),
          );
          const theirs = await Array.fromAsync(
            addArtifactsRequests([bytesArtifact(name, data)], {
              sessionId: fields.sessionId,
              chunkSize,
              ...(userId === undefined ? {} : { userId }),
              ...(observed === undefined ? {} : { clientObservedServerSideSessionId: observed }),
            }),
          );
          equal(mine.length, theirs.length);
          const { wire, encoded } = envelopesOf(mine);
          deepEqual(wire, encoded);
          deepEqual(
            encoded,
            theirs.map((m) => grpcEnvelope(toBinary(AddArtifactsRequestSchema, m))),
          );
        },
      ),
      { numRuns: 300 },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("uploadMessages: a file that grew or shrank since it was hashed fails, closed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f");
    const data = new Uint8Array(100).fill(3);
    await Deno.writeFile(path, data);
    const sha256 = createHash("sha256").update(data).digest("hex");
    const file = { name: "files/f", path, size: data.length, sha256 };
    await Deno.writeFile(path, new Uint8Array(101).fill(3));
    await rejects(
      Array.fromAsync(uploadMessages(file, { sessionId: "s" }, 30, () => {})),
      /declared as 100 bytes but more bytes were read/,
    );
    await Deno.writeFile(path, new Uint8Array(99).fill(3));
    await rejects(
      Array.fromAsync(uploadMessages(file, { sessionId: "s" }, 30, () => {})),
      /the file changed while it was being added/,
    );
    await rejects(
      Array.fromAsync(uploadMessages(file, { sessionId: "s" }, 0, () => {})),
      /chunk size 0 is not positive/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("uploadMessages: a message an interceptor changed is encoded again, not sent stale", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f");
    const data = new Uint8Array(100).fill(5);
    await Deno.writeFile(path, data);
    const sha256 = createHash("sha256").update(data).digest("hex");
    const file = { name: "files/f", path, size: data.length, sha256 };
    const [begin, chunk] = await Array.fromAsync(
      uploadMessages(file, { sessionId: "s", userId: "u" }, 60, () => {}),
    );
    equal(begin!.payload.case, "beginChunk");
    equal(envelopeOf(begin!) !== undefined, true);
    if (begin!.payload.case === "beginChunk") begin!.payload.value.initialChunk!.crc ^= 1n;
    equal(envelopeOf(begin!), undefined);
    chunk!.userContext!.userId = "someone else";
    equal(envelopeOf(chunk!), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
