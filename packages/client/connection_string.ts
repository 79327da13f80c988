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

/**
 * The most endpoints one connection string may name. A cluster has a handful of nodes; a list
 * longer than this is a mistake (or a string built from untrusted input), refused before it is
 * split.
 */
export const MAX_ENDPOINTS = 64;

/** One server a connection string names. */
export interface Endpoint {
  /** Host name or IP address (IPv6 without brackets). */
  host: string;
  /** TCP port. */
  port: number;
}

/**
 * A parsed Spark Connect connection string `sc://host:port/;key=value;…`, or with several
 * endpoints `sc://h1:15002,h2:15002/;…` (Valise's own client; PySpark takes one).
 */
export interface ConnectionString {
  /** Host name or IP address (IPv6 without brackets): the first endpoint's. */
  host: string;
  /** TCP port, {@linkcode DEFAULT_PORT} when the string names none: the first endpoint's. */
  port: number;
  /**
   * The endpoints after the first, in the order they are tried when the ones before fail;
   * absent when the string names one.
   */
  failover?: Endpoint[];
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
 * are refused with the known ones (PySpark would send them as headers). Valise's client also
 * takes several endpoints separated by commas (`sc://h1:15002,h2/;token=…`, at most
 * {@linkcode MAX_ENDPOINTS}, each with its own port or the default), tried in order when one
 * fails; the parameters apply to all of them.
 *
 * @example
 * ```ts
 * import { parseConnectionString } from "@valise/client";
 * import { deepEqual, equal } from "node:assert/strict";
 *
 * const c = parseConnectionString("sc://spark.example:443/;use_ssl=true;token=a%2Fb");
 * equal(c.port, 443);
 * equal(c.token, "a/b");
 * equal(c.useSsl, true);
 * const two = parseConnectionString("sc://n1:15002,n2:15003/;token=t");
 * deepEqual([two.host, two.port, two.failover], ["n1", 15002, [{ host: "n2", port: 15003 }]]);
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
  if (authority.includes("@")) {
    // A secret before the host would be taken for a host name by some parsers and logged with
    // it: the only place for one is ;token= after the '/'.
    fail(
      "user information ('user@' or 'user:secret@') is not supported: the user goes in ;user_id=, " +
        "a secret in ;token= (sc://host:15002/;user_id=ada;token=…)",
    );
  }
  const endpoints = parseEndpointList(authority, fail);
  const [first, ...more] = endpoints;
  const out: ConnectionString = { host: first!.host, port: first!.port, useSsl: false, params: {} };
  if (more.length > 0) out.failover = more;
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
          // Endpoints written after the parameters would be read as part of the token (and the
          // token sent with them to the first host): an unencoded ',' is refused.
          if (kv[1]!.includes(",")) {
            fail(
              "the token holds an unencoded ',': endpoints go before the '/' " +
                "(sc://h1:15002,h2:15002/;token=…), and a ',' in a token is written %2C",
            );
          }
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

/**
 * Parses endpoints given apart from a connection string (`ConnectOptions.endpoints`), each
 * `host[:port]` as in one (`[::1]:15002` for IPv6), by the same rules: at most
 * {@linkcode MAX_ENDPOINTS}, none empty, none twice.
 *
 * @example
 * ```ts
 * import { parseEndpoints } from "@valise/client";
 * import { deepEqual } from "node:assert/strict";
 *
 * deepEqual(parseEndpoints(["n1", "[::1]:15003"]), [
 *   { host: "n1", port: 15002 },
 *   { host: "::1", port: 15003 },
 * ]);
 * ```
 *
 * @param list The endpoints, in the order they are tried.
 * @returns Each one's host and port.
 * @throws {SyntaxError} For an empty list, a bad endpoint (the message names it), too many.
 */
export function parseEndpoints(list: readonly string[]): Endpoint[] {
  if (!Array.isArray(list)) {
    throw new TypeError(`Cannot parse endpoints: expected an array of "host:port" strings`);
  }
  const fail = (why: string): never => {
    throw new SyntaxError(`Cannot parse endpoints: ${why}`);
  };
  if (list.length === 0) fail("the list is empty; give at least one host[:port]");
  if (list.length > MAX_ENDPOINTS) {
    fail(`${list.length} endpoints are more than the ${MAX_ENDPOINTS} allowed`);
  }
  for (const [i, e] of list.entries()) {
    if (typeof e !== "string") fail(`endpoint ${i + 1} is not a string`);
    if (/[,/;@?#]/.test(e)) {
      fail(
        `endpoint ${i + 1} "${e}" must be host[:port] alone (no scheme, path, parameters or ` +
          "credentials: those belong in the connection string)",
      );
    }
  }
  return parseEndpointList(list.join(","), fail);
}

/**
 * The endpoints of a connection string, the first one first.
 *
 * @param c The parsed connection string.
 * @returns `host`/`port`, then `failover`.
 */
export function endpointsOf(c: ConnectionString): Endpoint[] {
  return [{ host: c.host, port: c.port }, ...(c.failover ?? [])];
}

/**
 * Formats an endpoint as a connection string writes it: `host:port`, `[v6]:port`.
 *
 * @param e The endpoint.
 * @returns Its text.
 */
export function formatEndpoint(e: Endpoint): string {
  return `${e.host.includes(":") ? `[${e.host}]` : e.host}:${e.port}`;
}

function parseEndpointList(text: string, fail: (why: string) => never): Endpoint[] {
  // Split with a limit: a list of ten thousand is refused without being split whole.
  const parts = text.split(",", MAX_ENDPOINTS + 1);
  if (parts.length > MAX_ENDPOINTS) {
    fail(`it names more than ${MAX_ENDPOINTS} endpoints; list at most ${MAX_ENDPOINTS}`);
  }
  const one = parts.length === 1;
  const out: Endpoint[] = [];
  const seen = new Set<string>();
  for (const [i, part] of parts.entries()) {
    const where = one ? "" : `endpoint ${i + 1} of ${parts.length} ("${part}"): `;
    if (!one && part.trim() === "") {
      fail(`${where}the host is missing (an empty entry between commas?)`);
    }
    const e = parseAuthority(part, (why) => fail(where + why));
    const key = formatEndpoint({ host: e.host.toLowerCase(), port: e.port });
    if (seen.has(key)) fail(`${where}${formatEndpoint(e)} is listed twice`);
    seen.add(key);
    out.push(e);
  }
  return out;
}

function parseAuthority(authority: string, fail: (why: string) => never): Endpoint {
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
  return { host, port };
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
 * parts (values URL-encoded, IPv6 hosts bracketed, the failover endpoints after the first).
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
  const hosts = endpointsOf(c).map(formatEndpoint).join(",");
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
  return `sc://${hosts}/${parts.map((p) => `;${p}`).join("")}`;
}
