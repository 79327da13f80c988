// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The `valise` command line: add artifacts to a session, set its config, run Python in it
 * (or its interactive console), apply Python functions to Arrow files in it, release it. Run it as `deno task valise …` or
 * `deno run -A jsr:@valise/client/cli …`.
 *
 * ```sh
 * deno task valise add --archive env.tar.gz#environment
 * deno task valise conf set spark.sql.execution.pyspark.python environment/bin/python
 * deno task valise run -c "import sys; print(sys.executable)"
 * deno task valise python
 * deno task valise apply --fn util:double --in data.arrow --out result.arrow
 * deno task valise pip install requests==2.32.3
 * deno task valise release
 * deno task valise help run
 * source <(deno task -q valise completions bash)
 * ```
 *
 * @module
 */
import { CLIENT_VERSION } from "./version.ts";
import { closest, parseCommand, UsageError } from "./_cli/args.ts";
import { type Context, makeContext, out } from "./_cli/context.ts";
import { help, helpCommand } from "./_cli/help.ts";
import { report } from "./_cli/report.ts";
import { add } from "./_cli/add.ts";
import { apply } from "./_cli/apply.ts";
import { clone } from "./_cli/clone.ts";
import { completions } from "./_cli/completions.ts";
import { conf } from "./_cli/conf.ts";
import { health } from "./_cli/health.ts";
import { ls } from "./_cli/ls.ts";
import { newSession } from "./_cli/new.ts";
import { release } from "./_cli/release.ts";
import { rm } from "./_cli/rm.ts";
import { pip } from "./_cli/pip.ts";
import { python } from "./_cli/python.ts";
import { run } from "./_cli/run.ts";
import { MAIN } from "./_cli/specs.ts";
import { status } from "./_cli/status.ts";

const COMMANDS: Record<string, (args: string[], ctx: Context) => Promise<number>> = {
  add,
  conf,
  run,
  python,
  apply,
  pip,
  status,
  release,
  ls,
  rm,
  health,
  new: newSession,
  clone,
  help: (args, ctx) => helpOf(args, ctx),
  completions: (args, ctx) => completions(args, ctx, Object.keys(COMMANDS)),
};

/** `valise help [COMMAND]`; a command without an entry in the help answers its own --help. */
async function helpOf(args: string[], ctx: Context): Promise<number> {
  const code = helpCommand(args, ctx, Object.keys(COMMANDS));
  if (code >= 0) return code;
  const name = args.find((a) => !a.startsWith("-"))!;
  return await COMMANDS[name]!(["--help"], ctx);
}

/**
 * Runs the command line.
 *
 * @param args The arguments, without the program name.
 * @returns The exit code.
 */
export async function main(args: string[]): Promise<number> {
  const ctx = makeContext({ json: false, quiet: false, help: false });
  let command = "main";
  try {
    // The global options may come first; the first plain word is the command.
    const { values, stop } = parseCommand(args, ctx.globals, MAIN);
    if (values.version) {
      if (ctx.globals.json) ctx.emit({ type: "version", version: CLIENT_VERSION });
      else out(`valise ${CLIENT_VERSION}\n`);
      return 0;
    }
    const name = stop?.value;
    if (name === undefined) {
      if (ctx.globals.help) return help("main");
      throw new UsageError("no command given");
    }
    const cmd = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
    if (!cmd) {
      const near = closest(name, Object.keys(COMMANDS));
      throw new UsageError(
        `unknown command "${name}"${near === undefined ? "" : `; did you mean "${near}"?`}`,
      );
    }
    command = name;
    return await cmd(stop!.rest, ctx);
  } catch (e) {
    return report(e, command, ctx);
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
