// Copyright 2026 the Valise authors. Apache-2.0 license.
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type ArtifactKindFlags, resolveArtifact } from "../artifact_path.ts";
import type { AddedArtifact } from "../upload.ts";
import { plainRenderer, type ProgressRenderer, quietRenderer, ttyRenderer } from "../_progress.ts";
import { parseCommand, UsageError } from "./args.ts";
import { CliError } from "./cli_error.ts";
import { type Context, err, interruptible, out } from "./context.ts";
import { help } from "./help.ts";
import { ADD } from "./specs.ts";
import { withSession } from "./state.ts";

/**
 * `valise add [--pyfile | --archive | --file] PATH...`: every path is checked before a session
 * is opened; each artifact is reported as the server commits it, so a failure on a later one
 * still shows the ones added.
 *
 * @param args The words after `add`.
 * @param ctx The context.
 * @returns The exit code (130 on Ctrl-C).
 */
export async function add(args: string[], ctx: Context): Promise<number> {
  const { values, positionals: paths } = parseCommand(args, ctx.globals, ADD);
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
  for (const p of paths) await checkPath(p, flags, ctx.cwd);
  const renderer: ProgressRenderer = ctx.globals.quiet
    ? quietRenderer()
    : Deno.stderr.isTerminal()
    ? ttyRenderer(err, { columns: consoleColumns })
    : plainRenderer(err);
  const report = (a: AddedArtifact) => {
    if (ctx.globals.json) {
      ctx.emit({
        type: "artifact",
        name: a.name,
        path: a.path,
        size: a.size,
        sha256: a.sha256,
        uploaded: a.uploaded,
      });
    } else {
      out(`${a.name}\t${a.size}\t${a.uploaded ? "uploaded" : "attached"}\n`);
    }
  };
  const notice = ctx.notice;
  // A notice (a node failed, the upload goes on elsewhere) goes above the bar, not into it.
  ctx.notice = (line) => {
    if (!ctx.globals.quiet) renderer.note(line);
  };
  try {
    const code = await interruptible(async (signal) => {
      // Ctrl-C: the renderer says where it stopped, on a clean line, at once.
      signal.addEventListener("abort", () => renderer.interrupt(), { once: true });
      await withSession(ctx, (session) =>
        session.addArtifacts(paths, {
          ...flags,
          cwd: ctx.cwd,
          signal,
          onProgress: (p) => renderer.update(p),
          onAdded: report,
        }));
      return 0;
    });
    return code;
  } finally {
    ctx.notice = notice;
    renderer.finish();
  }
}

/**
 * Checks a path before anything is sent: it exists, is a file (a directory gets the command
 * that packs it), and has a name its kind accepts.
 */
async function checkPath(path: string, flags: ArtifactKindFlags, cwd: string): Promise<void> {
  let local: string;
  if (/^file:/i.test(path)) {
    const url = new URL(path);
    url.hash = "";
    local = fileURLToPath(url);
  } else {
    const hash = flags.archive ? path.indexOf("#") : -1;
    local = resolve(cwd, hash < 0 ? path : path.slice(0, hash));
  }
  let info: Deno.FileInfo | undefined;
  try {
    info = await Deno.stat(local);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (info === undefined) {
    throw new CliError("FILE_NOT_FOUND", `Cannot add ${path}: there is no such file`, {
      exitCode: 2,
    });
  }
  if (info.isDirectory) {
    throw new CliError("INVALID_ARGUMENT", `Cannot add ${path}: it is a directory`, {
      hint: await directoryHint(local, flags),
      exitCode: 2,
    });
  }
  resolveArtifact(path, flags, cwd);
}

/** This is a directory: the command that packs it, and the `add` that adds the result. */
async function directoryHint(dir: string, flags: ArtifactKindFlags): Promise<string> {
  const name = basename(dir);
  const parent = dirname(dir);
  if (flags.pyfile) {
    const isPackage = await Deno.stat(join(dir, "__init__.py")).then(() => true, () => false);
    // A package is zipped with its directory (import NAME); a directory of modules without it.
    const zip = join(parent, `${name}.zip`);
    const pack = isPackage
      ? `(cd ${sh(parent)} && zip -r ${sh(`${name}.zip`)} ${sh(name)})`
      : `(cd ${sh(dir)} && zip -r ${sh(zip)} .)`;
    return `this is a directory: zip it, then add the zip: ${pack} && valise add --pyfile ${
      sh(zip)
    }`;
  }
  const tgz = join(parent, `${name}.tar.gz`);
  const pack = `tar -czf ${sh(tgz)} -C ${sh(dir)} .`;
  const what = flags.archive ? "this is a directory: pack it" : "--file takes one file: pack it";
  return `${what}, then add the archive: ${pack} && valise add --archive ${sh(`${tgz}#${name}`)}`;
}

/** Quotes a word for a POSIX shell when it needs it. */
function sh(word: string): string {
  return /^[\w@%+=:,./#-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/** The terminal's width; 80 where it cannot be read or reads 0 (a pty nobody sized). */
function consoleColumns(): number {
  try {
    return Deno.consoleSize().columns || 80;
  } catch {
    return 80;
  }
}
