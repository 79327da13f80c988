// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A node's heartbeat record in the cluster's KV bucket `valise_nodes`: what it is, where it
 * serves and how loaded it is. Anyone holding the cluster's credentials can write that bucket,
 * so a record read back is decoded as hostile input: size capped before parsing, every field
 * shape-checked, the node id checked by the rule `--node-id` has and against the key it was
 * found under. Nothing in a record decides a path, a label or an amount on the node that reads
 * it beyond these checks.
 *
 * @module
 */

/** Why something about membership failed. */
export type MembershipErrorCode =
  | "NODE_ID_IN_USE"
  | "NODE_ID_INVALID"
  | "NODE_RECORD_INVALID"
  | "CLUSTER_UNAVAILABLE";

/** A membership failure: a node id taken by a live node, a record that fails its checks. */
export class MembershipError extends Error {
  override name = "MembershipError";
  /** Why. */
  readonly code: MembershipErrorCode;

  /**
   * Creates the error.
   *
   * @param code Why.
   * @param message What happened and what to do about it.
   * @param options The cause, if any.
   */
  constructor(code: MembershipErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

/** The most bytes a node record may have: a few hundred in practice. */
export const MAX_NODE_RECORD_BYTES = 4096;
/** The shortest TTL a record may declare (a test's heartbeat of 0.1 s has 0.3 s). */
export const MIN_NODE_TTL_MS = 300;
/** The longest TTL a record may declare: a record claiming longer is refused. */
export const MAX_NODE_TTL_MS = 30 * 60_000;

/** What a node says of itself at each heartbeat. */
export interface NodeRecord {
  /** Its node id (`--node-id`), also its key in the bucket. */
  readonly nodeId: string;
  /** Random per process: tells a restart, or another process with the same id, apart. */
  readonly instance: string;
  /** The host it runs on (for people: where to look for a duplicate). */
  readonly host: string;
  /** Its process id on that host. */
  readonly pid: number;
  /** The Valise version it runs. */
  readonly version: string;
  /** Where it serves RPCs (`host:port`), once it listens. */
  readonly address?: string | undefined;
  /** When it started (ms since the epoch, its own clock). */
  readonly startedAt: number;
  /** When it wrote this record (ms since the epoch, its own clock). */
  readonly heartbeatAt: number;
  /** How long after this record without another one the node counts as gone. */
  readonly ttlMs: number;
  /** Sessions it holds a copy of. */
  readonly sessions: number;
  /** Bytes of its blob cache. */
  readonly blobBytes: number;
  /** Bytes of its unpacked trees. */
  readonly treeBytes: number;
  /** Runs executing or waiting for a slot on it. */
  readonly inFlight: number;
}

// Dots only between other characters: the id is a KV key, whose tokens cannot be empty.
const NODE_ID = /^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?=[A-Za-z0-9_-])){0,63}$/;
const INSTANCE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HOST = /^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/;
const VERSION = /^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$/;
// host:port, [v6]:port; no user info, no path, nothing a label or a page must escape.
const ADDRESS = /^(?:[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):\d{1,5}$/;

/**
 * Why a node id cannot be used, or `undefined` when it can: letters, digits, `_`, `-`, and `.`
 * between them; at most 64 characters, starting with a letter or digit.
 *
 * @param id The node id.
 * @returns The problem, in words, or `undefined`.
 */
export function nodeIdProblem(id: string): string | undefined {
  if (NODE_ID.test(id)) return undefined;
  return `"${id.slice(0, 80)}" is not a node name (letters, digits, '_', '-', and '.' between ` +
    "them; at most 64, starting with a letter or digit)";
}

function invalid(what: string): MembershipError {
  return new MembershipError("NODE_RECORD_INVALID", `node record: ${what}`);
}

function count(v: unknown, what: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v > max) throw invalid(what);
  return v;
}

function text(v: unknown, re: RegExp, what: string): string {
  if (typeof v !== "string" || !re.test(v)) throw invalid(what);
  return v;
}

/**
 * Encodes a record as the bucket stores it (JSON, `v: 1`).
 *
 * @param record The record.
 * @returns Its bytes.
 */
export function encodeNodeRecord(record: NodeRecord): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ v: 1, ...record }));
}

/**
 * Decodes a record read from the bucket, checking everything: size before parsing, shape, every
 * field's range, and that it names the key it was found under. Fields a later version may add
 * are ignored.
 *
 * @param bytes The stored value.
 * @param key The key it was found under.
 * @returns The record.
 * @throws {MembershipError} `NODE_RECORD_INVALID`, saying which check failed.
 */
export function decodeNodeRecord(bytes: Uint8Array, key: string): NodeRecord {
  if (!NODE_ID.test(key)) throw invalid("the key is not a node id");
  if (bytes.length > MAX_NODE_RECORD_BYTES) {
    throw invalid(`${bytes.length} bytes, over ${MAX_NODE_RECORD_BYTES}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw invalid("not JSON");
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw invalid("not an object");
  const r = raw as Record<string, unknown>;
  if (r.v !== 1) throw invalid("unknown format");
  const nodeId = text(r.nodeId, NODE_ID, "node id");
  if (nodeId !== key) throw invalid("names another node than its key");
  const address = r.address === undefined
    ? undefined
    : text(r.address, ADDRESS, "address (host:port)");
  const startedAt = count(r.startedAt, "start time");
  const heartbeatAt = count(r.heartbeatAt, "heartbeat time");
  const ttlMs = count(r.ttlMs, "TTL", MAX_NODE_TTL_MS);
  if (ttlMs < MIN_NODE_TTL_MS) throw invalid("TTL");
  return {
    nodeId,
    instance: text(r.instance, INSTANCE, "instance"),
    host: text(r.host, HOST, "host"),
    pid: count(r.pid, "pid", 2 ** 32 - 1),
    version: text(r.version, VERSION, "version"),
    ...(address !== undefined ? { address } : {}),
    startedAt,
    heartbeatAt,
    ttlMs,
    sessions: count(r.sessions, "session count"),
    blobBytes: count(r.blobBytes, "blob bytes"),
    treeBytes: count(r.treeBytes, "tree bytes"),
    inFlight: count(r.inFlight, "work in flight"),
  };
}
