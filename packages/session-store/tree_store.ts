// Copyright 2026 the Valise authors. Apache-2.0 license.
import { join } from "node:path";
import { exists, removeAll, writeFileAtomic } from "./_fs.ts";

/** What a built tree holds, recorded beside it so that sizes need no walk after a restart. */
export interface TreeInfo {
  /** Bytes of regular files. */
  bytes: number;
  /** Entries (files, directories, links). */
  entries: number;
}

/** Builds a tree at `dest`, which does not exist yet; must create it atomically (or not at all). */
export type TreeBuilder = (dest: string) => Promise<TreeInfo>;

const KEY = /^[0-9a-f]{64}-[0-9a-z]{1,32}$/;

/**
 * Unpacked archives shared between sessions: one read-only tree per (archive sha256, unpack
 * options), built once however many sessions add the archive, even concurrently (a lock per
 * key). Sessions see a tree through a symlink in their working directory. The store's pip layers
 * (installed requirement sets) are a second `TreeStore` over `<data>/layers`, built and kept the
 * same way.
 */
export class TreeStore {
  /** The directory holding the trees (`<data>/trees`). */
  readonly root: string;
  #building = new Map<string, Promise<{ path: string; built: boolean }>>();
  #builds = 0;
  #buildSeconds = 0;

  #mode: number;

  /**
   * Creates a store over `root`; call {@linkcode TreeStore.init} before use.
   *
   * @param root The directory holding the trees.
   * @param mode Its mode: `0711` when unsandboxed workers reach trees by path, else `0700`.
   */
  constructor(root: string, mode = 0o711) {
    this.root = root;
    this.#mode = mode;
  }

  /** How many trees this process has built (not found ready-made). */
  get builds(): number {
    return this.#builds;
  }

  /** Seconds this process has spent building trees. */
  get buildSeconds(): number {
    return this.#buildSeconds;
  }

  /**
   * Creates the directory and removes what an interrupted build left: anything whose name
   * starts with `.` (temporary directories of unpacks) and trees without their info file.
   */
  async init(): Promise<void> {
    await Deno.mkdir(this.root, { recursive: true });
    // Traversable, not listable, when a worker without a sandbox must reach a tree its session
    // links to; it cannot learn which others exist either way.
    await Deno.chmod(this.root, this.#mode);
    for await (const e of Deno.readDir(this.root)) {
      const path = join(this.root, e.name);
      if (e.name.startsWith(".")) {
        await removeAll(path);
      } else if (e.isDirectory && !(await exists(`${path}.json`))) {
        // Renamed into place but killed before it was fixed up and recorded.
        await removeAll(path);
      }
    }
  }

  /** The path of the tree with this key. */
  path(key: string): string {
    if (!KEY.test(key)) throw new TypeError(`Cannot locate tree: "${key}" is not a tree key`);
    return join(this.root, key);
  }

  /** Whether the tree is built. */
  has(key: string): Promise<boolean> {
    return exists(`${this.path(key)}.json`);
  }

  /** The recorded size of a built tree. */
  async info(key: string): Promise<TreeInfo> {
    return JSON.parse(await Deno.readTextFile(`${this.path(key)}.json`)) as TreeInfo;
  }

  /**
   * Returns the tree with this key, building it with `build` if it is not there yet. Calls for
   * the same key while a build runs wait for that build instead of starting another.
   */
  ensure(key: string, build: TreeBuilder): Promise<{ path: string; built: boolean }> {
    const running = this.#building.get(key);
    if (running) return running;
    const p = (async () => {
      const path = this.path(key);
      if (await this.has(key)) return { path, built: false };
      if (await exists(path)) await removeAll(path);
      const start = performance.now();
      const info = await build(path);
      await makeReadOnly(path);
      await writeFileAtomic(`${path}.json`, JSON.stringify(info));
      this.#builds++;
      this.#buildSeconds += (performance.now() - start) / 1000;
      return { path, built: true };
    })().finally(() => this.#building.delete(key));
    this.#building.set(key, p);
    return p;
  }

  /** Keys of every built tree. */
  async list(): Promise<string[]> {
    const out: string[] = [];
    for await (const e of Deno.readDir(this.root)) {
      if (e.isFile && e.name.endsWith(".json")) out.push(e.name.slice(0, -5));
    }
    return out.filter((k) => KEY.test(k));
  }

  /** Removes a tree (its info file first, so a crash half-way leaves it to `init`). */
  async remove(key: string): Promise<void> {
    await Deno.remove(`${this.path(key)}.json`).catch(() => {});
    await removeAll(this.path(key));
  }
}

/**
 * Takes write permission, and setuid/setgid bits, away from everything in a shared tree and
 * makes it readable by all, so that workers of every session's uid can use it and none can
 * change what other sessions see. (The sandbox also binds trees read-only.) `chmod -R` never
 * follows the tree's symlinks.
 */
async function makeReadOnly(dir: string): Promise<void> {
  const p = new Deno.Command("chmod", {
    args: ["-R", "a-w,a+rX,ug-s", dir],
    stderr: "piped",
  });
  const out = await p.output();
  if (!out.success) {
    throw new Error(`Cannot make ${dir} read-only: ${new TextDecoder().decode(out.stderr)}`);
  }
}
