// Copyright 2026 the Valise authors. Apache-2.0 license.
// This module is browser compatible.
import { create } from "@bufbuild/protobuf";
import {
  type AddArtifactsRequest,
  type AddArtifactsRequest_ArtifactChunk,
  AddArtifactsRequest_ArtifactChunkSchema,
  AddArtifactsRequestSchema,
  type UserContext,
  UserContextSchema,
} from "./gen/spark/connect/base_pb.ts";
import { crc32 } from "./crc32.ts";

/** PySpark's chunk size: 32 KiB, "the midpoint recommendation". */
export const CHUNK_SIZE = 32 * 1024;

/** An artifact to upload: its name, its size, and a way to read its bytes. */
export interface ArtifactSource {
  /** The artifact name, e.g. `pyfiles/util.py`. */
  readonly name: string;
  /** Exact size in bytes; the bytes read must match it. */
  readonly size: number;
  /**
   * Reads the bytes, in pieces of any size. Called once per request stream: a client that sends
   * an upload again after its node failed calls it again, and must get the same bytes (a file
   * opened anew, bytes in memory); a source that can be read only once should throw on a second
   * call, so that the retry fails instead of sending other bytes.
   */
  read(): AsyncIterable<Uint8Array> | Iterable<Uint8Array>;
}

/** Options of {@linkcode addArtifactsRequests}. */
export interface AddArtifactsRequestOptions {
  /** The client's session id. */
  sessionId: string;
  /**
   * The user id; omitted from the request when undefined, as PySpark does.
   * @default {undefined}
   */
  userId?: string;
  /**
   * Sent as `client_type` (PySpark leaves it unset on AddArtifacts).
   * @default {undefined}
   */
  clientType?: string;
  /**
   * The server-side session id seen before, sent as `client_observed_server_side_session_id`.
   * @default {undefined}
   */
  clientObservedServerSideSessionId?: string;
  /**
   * Chunk and batch size in bytes.
   * @default {32768}
   */
  chunkSize?: number;
}

/**
 * Wraps bytes already in memory as an {@linkcode ArtifactSource}.
 *
 * @param name The artifact name.
 * @param data The artifact's bytes.
 * @returns A source that yields `data` once.
 */
export function bytesArtifact(name: string, data: Uint8Array): ArtifactSource {
  return { name, size: data.length, read: () => [data] };
}

/**
 * Builds the AddArtifacts request stream exactly as PySpark's artifact manager does:
 * artifacts of at most `chunkSize` bytes are gathered into `batch` messages whose total stays
 * at or below `chunkSize`; a larger artifact flushes the pending batch and goes as a
 * `begin_chunk` (carrying the first chunk) followed by `chunk` messages. Each chunk carries
 * its CRC-32. Bytes are pulled from each source lazily, so memory stays at one chunk.
 *
 * @example Two small files share one batch
 * ```ts
 * import { addArtifactsRequests, bytesArtifact } from "@valise/protocol";
 * import { equal } from "node:assert/strict";
 *
 * const reqs = await Array.fromAsync(addArtifactsRequests(
 *   [bytesArtifact("pyfiles/a.py", new Uint8Array(10)), bytesArtifact("files/b", new Uint8Array(20))],
 *   { sessionId: "6d0f4c37-5b1c-4b4e-9b39-0a8b56f1d2a1" },
 * ));
 * equal(reqs.length, 1);
 * equal(reqs[0]!.payload.case, "batch");
 * ```
 *
 * @param artifacts The artifacts, in upload order.
 * @param options Session fields and chunk size.
 * @returns The requests, in order.
 */
export async function* addArtifactsRequests(
  artifacts: Iterable<ArtifactSource> | AsyncIterable<ArtifactSource>,
  options: AddArtifactsRequestOptions,
): AsyncGenerator<AddArtifactsRequest, void, undefined> {
  const chunkSize = options.chunkSize ?? CHUNK_SIZE;
  if (!Number.isInteger(chunkSize) || chunkSize <= 0) {
    throw new RangeError(`Cannot chunk artifacts: chunk size ${chunkSize} is not positive`);
  }
  const base = (): AddArtifactsRequest => {
    const req = create(AddArtifactsRequestSchema, { sessionId: options.sessionId });
    req.userContext = userContext(options.userId);
    if (options.clientType !== undefined) req.clientType = options.clientType;
    if (options.clientObservedServerSideSessionId !== undefined) {
      req.clientObservedServerSideSessionId = options.clientObservedServerSideSessionId;
    }
    return req;
  };
  let batch: { name: string; data: Uint8Array }[] = [];
  let batchBytes = 0;
  const flush = (): AddArtifactsRequest | undefined => {
    if (batch.length === 0) return undefined;
    const req = base();
    req.payload = {
      case: "batch",
      value: {
        $typeName: "spark.connect.AddArtifactsRequest.Batch",
        artifacts: batch.map((a) => ({
          $typeName: "spark.connect.AddArtifactsRequest.SingleChunkArtifact",
          name: a.name,
          data: chunkOf(a.data),
        })),
      },
    };
    batch = [];
    batchBytes = 0;
    return req;
  };
  for await (const artifact of artifacts) {
    if (artifact.size <= chunkSize) {
      const data = await readAll(artifact);
      if (batchBytes + data.length > chunkSize) {
        const req = flush();
        if (req) yield req;
      }
      batch.push({ name: artifact.name, data });
      batchBytes += data.length;
      continue;
    }
    const pending = flush();
    if (pending) yield pending;
    const numChunks = Math.ceil(artifact.size / chunkSize);
    let index = 0;
    let seen = 0;
    for await (const piece of rechunk(artifact.read(), chunkSize)) {
      seen += piece.length;
      if (seen > artifact.size) throw sizeMismatch(artifact, seen);
      const req = base();
      if (index === 0) {
        req.payload = {
          case: "beginChunk",
          value: {
            $typeName: "spark.connect.AddArtifactsRequest.BeginChunkedArtifact",
            name: artifact.name,
            totalBytes: BigInt(artifact.size),
            numChunks: BigInt(numChunks),
            initialChunk: chunkOf(piece),
          },
        };
      } else {
        req.payload = { case: "chunk", value: chunkOf(piece) };
      }
      index++;
      yield req;
    }
    if (seen !== artifact.size) throw sizeMismatch(artifact, seen);
  }
  const last = flush();
  if (last) yield last;
}

function userContext(userId: string | undefined): UserContext {
  return create(UserContextSchema, userId === undefined ? {} : { userId });
}

function chunkOf(data: Uint8Array): AddArtifactsRequest_ArtifactChunk {
  return create(AddArtifactsRequest_ArtifactChunkSchema, { data, crc: BigInt(crc32(data)) });
}

function sizeMismatch(artifact: ArtifactSource, seen: number): RangeError {
  return new RangeError(
    `Cannot upload artifact ${artifact.name}: it was declared as ${artifact.size} bytes but ${
      seen > artifact.size ? "more" : seen
    } bytes were read`,
  );
}

async function readAll(artifact: ArtifactSource): Promise<Uint8Array> {
  const out = new Uint8Array(artifact.size);
  let at = 0;
  for await (const piece of artifact.read()) {
    if (at + piece.length > artifact.size) throw sizeMismatch(artifact, at + piece.length);
    out.set(piece, at);
    at += piece.length;
  }
  if (at !== artifact.size) throw sizeMismatch(artifact, at);
  return out;
}

/**
 * Re-cuts a byte stream into pieces of exactly `size` bytes (the last may be shorter).
 *
 * @param source Pieces of any size.
 * @param size The piece size.
 * @returns Pieces of `size` bytes.
 */
export async function* rechunk(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  size: number,
): AsyncGenerator<Uint8Array, void, undefined> {
  let buf = new Uint8Array(size);
  let fill = 0;
  for await (const piece of source) {
    let at = 0;
    while (at < piece.length) {
      const n = Math.min(size - fill, piece.length - at);
      buf.set(piece.subarray(at, at + n), fill);
      fill += n;
      at += n;
      if (fill === size) {
        yield buf;
        buf = new Uint8Array(size);
        fill = 0;
      }
    }
  }
  if (fill > 0) yield buf.subarray(0, fill);
}
