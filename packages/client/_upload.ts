// Copyright 2026 the Valise authors. Apache-2.0 license.
// Adding artifacts: hash each file, attach what the server already holds (HasBlobs, then
// AttachArtifacts with proofs of possession), upload the rest with PySpark's AddArtifacts. An
// attempt whose node fails is made again from the start of the artifact in progress (on the next
// endpoint, if any), the file read again from disk and checked against the sha256 hashed first.
import {
  type AddArtifactsRequest,
  type BlobChallenge,
  SparkConnectService,
} from "@valise/protocol";
import { resolveArtifact } from "./artifact_path.ts";
import { ValiseClientError } from "./error.ts";
import {
  type AddArtifactsOptions,
  type AddedArtifact,
  type ArtifactProgress,
  sha256File,
} from "./upload.ts";
import { clientError } from "./_client_error.ts";
import { callOptions, type SessionCore } from "./_core.ts";
import type { Node } from "./_endpoints.ts";
import { clientStream } from "./_client_stream.ts";
import { uploadMessages } from "./_client_stream_upload.ts";
import { answerChallenge, attachRefused, type BlobProofInit } from "./_blob_proof.ts";

interface Pending {
  name: string;
  path: string;
  size: number;
  sha256: string;
  uploaded: boolean;
  committed: boolean;
}

type Report = (p: ArtifactProgress) => void;

/** The size of the chunks an upload is sent in. */
const UPLOAD_CHUNK_BYTES = 1 << 20;

/** A session's uploads; it remembers a server without the store service (no fast path). */
export class Uploader {
  #core: SessionCore;
  #hasStore = true;

  /**
   * Uploads through a session's transport.
   *
   * @param core The session.
   */
  constructor(core: SessionCore) {
    this.#core = core;
  }

  /**
   * Checks every path, hashes the files, then attaches or uploads them; a retry (its node
   * failed) asks the next node again and skips what was committed. Sending an artifact twice is
   * harmless: a node that died before answering committed all of it or nothing (the cluster
   * records an upload only once it is whole), and a second add of the same bytes is a no-op.
   *
   * @param paths Local paths or `file:` URLs.
   * @param options The kind flag, progress, base directory, fast path, signal.
   * @param report Receives every progress report.
   * @returns One entry per path, in order.
   */
  async add(
    paths: readonly string[],
    options: AddArtifactsOptions,
    report: Report,
  ): Promise<AddedArtifact[]> {
    const items = await pendingItems(paths, options);
    for (const it of items) {
      report(progress(it, "hash", 0));
      it.sha256 = await sha256File(it.path, options.signal, (n) => {
        if (n < it.size) report(progress(it, "hash", n));
      });
      report(progress(it, "hash", it.size));
    }
    const fast = options.fastPath ?? true;
    const added = (it: Pending) => options.onAdded?.(addedOf(it));
    await this.#core.retry.call("AddArtifacts", async (node) => {
      const pending = items.filter((i) => !i.committed);
      if (pending.length === 0) return;
      if (fast && this.#hasStore) await this.#attach(node, pending, report, added, options.signal);
      for (const it of items) {
        if (it.committed) continue;
        await this.#upload(node, it, report, options.signal);
        it.committed = true;
        it.uploaded = true;
        report(progress(it, "done", it.size));
        added(it);
      }
    }, { signal: options.signal });
    return items.map(addedOf);
  }

  /** Attaches the items whose bytes the server holds, marking them committed. */
  async #attach(
    node: Node,
    pending: Pending[],
    report: Report,
    added: (it: Pending) => void,
    signal: AbortSignal | undefined,
  ) {
    const core = this.#core;
    const { present, challenges } = await this.#hasBlobs(
      node,
      pending.map((i) => i.sha256),
      signal,
    );
    const proofs = new Map<string, BlobProofInit | undefined>();
    for (const i of pending) {
      const c = challenges.get(i.sha256);
      if (c && present.has(i.sha256) && !proofs.has(i.sha256)) {
        proofs.set(i.sha256, await answerChallenge(i.path, c, signal));
      }
    }
    // Content the user's sessions do not hold is attached only with a proof of holding it.
    const attach = pending.filter((i) =>
      present.has(i.sha256) && (!challenges.has(i.sha256) || proofs.get(i.sha256))
    );
    if (attach.length === 0) return;
    // A refused attach (no or a stale proof, an evicted blob) falls back to uploading.
    const res = await node.store.attachArtifacts({
      sessionId: core.sessionId,
      userContext: core.userContext,
      ...core.observed(),
      artifacts: attach.map((i) => {
        const proof = proofs.get(i.sha256);
        return { name: i.name, sha256: i.sha256, ...(proof ? { proof } : {}) };
      }),
    }, callOptions(signal)).catch((e) => {
      if (attachRefused(ValiseClientError.from(e))) return undefined;
      throw e;
    });
    if (!res) return;
    core.verify(res);
    const attached = new Set(res.attached);
    for (const i of attach) {
      if (!attached.has(i.name)) continue;
      i.committed = true;
      report(progress(i, "attached", 0));
      added(i);
    }
  }

  async #hasBlobs(
    node: Node,
    digests: string[],
    signal: AbortSignal | undefined,
  ): Promise<{ present: Set<string>; challenges: Map<string, BlobChallenge> }> {
    const core = this.#core;
    try {
      const res = await node.store.hasBlobs({
        sessionId: core.sessionId,
        userContext: core.userContext,
        sha256: digests,
      }, callOptions(signal));
      core.verifyServerSide(res.serverSideSessionId);
      return {
        present: new Set(res.present),
        challenges: new Map(res.challenges.map((c) => [c.sha256, c])),
      };
    } catch (e) {
      const err = ValiseClientError.from(e);
      // A plain Spark Connect server has no store service: upload everything.
      if (err.grpcCode === "Unimplemented") {
        this.#hasStore = false;
        return { present: new Set(), challenges: new Map() };
      }
      throw err;
    }
  }

  async #upload(
    node: Node,
    it: Pending,
    report: Report,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const core = this.#core;
    const observed = core.observed().clientObservedServerSideSessionId;
    const inputFailure: { error?: unknown } = {};
    let started = 0;
    // Read again on every attempt, straight into the messages' envelopes; the last chunk is
    // held back until the bytes read hash to the digest taken before (see uploadMessages).
    const messages = uploadMessages(
      it,
      {
        sessionId: core.sessionId,
        userId: core.userId,
        clientObservedServerSideSessionId: observed,
      },
      // 1 MiB messages instead of PySpark's 32 KiB: the per-message work on both ends (framing,
      // parsing, CRC and hash calls) was most of an upload's CPU. Spark accepts messages up to
      // 128 MiB, Valise up to its --read-max-bytes (64 MiB by default).
      UPLOAD_CHUNK_BYTES,
      (sent) => {
        const secs = (performance.now() - started) / 1000;
        report(progress(it, "upload", sent, secs > 0 ? sent / secs : 0));
      },
    );
    let res;
    try {
      started = performance.now();
      // Past Connect's transport, several messages in flight (see _client_stream.ts). The client
      // speaks only gRPC, so every call can take this path.
      res = await clientStream(
        node.direct,
        SparkConnectService.method.addArtifacts,
        recordFailure(messages, inputFailure),
        signal,
      );
    } catch (e) {
      // The file's own failure (changed, shorter, unreadable) is the cause, not the call it
      // cancelled; it is not a node's failure and is not retried.
      if ("error" in inputFailure) throw inputFailure.error;
      throw e;
    }
    core.verify(res);
    const bad = res.artifacts.filter((a) => !a.isCrcSuccessful).map((a) => a.name);
    if (bad.length > 0) {
      throw clientError(
        "CRC_MISMATCH",
        "DataLoss",
        `The server reported a CRC mismatch for ${bad.join(", ")}; the artifact was not added.`,
        { parameters: { names: bad.join(",") } },
      );
    }
  }
}

/** Passes the requests on, remembering what their reading threw. */
async function* recordFailure(
  requests: AsyncGenerator<AddArtifactsRequest, void, undefined>,
  failure: { error?: unknown },
): AsyncGenerator<AddArtifactsRequest, void, undefined> {
  try {
    yield* requests;
  } catch (e) {
    failure.error = e;
    throw e;
  }
}

/** Resolves and checks every path before anything is sent. */
async function pendingItems(
  paths: readonly string[],
  options: AddArtifactsOptions,
): Promise<Pending[]> {
  const resolved = paths.map((p) => resolveArtifact(p, options, options.cwd ?? Deno.cwd()));
  const items: Pending[] = [];
  for (const r of resolved) {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(r.path);
    } catch (e) {
      throw new TypeError(`Cannot add ${r.path}: ${(e as Error).message}`, { cause: e });
    }
    if (!info.isFile) throw new TypeError(`Cannot add ${r.path}: it is not a regular file`);
    items.push({ ...r, size: info.size, sha256: "", uploaded: false, committed: false });
  }
  return items;
}

function addedOf(i: Pending): AddedArtifact {
  return { name: i.name, path: i.path, size: i.size, sha256: i.sha256, uploaded: i.uploaded };
}

function progress(
  it: Pending,
  phase: ArtifactProgress["phase"],
  bytesSent: number,
  bytesPerSecond = 0,
): ArtifactProgress {
  return { name: it.name, phase, bytesSent, totalBytes: it.size, bytesPerSecond };
}
