// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The links a session's directories are made of: hard links to blobs, symlinks to trees and into
 * the read-only view. Each is made without following what is already at its path and replaces
 * only a leftover of an interrupted commit (the same link), never anything else.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { SessionError } from "./errors.ts";

/**
 * Shows an artifact in the workers' directory as a relative symlink into the read-only view.
 * The directory is the workers' to write: nothing in it is followed, and an entry they made
 * under that name is never replaced.
 */
export function placeInRoot(view: string, path: string): Promise<void> {
  return symlinkFresh(
    `../ro/${view}`,
    path,
    `Cannot show the artifact as ./${view}: the session's working directory already holds ` +
      `./${view}, written by its workers. Remove it, or choose another name.`,
  );
}

/**
 * Points a symlink at `path` to `target`, accepting only a link to that same target already
 * there (a leftover of an interrupted commit); `symlink()` never follows what is at `path`.
 */
export async function symlinkFresh(
  target: string,
  path: string,
  conflict = `Cannot place the archive at ${path}: something else is already there.`,
): Promise<void> {
  try {
    await Deno.symlink(target, path);
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    const st = await Deno.lstat(path);
    if (st.isSymlink && (await Deno.readLink(path)) === target) return;
    throw new SessionError("ARTIFACT_ALREADY_EXISTS", conflict);
  }
}

export async function listFiles(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(prefix ? join(dir, prefix) : dir)) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await listFiles(dir, rel));
    else out.push(rel);
  }
  return out;
}

/**
 * Hard-links `blob` at `path`, replacing a leftover of an interrupted commit (same content)
 * but never anything else.
 */
export async function linkFresh(blob: string, path: string): Promise<void> {
  try {
    await Deno.mkdir(dirname(path), { recursive: true });
  } catch (e) {
    // A file where a directory of the path should be (an interrupted commit's leftover).
    throw new SessionError(
      "ARTIFACT_ALREADY_EXISTS",
      `Cannot place the artifact at ${path}: part of its path is already a file.`,
      { cause: e },
    );
  }
  try {
    await Deno.link(blob, path);
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    const [a, b] = await Promise.all([Deno.lstat(blob), Deno.lstat(path)]);
    if (a.ino === b.ino && a.dev === b.dev) return;
    throw new SessionError(
      "ARTIFACT_ALREADY_EXISTS",
      `Cannot place the artifact at ${path}: a different file is already there.`,
    );
  }
}

/**
 * Removes an artifact's entries from the session's views, synchronously (so that nothing else
 * runs in between): its read-only view entry, and its link in the workers' directory — only when
 * that is still the server's symlink (the workers may have put something of theirs there, which
 * stays). Missing entries are fine.
 *
 * @param viewDir The read-only view (`ro/`).
 * @param root The workers' directory.
 * @param view The entry's name in both.
 */
export function unlinkViewSync(viewDir: string, root: string, view: string): void {
  const inRoot = join(root, view);
  try {
    const st = Deno.lstatSync(inRoot);
    if (st.isSymlink && Deno.readLinkSync(inRoot) === `../ro/${view}`) Deno.removeSync(inRoot);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  try {
    Deno.removeSync(join(viewDir, view));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/**
 * Removes a file of Spark's layout (`artifacts/<key>`) and the directories it leaves empty, up
 * to (not including) `top`, so that the name's parts can become files again.
 *
 * @param top The `artifacts/` directory.
 * @param key The artifact's key (a relative path).
 */
export async function removeByName(top: string, key: string): Promise<void> {
  try {
    await Deno.remove(join(top, key));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const parts = key.split("/").slice(0, -1);
  for (let n = parts.length; n > 0; n--) {
    try {
      await Deno.remove(join(top, ...parts.slice(0, n)));
    } catch {
      return; // not empty (another artifact is under it), or gone
    }
  }
}
