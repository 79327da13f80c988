// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand, UsageError } from "./args.ts";
import { type Context, out } from "./context.ts";
import { help } from "./help.ts";
import { withSession } from "./state.ts";

/** Each subcommand's least and most arguments. */
const ARITY: Record<string, [number, number]> = {
  set: [2, 2],
  get: [1, 1],
  unset: [1, Infinity],
  list: [0, 1],
};

/**
 * `valise conf set KEY VALUE | get KEY | unset KEY... | list [PREFIX]`
 *
 * @param args The words after `conf`.
 * @param ctx The context.
 * @returns The exit code.
 */
export async function conf(args: string[], ctx: Context): Promise<number> {
  const { positionals } = parseCommand(args, ctx.globals, {
    command: "conf",
    options: {},
    positionals: "any",
    // A value may start with a dash (`conf set KEY -1`).
    plainAfter: 2,
  });
  if (ctx.globals.help) return help("conf");
  const [sub, ...xs] = positionals;
  if (sub === undefined) throw new UsageError("conf needs set, get, unset or list", "conf");
  const bounds = ARITY[sub];
  if (!bounds) throw new UsageError(`unknown conf command "${sub}"`, "conf");
  if (xs.length < bounds[0] || xs.length > bounds[1]) {
    throw new UsageError(`wrong number of arguments for conf ${sub}`, "conf");
  }
  await withSession(ctx, async (session) => {
    switch (sub) {
      case "set": {
        const warnings = await session.conf.set(xs[0]!, xs[1]!);
        for (const w of warnings) ctx.notice(`valise: warning: ${w}`);
        break;
      }
      case "get":
        out(`${await session.conf.get(xs[0]!)}\n`);
        break;
      case "unset":
        await session.conf.unset(xs);
        break;
      case "list": {
        const all = await session.conf.getAll(xs[0]);
        for (const k of Object.keys(all).sort()) out(`${k}=${all[k]}\n`);
        break;
      }
    }
  });
  return 0;
}
