// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand, UsageError } from "./args.ts";
import { type Context, out } from "./context.ts";
import { help } from "./help.ts";
import { retryNotice } from "./state.ts";
import { endpointsOf, parseConnectionString } from "../connection_string.ts";
import { connect } from "../session.ts";

/**
 * `valise health [SERVICE]`: the server's standard health check (no token, no session).
 *
 * @param args The words after `health`.
 * @param ctx The context.
 * @returns 0 when serving, else 1.
 */
export async function health(args: string[], ctx: Context): Promise<number> {
  const { positionals } = parseCommand(args, ctx.globals, {
    command: "health",
    options: {},
    positionals: "any",
  });
  if (ctx.globals.help) return help("health");
  if (positionals.length > 1) throw new UsageError("health takes at most one SERVICE", "health");
  // One attempt per node unless --retries says otherwise: a health check reports, it does not
  // wait (going on to the next node takes no wait).
  const nodes = endpointsOf(parseConnectionString(ctx.remote)).length;
  const session = connect(ctx.remote, {
    retry: { maxAttempts: ctx.globals.retries ?? nodes },
    onRetry: (r) => ctx.notice(retryNotice(r)),
  });
  try {
    const status = await session.health(positionals[0] ?? "");
    if (ctx.globals.json) ctx.emit({ type: "health", service: positionals[0] ?? "", status });
    else out(`${status}\n`);
    return status === "SERVING" ? 0 : 1;
  } finally {
    session.close();
  }
}
