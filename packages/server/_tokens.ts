// Copyright 2026 the Valise authors. Apache-2.0 license.
import { createHash, timingSafeEqual } from "node:crypto";

/** A bearer token the server accepts, optionally bound to one user id. */
export interface AccessToken {
  /** The token, as clients send it after `Bearer `. */
  token: string;
  /**
   * The only `user_context.user_id` requests with this token may act as.
   * @default {undefined} any user id
   */
  userId?: string | undefined;
}

/** Why a request's credentials were refused. */
export type CredentialProblem = "MISSING" | "MALFORMED" | "WRONG";

/** The outcome of checking an `authorization` header. */
export type Credential =
  | { readonly ok: true; readonly userId: string | undefined }
  | { readonly ok: false; readonly problem: CredentialProblem };

/** Visible ASCII: what an HTTP header value can carry without quoting. */
const TOKEN_CHARS = /^[\x21-\x7e]+$/;

/**
 * Parses a token file: one token per line, optionally followed by whitespace and the user id it
 * is bound to (`TOKEN user-id`). Blank lines and lines starting with `#` are skipped.
 *
 * @param text The file's contents.
 * @param source Where the text came from, for error messages.
 * @returns The tokens, in file order.
 * @throws {SyntaxError} For a line whose token has characters a header cannot carry, a token
 *   listed twice, or a file with no token.
 */
export function parseTokenFile(text: string, source: string): AccessToken[] {
  const out: AccessToken[] = [];
  const seen = new Set<string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    // trim() and \S disagree on some characters (NUL is not whitespace to trim(), but a
    // line can still fail to match): such a line is malformed, never a crash.
    const m = line.match(/^(\S+)(?:\s+(.*))?$/s);
    const token = m?.[1];
    if (token === undefined) {
      throw new SyntaxError(`${source}:${i + 1}: not a line of the form TOKEN [user-id]`);
    }
    // Never echo a token back, even a malformed one: error messages end up in logs.
    if (!TOKEN_CHARS.test(token)) {
      throw new SyntaxError(
        `${source}:${i + 1}: the token has characters an HTTP header cannot carry ` +
          `(only visible ASCII is allowed)`,
      );
    }
    if (seen.has(token)) {
      throw new SyntaxError(`${source}:${i + 1}: this token is already listed on an earlier line`);
    }
    seen.add(token);
    const userId = m?.[2]?.trim();
    out.push(userId ? { token, userId } : { token });
  });
  if (out.length === 0) {
    throw new SyntaxError(`${source}: the file lists no token (one per line: TOKEN [user-id])`);
  }
  return out;
}

/**
 * Reads and parses a token file (see {@linkcode parseTokenFile}).
 *
 * @param path The file.
 * @returns The tokens.
 * @throws {SyntaxError} When the file cannot be read or parsed.
 */
export function readTokenFile(path: string): AccessToken[] {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new SyntaxError(`cannot read ${path}: ${e instanceof Error ? e.message : e}`);
  }
  return parseTokenFile(text, path);
}

function digest(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/**
 * The tokens a server accepts. Presented tokens are compared by their sha256, in constant time
 * against every known token, so neither the comparison nor which token matched shows in timing.
 */
export class TokenSet {
  #tokens: { digest: Uint8Array; userId: string | undefined }[];

  /**
   * @param tokens The accepted tokens; at least one.
   * @throws {TypeError} When `tokens` is empty or a token is empty.
   */
  constructor(tokens: readonly AccessToken[]) {
    if (tokens.length === 0) throw new TypeError("Cannot check tokens: no token is configured");
    this.#tokens = tokens.map((t) => {
      if (t.token === "") throw new TypeError("Cannot use an empty token");
      return { digest: digest(t.token), userId: t.userId };
    });
  }

  /**
   * Checks an `authorization` header (`Bearer <token>`, scheme case-insensitive).
   *
   * @param header The header's value, `null` when absent.
   * @returns The user the token is bound to (if any), or why it is refused.
   */
  check(header: string | null): Credential {
    if (header === null || header.trim() === "") return { ok: false, problem: "MISSING" };
    const m = header.match(/^\s*bearer\s+(\S+)\s*$/i);
    if (!m) return { ok: false, problem: "MALFORMED" };
    const got = digest(m[1]!);
    let found: { userId: string | undefined } | undefined;
    for (const t of this.#tokens) {
      if (timingSafeEqual(got, t.digest) && !found) found = t;
    }
    return found ? { ok: true, userId: found.userId } : { ok: false, problem: "WRONG" };
  }
}

/** What a client is told for each refusal; the token itself is never repeated. */
export const CREDENTIAL_MESSAGES: Readonly<Record<CredentialProblem, string>> = {
  MISSING: "[UNAUTHENTICATED] This server requires an 'authorization: Bearer <token>' header; " +
    "the request has none. Configure your client with the server's token " +
    "(PySpark: sc://host:port/;token=TOKEN).",
  MALFORMED: "[UNAUTHENTICATED] The authorization header is not of the form 'Bearer <token>'.",
  WRONG: "[UNAUTHENTICATED] The bearer token is wrong: it is not one of this server's tokens. " +
    "Check the token your client sends.",
};
