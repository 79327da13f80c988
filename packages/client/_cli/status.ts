// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand } from "./args.ts";
import { type Context, out } from "./context.ts";
import { help } from "./help.ts";
import { STATUS } from "./specs.ts";
import { connectTo, isGone, namedSession, stateKey } from "./state.ts";

/**
 * `valise status [NAME...]`: the session, or whether artifacts exist. It never starts a
 * session: with none remembered it says so, and a closed one is reported as closed.
 *
 * @param args The words after `status`.
 * @param ctx The context.
 * @returns 0, or 1 when a named artifact is missing.
 */
export async function status(args: string[], ctx: Context): Promise<number> {
  const { positionals: names } = parseCommand(args, ctx.globals, STATUS);
  if (ctx.globals.help) return help("status");
  const remote = stateKey(ctx.remote);
  const named = await namedSession(ctx);
  let state: "open" | "closed" | "none" = "none";
  let exists: Record<string, boolean> = {};
  let serverSide: string | undefined;
  let user: string | undefined;
  if (named.sessionId !== undefined) {
    const session = connectTo(ctx, named.sessionId);
    user = session.userId;
    try {
      exists = await session.status(names);
      serverSide = session.serverSideSessionId;
      state = "open";
    } catch (e) {
      if (!isGone(e)) throw e;
      state = "closed";
    } finally {
      session.close();
    }
  }
  if (state === "none") {
    ctx.notice(`valise: no session for ${remote}: the next command (or \`valise new\`) starts one`);
  } else if (state === "closed") {
    ctx.notice(
      `valise: session ${named.sessionId} is closed on the server (released, or idle too long)` +
        (named.explicit ? "" : ": the next command starts a new one"),
    );
  }
  if (names.length === 0) {
    if (ctx.globals.json) {
      ctx.emit({
        type: "session",
        remote,
        session: named.sessionId ?? null,
        state,
        serverSideSession: serverSide ?? null,
        user: user ?? null,
      });
    } else {
      out(`remote\t${remote}\n`);
      out(`session\t${named.sessionId ?? ""}\n`);
      out(`state\t${state}\n`);
      out(`server_side_session\t${serverSide ?? ""}\n`);
      out(`user\t${user ?? ""}\n`);
    }
    return 0;
  }
  for (const n of names) {
    const ok = exists[n] ?? false;
    if (ctx.globals.json) ctx.emit({ type: "artifact_status", name: n, exists: ok });
    else out(`${n}\t${ok ? "exists" : "missing"}\n`);
  }
  return names.every((n) => exists[n]) ? 0 : 1;
}
