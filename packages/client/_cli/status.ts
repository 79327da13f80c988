// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand } from "./args.ts";
import { type Context, out } from "./context.ts";
import { help } from "./help.ts";
import { stateKey, withSession } from "./state.ts";

/**
 * `valise status [NAME...]`: the session, or whether artifacts exist.
 *
 * @param args The words after `status`.
 * @param ctx The context.
 * @returns 0, or 1 when a named artifact is missing.
 */
export async function status(args: string[], ctx: Context): Promise<number> {
  const { positionals: names } = parseCommand(args, ctx.globals, {
    command: "status",
    options: {},
    positionals: "any",
  });
  if (ctx.globals.help) return help("status");
  return await withSession(ctx, async (session) => {
    const st = await session.status(names);
    if (names.length === 0) {
      out(`remote\t${stateKey(ctx.remote)}\n`);
      out(`session\t${session.sessionId}\n`);
      out(`server_side_session\t${session.serverSideSessionId ?? ""}\n`);
      out(`user\t${session.userId ?? ""}\n`);
      return 0;
    }
    for (const n of names) out(`${n}\t${st[n] ? "exists" : "missing"}\n`);
    return names.every((n) => st[n]) ? 0 : 1;
  });
}
