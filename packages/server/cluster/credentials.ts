// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * NATS credentials of a node, read from a file (never the command line, where every local
 * user sees them in `ps`).
 *
 * @module
 */
import {
  type Authenticator,
  credsAuthenticator,
  tokenAuthenticator,
  usernamePasswordAuthenticator,
} from "@nats-io/transport-node";

/** How a node authenticates to NATS: connection options for `connect()`. */
export interface ClusterCredentials {
  /** The authenticator. */
  readonly authenticator: Authenticator;
}

/** The most bytes a credentials file may have: they are a few hundred. */
const MAX_FILE_BYTES = 64 * 1024;

/**
 * Reads a credentials file: a NATS `.creds` file (user JWT and NKey seed, as `nsc` writes it),
 * a line `user:password`, or a line `token`.
 *
 * @param path The file.
 * @returns The credentials.
 * @throws {TypeError} When the file is empty, too large or none of those.
 */
export function readClusterCredentials(path: string): ClusterCredentials {
  const st = Deno.statSync(path);
  if (!st.isFile || st.size > MAX_FILE_BYTES) {
    throw new TypeError(`${path} is not a credentials file (a regular file of at most 64 KiB)`);
  }
  const text = Deno.readTextFileSync(path);
  if (text.includes("-----BEGIN NATS USER JWT-----")) {
    return { authenticator: credsAuthenticator(new TextEncoder().encode(text)) };
  }
  const line = text.split("\n").map((l) => l.trim()).find((l) => l && !l.startsWith("#"));
  if (!line) throw new TypeError(`${path} holds no credentials`);
  const colon = line.indexOf(":");
  if (colon > 0) {
    return {
      authenticator: usernamePasswordAuthenticator(line.slice(0, colon), line.slice(colon + 1)),
    };
  }
  return { authenticator: tokenAuthenticator(line) };
}
