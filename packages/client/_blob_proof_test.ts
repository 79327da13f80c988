// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import fc from "fast-check";
import { BlobChallengeSchema } from "@valise/protocol";
import { answerChallenge } from "./_blob_proof.ts";

function challenge(nonce: Uint8Array, ranges: [number, number][]) {
  return create(BlobChallengeSchema, {
    sha256: "0".repeat(64),
    nonce,
    ranges: ranges.map(([o, l]) => ({ offset: BigInt(o), length: BigInt(l) })),
  });
}

async function withFile<T>(bytes: Uint8Array, fn: (path: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "valise-answer-" });
  try {
    await Deno.writeFile(join(dir, "f"), bytes);
    return await fn(join(dir, "f"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("answerChallenge hashes the nonce, then each asked range of the file, in order", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.uint8Array({ maxLength: 3000 }),
      fc.uint8Array({ maxLength: 64 }),
      fc.array(fc.tuple(fc.nat(), fc.nat()), { maxLength: 8 }),
      async (bytes, nonce, raw) => {
        // Ranges inside the file, in any order, overlapping or empty.
        const ranges = raw.map(([a, b]): [number, number] => {
          const o = bytes.length ? a % (bytes.length + 1) : 0;
          return [o, b % (bytes.length - o + 1)];
        });
        const h = createHash("sha256").update(nonce);
        for (const [o, l] of ranges) h.update(bytes.subarray(o, o + l));
        const proof = await withFile(bytes, (p) => answerChallenge(p, challenge(nonce, ranges)));
        deepEqual(proof, { nonce, sha256: new Uint8Array(h.digest()) });
      },
    ),
    { numRuns: 60 },
  );
  // A range longer than one read piece (1 MiB) is read in pieces.
  const big = new Uint8Array(2 * 2 ** 20 + 3).map((_, i) => i % 253);
  const proof = await withFile(
    big,
    (p) => answerChallenge(p, challenge(new Uint8Array([1]), [[1, big.length - 1]])),
  );
  deepEqual(
    proof?.sha256,
    new Uint8Array(
      createHash("sha256").update(new Uint8Array([1])).update(big.subarray(1)).digest(),
    ),
  );
});

Deno.test("answerChallenge declines challenges that do not fit the file (the client uploads)", async () => {
  const bytes = new Uint8Array(100).fill(3);
  await withFile(bytes, async (p) => {
    // Past the end, or a file that shrank since it was hashed.
    equal(await answerChallenge(p, challenge(new Uint8Array(1), [[0, 101]])), undefined);
    equal(await answerChallenge(p, challenge(new Uint8Array(1), [[2 ** 40, 1]])), undefined);
    // More ranges than any server asks for.
    const many = Array.from({ length: 4097 }, (): [number, number] => [0, 1]);
    equal(await answerChallenge(p, challenge(new Uint8Array(1), many)), undefined);
  });
});
