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
import type { Session, SessionStore } from "@valise/session-store";
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
 * In a cluster, "holds" means this node or the cluster's object store (fetched and verified
 * before use), the user's sessions are those the cluster records, and a challenge any node
 * issued is verified on any other (one key for all, see `NatsRegistry.proofKey`).
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
        const held = store.heldDigests(session.userId);
        const sizes = await blobSizes(store, req.sha256);
        const present: string[] = [];
        const challenges: BlobChallenge[] = [];
        const asked = new Set<string>();
        for (const d of req.sha256) {
          const size = sizes.get(d);
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
        // Blobs brought to this node for the call stay until it has attached them.
        const holds: (() => void)[] = [];
        try {
          // Every digest is checked before anything is attached: a refused proof leaves the
          // session as it was, and the client uploads those artifacts instead.
          const held = store.heldDigests(session.userId);
          const ready = new Set<string>();
          for (const a of req.artifacts) {
            if (!SHA256_HEX.test(a.sha256)) {
              throw new SessionError(
                "INVALID_ARTIFACT_NAME",
                `Cannot attach ${a.name}: "${a.sha256}" is not a lowercase sha256 hex digest.`,
              );
            }
            if (held.has(a.sha256) || ready.has(a.sha256)) continue;
            holds.push(await checkProof(store, proofs, session, a));
            ready.add(a.sha256);
          }
          // The user's own content (held by their sessions on any node): brought here if only
          // the cluster has it.
          for (const a of req.artifacts) {
            if (ready.has(a.sha256)) continue;
            holds.push(await store.holdBlob(a.sha256, session, a.name));
            ready.add(a.sha256);
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
          for (const letGo of holds) letGo();
          done();
        }
      } catch (e) {
        throw toConnectError(e);
      }
    },
  };
}

/**
 * Digests of one HasBlobs call looked up in the cluster's object store, at most: each is a NATS
 * request. The rest are answered from this node's blobs only (the client uploads those).
 */
export const MAX_CLUSTER_LOOKUPS = 1024;
/** Cluster look-ups in flight at once for one call. */
const LOOKUPS_AT_ONCE = 16;

/** The sizes of the digests asked for that this node, or else the cluster, holds. */
async function blobSizes(
  store: SessionStore,
  asked: readonly string[],
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const remote: string[] = [];
  for (const d of new Set(asked)) {
    if (!SHA256_HEX.test(d)) continue;
    const size = await store.blobSize(d, { cluster: false });
    if (size !== undefined) out.set(d, size);
    else if (remote.length < MAX_CLUSTER_LOOKUPS) remote.push(d);
  }
  for (let i = 0; i < remote.length; i += LOOKUPS_AT_ONCE) {
    const batch = remote.slice(i, i + LOOKUPS_AT_ONCE);
    const sizes = await Promise.all(batch.map((d) => store.blobSize(d)));
    batch.forEach((d, j) => {
      const size = sizes[j];
      if (size !== undefined) out.set(d, size);
    });
  }
  return out;
}

/**
 * Checks the proof of possession of a digest no session of the user holds, and brings the blob
 * to this node to check it against (after the nonce was found genuine: a proof that answers no
 * challenge costs no fetch).
 *
 * @returns A function that lets the blob go (it is kept from eviction until then).
 */
async function checkProof(
  store: SessionStore,
  proofs: BlobProofs,
  session: Session,
  a: AttachArtifactsRequest_Attachment,
): Promise<() => void> {
  const size = await store.blobSize(a.sha256);
  if (size === undefined) {
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
  const proof = a.proof;
  let letGo: (() => void) | undefined;
  try {
    proofs.ranges(session.userId, a.sha256, size, proof.nonce);
    letGo = await store.holdBlob(a.sha256, session, a.name);
    await proofs.verify(session.userId, a.sha256, store.blobs.path(a.sha256), proof);
    return letGo;
  } catch (e) {
    letGo?.();
    if (e instanceof Deno.errors.NotFound) {
      throw new SessionError(
        "BLOB_NOT_FOUND",
        `Cannot attach ${a.name}: the server holds no blob with sha256 ${a.sha256}. Upload it.`,
      );
    }
    if (e instanceof SessionError && e.errorClass.startsWith("BLOB_PROOF")) {
      throw new SessionError(e.errorClass, `${a.name}: ${e.message.replace(/^\[[^\]]+\] /, "")}`, {
        ...(e.reason ? { reason: e.reason } : {}),
        cause: e,
      });
    }
    throw e;
  }
}
