// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand, UsageError } from "./args.ts";
import { type Context, err, interruptible, out } from "./context.ts";
import { help } from "./help.ts";
import { withSession } from "./state.ts";
import { plainRenderer, type ProgressRenderer, quietRenderer, ttyRenderer } from "../_progress.ts";

/**
 * `valise add [--pyfile | --archive | --file] PATH...`
 *
 * @param args The words after `add`.
 * @param ctx The context.
 * @returns The exit code.
 */
export async function add(args: string[], ctx: Context): Promise<number> {
  const { values, positionals: paths } = parseCommand(args, ctx.globals, {
    command: "add",
    options: {
      pyfile: { type: "boolean" },
      archive: { type: "boolean" },
      file: { type: "boolean" },
    },
    positionals: "any",
  });
  if (ctx.globals.help) return help("add");
  if (paths.length === 0) throw new UsageError("add needs at least one PATH", "add");
  const flags = {
    pyfile: values.pyfile ?? false,
    archive: values.archive ?? false,
    file: values.file ?? false,
  };
  if (Object.values(flags).filter(Boolean).length > 1) {
    throw new UsageError("give at most one of --pyfile, --archive, --file", "add");
  }
  const renderer: ProgressRenderer = ctx.globals.quiet
    ? quietRenderer()
    : Deno.stderr.isTerminal()
    ? ttyRenderer(err, { columns: consoleColumns })
    : plainRenderer(err);
  try {
    return await interruptible(async (signal) => {
      // Ctrl-C: the renderer says where it stopped, on a clean line, at once.
      signal.addEventListener("abort", () => renderer.interrupt(), { once: true });
      const added = await withSession(ctx, (session) =>
        session.addArtifacts(paths, {
          ...flags,
          cwd: ctx.cwd,
          signal,
          onProgress: (p) => renderer.update(p),
        }));
      renderer.finish();
      for (const a of added) {
        out(`${a.name}\t${a.size}\t${a.uploaded ? "uploaded" : "attached"}\n`);
      }
      return 0;
    });
  } finally {
    renderer.finish();
  }
}

/** The terminal's width; 80 where it cannot be read or reads 0 (a pty nobody sized). */
function consoleColumns(): number {
  try {
    return Deno.consoleSize().columns || 80;
  } catch {
    return 80;
  }
}
