// Copyright 2026 the Valise authors. Apache-2.0 license.
// Consecutive commands share a session: its id is remembered per remote in a state file, once
// the server has confirmed it (a failed first call leaves nothing behind). A remembered session
// the server has closed (released, idle-expired) is replaced by a new one, with a notice.
import { dirname, join } from "node:path";
import type { RetryReport } from "../connect_options.ts";
import { formatConnectionString, parseConnectionString } from "../connection_string.ts";
import { isValiseClientError } from "../error.ts";
import { connect, type Session } from "../session.ts";
import { type Context, env } from "./context.ts";

interface State {
  sessions: Record<string, { sessionId: string; updatedAt: string }>;
}

function statePath(): string {
  const explicit = env("VALISE_STATE_FILE");
  if (explicit) return explicit;
  const base = env("XDG_CONFIG_HOME") ?? join(env("HOME") ?? ".", ".config");
  return join(base, "valise", "cli-state.json");
}

async function readState(path: string): Promise<State> {
  try {
    const s = JSON.parse(await Deno.readTextFile(path));
    if (s && typeof s === "object" && s.sessions && typeof s.sessions === "object") return s;
  } catch { /* missing or damaged: start afresh */ }
  return { sessions: {} };
}

async function writeState(path: string, state: State): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${crypto.randomUUID()}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(state, null, 2) + "\n", { mode: 0o600 });
  await Deno.rename(tmp, path);
}

/**
 * The state key of a remote: the connection string without its token and session id.
 *
 * @param remote The connection string.
 * @returns The key.
 */
export function stateKey(remote: string): string {
  const c = parseConnectionString(remote);
  delete c.token;
  delete c.sessionId;
  return formatConnectionString(c);
}

/** The error classes of a session the server no longer has. */
const GONE = new Set([
  "INVALID_HANDLE.SESSION_CLOSED",
  "INVALID_HANDLE.SESSION_NOT_FOUND",
  "INVALID_HANDLE.SESSION_CHANGED",
]);

/**
 * Whether an error says the server no longer has the session (released, idle-expired).
 *
 * @param e What a call threw.
 * @returns `true` for `INVALID_HANDLE.SESSION_CLOSED` and its kin.
 */
export function isGone(e: unknown): boolean {
  return isValiseClientError(e) && GONE.has(e.errorClass);
}

/** Which session a command names, before anything is sent. */
export interface Named {
  /** The session id, if any: `--session`, the remote's `session_id`, else the remembered one. */
  sessionId: string | undefined;
  /** Whether the user named it (`--session`, `session_id`) rather than the state file. */
  explicit: boolean;
  /** The state file. */
  path: string;
}

/**
 * The session the command names: `--session`, else the remote's `session_id`, else the one
 * remembered for the remote.
 *
 * @param ctx The command's context.
 * @returns The id (if any), whether the user named it, and the state file.
 */
export async function namedSession(ctx: Context): Promise<Named> {
  const path = statePath();
  const explicit = ctx.globals.session ?? parseConnectionString(ctx.remote).sessionId;
  if (explicit !== undefined) return { sessionId: explicit, explicit: true, path };
  const state = await readState(path);
  return { sessionId: state.sessions[stateKey(ctx.remote)]?.sessionId, explicit: false, path };
}

/**
 * The notice of a retry: `valise: node h1:15002 unreachable, retrying on h2:15002`, or with one
 * endpoint `valise: node h1:15002 unreachable, retrying in 0.2s (attempt 2 of 5)`.
 *
 * @param r The retry.
 * @returns The line.
 */
export function retryNotice(r: RetryReport): string {
  const what = r.reason === "unreachable"
    ? "unreachable"
    : r.reason === "lost"
    ? "died or dropped the connection"
    : "answered UNAVAILABLE";
  const where = r.next === r.endpoint ? "" : ` on ${r.next}`;
  const wait = r.delayMs > 0 ? ` in ${(r.delayMs / 1000).toFixed(1)}s` : "";
  return `valise: node ${r.endpoint} ${what}, retrying${where}${wait} ` +
    `(attempt ${r.attempt + 1} of ${r.maxAttempts})`;
}

/**
 * Connects to a session; nothing is sent yet. Retries are told on stderr (`ctx.notice`).
 *
 * @param ctx The command's context.
 * @param sessionId The session.
 * @returns The session's client.
 */
export function connectTo(ctx: Context, sessionId: string): Session {
  return connect(ctx.remote, {
    sessionId,
    retry: { maxAttempts: ctx.globals.retries ?? 5 },
    onRetry: (r) => ctx.notice(retryNotice(r)),
  });
}

/**
 * Opens the command's session. One the user named is used as it is. The remembered one is
 * checked with the server first; when the server no longer has it, or none is remembered, a new
 * one is started: the server confirms it before it is remembered, and a notice says so.
 *
 * @param ctx The command's context.
 * @returns The session.
 */
export async function openSession(ctx: Context): Promise<Session> {
  const named = await namedSession(ctx);
  if (named.explicit) return connectTo(ctx, named.sessionId!);
  if (named.sessionId !== undefined) {
    const session = connectTo(ctx, named.sessionId);
    try {
      await session.status([]);
      return session;
    } catch (e) {
      session.close();
      if (!isGone(e)) throw e;
    }
    const fresh = await startSession(ctx);
    ctx.notice(
      `valise: session ${named.sessionId} is closed on the server (released, or idle too ` +
        `long); started new session ${fresh.sessionId}`,
    );
    return fresh;
  }
  const fresh = await startSession(ctx);
  ctx.notice(`valise: new session ${fresh.sessionId} (remembered in ${named.path})`);
  return fresh;
}

/**
 * The session a command names or remembers, connected but not checked or created; `undefined`
 * when there is none (for commands that must never create one: `ls`, `rm`).
 *
 * @param ctx The command's context.
 * @returns The session, or `undefined`.
 */
export async function existingSession(ctx: Context): Promise<Session | undefined> {
  const named = await namedSession(ctx);
  return named.sessionId === undefined ? undefined : connectTo(ctx, named.sessionId);
}

/**
 * Starts a new session: the server creates it on a first call (ArtifactStatus), then it is
 * remembered for the remote. When that call fails, nothing is remembered.
 *
 * @param ctx The command's context.
 * @returns The session.
 */
export async function startSession(ctx: Context): Promise<Session> {
  const session = connectTo(ctx, crypto.randomUUID());
  try {
    await session.status([]);
  } catch (e) {
    session.close();
    throw e;
  }
  await remember(ctx, session.sessionId);
  return session;
}

/**
 * Remembers a session for the remote: the next commands use it.
 *
 * @param ctx The command's context.
 * @param sessionId The session.
 * @returns When the state file is written.
 */
export async function remember(ctx: Context, sessionId: string): Promise<void> {
  const path = statePath();
  const state = await readState(path);
  state.sessions[stateKey(ctx.remote)] = { sessionId, updatedAt: new Date().toISOString() };
  await writeState(path, state);
}

/**
 * Runs `fn` with the command's session (see {@linkcode openSession}), closing the connection
 * after it; the session stays on the server.
 *
 * @param ctx The command's context.
 * @param fn What to do with it.
 * @returns What `fn` returned.
 */
export async function withSession<T>(
  ctx: Context,
  fn: (session: Session) => Promise<T>,
): Promise<T> {
  const session = await openSession(ctx);
  try {
    return await fn(session);
  } finally {
    session.close();
  }
}

/**
 * Forgets the session remembered for the remote, if it is this one.
 *
 * @param ctx The command's context.
 * @param sessionId The session released.
 * @returns When the state file is written.
 */
export async function forget(ctx: Context, sessionId: string): Promise<void> {
  const path = statePath();
  const key = stateKey(ctx.remote);
  const state = await readState(path);
  if (state.sessions[key]?.sessionId === sessionId) {
    delete state.sessions[key];
    await writeState(path, state);
  }
}
