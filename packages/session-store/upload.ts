// Copyright 2026 the Valise authors. Apache-2.0 license.
import { createHash, type Hash } from "node:crypto";
import { join } from "node:path";
import { type ArtifactName, ArtifactNameError, crc32, parseArtifactName } from "@valise/protocol";
import { removeAll } from "./_fs.ts";
import { SessionError } from "./errors.ts";

/** One artifact received completely and held in staging, not yet visible. */
export interface StagedArtifact {
  /** The parsed name. */
  readonly name: ArtifactName;
  /** The staged file. */
  readonly file: string;
  /** Bytes received. */
  readonly size: number;
  /** sha256 of the bytes, computed while they were written. */
  readonly sha256: string;
  /** Whether every chunk's CRC matched. */
  readonly crcOk: boolean;
}

/** A chunk as it arrives on the wire. */
export interface WireChunk {
  /** The chunk's bytes. */
  readonly data: Uint8Array;
  /** The client's CRC-32 of `data`, unsigned. */
  readonly crc: bigint | number;
}

/** Limits checked while bytes arrive, before anything is committed. */
export interface UploadLimits {
  /** The largest single artifact accepted, in bytes. */
  readonly maxArtifactBytes: number;
  /** Called before bytes are written; throws to stop the upload (quotas, disk floor). */
  readonly admit?: (bytes: number) => void;
  /**
   * Called with each artifact's sha256 once it is received (in a cluster: the blob GC is told an
   * upload of it is in flight); the function it resolves to is called when the upload is
   * {@linkcode Upload.abort}ed, which a server does after the commit too. Not awaited: a failure
   * only loses the early notice, the commit announces its blobs again.
   */
  readonly announce?: (sha256: string) => Promise<() => Promise<void>>;
}

interface OpenChunked {
  name: ArtifactName;
  file: Deno.FsFile;
  path: string;
  hash: Hash;
  totalBytes: number;
  numChunks: number;
  chunks: number;
  bytes: number;
  crcOk: boolean;
}

const WRITE_BUFFER = 1 << 20;

/**
 * The receiving side of one AddArtifacts stream: artifacts are written to a private staging
 * directory as their chunks arrive (never held whole in memory), CRC-checked per chunk and
 * hashed on the way. Nothing becomes visible until the session commits the staged set; a
 * stream that breaks is {@linkcode Upload.abort}ed and leaves nothing behind.
 */
export class Upload {
  /** The staging directory of this stream. */
  readonly dir: string;
  #limits: UploadLimits;
  #staged: StagedArtifact[] = [];
  #open: OpenChunked | undefined;
  #seq = 0;
  #pending = new Uint8Array(0);
  #pendingLen = 0;
  #announced: Promise<() => Promise<void>>[] = [];

  /** Use {@linkcode Upload.create}. */
  constructor(dir: string, limits: UploadLimits) {
    this.dir = dir;
    this.#limits = limits;
  }

  /** Creates the staging directory under `stagingRoot`. */
  static async create(stagingRoot: string, limits: UploadLimits): Promise<Upload> {
    const dir = join(stagingRoot, crypto.randomUUID());
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    return new Upload(dir, limits);
  }

  /** Artifacts received completely so far. */
  get staged(): readonly StagedArtifact[] {
    return this.#staged;
  }

  /** Whether a chunked artifact is still waiting for chunks. */
  get hasOpenArtifact(): boolean {
    return this.#open !== undefined;
  }

  /** Receives a single-chunk artifact of a `batch`. */
  async single(rawName: string, chunk: WireChunk): Promise<void> {
    const name = checkArtifactName(rawName);
    this.#checkSize(name.raw, chunk.data.length);
    this.#limits.admit?.(chunk.data.length);
    const path = join(this.dir, String(this.#seq++));
    await Deno.writeFile(path, chunk.data, { createNew: true, mode: 0o600 });
    this.#stage({
      name,
      file: path,
      size: chunk.data.length,
      sha256: createHash("sha256").update(chunk.data).digest("hex"),
      crcOk: crcMatches(chunk),
    });
  }

  #stage(staged: StagedArtifact): void {
    this.#staged.push(staged);
    const announce = this.#limits.announce;
    if (announce && staged.crcOk) {
      this.#announced.push(announce(staged.sha256).catch(() => () => Promise.resolve()));
    }
  }

  /** Opens a chunked artifact (`begin_chunk`) and receives its first chunk. */
  async begin(
    rawName: string,
    totalBytes: bigint | number,
    numChunks: bigint | number,
    initial: WireChunk,
  ): Promise<void> {
    if (this.#open) {
      throw streamError(
        `Cannot begin artifact ${rawName}: artifact ${this.#open.name.raw} is still open ` +
          `(${this.#open.chunks} of ${this.#open.numChunks} chunks received).`,
      );
    }
    const name = checkArtifactName(rawName);
    const total = Number(totalBytes);
    const count = Number(numChunks);
    if (!Number.isSafeInteger(total) || total < 0 || !Number.isSafeInteger(count) || count < 1) {
      throw streamError(
        `Cannot begin artifact ${rawName}: total_bytes ${totalBytes} and num_chunks ${numChunks} are not valid.`,
      );
    }
    this.#checkSize(name.raw, total);
    const path = join(this.dir, String(this.#seq++));
    const file = await Deno.open(path, { write: true, createNew: true, mode: 0o600 });
    this.#open = {
      name,
      file,
      path,
      hash: createHash("sha256"),
      totalBytes: total,
      numChunks: count,
      chunks: 0,
      bytes: 0,
      crcOk: true,
    };
    await this.chunk(initial);
  }

  /** Receives the next chunk of the open chunked artifact. */
  async chunk(chunk: WireChunk): Promise<void> {
    const open = this.#open;
    if (!open) {
      throw streamError(
        "Cannot accept a data chunk: no chunked artifact is open (a chunk must follow begin_chunk).",
      );
    }
    if (open.chunks >= open.numChunks || open.bytes + chunk.data.length > open.totalBytes) {
      throw streamError(
        `Excessive data chunks for artifact: ${open.name.raw}, expected ${open.numChunks} chunks in total. ` +
          `Processed ${open.bytes + chunk.data.length} bytes out of ${open.totalBytes} bytes.`,
      );
    }
    this.#limits.admit?.(chunk.data.length);
    open.chunks++;
    open.bytes += chunk.data.length;
    open.crcOk &&= crcMatches(chunk);
    open.hash.update(chunk.data);
    await this.#write(open.file, chunk.data);
    if (open.chunks === open.numChunks) await this.#close(open);
  }

  /** Checks the stream ended cleanly: no chunked artifact may still be open. */
  finish(): Promise<void> {
    const open = this.#open;
    if (open) {
      return Promise.reject(streamError(
        `Missing data chunks for artifact: ${open.name.raw}. Expected ${open.numChunks} chunks and ` +
          `received ${open.chunks} chunks. Processed ${open.bytes} bytes out of ${open.totalBytes} bytes.`,
      ));
    }
    return Promise.resolve();
  }

  /** Drops everything staged and withdraws what was announced; safe to call more than once. */
  async abort(): Promise<void> {
    if (this.#open) {
      try {
        this.#open.file.close();
      } catch { /* already closed */ }
      this.#open = undefined;
    }
    // Not awaited: an announcement still waiting on the cluster must not hold up the cleanup.
    for (const a of this.#announced.splice(0)) a.then((withdraw) => withdraw()).catch(() => {});
    await removeAll(this.dir);
  }

  async #close(open: OpenChunked): Promise<void> {
    await this.#flush(open.file);
    open.file.close();
    this.#open = undefined;
    if (open.bytes !== open.totalBytes) {
      throw streamError(
        `Missing data chunks for artifact: ${open.name.raw}. Expected ${open.numChunks} chunks and ` +
          `received ${open.chunks} chunks. Processed ${open.bytes} bytes out of ${open.totalBytes} bytes.`,
      );
    }
    this.#stage({
      name: open.name,
      file: open.path,
      size: open.bytes,
      sha256: open.hash.digest("hex"),
      crcOk: open.crcOk,
    });
  }

  // Chunks are 32 KiB; gathering them into 1 MiB writes saves most of the syscalls.
  async #write(file: Deno.FsFile, data: Uint8Array): Promise<void> {
    if (this.#pending.length === 0) this.#pending = new Uint8Array(WRITE_BUFFER);
    if (this.#pendingLen + data.length > WRITE_BUFFER) await this.#flush(file);
    if (data.length >= WRITE_BUFFER) {
      await writeAll(file, data);
      return;
    }
    this.#pending.set(data, this.#pendingLen);
    this.#pendingLen += data.length;
  }

  async #flush(file: Deno.FsFile): Promise<void> {
    if (this.#pendingLen === 0) return;
    await writeAll(file, this.#pending.subarray(0, this.#pendingLen));
    this.#pendingLen = 0;
  }

  #checkSize(name: string, bytes: number): void {
    if (bytes > this.#limits.maxArtifactBytes) {
      throw new SessionError(
        "QUOTA_EXCEEDED",
        `The artifact ${name} is ${bytes} bytes; the largest artifact this server accepts is ` +
          `${this.#limits.maxArtifactBytes} bytes.`,
        { reason: "ARTIFACT_BYTES" },
      );
    }
  }
}

async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  let at = 0;
  while (at < data.length) at += await file.write(data.subarray(at));
}

function crcMatches(chunk: WireChunk): boolean {
  return BigInt(crc32(chunk.data)) === BigInt(chunk.crc);
}

/** The name problems Spark refuses too, with its class `INVALID_ARTIFACT_PATH`. */
const SPARK_PATH_PROBLEMS: ReadonlySet<string> = new Set(["EMPTY", "ABSOLUTE", "ESCAPES_ROOT"]);

/**
 * Parses an artifact name with the rules an upload is held to (Spark's path rules, Valise's
 * name rules, no `forward_to_fs/`).
 *
 * @throws {SessionError} `INVALID_ARTIFACT_PATH` or `INVALID_ARTIFACT_NAME`.
 */
export function checkArtifactName(raw: string): ArtifactName {
  let name: ArtifactName;
  try {
    name = parseArtifactName(raw);
  } catch (e) {
    if (e instanceof ArtifactNameError) {
      const spark = SPARK_PATH_PROBLEMS.has(e.problem);
      throw new SessionError(
        spark ? "INVALID_ARTIFACT_PATH" : "INVALID_ARTIFACT_NAME",
        `${e.message}.`,
        {
          cause: e,
          reason: e.problem,
          parameters: { name: raw },
        },
      );
    }
    throw e;
  }
  if (name.kind === "other" && name.path.startsWith("forward_to_fs/")) {
    // Spark's forward_to_fs/ copies to a path of the server's own file system.
    throw new SessionError(
      "INVALID_ARTIFACT_NAME",
      `Cannot accept artifact name ${JSON.stringify(raw)}: uploading to the server's local file ` +
        `system (forward_to_fs/) is not supported; every artifact stays inside its session.`,
      { reason: "FORWARD_TO_FS", parameters: { name: raw } },
    );
  }
  return name;
}

function streamError(message: string): SessionError {
  return new SessionError("INVALID_ARTIFACT_STREAM", message);
}
