// Copyright 2026 the Valise authors. Apache-2.0 license.
// This module is browser compatible.

import { editDistance } from "./_edit_distance.ts";

/** Spark Connect's default port. */
export const DEFAULT_PORT = 15002;

/**
 * The parameters with a meaning of their own. Any other must name a custom request header
 * (`x-…`, sent as is); an unknown name is refused, so that a typo (`;tokn=…`) is not sent as a
 * header while the token goes missing.
 */
export const RESERVED_PARAMS: readonly string[] = [
  "token",
  "user_id",
  "session_id",
  "use_ssl",
  "user_agent",
];

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A parsed Spark Connect connection string `sc://host:port/;key=value;…`. */
export interface ConnectionString {
  /** Host name or IP address (IPv6 without brackets). */
  host: string;
  /** TCP port, {@linkcode DEFAULT_PORT} when the string names none. */
  port: number;
  /** `token=`: sent as `authorization: Bearer <token>`. */
  token?: string;
  /** `user_id=`. */
  userId?: string;
  /** `session_id=`: a UUID. */
  sessionId?: string;
  /** `use_ssl=true`: connect with TLS. */
  useSsl: boolean;
  /** `user_agent=`. */
  userAgent?: string;
  /** The `x-…` parameters, URL-decoded, in order; clients send them as request headers. */
  params: Record<string, string>;
}

/**
 * Parses a Spark Connect connection string with the rules of PySpark's `ChannelBuilder`:
 * scheme `sc`, a host and an optional port (default 15002), an empty path or `/`, then
 * `;key=value` parameters whose values are URL-decoded. IPv6 hosts go in brackets. Besides
 * {@linkcode RESERVED_PARAMS}, a parameter must be a custom header (`x-team=data`); other names
 * are refused with the known ones (PySpark would send them as headers).
 *
 * @example
 * ```ts
 * import { parseConnectionString } from "@valise/client";
 * import { equal } from "node:assert/strict";
 *
 * const c = parseConnectionString("sc://spark.example:443/;use_ssl=true;token=a%2Fb");
 * equal(c.port, 443);
 * equal(c.token, "a/b");
 * equal(c.useSsl, true);
 * ```
 *
 * @param value The connection string.
 * @returns Its parts.
 * @throws {SyntaxError} When the string does not follow the format; the message says where.
 */
export function parseConnectionString(value: string): ConnectionString {
  const fail = (why: string): never => {
    throw new SyntaxError(`Cannot parse connection string ${JSON.stringify(value)}: ${why}`);
  };
  if (typeof value !== "string") {
    throw new TypeError(`Cannot parse connection string: expected a string, got ${typeof value}`);
  }
  if (!value.startsWith("sc://")) {
    const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(value)?.[1];
    fail(
      scheme === undefined
        ? "it must start with sc:// (e.g. sc://localhost:15002)"
        : `the scheme must be "sc", not "${scheme}"`,
    );
  }
  let rest = value.slice(5);
  let paramText = "";
  const semi = rest.indexOf(";");
  if (semi >= 0) {
    paramText = rest.slice(semi + 1);
    rest = rest.slice(0, semi);
  }
  const slash = rest.indexOf("/");
  let authority = rest;
  if (slash >= 0) {
    const path = rest.slice(slash);
    authority = rest.slice(0, slash);
    if (path !== "/") {
      // Spark Connect's methods live at the root of the server (/spark.connect.…/…): a path
      // prefix, as a reverse proxy might route by, cannot be expressed.
      fail(
        `the path must be empty or "/", not "${path.replace(/\/$/, "")}": Spark Connect has no ` +
          `path prefix (a proxy must route the server's root, e.g. sc://host:443/;use_ssl=true)`,
      );
    }
  }
  if (semi >= 0 && slash < 0) {
    fail("parameters must follow a '/' after the host and port, as in sc://host:15002/;token=…");
  }
  if (/[?#]/.test(authority)) fail("it must not contain a query ('?') or a fragment ('#')");
  if (authority.includes("@")) fail("user information ('user@') is not supported; use ;user_id=");
  let host: string;
  let portText: string | undefined;
  if (authority.startsWith("[")) {
    const close = authority.indexOf("]");
    if (close < 0) fail("the IPv6 address has no closing ']'");
    host = authority.slice(1, close);
    const after = authority.slice(close + 1);
    if (after !== "") {
      if (!after.startsWith(":")) fail(`unexpected "${after}" after the IPv6 address`);
      portText = after.slice(1);
    }
    if (!/^[0-9A-Fa-f:.]+(%[\w.]+)?$/.test(host) || !host.includes(":")) {
      fail(`"${host}" is not an IPv6 address`);
    }
  } else {
    const parts = authority.split(":");
    if (parts.length > 2) {
      fail(
        `the target "${authority}" should match the '<host>:<port>' pattern (IPv6 addresses go in brackets)`,
      );
    }
    host = parts[0]!;
    portText = parts[1];
    if (!/^[A-Za-z0-9._~%-]*$/.test(host)) fail(`"${host}" is not a valid host name`);
  }
  if (host === "") fail("the host is missing");
  let port = DEFAULT_PORT;
  if (portText !== undefined) {
    if (!/^[0-9]{1,5}$/.test(portText)) fail(`the port "${portText}" is not a number`);
    port = Number(portText);
    if (port < 1 || port > 65535) fail(`the port ${port} is not between 1 and 65535`);
  }
  const out: ConnectionString = { host, port, useSsl: false, params: {} };
  const seen = new Set<string>();
  if (paramText !== "") {
    for (const p of paramText.split(";")) {
      if (p === "") continue;
      const kv = p.split("=");
      if (kv.length !== 2 || kv[0] === "") {
        fail(`the parameter "${p}" should be a key=value pair separated by one '='`);
      }
      const key = decode(kv[0]!, fail);
      const v = decode(kv[1]!, fail);
      if (seen.has(key)) fail(`the parameter "${key}" is given twice`);
      seen.add(key);
      switch (key) {
        case "token":
          out.token = v;
          break;
        case "user_id":
          out.userId = v;
          break;
        case "session_id":
          if (!UUID.test(v)) fail(`session_id "${v}" is not a UUID`);
          out.sessionId = v.toLowerCase();
          break;
        case "use_ssl":
          if (!/^(true|false)$/i.test(v)) fail(`use_ssl must be true or false, not "${v}"`);
          out.useSsl = v.toLowerCase() === "true";
          break;
        case "user_agent":
          out.userAgent = v;
          break;
        default:
          if (!/^[A-Za-z0-9_.-]+$/.test(key)) {
            fail(`the parameter name "${key}" cannot be sent as a header`);
          }
          if (!/^x-/i.test(key)) fail(unknownParam(key));
          out.params[key] = v;
      }
    }
  }
  return out;
}

function unknownParam(key: string): string {
  const near = RESERVED_PARAMS.find((k) => editDistance(key.toLowerCase(), k) <= 2);
  return `unknown parameter "${key}"${near === undefined ? "" : ` (did you mean "${near}"?)`}: ` +
    `the known ones are ${RESERVED_PARAMS.join(", ")}; a custom request header's name starts ` +
    `with x- (e.g. ;x-team=data)`;
}

function decode(s: string, fail: (why: string) => never): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return fail(`"${s}" is not valid URL encoding`);
  }
}

/**
 * Writes a connection string that {@linkcode parseConnectionString} reads back to the same
 * parts (values URL-encoded, IPv6 hosts bracketed).
 *
 * @example
 * ```ts
 * import { formatConnectionString } from "@valise/client";
 * import { equal } from "node:assert/strict";
 *
 * equal(
 *   formatConnectionString({ host: "::1", port: 15002, useSsl: false, token: "t", params: {} }),
 *   "sc://[::1]:15002/;token=t",
 * );
 * ```
 *
 * @param c The parts.
 * @returns The connection string.
 */
export function formatConnectionString(c: ConnectionString): string {
  const host = c.host.includes(":") ? `[${c.host}]` : c.host;
  const parts: string[] = [];
  const add = (k: string, v: string | undefined) => {
    if (v !== undefined) parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  };
  add("token", c.token);
  add("user_id", c.userId);
  add("session_id", c.sessionId);
  if (c.useSsl) add("use_ssl", "true");
  add("user_agent", c.userAgent);
  for (const [k, v] of Object.entries(c.params)) add(k, v);
  return `sc://${host}:${c.port}/${parts.map((p) => `;${p}`).join("")}`;
}
