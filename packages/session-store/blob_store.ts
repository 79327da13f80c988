// Copyright 2026 the Valise authors. Apache-2.0 license.
import { join } from "node:path";
import { exists, syncDir } from "./_fs.ts";

const SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * Content-addressed storage of artifact bytes: each distinct content is kept once, named by
 * its sha256, read-only on disk. Sessions refer to blobs through hard links, never copies.
 */
export class BlobStore {
  /** The directory holding the blobs (`<data>/blobs/sha256`). */
  readonly root: string;

  /** Creates a store over `root`; call {@linkcode BlobStore.init} before use. */
  constructor(root: string) {
    this.root = root;
  }

  /** Creates the store's directory, reachable by the server's user only. */
  async init(): Promise<void> {
    await Deno.mkdir(this.root, { recursive: true });
    // Workers reach a session's blobs through hard links in its own view, never through here.
    await Deno.chmod(join(this.root, ".."), 0o700);
    await Deno.chmod(this.root, 0o700);
  }

  /**
   * Where the blob with this digest lives.
   *
   * @param sha256 Lowercase hex digest.
   * @returns The blob's path.
   */
  path(sha256: string): string {
    if (!SHA256_HEX.test(sha256)) {
      throw new TypeError(`Cannot locate blob: "${sha256}" is not a lowercase sha256 hex digest`);
    }
    return join(this.root, sha256.slice(0, 2), sha256);
  }

  /** Whether the store holds the blob with this digest. */
  has(sha256: string): Promise<boolean> {
    return exists(this.path(sha256));
  }

  /**
   * Adds a staged file whose digest is already known to the store (as a hard link to it); the
   * staged name is left for its upload's cleanup, which also drops it when the store held that
   * content already. The blob is made read-only so that no hard link to it
   * can be written through by accident.
   *
   * @param staged A file on the same file system as the store.
   * @param sha256 The digest of the file's bytes, computed while it was written.
   * @returns The blob's path and whether this call added it.
   */
  async adopt(
    staged: string,
    sha256: string,
    size?: number,
  ): Promise<{ path: string; added: boolean }> {
    const target = this.path(sha256);
    const held = await Deno.lstat(target).catch(() => undefined);
    if (held && this.#trusted(held, size)) {
      // The staged copy is left to its upload's cleanup, off the path to the client's answer.
      return { path: target, added: false };
    }
    if (held) {
      // Not as the server leaves a blob (mode, owner, size): never adopted as that content.
      // Sessions that link the old inode keep it; the name now gets the bytes just verified.
      await Deno.remove(target).catch(() => {});
    }
    await Deno.mkdir(join(this.root, sha256.slice(0, 2)), { recursive: true });
    await Deno.chmod(staged, 0o444);
    // link(), not rename(): when two uploads of the same bytes race here, rename would replace
    // the blob the first one already linked into its session with a second inode, splitting
    // one content in two. link() fails instead, and the first inode stays the blob.
    try {
      await Deno.link(staged, target);
    } catch (e) {
      if (e instanceof Deno.errors.AlreadyExists) return { path: target, added: false };
      throw e;
    }
    await syncDir(join(this.root, sha256.slice(0, 2)));
    return { path: target, added: true };
  }

  /**
   * Whether a stored blob is as only the server leaves one: a regular file of the expected size,
   * mode 0444, owned by the server's user. Workers never get a writable path to a blob; this
   * check keeps even a file changed some other way from being trusted as that content.
   */
  #trusted(st: Deno.FileInfo, size: number | undefined): boolean {
    if (!st.isFile || ((st.mode ?? 0o444) & 0o7777) !== 0o444) return false;
    if (size !== undefined && st.size !== size) return false;
    const uid = Deno.uid();
    return uid === null || st.uid === null || st.uid === uid;
  }

  /** The (device, inode) of every stored blob, to recognise links to blobs elsewhere. */
  async inodes(): Promise<Set<string>> {
    const out = new Set<string>();
    for (const d of await this.list()) {
      const st = await Deno.lstat(this.path(d)).catch(() => undefined);
      if (st) out.add(`${st.dev}:${st.ino}`);
    }
    return out;
  }

  /** Lists the digests of every stored blob. */
  async list(): Promise<string[]> {
    const out: string[] = [];
    for await (const d of Deno.readDir(this.root)) {
      if (!d.isDirectory) continue;
      for await (const f of Deno.readDir(join(this.root, d.name))) {
        if (f.isFile && SHA256_HEX.test(f.name)) out.push(f.name);
      }
    }
    return out;
  }
}
