// Copyright 2026 the Valise authors. Apache-2.0 license.
import { createHash } from "node:crypto";
import type { BlobChallenge } from "@valise/protocol";
import type { ValiseClientError } from "./error.ts";

/** The proof of possession sent with an attachment: see `valise.v1.BlobProof`. */
export interface BlobProofInit {
  /** The challenge's nonce. */
  nonce: Uint8Array;
  /** sha256(nonce || the bytes of each range, in order). */
  sha256: Uint8Array;
}

// A server asks for a handful of ranges; a challenge beyond this is not worth answering
// (the client uploads instead), so no server can make it loop for long.
const MAX_RANGES = 4096;
const READ_BYTES = 1024 * 1024;

/**
 * Answers a server's challenge from the local file: sha256 of the nonce, then of each range's
 * bytes in order, reading only those ranges (in pieces of at most 1 MiB).
 *
 * @param path The local file whose digest the challenge names.
 * @param challenge The server's challenge.
 * @param signal Cancels the read.
 * @returns The proof, or `undefined` when the challenge does not fit the file (the client then
 *   uploads).
 */
export async function answerChallenge(
  path: string,
  challenge: BlobChallenge,
  signal?: AbortSignal,
): Promise<BlobProofInit | undefined> {
  if (challenge.ranges.length > MAX_RANGES) return undefined;
  using file = await Deno.open(path, { read: true });
  const size = BigInt((await file.stat()).size);
  const h = createHash("sha256").update(challenge.nonce);
  const buf = new Uint8Array(READ_BYTES);
  for (const r of challenge.ranges) {
    if (r.offset + r.length > size) return undefined;
    await file.seek(Number(r.offset), Deno.SeekMode.Start);
    let left = Number(r.length);
    while (left > 0) {
      signal?.throwIfAborted();
      const n = await file.read(buf.subarray(0, Math.min(left, buf.length)));
      // The file shrank since it was hashed: it is not the content asked about any more.
      if (n === null) return undefined;
      h.update(buf.subarray(0, n));
      left -= n;
    }
  }
  return { nonce: challenge.nonce, sha256: new Uint8Array(h.digest()) };
}

/**
 * Whether an AttachArtifacts failure means "send the bytes instead": no or a stale proof of
 * possession, or a blob evicted since HasBlobs.
 */
export function attachRefused(e: ValiseClientError): boolean {
  return e.errorClass === "BLOB_PROOF_REQUIRED" || e.errorClass === "BLOB_PROOF_INVALID" ||
    e.errorClass === "BLOB_NOT_FOUND";
}
