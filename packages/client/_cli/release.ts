// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand } from "./args.ts";
import type { Context } from "./context.ts";
import { help } from "./help.ts";
import { forget, openSession, stateKey } from "./state.ts";

/**
 * `valise release`: releases the session on the server and forgets it.
 *
 * @param args The words after `release`.
 * @param ctx The context.
 * @returns The exit code.
 */
export async function release(args: string[], ctx: Context): Promise<number> {
  parseCommand(args, ctx.globals, { command: "release", options: {}, positionals: "none" });
  if (ctx.globals.help) return help("release");
  const session = await openSession(ctx, false);
  if (!session) {
    ctx.notice(`valise: no session to release for ${stateKey(ctx.remote)}`);
    return 0;
  }
  try {
    await session.release();
  } finally {
    session.close();
    await forget(ctx, session.sessionId);
  }
  ctx.notice(`valise: released session ${session.sessionId}`);
  return 0;
}
