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

  /** Creates the store's directory. */
  async init(): Promise<void> {
    await Deno.mkdir(this.root, { recursive: true });
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
   * Moves a staged file whose digest is already known into the store; when the store has that
   * content already the staged file is left where it is, for its upload's cleanup. The blob is made read-only so that no hard link to it
   * can be written through by accident.
   *
   * @param staged A file on the same file system as the store.
   * @param sha256 The digest of the file's bytes, computed while it was written.
   * @returns The blob's path and whether this call added it.
   */
  async adopt(staged: string, sha256: string): Promise<{ path: string; added: boolean }> {
    const target = this.path(sha256);
    if (await exists(target)) {
      // The staged copy is left to its upload's cleanup, off the path to the client's answer.
      return { path: target, added: false };
    }
    await Deno.mkdir(join(this.root, sha256.slice(0, 2)), { recursive: true });
    await Deno.chmod(staged, 0o444);
    // rename() replaces silently; a concurrent adopt of the same bytes is harmless.
    await Deno.rename(staged, target);
    await syncDir(join(this.root, sha256.slice(0, 2)));
    return { path: target, added: true };
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
