// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand } from "./args.ts";
import { CliError } from "./cli_error.ts";
import { type Context, out } from "./context.ts";
import { help } from "./help.ts";
import { CLONE } from "./specs.ts";
import { connectTo, namedSession, remember, stateKey } from "./state.ts";

/**
 * `valise clone`: clones the named or remembered session on the server and, unless
 * `--no-switch`, remembers the clone for the remote.
 *
 * @param args The words after `clone`.
 * @param ctx The context.
 * @returns The exit code.
 */
export async function clone(args: string[], ctx: Context): Promise<number> {
  const { values } = parseCommand(args, ctx.globals, CLONE);
  if (ctx.globals.help) return help("clone");
  const { sessionId } = await namedSession(ctx);
  if (sessionId === undefined) {
    throw new CliError(
      "NO_SESSION",
      `Cannot clone: there is no session for ${stateKey(ctx.remote)}`,
      {
        hint: "start one (valise new) or name one (--session ID)",
        exitCode: 2,
      },
    );
  }
  const source = connectTo(ctx, sessionId);
  let id: string;
  try {
    const copy = await source.clone(values.as as string | undefined);
    id = copy.sessionId;
    copy.close();
  } finally {
    source.close();
  }
  if (!values["no-switch"]) await remember(ctx, id);
  ctx.notice(
    `valise: cloned session ${sessionId} to ${id}` +
      (values["no-switch"] ? "" : " (remembered: the next commands use the clone)"),
  );
  if (ctx.globals.json) ctx.emit({ type: "cloned", session: sessionId, clone: id });
  else out(`${id}\n`);
  return 0;
}
