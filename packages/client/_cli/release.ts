// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand } from "./args.ts";
import type { Context } from "./context.ts";
import { help } from "./help.ts";
import { RELEASE } from "./specs.ts";
import { connectTo, forget, namedSession, stateKey } from "./state.ts";

/**
 * `valise release`: releases the session on the server and forgets it.
 *
 * @param args The words after `release`.
 * @param ctx The context.
 * @returns The exit code.
 */
export async function release(args: string[], ctx: Context): Promise<number> {
  parseCommand(args, ctx.globals, RELEASE);
  if (ctx.globals.help) return help("release");
  const { sessionId } = await namedSession(ctx);
  if (sessionId === undefined) {
    ctx.notice(`valise: no session to release for ${stateKey(ctx.remote)}`);
    if (ctx.globals.json) ctx.emit({ type: "released", session: null });
    return 0;
  }
  await releaseSession(ctx, sessionId);
  ctx.notice(`valise: released session ${sessionId}`);
  if (ctx.globals.json) ctx.emit({ type: "released", session: sessionId });
  return 0;
}

/**
 * Releases a session on the server (one it no longer has is released already) and forgets it
 * when it is the remembered one.
 *
 * @param ctx The command's context.
 * @param sessionId The session.
 * @returns When released and forgotten.
 */
export async function releaseSession(ctx: Context, sessionId: string): Promise<void> {
  const session = connectTo(ctx, sessionId);
  try {
    await session.release();
  } finally {
    session.close();
  }
  await forget(ctx, sessionId);
}
