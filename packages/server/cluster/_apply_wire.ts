// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The messages of a parallel Apply between nodes, over NATS request/reply: their subjects, and
 * their encoding (`u32 header length, big-endian | header JSON | body`). Every message read is
 * written by whoever holds the cluster's NATS credentials: sizes are capped before anything is
 * parsed, shapes checked field by field, and a subject is only ever built from checked tokens.
 *
 * @module
 */
import { isSparkSessionId } from "@valise/protocol";

/** Where nodes volunteer for a call's workers: every node listens (no queue group). */
export const OFFER_SUBJECT = "valise.apply.offer";

/** A node's name, as `--node-id` allows it. */
const NODE_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Whether a value is a node id (`--node-id`'s rules). */
export function isNodeId(id: unknown): id is string {
  return typeof id === "string" && NODE_ID.test(id);
}

/**
 * A node id as one subject token: its `.` (a host name's) become `~`, which node ids never
 * hold, so two nodes never share a subject.
 */
function nodeToken(id: string): string {
  if (!isNodeId(id)) throw new RangeError(`Cannot address node ${JSON.stringify(id)}`);
  return id.replaceAll(".", "~");
}

/** Whether a value is a lowercase UUID (lane and call ids). */
export function isUuid(id: unknown): id is string {
  return typeof id === "string" && UUID.test(id);
}

/** The subject where a node opens workers for other nodes' calls. */
export function openSubject(nodeId: string): string {
  return `valise.apply.open.${nodeToken(nodeId)}`;
}

/** The subject of one worker a node runs for another (`*` for all of a node's). */
export function laneSubject(nodeId: string, laneId: string): string {
  if (laneId !== "*" && !isUuid(laneId)) {
    throw new RangeError(`Cannot address lane ${JSON.stringify(laneId)} of ${nodeId}`);
  }
  return `valise.apply.lane.${nodeToken(nodeId)}.${laneId}`;
}

/** The largest header JSON read from another node. */
export const MAX_HEADER_BYTES = 1024 * 1024;

/** A message that fails its checks: it is refused and nothing of it is used. */
export class ApplyWireError extends Error {
  override name = "ApplyWireError";
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Encodes a message.
 *
 * @param header What the message says.
 * @param body Bytes that go with it.
 * @returns The message.
 */
export function encodeMessage(header: unknown, body: Uint8Array[] = []): Uint8Array {
  const json = encoder.encode(JSON.stringify(header));
  const size = 4 + json.length + body.reduce((n, b) => n + b.length, 0);
  const out = new Uint8Array(size);
  new DataView(out.buffer).setUint32(0, json.length);
  out.set(json, 4);
  let off = 4 + json.length;
  for (const b of body) {
    out.set(b, off);
    off += b.length;
  }
  return out;
}

/**
 * Decodes a message: its header (a JSON object) and body, the header's length checked against
 * the message and `maxHeaderBytes` before it is parsed.
 *
 * @throws {ApplyWireError} When the message is not one.
 */
export function decodeMessage(
  data: Uint8Array,
  maxHeaderBytes = MAX_HEADER_BYTES,
): { header: Record<string, unknown>; body: Uint8Array } {
  if (data.length < 4) throw new ApplyWireError(`a message of ${data.length} bytes`);
  const n = new DataView(data.buffer, data.byteOffset, data.length).getUint32(0);
  if (n > maxHeaderBytes || 4 + n > data.length) {
    throw new ApplyWireError(`a header of ${n} bytes in a message of ${data.length}`);
  }
  let header: unknown;
  try {
    header = JSON.parse(decoder.decode(data.subarray(4, 4 + n)));
  } catch {
    throw new ApplyWireError("a header that is not JSON");
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new ApplyWireError("a header that is not an object");
  }
  return { header: header as Record<string, unknown>, body: data.subarray(4 + n) };
}

/** A field of a header, checked: what it must be, or the message is refused. */
export const field = {
  /** A string of at most `max` UTF-16 units. */
  string(h: Record<string, unknown>, k: string, max: number): string {
    const v = h[k];
    if (typeof v !== "string" || v.length > max) {
      throw new ApplyWireError(`field ${k} is not a string of at most ${max} characters`);
    }
    return v;
  },
  /** A safe integer from `min` to `max`. */
  int(h: Record<string, unknown>, k: string, min: number, max: number): number {
    const v = h[k];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
      throw new ApplyWireError(`field ${k} is not a whole number from ${min} to ${max}`);
    }
    return v;
  },
  /** A boolean. */
  bool(h: Record<string, unknown>, k: string): boolean {
    const v = h[k];
    if (typeof v !== "boolean") throw new ApplyWireError(`field ${k} is not a boolean`);
    return v;
  },
  /** One of `values`. */
  oneOf<T extends string>(h: Record<string, unknown>, k: string, values: readonly T[]): T {
    const v = h[k];
    if (typeof v !== "string" || !values.includes(v as T)) {
      throw new ApplyWireError(`field ${k} is not one of ${values.join(", ")}`);
    }
    return v as T;
  },
  /** A Spark session id. */
  sessionId(h: Record<string, unknown>, k: string): string {
    const v = h[k];
    if (typeof v !== "string" || !isSparkSessionId(v)) {
      throw new ApplyWireError(`field ${k} is not a session id`);
    }
    return v;
  },
  /** A node id. */
  node(h: Record<string, unknown>, k: string): string {
    const v = h[k];
    if (!isNodeId(v)) throw new ApplyWireError(`field ${k} is not a node id`);
    return v;
  },
  /** A lowercase UUID. */
  uuid(h: Record<string, unknown>, k: string): string {
    const v = h[k];
    if (!isUuid(v)) throw new ApplyWireError(`field ${k} is not a UUID`);
    return v;
  },
};
