// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand, UsageError } from "./args.ts";
import { type Context, out } from "./context.ts";
import { help } from "./help.ts";
import { existingSession, stateKey } from "./state.ts";
import { formatBytes } from "../_progress.ts";
import { ValiseClientError } from "../error.ts";

/**
 * `valise rm NAME...`: removes artifacts from the session, all or none.
 *
 * @param args The words after `rm`.
 * @param ctx The context.
 * @returns The exit code.
 */
export async function rm(args: string[], ctx: Context): Promise<number> {
  const { positionals: names } = parseCommand(args, ctx.globals, {
    command: "rm",
    options: {},
    positionals: "any",
  });
  if (ctx.globals.help) return help("rm");
  if (names.length === 0) throw new UsageError("rm needs at least one NAME", "rm");
  const session = await existingSession(ctx);
  if (!session) {
    throw new ValiseClientError(
      `[ARTIFACT_NOT_FOUND] There is no session for ${stateKey(ctx.remote)}: nothing to remove.`,
      { errorClass: "ARTIFACT_NOT_FOUND", grpcCode: "NotFound" },
    );
  }
  try {
    const r = await session.remove(names);
    for (const a of r.removed) {
      if (ctx.globals.json) ctx.emit({ type: "removed", name: a.name });
      else out(`${a.name}\tremoved\n`);
    }
    ctx.notice(`valise: freed ${formatBytes(r.freedBytes)} of the session's quota`);
    if (r.inProgress > 0) {
      ctx.notice(
        `valise: ${r.inProgress} run(s) or upload(s) in progress keep seeing the removed ` +
          `artifacts in the working directory until they end; later runs do not`,
      );
    }
    return 0;
  } finally {
    session.close();
  }
}
