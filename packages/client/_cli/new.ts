// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand } from "./args.ts";
import { type Context, out } from "./context.ts";
import { help } from "./help.ts";
import { releaseSession } from "./release.ts";
import { NEW } from "./specs.ts";
import { namedSession, startSession } from "./state.ts";

/**
 * `valise new`: releases the named or remembered session, if any, and starts a new one that
 * the next commands use.
 *
 * @param args The words after `new`.
 * @param ctx The context.
 * @returns The exit code.
 */
export async function newSession(args: string[], ctx: Context): Promise<number> {
  parseCommand(args, ctx.globals, NEW);
  if (ctx.globals.help) return help("new");
  const { sessionId: old } = await namedSession(ctx);
  if (old !== undefined) {
    await releaseSession(ctx, old);
    ctx.notice(`valise: released session ${old}`);
  }
  const session = await startSession(ctx);
  session.close();
  ctx.notice(`valise: new session ${session.sessionId}`);
  if (ctx.globals.json) {
    ctx.emit({ type: "session", session: session.sessionId, released: old ?? null });
  } else {
    out(`${session.sessionId}\n`);
  }
  return 0;
}
