// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { createHash, randomBytes as nodeRandomBytes } from "node:crypto";
import { join } from "node:path";
import fc from "fast-check";
import { SessionError } from "@valise/session-store";
import {
  BlobProofs,
  type BlobRange,
  type PossessionChallenge,
  proofDigest,
  RANGE_COUNT,
  RANGE_LENGTH,
  WHOLE_BLOB_MAX,
} from "./blob_proof.ts";

const hex = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const randomBytes = (n: number) => new Uint8Array(nodeRandomBytes(n));

/** What an honest client computes from the bytes it holds. */
function answer(
  c: PossessionChallenge,
  bytes: Uint8Array,
  ranges: readonly BlobRange[] = c.ranges,
) {
  return proofDigest(
    c.nonce,
    ranges,
    (r) => Promise.resolve(bytes.subarray(r.offset, r.offset + r.length)),
  );
}

/** A blob file as the server keeps it, in a fresh directory. */
async function withBlob<T>(bytes: Uint8Array, fn: (path: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "valise-proof-" });
  try {
    const path = join(dir, "blob");
    await Deno.writeFile(path, bytes, { mode: 0o444 });
    return await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Resolves to the error's reason when `p` fails with BLOB_PROOF_INVALID. */
async function reason(p: Promise<unknown>): Promise<string | undefined> {
  let reason: string | undefined;
  await rejects(p, (e) => {
    ok(e instanceof SessionError, String(e));
    equal(e.errorClass, "BLOB_PROOF_INVALID");
    ok(e.message.includes("Upload the bytes"), e.message);
    reason = e.reason;
    return true;
  });
  return reason;
}

/** Large blobs: arbitrary bytes tiled to an arbitrary size above the whole-blob limit. */
const largeBlob = fc.tuple(
  fc.uint8Array({ minLength: 1, maxLength: 97 }),
  fc.integer({ min: WHOLE_BLOB_MAX + 1, max: 3 * WHOLE_BLOB_MAX }),
).map(([tile, size]) => {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i += tile.length) b.set(tile.subarray(0, size - i), i);
  return b;
});
const smallBlob = fc.uint8Array({ minLength: 0, maxLength: 4096 });
const anyBlob = fc.oneof({ arbitrary: smallBlob, weight: 4 }, { arbitrary: largeBlob, weight: 1 });
const user = fc.string({ maxLength: 12 });

Deno.test("blob proof: a proof from the blob's bytes verifies", async () => {
  const proofs = new BlobProofs();
  await fc.assert(
    fc.asyncProperty(anyBlob, user, async (bytes, userId) => {
      const c = proofs.issue(userId, hex(bytes), bytes.length);
      const proof = { nonce: c.nonce, sha256: await answer(c, bytes) };
      await withBlob(bytes, (path) => proofs.verify(userId, hex(bytes), path, proof));
    }),
    { numRuns: 60 },
  );
});

Deno.test("blob proof: ranges are the whole small blob, or one 4 KiB range per stratum", () => {
  const proofs = new BlobProofs();
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 40 }), user, (size, userId) => {
      const c = proofs.issue(userId, "a".repeat(64), size);
      deepEqual(proofs.ranges(userId, "a".repeat(64), size, c.nonce), c.ranges);
      if (size <= WHOLE_BLOB_MAX) {
        deepEqual(c.ranges, size === 0 ? [] : [{ offset: 0, length: size }]);
        return;
      }
      equal(c.ranges.length, RANGE_COUNT);
      c.ranges.forEach((r, i) => {
        equal(r.length, RANGE_LENGTH);
        ok(r.offset >= Math.floor(size * i / RANGE_COUNT), `range ${i} starts in its stratum`);
        ok(r.offset < Math.floor(size * (i + 1) / RANGE_COUNT), `range ${i} starts in its stratum`);
        ok(r.offset + r.length <= size, `range ${i} ends inside the blob`);
      });
    }),
  );
  // Two challenges for one large blob name different ranges.
  const a = proofs.issue("u", "a".repeat(64), 2 ** 30);
  const b = proofs.issue("u", "a".repeat(64), 2 ** 30);
  ok(a.ranges.some((r, i) => r.offset !== b.ranges[i]!.offset));
});

Deno.test("blob proof: other bytes in the asked ranges do not verify", async () => {
  const proofs = new BlobProofs();
  await fc.assert(
    fc.asyncProperty(
      anyBlob,
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      async (bytes, where, flip) => {
        const c = proofs.issue("u", hex(bytes), bytes.length);
        fc.pre(c.ranges.length > 0);
        // Change one byte inside one of the asked ranges.
        const r = c.ranges[where % c.ranges.length]!;
        const other = bytes.slice();
        other[r.offset + (where % r.length)]! ^= flip;
        const proof = { nonce: c.nonce, sha256: await answer(c, other) };
        equal(
          await withBlob(bytes, (path) => reason(proofs.verify("u", hex(bytes), path, proof))),
          "MISMATCH",
        );
      },
    ),
    { numRuns: 60 },
  );
});

Deno.test("blob proof: any proof bytes but the right ones do not verify", async () => {
  const proofs = new BlobProofs();
  await fc.assert(
    fc.asyncProperty(smallBlob, fc.uint8Array({ maxLength: 40 }), async (bytes, forged) => {
      const c = proofs.issue("u", hex(bytes), bytes.length);
      const right = await answer(c, bytes);
      fc.pre(forged.length !== right.length || forged.some((b, i) => b !== right[i]));
      const proof = { nonce: c.nonce, sha256: forged };
      equal(
        await withBlob(bytes, (path) => reason(proofs.verify("u", hex(bytes), path, proof))),
        "MISMATCH",
      );
    }),
    { numRuns: 60 },
  );
});

Deno.test("blob proof: the blob's public digest is not an answer", async () => {
  const proofs = new BlobProofs();
  await fc.assert(
    fc.asyncProperty(smallBlob, async (bytes) => {
      const c = proofs.issue("u", hex(bytes), bytes.length);
      // A guesser knows sha256(bytes) and the nonce; neither alone, nor in any order, answers.
      const digest = createHash("sha256").update(bytes).digest();
      for (
        const guess of [
          new Uint8Array(digest),
          new Uint8Array(createHash("sha256").update(c.nonce).update(digest).digest()),
          new Uint8Array(createHash("sha256").update(digest).update(c.nonce).digest()),
        ]
      ) {
        const proof = { nonce: c.nonce, sha256: guess };
        equal(
          await withBlob(bytes, (path) => reason(proofs.verify("u", hex(bytes), path, proof))),
          "MISMATCH",
        );
      }
    }),
    { numRuns: 30 },
  );
});

Deno.test("blob proof: a proof over other ranges than the asked ones does not verify", async () => {
  const proofs = new BlobProofs();
  await fc.assert(
    fc.asyncProperty(largeBlob, fc.nat(), fc.integer({ min: 1, max: 4096 }), async (b, i, d) => {
      // Make the blob's bytes differ everywhere, so that moving a range changes what it reads.
      const bytes = b.map((x, k) => (x + k * 131) & 0xff);
      const c = proofs.issue("u", hex(bytes), bytes.length);
      const k = i % c.ranges.length;
      const moved = c.ranges.map((r, j) =>
        j !== k ? r : { offset: r.offset >= d ? r.offset - d : r.offset + d, length: r.length }
      );
      const proof = { nonce: c.nonce, sha256: await answer(c, bytes, moved) };
      fc.pre(!(await answer(c, bytes)).every((x, j) => x === proof.sha256[j]));
      equal(
        await withBlob(bytes, (path) => reason(proofs.verify("u", hex(bytes), path, proof))),
        "MISMATCH",
      );
    }),
    { numRuns: 20 },
  );
  // Ranges cannot be widened or dropped either: the server derives them from the nonce.
  const bytes = randomBytes(WHOLE_BLOB_MAX + 5);
  const c = proofs.issue("u", hex(bytes), bytes.length);
  for (const ranges of [[], c.ranges.slice(1), [{ offset: 0, length: bytes.length }]]) {
    const proof = { nonce: c.nonce, sha256: await answer(c, bytes, ranges) };
    equal(
      await withBlob(bytes, (path) => reason(proofs.verify("u", hex(bytes), path, proof))),
      "MISMATCH",
    );
  }
});

Deno.test("blob proof: a proof is valid only for its user, blob, nonce and server", async () => {
  const proofs = new BlobProofs();
  const otherServer = new BlobProofs();
  await fc.assert(
    fc.asyncProperty(
      smallBlob,
      user,
      user,
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      async (bytes, a, b, at, flip) => {
        fc.pre(a !== b);
        const sha = hex(bytes);
        const c = proofs.issue(a, sha, bytes.length);
        const proof = { nonce: c.nonce, sha256: await answer(c, bytes) };
        await withBlob(bytes, async (path) => {
          // Issued to user a: user b cannot use it.
          equal(await reason(proofs.verify(b, sha, path, proof)), "NOT_ISSUED");
          // Issued by another server (or before a restart).
          equal(await reason(otherServer.verify(a, sha, path, proof)), "NOT_ISSUED");
          // Issued for another blob.
          equal(await reason(proofs.verify(a, "0".repeat(64), path, proof)), "NOT_ISSUED");
          // Any changed byte of the nonce, and any other length.
          const nonce = c.nonce.slice();
          nonce[at % nonce.length]! ^= flip;
          equal(await reason(proofs.verify(a, sha, path, { ...proof, nonce })), "NOT_ISSUED");
          const short = { ...proof, nonce: c.nonce.subarray(0, at % c.nonce.length) };
          equal(await reason(proofs.verify(a, sha, path, short)), "NOT_ISSUED");
          // Another genuine nonce for the same user and blob: the answer is for the first one.
          const c2 = proofs.issue(a, sha, bytes.length);
          equal(
            await reason(proofs.verify(a, sha, path, { ...proof, nonce: c2.nonce })),
            "MISMATCH",
          );
          // The right user, blob, nonce and server verify.
          await proofs.verify(a, sha, path, proof);
        });
      },
    ),
    { numRuns: 40 },
  );
});

Deno.test("blob proof: challenges expire, and are not honoured from the future", async () => {
  let now = 1_700_000_000_000;
  const proofs = new BlobProofs({ ttlMs: 600_000, now: () => now });
  const bytes = new TextEncoder().encode("secret settings");
  const sha = hex(bytes);
  const c = proofs.issue("u", sha, bytes.length);
  const proof = { nonce: c.nonce, sha256: await answer(c, bytes) };
  await withBlob(bytes, async (path) => {
    now += 600_000;
    await proofs.verify("u", sha, path, proof);
    now += 1;
    equal(await reason(proofs.verify("u", sha, path, proof)), "EXPIRED");
    // A clock that stepped back a little still honours it; far is refused.
    now -= 600_001 + 30_000;
    await proofs.verify("u", sha, path, proof);
    now -= 3_600_000;
    equal(await reason(proofs.verify("u", sha, path, proof)), "EXPIRED");
  });
});

Deno.test("blob proof: a blob file of another size than the challenged one refuses the proof", async () => {
  const proofs = new BlobProofs({ secret: new Uint8Array(32).fill(7) });
  const bytes = new Uint8Array(100).fill(1);
  const c = proofs.issue("u", hex(bytes), bytes.length);
  const proof = { nonce: c.nonce, sha256: await answer(c, bytes) };
  // The size is part of the MAC: a file of another size is another blob.
  equal(
    await withBlob(
      bytes.subarray(0, 50),
      (path) => reason(proofs.verify("u", hex(bytes), path, proof)),
    ),
    "NOT_ISSUED",
  );
});

Deno.test("blob proof: what sampling does not prove — bytes outside the ranges of a large blob", async () => {
  // Documented in docs/security.md: above WHOLE_BLOB_MAX only the sampled ranges are proven,
  // so a client that knows all of a large blob but a few bytes may pass a given challenge.
  const proofs = new BlobProofs();
  const bytes = randomBytes(WHOLE_BLOB_MAX * 2);
  const c = proofs.issue("u", hex(bytes), bytes.length);
  const other = bytes.slice();
  const inRange = (i: number) => c.ranges.some((r) => i >= r.offset && i < r.offset + r.length);
  let i = 0;
  while (inRange(i)) i++;
  other[i]! ^= 1;
  const proof = { nonce: c.nonce, sha256: await answer(c, other) };
  await withBlob(bytes, (path) => proofs.verify("u", hex(bytes), path, proof));
});

Deno.test("blob proof: a short secret is refused", () => {
  let threw = false;
  try {
    new BlobProofs({ secret: new Uint8Array(8) });
  } catch (e) {
    threw = e instanceof RangeError;
  }
  ok(threw);
});
