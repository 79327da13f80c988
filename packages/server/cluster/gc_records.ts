// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * What the cluster's blob GC reads from NATS and how it judges it: intents, the lease, object
 * metadata and session records. Every byte here was written by whoever holds the cluster's
 * credentials, so each reader caps sizes, never throws on bad input, and errs on the side that
 * keeps blobs: a record or an intent it cannot read keeps what it might name, a lease it cannot
 * read is nobody's (a stale or hostile lease must not stop GC).
 *
 * @module
 */
import { MAX_SHARED_RECORD_BYTES } from "@valise/session-store";

/** The KV bucket of intents and the lease. */
export const GC_BUCKET = "valise_gc";
/** The lease's key in {@linkcode GC_BUCKET}. */
export const LEASE_KEY = "gc.lease";
/** The largest intent or lease value read; anything longer is not a Valise node's. */
export const MAX_GC_VALUE_BYTES = 4096;
/** How long a commit intent lives unless renewed; its holder renews it every third of this. */
export const INTENT_TTL_MS = 60_000;
/** The longest a commit intent is believed, whatever it says (an unreadable one: this long). */
export const MAX_INTENT_TTL_MS = 10 * 60_000;
/** How long a collector's delete intent lives; a collector deletes only well within it. */
export const DELETE_INTENT_TTL_MS = 60_000;
/** The longest a delete intent is believed, whatever it says. */
export const MAX_DELETE_INTENT_TTL_MS = 2 * 60_000;
/**
 * Clock difference tolerated between nodes and NATS servers: expiries set by one clock and read
 * by another are stretched (by readers who must wait) or shortened (by writers who act) by it.
 */
export const CLOCK_MARGIN_MS = 20_000;

const SHA256_HEX = /^[0-9a-f]{64}$/;
const ANY_SHA256 = /(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])/g;

/** Whether `s` is a lowercase sha256 in hex (a blob's object name). */
export function isSha256(s: unknown): s is string {
  return typeof s === "string" && SHA256_HEX.test(s);
}

/** The two kinds of intent: a node about to commit a blob, a collector about to delete it. */
export type IntentKind = "commit" | "delete";

/** The KV key prefix of an intent kind. */
export function intentPrefix(kind: IntentKind): "i" | "d" {
  return kind === "commit" ? "i" : "d";
}

/**
 * The KV key of an intent: `i.<sha256>.<node>.<nonce>` (commit) or `d.…` (delete). One key per
 * holder, so holders never write over each other's.
 */
export function intentKey(kind: IntentKind, sha256: string, holder: string): string {
  return `${intentPrefix(kind)}.${sha256}.${holder}`;
}

/** What an intent says about itself. */
export interface IntentValue {
  /** The node that wrote it. */
  readonly node: string;
  /** How long after it was stored it lapses, unless written again. */
  readonly ttlMs: number;
}

/** Encodes an intent's value. */
export function encodeIntent(value: IntentValue): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ v: 1, ...value }));
}

function parseSmall(bytes: Uint8Array): Record<string, unknown> | undefined {
  if (bytes.length > MAX_GC_VALUE_BYTES) return undefined;
  try {
    const raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
    if (typeof raw !== "object" || raw === null || Array.isArray(raw) || raw.v !== 1) {
      return undefined;
    }
    return raw as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

function ttlOf(x: unknown): number | undefined {
  return typeof x === "number" && Number.isSafeInteger(x) && x > 0 ? x : undefined;
}

/** Decodes an intent's value; `undefined` when it is not one a Valise node wrote. */
export function decodeIntent(bytes: Uint8Array): IntentValue | undefined {
  const r = parseSmall(bytes);
  const ttlMs = ttlOf(r?.ttlMs);
  if (!r || typeof r.node !== "string" || r.node.length > 200 || ttlMs === undefined) {
    return undefined;
  }
  return { node: r.node, ttlMs };
}

/**
 * Until when (ms since the epoch, by the reader's clock) an intent stored at `storedAt` (the
 * NATS server's time) holds, or `undefined` when it never did.
 *
 * A commit intent that cannot be read is believed for the longest a commit intent may live: it
 * only keeps a blob a while longer. A delete intent that cannot be read is ignored: a node never
 * waits on what no collector wrote.
 *
 * @param kind Whose intent.
 * @param storedAt When NATS stored it.
 * @param value Its decoded value, `undefined` when unreadable.
 */
export function intentLiveUntil(
  kind: IntentKind,
  storedAt: number,
  value: IntentValue | undefined,
): number | undefined {
  const max = kind === "commit" ? MAX_INTENT_TTL_MS : MAX_DELETE_INTENT_TTL_MS;
  if (!value) return kind === "commit" ? storedAt + max + CLOCK_MARGIN_MS : undefined;
  // Both sides wait for the other, so both read an expiry late by the margin.
  return storedAt + Math.min(value.ttlMs, max) + CLOCK_MARGIN_MS;
}

/** A lease holder: a node, and the process (nonce) that holds it. */
export interface LeaseHolder {
  /** The node's id. */
  readonly node: string;
  /** Distinguishes this process from the node's earlier ones. */
  readonly nonce: string;
}

/** What a lease says about itself. */
export interface LeaseValue extends LeaseHolder {
  /** How long after it was stored it lapses, unless renewed. */
  readonly ttlMs: number;
}

/** Encodes a lease. */
export function encodeLease(value: LeaseValue): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ v: 1, ...value }));
}

/** Decodes a lease; `undefined` when it is not one a Valise node wrote. */
export function decodeLease(bytes: Uint8Array): LeaseValue | undefined {
  const r = parseSmall(bytes);
  const ttlMs = ttlOf(r?.ttlMs);
  if (
    !r || typeof r.node !== "string" || r.node.length > 200 || typeof r.nonce !== "string" ||
    r.nonce.length > 200 || ttlMs === undefined
  ) {
    return undefined;
  }
  return { node: r.node, nonce: r.nonce, ttlMs };
}

/** The lease as read: its revision, when NATS stored it, and its bytes (or a deletion). */
export interface LeaseRecord {
  /** Its stream sequence (the KV revision). */
  readonly seq: number;
  /** When NATS stored it (ms since the epoch). */
  readonly storedAt: number;
  /** The value, or `undefined` for a deletion marker. */
  readonly bytes: Uint8Array | undefined;
}

/** Whose the lease is, as this node sees it. */
export type LeaseState = "mine" | "held" | "free";

/**
 * Whose the lease is: this process's (`mine`, to renew), another live holder's (`held`), or
 * nobody's (`free`, to take): none yet, deleted, unreadable, or expired. Another holder's lease
 * is believed for at most `ttlMs` (this node's own lease time) plus the clock margin, whatever it
 * says, so a hostile lease cannot stop GC for longer.
 *
 * @param record The lease as read, if any.
 * @param me This process.
 * @param now This node's clock.
 * @param ttlMs This node's lease time.
 */
export function leaseState(
  record: LeaseRecord | undefined,
  me: LeaseHolder,
  now: number,
  ttlMs: number,
): LeaseState {
  const value = record?.bytes ? decodeLease(record.bytes) : undefined;
  if (!record || !value) return "free";
  const mine = value.node === me.node && value.nonce === me.nonce;
  // The holder gives up early (margin off), the others take over late (margin on): a clock
  // difference below the margin never lets both believe they hold it.
  const until = record.storedAt + Math.min(value.ttlMs, ttlMs) +
    (mine ? -CLOCK_MARGIN_MS / 2 : CLOCK_MARGIN_MS);
  if (now >= until) return "free";
  return mine ? "mine" : "held";
}

/** Whether a lease record is this process's. */
export function isMine(record: LeaseRecord | undefined, me: LeaseHolder): boolean {
  const value = record?.bytes ? decodeLease(record.bytes) : undefined;
  return value !== undefined && value.node === me.node && value.nonce === me.nonce;
}

/** One object of the object store, as the collector sees it. */
export interface StoredObject {
  /** Its name: a sha256. */
  readonly sha256: string;
  /** Bytes, as its metadata says. */
  readonly size: number;
  /** When NATS stored its metadata (ms since the epoch): when its put finished. */
  readonly storedAt: number;
}

/** Object Store metadata larger than this is not a Valise node's (names are 64 characters). */
const MAX_META_BYTES = 64 * 1024;

/**
 * The object an Object Store metadata message describes, or `undefined` when it is deleted, not
 * named by a sha256 (not Valise's: never touched), unreadable, or stored under another name's
 * subject.
 *
 * @param bytes The metadata message.
 * @param storedAt When NATS stored it.
 * @param subjectName The name its subject encodes (base64url-decoded), when known.
 */
export function objectOf(
  bytes: Uint8Array,
  storedAt: number,
  subjectName?: string,
): StoredObject | undefined {
  if (bytes.length > MAX_META_BYTES) return undefined;
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    return undefined;
  }
  if (typeof r !== "object" || r === null || Array.isArray(r)) return undefined;
  const { name, size, deleted } = r;
  if (deleted === true || !isSha256(name)) return undefined;
  if (subjectName !== undefined && subjectName !== name) return undefined;
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) return undefined;
  return { sha256: name, size, storedAt };
}

/**
 * The blobs a session record refers to, read leniently: a closed record refers to none; a
 * readable one to its artifacts' digests; anything else (unreadable, another shape, entries
 * without a digest) to every sha256 that appears in it. Errs towards keeping: the records'
 * full checks (`decodeSharedSession`) depend on a node's own limits, and a record one node
 * refuses may be one another node serves.
 */
export function recordDigests(bytes: Uint8Array): string[] {
  if (bytes.length <= MAX_SHARED_RECORD_BYTES) {
    try {
      const r = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
      if (typeof r === "object" && r !== null && !Array.isArray(r)) {
        if (r.closed === true) return [];
        if (Array.isArray(r.artifacts)) {
          const out: string[] = [];
          let whole = true;
          for (const a of r.artifacts as unknown[]) {
            const sha = (a as { sha256?: unknown } | null)?.sha256;
            if (isSha256(sha)) out.push(sha);
            else whole = false;
          }
          if (whole) return out;
        }
      }
    } catch { /* read as text below */ }
  }
  // Latin-1 never fails and keeps every ASCII digest where it was.
  const text = new TextDecoder("latin1").decode(bytes);
  return [...new Set(text.match(ANY_SHA256) ?? [])];
}
