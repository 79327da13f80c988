// Copyright 2026 the Valise authors. Apache-2.0 license.
// One artifact's AddArtifacts request messages read from its file straight into their gRPC
// envelopes: each chunk's bytes are read into the buffer the envelope is written from, and the
// protobuf fields around them (written by hand here) are put before and after in place, so a
// message costs one read and no copy. The bytes are those `toBinary` gives for the same message
// (fields in number order, as PySpark's messages from `addArtifactsRequests`): a test checks it.
import { createHash } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  type AddArtifactsRequest,
  type AddArtifactsRequest_ArtifactChunk,
  AddArtifactsRequestSchema,
  crc32,
  UserContextSchema,
} from "@valise/protocol";
import { withEnvelope } from "./_client_stream.ts";

/** What names the session in every message. */
export interface UploadFields {
  /** The session id. */
  readonly sessionId: string;
  /** The user id; `user_context` is sent empty when undefined, as PySpark does. */
  readonly userId?: string | undefined;
  /** `client_observed_server_side_session_id`, once known. */
  readonly clientObservedServerSideSessionId?: string | undefined;
}

/** The file to send and what it must be. */
export interface UploadFile {
  /** The artifact name. */
  readonly name: string;
  /** The local path (for errors). */
  readonly path: string;
  /** Its size, as taken before. */
  readonly size: number;
  /** Its sha256 (hex), as taken before. */
  readonly sha256: string;
}

/**
 * Reads a file and yields its AddArtifacts messages, each with its envelope attached
 * (`withEnvelope`): a file of at most `chunkSize` bytes as a `batch` of one, a larger one as a
 * `begin_chunk` and `chunk`s of `chunkSize` bytes, each with its CRC-32 (what
 * `addArtifactsRequests` builds). The last message is held back until the bytes read hash to
 * `file.sha256`: a file changed since it was hashed fails before its last chunk leaves, and the
 * server commits none of it. The file is closed when the iteration ends, however it ends.
 *
 * @param file The artifact, its size and digest.
 * @param fields The session's fields.
 * @param chunkSize The chunk size, in bytes.
 * @param onSent Told the bytes of the file read so far, as they are read; its size once the last
 *   message is handed on.
 * @returns The messages.
 * @throws {TypeError} When the file changed since it was hashed (on iteration).
 * @throws {RangeError} When the file grew since (on iteration).
 */
export async function* uploadMessages(
  file: UploadFile,
  fields: UploadFields,
  chunkSize: number,
  onSent: (bytes: number) => void,
): AsyncGenerator<AddArtifactsRequest, void, undefined> {
  if (!Number.isInteger(chunkSize) || chunkSize <= 0) {
    throw new RangeError(`Cannot chunk artifacts: chunk size ${chunkSize} is not positive`);
  }
  const layout = new Layout(file, fields, chunkSize);
  using f = await Deno.open(file.path);
  const hash = createHash("sha256");
  let sent = 0;
  let index = 0;
  do {
    const n = Math.min(chunkSize, file.size - sent);
    const buf = new Uint8Array(layout.bufferBytes(n));
    const data = buf.subarray(layout.dataAt, layout.dataAt + n);
    const got = await readFull(f, data, (n) => {
      // Progress as the file is read; the end only once its last message is handed on.
      if (sent + n < file.size) onSent(sent + n);
    });
    hash.update(data.subarray(0, got));
    if (got < n) throw changed(file, hash.digest("hex"));
    if (sent + n === file.size) {
      // The end: nothing more may follow, and the whole must be what was hashed before.
      const extra = await f.read(new Uint8Array(1));
      if (extra !== null && extra > 0) throw grew(file);
      const digest = hash.digest("hex");
      if (digest !== file.sha256) throw changed(file, digest);
    }
    yield layout.message(buf, n, index++, crc32(data));
    sent += n;
    if (sent === file.size) onSent(sent);
  } while (sent < file.size);
}

/** Where a message's parts go in its buffer, for one artifact. */
class Layout {
  /** Where the chunk's bytes start in a message's buffer. */
  readonly dataAt: number;
  #file: UploadFile;
  #chunkSize: number;
  #numChunks: number;
  #prefix: Uint8Array;
  #suffix: Uint8Array;
  #name: Uint8Array;
  #fields: UploadFields;

  constructor(file: UploadFile, fields: UploadFields, chunkSize: number) {
    this.#file = file;
    this.#fields = fields;
    this.#chunkSize = chunkSize;
    this.#numChunks = Math.ceil(file.size / chunkSize);
    // Fields 1 and 2 come before the payload (3–5), 6 and 7 after it.
    this.#prefix = toBinary(
      AddArtifactsRequestSchema,
      create(AddArtifactsRequestSchema, {
        sessionId: fields.sessionId,
        userContext: create(
          UserContextSchema,
          fields.userId === undefined ? {} : { userId: fields.userId },
        ),
      }),
    );
    this.#suffix = toBinary(
      AddArtifactsRequestSchema,
      create(
        AddArtifactsRequestSchema,
        fields.clientObservedServerSideSessionId === undefined
          ? {}
          : { clientObservedServerSideSessionId: fields.clientObservedServerSideSessionId },
      ),
    );
    this.#name = new TextEncoder().encode(file.name);
    // The envelope's 5 bytes, the fields before the payload, at most 6 tags and lengths (up to
    // 6 bytes each for lengths below 2^35), the name, two int64 varints (up to 10 bytes each).
    this.dataAt = 5 + this.#prefix.length + 6 * 6 + this.#name.length + 2 * 11;
  }

  /** The bytes a message of `n` data bytes needs, room for every field included. */
  bufferBytes(n: number): number {
    // After the data: the CRC's tag and varint (at most 6 bytes), the fields after the payload.
    return this.dataAt + n + 6 + this.#suffix.length;
  }

  /** Writes the fields around the `n` bytes of chunk `index`; returns its message. */
  message(buf: Uint8Array, n: number, index: number, crc: number): AddArtifactsRequest {
    const at = this.dataAt;
    let end = at + n;
    if (crc !== 0) {
      buf[end++] = 0x10;
      end = putVarint(buf, end, crc);
    }
    buf.set(this.#suffix, end);
    end += this.#suffix.length;
    // proto3 leaves out empty bytes and a zero int64.
    const chunkLen = (n === 0 ? 0 : 1 + varintLength(n) + n) +
      (crc === 0 ? 0 : 1 + varintLength(crc));
    const before = new Writer();
    const single = this.#file.size <= this.#chunkSize;
    if (single) {
      // batch { artifacts { name, data { data, crc } } }
      const artLen = this.#nameFieldLength() + 1 + varintLength(chunkLen) + chunkLen;
      const batchLen = 1 + varintLength(artLen) + artLen;
      before.tag(0x1a, batchLen).tag(0x0a, artLen).name(this.#name).tag(0x12, chunkLen);
    } else if (index === 0) {
      // begin_chunk { name, total_bytes, num_chunks, initial_chunk { data, crc } }
      const total = this.#file.size;
      const count = this.#numChunks;
      const beginLen = this.#nameFieldLength() + int64FieldLength(total) +
        int64FieldLength(count) + 1 + varintLength(chunkLen) + chunkLen;
      before.tag(0x22, beginLen).name(this.#name).int64(0x10, total).int64(0x18, count)
        .tag(0x22, chunkLen);
    } else {
      // chunk { data, crc }
      before.tag(0x2a, chunkLen);
    }
    if (n > 0) before.tag(0x0a, n);
    const head = before.bytes();
    const length = this.#prefix.length + head.length + (end - at);
    const start = at - head.length - this.#prefix.length - 5;
    buf[start] = 0;
    new DataView(buf.buffer, buf.byteOffset).setUint32(start + 1, length);
    buf.set(this.#prefix, start + 5);
    buf.set(head, start + 5 + this.#prefix.length);
    const data = buf.subarray(at, at + n);
    const req = this.#shape(data, index, crc);
    return withEnvelope(req, buf.subarray(start, end), (m) => this.#unchanged(m, data, crc));
  }

  /**
   * Whether a message still has every field its envelope was written from (an interceptor may
   * have changed it). Its data is the envelope's own bytes: a change to them is in the envelope.
   */
  #unchanged(m: AddArtifactsRequest, data: Uint8Array, crc: number): boolean {
    const f = this.#fields;
    const u = m.userContext;
    const chunkOk = (c: AddArtifactsRequest_ArtifactChunk | undefined) =>
      c !== undefined && c.data === data && c.crc === BigInt(crc) && plain(c);
    if (
      m.sessionId !== f.sessionId || !plain(m) || m.clientType !== undefined ||
      m.clientObservedServerSideSessionId !== f.clientObservedServerSideSessionId ||
      u === undefined || !plain(u) || u.userId !== (f.userId ?? "") || u.userName !== "" ||
      u.extensions.length > 0
    ) return false;
    const p = m.payload;
    switch (p.case) {
      case "batch": {
        const a = p.value.artifacts;
        return this.#file.size <= this.#chunkSize && plain(p.value) && a.length === 1 &&
          plain(a[0]!) && a[0]!.name === this.#file.name && chunkOk(a[0]!.data);
      }
      case "beginChunk":
        return this.#file.size > this.#chunkSize && plain(p.value) &&
          p.value.name === this.#file.name && p.value.totalBytes === BigInt(this.#file.size) &&
          p.value.numChunks === BigInt(this.#numChunks) && chunkOk(p.value.initialChunk);
      case "chunk":
        return this.#file.size > this.#chunkSize && chunkOk(p.value);
      default:
        return false;
    }
  }

  #nameFieldLength(): number {
    const n = this.#name.length;
    return n === 0 ? 0 : 1 + varintLength(n) + n;
  }

  /** The message the bytes encode, for the interceptors (its data a view of the buffer). */
  #shape(data: Uint8Array, index: number, crc: number): AddArtifactsRequest {
    const chunk: AddArtifactsRequest_ArtifactChunk = {
      $typeName: "spark.connect.AddArtifactsRequest.ArtifactChunk",
      data,
      crc: BigInt(crc),
    };
    const req = create(AddArtifactsRequestSchema, {
      sessionId: this.#fields.sessionId,
      userContext: create(
        UserContextSchema,
        this.#fields.userId === undefined ? {} : { userId: this.#fields.userId },
      ),
      ...(this.#fields.clientObservedServerSideSessionId === undefined
        ? {}
        : { clientObservedServerSideSessionId: this.#fields.clientObservedServerSideSessionId }),
    });
    if (this.#file.size <= this.#chunkSize) {
      req.payload = {
        case: "batch",
        value: {
          $typeName: "spark.connect.AddArtifactsRequest.Batch",
          artifacts: [{
            $typeName: "spark.connect.AddArtifactsRequest.SingleChunkArtifact",
            name: this.#file.name,
            data: chunk,
          }],
        },
      };
    } else if (index === 0) {
      req.payload = {
        case: "beginChunk",
        value: {
          $typeName: "spark.connect.AddArtifactsRequest.BeginChunkedArtifact",
          name: this.#file.name,
          totalBytes: BigInt(this.#file.size),
          numChunks: BigInt(this.#numChunks),
          initialChunk: chunk,
        },
      };
    } else {
      req.payload = { case: "chunk", value: chunk };
    }
    return req;
  }
}

/** Protobuf tags, lengths and fields, in order, into a small buffer. */
class Writer {
  #buf = new Uint8Array(128);
  #at = 0;

  tag(tag: number, length: number): this {
    this.#room(11);
    this.#buf[this.#at++] = tag;
    this.#at = putVarint(this.#buf, this.#at, length);
    return this;
  }

  /** Field 1, a string, unless empty (proto3 leaves it out). */
  name(name: Uint8Array): this {
    if (name.length === 0) return this;
    this.tag(0x0a, name.length);
    this.#room(name.length);
    this.#buf.set(name, this.#at);
    this.#at += name.length;
    return this;
  }

  /** A non-negative int64 field, unless 0. */
  int64(tag: number, value: number): this {
    if (value === 0) return this;
    this.#room(11);
    this.#buf[this.#at++] = tag;
    this.#at = putVarint(this.#buf, this.#at, value);
    return this;
  }

  bytes(): Uint8Array {
    return this.#buf.subarray(0, this.#at);
  }

  #room(n: number): void {
    if (this.#at + n <= this.#buf.length) return;
    const next = new Uint8Array(Math.max(this.#buf.length * 2, this.#at + n));
    next.set(this.#buf.subarray(0, this.#at));
    this.#buf = next;
  }
}

/** Writes a non-negative integer (below 2^53) as a varint; returns the offset after it. */
function putVarint(buf: Uint8Array, at: number, value: number): number {
  let v = value;
  while (v >= 0x80) {
    buf[at++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  buf[at++] = v;
  return at;
}

function varintLength(value: number): number {
  let n = 1;
  for (let v = value; v >= 0x80; v = Math.floor(v / 0x80)) n++;
  return n;
}

function int64FieldLength(value: number): number {
  return value === 0 ? 0 : 1 + varintLength(value);
}

/** Reads of at most this many bytes: progress reports a few times per chunk. */
const READ_BYTES = 256 * 1024;

async function readFull(
  f: Deno.FsFile,
  into: Uint8Array,
  onRead: (got: number) => void,
): Promise<number> {
  let got = 0;
  while (got < into.length) {
    const r = await f.read(into.subarray(got, Math.min(into.length, got + READ_BYTES)));
    if (r === null || r === 0) break;
    got += r;
    onRead(got);
  }
  return got;
}

function changed(file: UploadFile, digest: string): TypeError {
  return new TypeError(
    `Cannot add ${file.path}: the file changed while it was being added (its sha256 is ` +
      `${digest}, not ${file.sha256} as hashed before); nothing of it was committed: ` +
      "add it again once it no longer changes",
  );
}

function grew(file: UploadFile): RangeError {
  return new RangeError(
    `Cannot upload artifact ${file.name}: it was declared as ${file.size} bytes but more bytes ` +
      "were read",
  );
}

/** Whether a message has no unknown fields (which `toBinary` would write). */
function plain(m: object): boolean {
  const u = (m as { $unknown?: unknown[] }).$unknown;
  return u === undefined || u.length === 0;
}
