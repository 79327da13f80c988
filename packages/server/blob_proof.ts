// Copyright 2026 the Valise authors. Apache-2.0 license.
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { SessionError } from "@valise/session-store";

/** `length` bytes of a blob from `offset`. */
export interface BlobRange {
  /** Where the range starts. */
  readonly offset: number;
  /** How many bytes it covers. */
  readonly length: number;
}

/** What a client must answer to attach a blob it does not hold as its user: see `BlobProofs`. */
export interface PossessionChallenge {
  /** The blob's digest, lowercase hex. */
  readonly sha256: string;
  /** Opaque to the client, sent back in the proof: version, issue time, randomness, a MAC. */
  readonly nonce: Uint8Array;
  /** The bytes to hash after the nonce, in this order. */
  readonly ranges: BlobRange[];
}

/** A client's answer to a {@linkcode PossessionChallenge}. */
export interface PossessionProof {
  /** The challenge's nonce. */
  readonly nonce: Uint8Array;
  /** sha256(nonce || the bytes of each range, in order). */
  readonly sha256: Uint8Array;
}

/** Options of {@linkcode BlobProofs}. */
export interface BlobProofsOptions {
  /**
   * The key of the MACs. Random per instance by default: a restart invalidates outstanding
   * challenges, which live for one HasBlobs → AttachArtifacts round trip anyway, and nothing
   * secret is left in the data directory.
   * @default {randomBytes(32)}
   */
  secret?: Uint8Array;
  /**
   * How long a challenge stays valid, in milliseconds.
   * @default {600_000}
   */
  ttlMs?: number;
  /**
   * The clock (ms since the epoch); tests pass their own.
   * @default {Date.now}
   */
  now?: () => number;
}

/** Blobs up to this size are proven whole: small files are where a partly known secret hides. */
export const WHOLE_BLOB_MAX = 1024 * 1024;
/** Larger blobs are proven by one range in each of this many equal strata. */
export const RANGE_COUNT = 16;
/** The length of each range of a large blob. */
export const RANGE_LENGTH = 4096;

const VERSION = 1;
// version (1) | issued at, ms (8) | random (16) | MAC (16)
const NONCE_BYTES = 41;
const SIGNED_BYTES = 25;
const TAG_BYTES = 16;
// A nonce issued a little "in the future" of a clock that stepped back is still honoured.
const CLOCK_SKEW_MS = 60_000;
const enc = new TextEncoder();

/**
 * Proof of possession for `AttachArtifacts` across users. Knowing a digest (from a log, a
 * manifest, a public index) must not be enough to get another user's content attached: the
 * server names byte ranges of the blob, chosen at random, and the client answers with the
 * hash of the nonce and those bytes — cheap for a holder, impossible for a guesser.
 *
 * Stateless: the nonce carries its issue time and a MAC over (user, digest, size, time,
 * randomness), and the ranges are derived from a second MAC of the nonce, so the server stores
 * nothing per challenge, a proof is only valid for the user it was issued to, and it expires.
 *
 * What it proves: for blobs up to {@linkcode WHOLE_BLOB_MAX}, every byte; above, the sampled
 * ranges only (one per sixteenth of the blob), so a client that knows all of a large blob but a
 * few bytes may pass (see `docs/security.md`).
 */
export class BlobProofs {
  #secret: Uint8Array;
  #ttlMs: number;
  #now: () => number;

  /** Creates a prover with its own key (random unless given). */
  constructor(options: BlobProofsOptions = {}) {
    this.#secret = options.secret ?? randomBytes(32);
    if (this.#secret.length < 16) {
      throw new RangeError(
        `Cannot create BlobProofs: the secret has ${this.#secret.length} bytes, at least 16 needed`,
      );
    }
    this.#ttlMs = options.ttlMs ?? 600_000;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Issues a challenge for one blob to one user.
   *
   * @param userId The user who may answer it.
   * @param sha256 The blob's digest, lowercase hex.
   * @param size The blob's size in bytes.
   * @returns The challenge to send in `HasBlobsResponse.challenges`.
   */
  issue(userId: string, sha256: string, size: number): PossessionChallenge {
    const nonce = new Uint8Array(NONCE_BYTES);
    nonce[0] = VERSION;
    new DataView(nonce.buffer).setBigUint64(1, BigInt(Math.max(0, Math.floor(this.#now()))));
    nonce.set(randomBytes(16), 9);
    nonce.set(this.#tag(userId, sha256, size, nonce.subarray(0, SIGNED_BYTES)), SIGNED_BYTES);
    return { sha256, nonce, ranges: this.#ranges(nonce, size) };
  }

  /**
   * Checks that a nonce was issued by this instance to `userId` for this blob and has not
   * expired, and returns the ranges its proof must cover.
   *
   * @throws {SessionError} `BLOB_PROOF_INVALID` (reason `NOT_ISSUED` or `EXPIRED`).
   */
  ranges(userId: string, sha256: string, size: number, nonce: Uint8Array): BlobRange[] {
    const issued = nonce.length === NONCE_BYTES && nonce[0] === VERSION &&
      timingSafeEqual(
        this.#tag(userId, sha256, size, nonce.subarray(0, SIGNED_BYTES)),
        nonce.subarray(SIGNED_BYTES),
      );
    if (!issued) {
      throw invalid(
        "NOT_ISSUED",
        sha256,
        "the proof answers no challenge this server issued to this user for that blob (it may " +
          "have restarted since HasBlobs).",
      );
    }
    const at = Number(new DataView(nonce.buffer, nonce.byteOffset).getBigUint64(1));
    const now = this.#now();
    if (now - at > this.#ttlMs || at - now > CLOCK_SKEW_MS) {
      throw invalid(
        "EXPIRED",
        sha256,
        `the challenge was issued ${Math.round((now - at) / 1000)} s ago and is valid for ` +
          `${Math.round(this.#ttlMs / 1000)} s.`,
      );
    }
    return this.#ranges(nonce, size);
  }

  /**
   * Verifies a proof against the blob file, reading only the ranges it covers.
   *
   * @param userId The user attaching.
   * @param sha256 The blob's digest.
   * @param path The blob's file, written by the server only.
   * @param proof The client's answer.
   * @throws {SessionError} `BLOB_PROOF_INVALID` (reason `NOT_ISSUED`, `EXPIRED` or `MISMATCH`).
   */
  async verify(
    userId: string,
    sha256: string,
    path: string,
    proof: PossessionProof,
  ): Promise<void> {
    using file = await Deno.open(path, { read: true });
    const size = (await file.stat()).size;
    const ranges = this.ranges(userId, sha256, size, proof.nonce);
    const want = await proofDigest(proof.nonce, ranges, (r) => readRange(file, sha256, r));
    if (proof.sha256.length !== want.length || !timingSafeEqual(proof.sha256, want)) {
      throw invalid(
        "MISMATCH",
        sha256,
        "the proof does not match the blob's bytes in the ranges asked for.",
      );
    }
  }

  #tag(userId: string, sha256: string, size: number, signed: Uint8Array): Uint8Array {
    const user = enc.encode(userId);
    const h = createHmac("sha256", this.#secret)
      .update("valise blob challenge v1\0")
      .update(u64(user.length)).update(user)
      .update(enc.encode(sha256))
      .update(u64(size))
      .update(signed);
    return new Uint8Array(h.digest().subarray(0, TAG_BYTES));
  }

  /** The ranges a nonce names: the whole blob when small, else one per stratum. */
  #ranges(nonce: Uint8Array, size: number): BlobRange[] {
    if (size <= WHOLE_BLOB_MAX) return size === 0 ? [] : [{ offset: 0, length: size }];
    const out: BlobRange[] = [];
    for (let i = 0; i < RANGE_COUNT; i++) {
      const start = Math.floor(size * i / RANGE_COUNT);
      const last = Math.min(Math.floor(size * (i + 1) / RANGE_COUNT), size - RANGE_LENGTH);
      const mac = createHmac("sha256", this.#secret)
        .update("valise blob ranges v1\0").update(nonce).update(u64(i)).digest();
      // 48 random bits make the modulo's bias negligible for any blob a disk holds.
      const r = mac.readUIntBE(0, 6);
      out.push({ offset: start + r % (last - start + 1), length: RANGE_LENGTH });
    }
    return out;
  }
}

/**
 * The answer to a challenge: sha256 of the nonce followed by the bytes of each range, in order.
 * The nonce comes first so that the blob's public digest says nothing about the answer.
 *
 * @param nonce The challenge's nonce.
 * @param ranges The challenge's ranges.
 * @param read Reads one range, exactly.
 * @returns The 32-byte digest.
 */
export async function proofDigest(
  nonce: Uint8Array,
  ranges: readonly BlobRange[],
  read: (range: BlobRange) => Promise<Uint8Array>,
): Promise<Uint8Array> {
  const h = createHash("sha256").update(nonce);
  for (const r of ranges) h.update(await read(r));
  return new Uint8Array(h.digest());
}

/** Reads `range` of an open file exactly; a short file is a mismatch, not a hang. */
async function readRange(
  file: Deno.FsFile,
  sha256: string,
  range: BlobRange,
): Promise<Uint8Array> {
  const buf = new Uint8Array(range.length);
  await file.seek(range.offset, Deno.SeekMode.Start);
  let got = 0;
  while (got < buf.length) {
    const n = await file.read(buf.subarray(got));
    if (n === null) {
      throw invalid(
        "MISMATCH",
        sha256,
        `the blob ended at byte ${range.offset + got}, in a range.`,
      );
    }
    got += n;
  }
  return buf;
}

function u64(n: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n));
  return b;
}

function invalid(
  reason: "NOT_ISSUED" | "EXPIRED" | "MISMATCH",
  sha256: string,
  why: string,
): SessionError {
  return new SessionError(
    "BLOB_PROOF_INVALID",
    `Cannot attach sha256 ${sha256} by digest: ${why} Upload the bytes with AddArtifacts ` +
      `instead, or ask HasBlobs for a new challenge.`,
    { reason, parameters: { sha256 } },
  );
}
