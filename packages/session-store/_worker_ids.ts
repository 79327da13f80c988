// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Worker uids/gids, one per session from a range, and the owners and modes of a session's
 * directories that go with them: who may reach what on disk.
 *
 * @module
 */
import { join } from "node:path";
import { SessionError } from "./errors.ts";
import type { SessionManifest } from "./manifest.ts";

/** The directories of a session whose owners and modes are set. */
export interface SessionDirs {
  /** The session's directory. */
  dir: string;
  /** Its workers' working directory. */
  root: string;
  /** Its read-only view. */
  viewDir: string;
  /** Spark's layout of its artifacts. */
  artifactsDir: string;
  /** Its worker uid/gid, if it has its own. */
  worker: { uid: number; gid: number } | undefined;
}

/** Hands out worker ids of a range and keeps track of those in use. */
export class WorkerIds {
  /** The range. */
  readonly range: Readonly<{ first: number; count: number }>;
  #inUse = new Set<number>();

  /**
   * Checks the range; the store must run as root to give ids away.
   *
   * @param range First id and how many.
   */
  constructor(range: { first: number; count: number }) {
    if (
      !Number.isSafeInteger(range.first) || !Number.isSafeInteger(range.count) ||
      range.first < 1000 || range.count < 1 || range.first + range.count > 2 ** 32 - 2
    ) {
      throw new RangeError(
        `Cannot use worker ids ${range.first}+${range.count}: not a range of unprivileged ids`,
      );
    }
    if (Deno.uid() !== 0) {
      throw new TypeError("Cannot give sessions their own worker ids: the store is not root");
    }
    this.range = range;
  }

  /**
   * An id no live session or lease holds; random, not sequential, so that an id lately freed is
   * unlikely to be handed out again soon.
   *
   * @returns The id (uid and gid are the same).
   * @throws {SessionError} `QUOTA_EXCEEDED` when all are in use.
   */
  allocate(): number {
    const { first, count } = this.range;
    if (this.#inUse.size >= count) {
      throw new SessionError(
        "QUOTA_EXCEEDED",
        `Cannot create a session: all ${count} worker ids of the server are in use; ` +
          "release sessions, or give the server a larger --worker-ids range.",
        { reason: "WORKER_IDS" },
      );
    }
    for (;;) {
      const buf = new Uint32Array(1);
      crypto.getRandomValues(buf);
      const id = first + (buf[0]! % count);
      if (!this.#inUse.has(id)) {
        this.#inUse.add(id);
        return id;
      }
    }
  }

  /**
   * Gives an id back.
   *
   * @param id The id.
   */
  free(id: number): void {
    this.#inUse.delete(id);
  }

  /**
   * Keeps a restored session's id, or gives it a new one (the range changed, or it had none).
   *
   * @param manifest The session's manifest, updated in place.
   * @returns Whether the id is new (then the session's files must be given to it).
   */
  restore(manifest: SessionManifest): boolean {
    const { first, count } = this.range;
    const w = manifest.worker;
    if (
      w && w.uid === w.gid && w.uid >= first && w.uid < first + count && !this.#inUse.has(w.uid)
    ) {
      this.#inUse.add(w.uid);
      return false;
    }
    const id = this.allocate();
    manifest.worker = { uid: id, gid: id };
    return true;
  }

  /**
   * Lends an id for work that is no session's (running an archive's own code while it is
   * unpacked).
   *
   * @returns The id and a function that gives it back.
   */
  lease(): { uid: number; gid: number; release: () => void } {
    const id = this.allocate();
    let done = false;
    return {
      uid: id,
      gid: id,
      release: () => {
        if (done) return;
        done = true;
        this.free(id);
      },
    };
  }
}

/**
 * Sets a session's directories' owners and modes: its directory reachable only by the server
 * and its workers (by path only when `traverse` is `0o711`, that is without a sandbox), its view
 * readable by them but only the server's to write, its working directory theirs. With
 * `rechown`, also gives the working directory's contents to the session's (new) worker id.
 *
 * @param s The session's directories and worker id.
 * @param traverse The mode of the directories on the way (`0o700` or `0o711`).
 * @param rechown Whether to give the working directory's contents to the worker id.
 */
export async function secureSessionDirs(
  s: SessionDirs,
  traverse: number,
  rechown: boolean,
): Promise<void> {
  const w = s.worker;
  await Deno.chmod(join(s.dir, ".."), traverse);
  if (!w) {
    for (const d of [s.dir, s.root, s.viewDir, s.artifactsDir]) await Deno.chmod(d, 0o700);
    return;
  }
  await Deno.chown(s.dir, 0, w.gid);
  await Deno.chmod(s.dir, traverse === 0o700 ? 0o700 : 0o710);
  await Deno.chown(s.viewDir, 0, w.gid);
  await Deno.chmod(s.viewDir, 0o750);
  await Deno.chmod(s.artifactsDir, 0o700);
  if (rechown) await chownTree(s.root, w.uid, w.gid);
  else await Deno.chown(s.root, w.uid, w.gid);
  await Deno.chmod(s.root, 0o700);
}

/**
 * Gives a directory and everything in it to uid/gid, never following a symlink (Deno cannot
 * change a symlink's own owner; it does not matter for access).
 */
async function chownTree(dir: string, uid: number, gid: number): Promise<void> {
  const st = await Deno.lstat(dir);
  if (st.isSymlink) return;
  await Deno.chown(dir, uid, gid);
  if (!st.isDirectory) return;
  for await (const e of Deno.readDir(dir)) {
    if (!e.isSymlink) await chownTree(join(dir, e.name), uid, gid);
  }
}
