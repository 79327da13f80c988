// Copyright 2026 the Valise authors. Apache-2.0 license.
// Consecutive commands share a session: its id is remembered per remote in a state file.
import { dirname, join } from "node:path";
import { formatConnectionString, parseConnectionString } from "../connection_string.ts";
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

/**
 * Opens the command's session: `--session`, else the remote's `session_id`, else the one
 * remembered for the remote, else (when `create`) a new one, remembered and announced.
 *
 * @param ctx The command's context.
 * @param create Whether to start a session when none is remembered.
 * @returns The session, or `undefined` when there is none and `create` is false.
 */
export async function openSession(ctx: Context, create = true): Promise<Session | undefined> {
  const path = statePath();
  const key = stateKey(ctx.remote);
  const parsed = parseConnectionString(ctx.remote);
  let sessionId = ctx.globals.session ?? parsed.sessionId;
  if (sessionId === undefined) {
    const state = await readState(path);
    sessionId = state.sessions[key]?.sessionId;
    if (sessionId === undefined) {
      if (!create) return undefined;
      sessionId = crypto.randomUUID();
      state.sessions[key] = { sessionId, updatedAt: new Date().toISOString() };
      await writeState(path, state);
      ctx.notice(`valise: new session ${sessionId} (remembered in ${path})`);
    }
  }
  return connect(ctx.remote, { sessionId, retry: { maxAttempts: ctx.globals.retries ?? 5 } });
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
  const session = (await openSession(ctx))!;
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
