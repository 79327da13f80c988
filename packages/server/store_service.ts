// Copyright 2026 the Valise authors. Apache-2.0 license.
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type AttachArtifactsRequest_Attachment,
  AttachArtifactsResponseSchema,
  type BlobChallenge,
  BlobChallengeSchema,
  HasBlobsResponseSchema,
  type StoreService,
} from "@valise/protocol";
import type { SessionStore } from "@valise/session-store";
import { SessionError } from "@valise/session-store";
import { BlobProofs } from "./blob_proof.ts";
import { toConnectError } from "./errors.ts";
import { bindSession } from "./_bind.ts";

const SHA256_HEX = /^[0-9a-f]{64}$/;

/** What the store service needs. */
export interface StoreServiceContext {
  /** The session store to serve. */
  readonly store: SessionStore;
  /**
   * Issues and checks the proofs of possession asked for content the user does not hold.
   * @default {new BlobProofs()} a random key per instance
   */
  readonly proofs?: BlobProofs;
}

/**
 * Valise's content-addressed fast path (`valise.v1.StoreService`): ask which digests the
 * server holds, and add artifacts to a session by digest without sending their bytes.
 *
 * A digest is not a capability: a user may attach by digest alone only content one of their
 * own live sessions holds. Anything else needs a proof of possession (the answer to the
 * challenge HasBlobs gives), so content another user uploaded is never handed to someone who
 * only knows its sha256.
 *
 * @param ctx The session store to serve.
 * @returns The service implementation.
 */
export function createStoreService(ctx: StoreServiceContext): ServiceImpl<typeof StoreService> {
  const { store } = ctx;
  const proofs = ctx.proofs ?? new BlobProofs();
  return {
    async hasBlobs(req) {
      try {
        const session = await bindSession(store, req);
        const held = heldDigests(store, session.userId);
        const present: string[] = [];
        const challenges: BlobChallenge[] = [];
        const asked = new Set<string>();
        for (const d of req.sha256) {
          if (!SHA256_HEX.test(d)) continue;
          const size = await blobSize(store, d);
          if (size === undefined) continue;
          present.push(d);
          if (held.has(d) || asked.has(d)) continue;
          asked.add(d);
          const c = proofs.issue(session.userId, d, size);
          challenges.push(create(BlobChallengeSchema, {
            sha256: d,
            nonce: c.nonce,
            ranges: c.ranges.map((r) => ({ offset: BigInt(r.offset), length: BigInt(r.length) })),
          }));
        }
        return create(HasBlobsResponseSchema, {
          present,
          challenges,
          serverSideSessionId: session.serverSideSessionId,
        });
      } catch (e) {
        throw toConnectError(e);
      }
    },
    async attachArtifacts(req) {
      try {
        const session = await bindSession(store, req);
        const done = session.hold();
        try {
          // Every digest is checked before anything is attached: a refused proof leaves the
          // session as it was, and the client uploads those artifacts instead.
          const held = heldDigests(store, session.userId);
          const proven = new Set<string>();
          for (const a of req.artifacts) {
            if (!SHA256_HEX.test(a.sha256)) {
              throw new SessionError(
                "INVALID_ARTIFACT_NAME",
                `Cannot attach ${a.name}: "${a.sha256}" is not a lowercase sha256 hex digest.`,
              );
            }
            if (held.has(a.sha256) || proven.has(a.sha256)) continue;
            await checkProof(store, proofs, session.userId, a);
            proven.add(a.sha256);
          }
          // One manifest write for the whole request, however many artifacts it names.
          const { attached, error } = await session.attachAll(
            req.artifacts.map((a) => ({ name: a.name, sha256: a.sha256 })),
          );
          if (error) throw error;
          return create(AttachArtifactsResponseSchema, {
            sessionId: req.sessionId,
            serverSideSessionId: session.serverSideSessionId,
            attached,
          });
        } finally {
          done();
        }
      } catch (e) {
        throw toConnectError(e);
      }
    },
  };
}

/** The digests the live sessions of `userId` hold: those the user may attach by digest alone. */
function heldDigests(store: SessionStore, userId: string): Set<string> {
  const out = new Set<string>();
  for (const s of store.sessions()) {
    if (s.userId !== userId || s.closed) continue;
    for (const a of s.artifacts()) out.add(a.sha256);
  }
  return out;
}

async function blobSize(store: SessionStore, sha256: string): Promise<number | undefined> {
  try {
    return (await Deno.stat(store.blobs.path(sha256))).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

async function checkProof(
  store: SessionStore,
  proofs: BlobProofs,
  userId: string,
  a: AttachArtifactsRequest_Attachment,
): Promise<void> {
  if (await blobSize(store, a.sha256) === undefined) {
    throw new SessionError(
      "BLOB_NOT_FOUND",
      `Cannot attach ${a.name}: the server holds no blob with sha256 ${a.sha256}. Upload it.`,
    );
  }
  if (!a.proof) {
    throw new SessionError(
      "BLOB_PROOF_REQUIRED",
      `Cannot attach ${a.name} by digest alone: no live session of this user holds sha256 ` +
        `${a.sha256}, so the request must prove it holds the bytes (answer the challenge HasBlobs ` +
        `gives for it). Upload the bytes with AddArtifacts instead.`,
    );
  }
  try {
    await proofs.verify(userId, a.sha256, store.blobs.path(a.sha256), a.proof);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new SessionError(
        "BLOB_NOT_FOUND",
        `Cannot attach ${a.name}: the server holds no blob with sha256 ${a.sha256}. Upload it.`,
      );
    }
    if (e instanceof SessionError) {
      throw new SessionError(e.errorClass, `${a.name}: ${e.message.replace(/^\[[^\]]+\] /, "")}`, {
        ...(e.reason ? { reason: e.reason } : {}),
        cause: e,
      });
    }
    throw e;
  }
}
