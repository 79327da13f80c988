// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Error messages a client receives name the client's own things, never the server's paths:
 * a session's working directory reads `.`, the data directory `<data-dir>`, the PEX root
 * `<pex-root>`. The full message stays on the error for the server's log.
 *
 * @module
 */
import { realpathSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import { ConnectError, type Interceptor } from "@connectrpc/connect";

type Detail = ConnectError["details"][number];
type OutgoingDetail = Extract<Detail, { desc: unknown }>;
type IncomingDetail = Exclude<Detail, OutgoingDetail>;
import { ErrorInfoSchema } from "@valise/protocol";
import { observingInterceptor } from "./_interceptors.ts";

/** Where the server keeps things whose paths clients must not learn. */
export interface RedactedPlaces {
  /** The data directory (sessions, blobs, trees, staging). */
  dataDir: string;
  /**
   * PEX roots configured explicitly; temporary ones (`…/valise-pex-*`) are always recognised.
   * @default {[]}
   */
  pexRoots?: readonly string[] | undefined;
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** A path ends at the end of the text, a separator, or a character paths in messages rarely hold. */
const END = `(?=$|[/\\s'"(),:;\\]\`])`;

/** Rewrites server paths in text that goes to clients. */
export class PathRedactor {
  #rules: [RegExp, string][] = [];

  /** @param places The data directory and PEX roots to hide. */
  constructor(places: RedactedPlaces) {
    const forms = (p: string): string[] => {
      const out = new Set([p.replace(/\/+$/, "")]);
      try {
        out.add(realpathSync(p));
      } catch {
        // Not there (yet): only the given form can appear in messages.
      }
      return [...out].filter((f) => f !== "" && f !== "/").sort((a, b) => b.length - a.length);
    };
    for (const d of forms(places.dataDir)) {
      // A session's own working directory is what its code calls ".".
      this.#rules.push([
        new RegExp(`${escape(d)}/sessions/[^/\\s]+/[^/\\s]+/root${END}`, "g"),
        ".",
      ]);
    }
    for (const d of forms(places.dataDir)) {
      this.#rules.push([new RegExp(`${escape(d)}${END}`, "g"), "<data-dir>"]);
    }
    for (const p of (places.pexRoots ?? []).flatMap(forms)) {
      this.#rules.push([new RegExp(`${escape(p)}${END}`, "g"), "<pex-root>"]);
    }
    this.#rules.push([/(?:\/[^/\s'"]+)*\/valise-pex-[^/\s'"]+/g, "<pex-root>"]);
  }

  /**
   * Replaces every server path in `text`.
   *
   * @param text A message.
   * @returns The message with paths replaced.
   */
  redact(text: string): string {
    let out = text;
    for (const [re, to] of this.#rules) out = out.replace(re, to);
    return out;
  }
}

const FULL = new WeakMap<ConnectError, string>();

/**
 * The message of an error as the server logs it: before redaction, when it was redacted.
 *
 * @param e An error.
 * @returns Its full message.
 */
export function serverSideMessage(e: unknown): string {
  const c = ConnectError.from(e);
  return FULL.get(c) ?? c.rawMessage;
}

/**
 * A copy of `e` whose message (and ErrorInfo metadata) has the server's paths replaced; `e`
 * itself if it names none, or if it is not a `ConnectError` (Connect sends those as
 * "internal error", without their message).
 *
 * @param e The error a handler threw.
 * @param redactor The paths to hide.
 * @returns The error to send.
 */
export function redactError(e: unknown, redactor: PathRedactor): unknown {
  if (!(e instanceof ConnectError)) return e;
  const c = e;
  const message = redactor.redact(c.rawMessage);
  let changed = message !== c.rawMessage;
  const outgoing: OutgoingDetail[] = [];
  const incoming: IncomingDetail[] = [];
  for (const d of c.details) {
    if ("desc" in d) outgoing.push(d);
    else incoming.push(d);
  }
  const details = outgoing.map((d): OutgoingDetail => {
    if (d.desc.typeName !== ErrorInfoSchema.typeName) return d;
    const info = d.value as { reason: string; domain: string; metadata: Record<string, string> };
    const metadata = Object.fromEntries(
      Object.entries(info.metadata).map(([k, v]) => [k, redactor.redact(v)]),
    );
    if (Object.entries(metadata).some(([k, v]) => v !== info.metadata[k])) changed = true;
    return { desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { ...info, metadata }) };
  });
  if (!changed) return c;
  const out = new ConnectError(message, c.code, c.metadata, details, c);
  out.details.push(...incoming);
  FULL.set(out, FULL.get(c) ?? c.rawMessage);
  return out;
}

/**
 * An interceptor, innermost, that redacts every error a handler raises, for unary calls and
 * streamed responses alike.
 *
 * @param redactor The paths to hide.
 * @returns The interceptor.
 */
export function redactingInterceptor(redactor: PathRedactor): Interceptor {
  return observingInterceptor({ mapError: (e) => redactError(e, redactor) });
}
