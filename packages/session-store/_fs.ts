// Copyright 2026 the Valise authors. Apache-2.0 license.
import { basename, dirname, join } from "node:path";

/** Writes `data` to `path` atomically: a temp file in the same directory, fsync, rename. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  // A dot name: start-up clean-ups remove what a crash leaves of these (removeAtomicLeftovers).
  const tmp = join(dirname(path), `.${basename(path)}.${crypto.randomUUID()}.tmp`);
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const f = await Deno.open(tmp, { write: true, createNew: true, mode: 0o644 });
  try {
    let at = 0;
    while (at < bytes.length) at += await f.write(bytes.subarray(at));
    await f.sync();
  } finally {
    f.close();
  }
  try {
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  await syncDir(dirname(path));
}

/** Removes the temporary files that {@linkcode writeFileAtomic} calls cut short left in `dir`. */
export async function removeAtomicLeftovers(dir: string): Promise<void> {
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.startsWith(".") && e.name.endsWith(".tmp")) {
      await Deno.remove(join(dir, e.name)).catch(() => {});
    }
  }
}

/** Makes a rename or create in `dir` durable. */
export async function syncDir(dir: string): Promise<void> {
  try {
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  } catch {
    // Some file systems refuse fsync on directories; the rename is still atomic there.
  }
}

/** Removes `path` recursively; a missing path is not an error. */
export async function removeAll(path: string): Promise<void> {
  try {
    await Deno.remove(path, { recursive: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    // Read-only directories (shared, content-addressed parts) must be made writable first.
    if (e instanceof Deno.errors.PermissionDenied) {
      await makeWritable(path);
      await Deno.remove(path, { recursive: true });
      return;
    }
    throw e;
  }
}

async function makeWritable(path: string): Promise<void> {
  const st = await Deno.lstat(path).catch(() => null);
  if (!st || st.isSymlink) return;
  if (st.isDirectory) {
    await Deno.chmod(path, 0o700);
    for await (const e of Deno.readDir(path)) await makeWritable(`${path}/${e.name}`);
  }
}

/** Whether `path` exists (without following a final symlink). */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** A mutual-exclusion lock: `run` calls execute one after another. */
export class Mutex {
  #tail: Promise<unknown> = Promise.resolve();

  /** Runs `fn` once every earlier call has settled. */
  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#tail.then(fn, fn);
    this.#tail = next.catch(() => {});
    return next;
  }
}
