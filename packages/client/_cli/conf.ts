// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand, UsageError } from "./args.ts";
import { type Context, out } from "./context.ts";
import { help } from "./help.ts";
import { CONF } from "./specs.ts";
import { withSession } from "./state.ts";

/** Each subcommand's least and most arguments, and what it wants. */
const ARITY: Record<string, [number, number, string]> = {
  set: [2, 2, "KEY VALUE"],
  get: [1, 1, "one KEY"],
  unset: [1, Infinity, "at least one KEY"],
  list: [0, 1, "at most one PREFIX"],
};

/**
 * `valise conf set KEY VALUE | get KEY | unset KEY... | list [PREFIX]`
 *
 * @param args The words after `conf`.
 * @param ctx The context.
 * @returns The exit code.
 */
export async function conf(args: string[], ctx: Context): Promise<number> {
  const { positionals } = parseCommand(args, ctx.globals, CONF);
  if (ctx.globals.help) return help("conf");
  const [sub, ...xs] = positionals;
  if (sub === undefined) throw new UsageError("conf needs set, get, unset or list", "conf");
  const bounds = ARITY[sub];
  if (!bounds) {
    throw new UsageError(`unknown conf command "${sub}" (set, get, unset or list)`, "conf");
  }
  if (xs.length < bounds[0] || xs.length > bounds[1]) {
    throw new UsageError(
      `conf ${sub} takes ${bounds[2]}, not ${xs.length} argument${xs.length === 1 ? "" : "s"}`,
      "conf",
    );
  }
  const json = ctx.globals.json;
  await withSession(ctx, async (session) => {
    switch (sub) {
      case "set": {
        const warnings = await session.conf.set(xs[0]!, xs[1]!);
        for (const w of warnings) ctx.notice(`valise: warning: ${w}`);
        if (json) ctx.emit({ type: "conf", key: xs[0]!, value: xs[1]!, warnings });
        break;
      }
      case "get": {
        const value = await session.conf.get(xs[0]!);
        if (json) ctx.emit({ type: "conf", key: xs[0]!, value });
        else out(`${value}\n`);
        break;
      }
      case "unset":
        await session.conf.unset(xs);
        if (json) { for (const key of xs) ctx.emit({ type: "conf_unset", key }); }
        break;
      case "list": {
        const all = await session.conf.getAll(xs[0]);
        for (const k of Object.keys(all).sort()) {
          if (json) ctx.emit({ type: "conf", key: k, value: all[k] });
          else out(`${k}=${all[k]}\n`);
        }
        break;
      }
    }
  });
  return 0;
}
