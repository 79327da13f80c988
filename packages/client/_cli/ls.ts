// Copyright 2026 the Valise authors. Apache-2.0 license.
import { parseCommand } from "./args.ts";
import { type Context, out } from "./context.ts";
import { help } from "./help.ts";
import { existingSession, stateKey } from "./state.ts";
import { formatBytes } from "../_progress.ts";

/**
 * `valise ls`: the session's artifacts, one per line: NAME, SIZE (bytes), KIND, SHA256 and how
 * the working directory shows it. Never creates a session.
 *
 * @param args The words after `ls`.
 * @param ctx The context.
 * @returns The exit code.
 */
export async function ls(args: string[], ctx: Context): Promise<number> {
  parseCommand(args, ctx.globals, { command: "ls", options: {}, positionals: "none" });
  if (ctx.globals.help) return help("ls");
  const session = await existingSession(ctx);
  if (!session) {
    ctx.notice(`valise: no session for ${stateKey(ctx.remote)}: no artifacts`);
    return 0;
  }
  try {
    const artifacts = await session.list();
    let total = 0;
    for (const a of artifacts) {
      total += a.size + (a.tree?.bytes ?? 0);
      if (ctx.globals.json) {
        ctx.emit({ type: "listed", ...a, addedAt: a.addedAt.toISOString() });
        continue;
      }
      const view = a.view === undefined
        ? "-"
        : a.tree
        ? `./${a.view}/ (unpacked: ${a.tree.entries} entries, ${formatBytes(a.tree.bytes)})`
        : `./${a.view}`;
      out(`${a.name}\t${a.size}\t${a.kind}\t${a.sha256}\t${view}\n`);
      // Warnings go to stderr: the lines on stdout keep their five columns for scripts.
      for (const w of a.warnings) ctx.notice(`valise: warning: ${a.name}: ${w}`);
    }
    ctx.notice(
      `valise: ${artifacts.length} artifact(s), ${formatBytes(total)} with unpacked archives, ` +
        `in session ${session.sessionId}`,
    );
    return 0;
  } finally {
    session.close();
  }
}
