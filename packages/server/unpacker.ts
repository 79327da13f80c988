// Copyright 2026 the Valise authors. Apache-2.0 license.
import { createHash } from "node:crypto";
import type { UnpackOptions } from "@valise/archive";
import type { ArchiveUnpacker, TreeInfo } from "@valise/session-store";

/** An unpack failure reported by the worker, with the archive package's stable code. */
export class ArchiveUnpackFailure extends Error {
  /** The `UnpackError` code, e.g. `PATH_ESCAPE` or `QUOTA_BYTES`. */
  readonly code: string;
  /** The archive entry involved, if any. */
  readonly entry: string | undefined;
  override name = "ArchiveUnpackFailure";

  /** Creates the failure. */
  constructor(code: string, message: string, entry?: string) {
    super(message);
    this.code = code;
    this.entry = entry;
  }
}

/** Unpack options a server may set; the rest are the archive package's safe defaults. */
export type ServerUnpackOptions = Omit<UnpackOptions, "signal">;

/**
 * The session store's archive unpacker, backed by `@valise/archive` running in a Web Worker
 * so that the server keeps answering other sessions while a large environment unpacks. The
 * fingerprint covers the options, so trees unpacked under different policies are not shared.
 *
 * @param options Unpack policy and quotas.
 * @returns The unpacker to pass as the store's `unpack` option.
 */
export function archiveUnpacker(options: ServerUnpackOptions = {}): ArchiveUnpacker {
  const fingerprint = createHash("sha256")
    .update(JSON.stringify(Object.entries(options).sort()))
    .digest("hex").slice(0, 12);
  let worker: Worker | undefined;
  let nextId = 0;
  const pending = new Map<number, { resolve: (i: TreeInfo) => void; reject: (e: Error) => void }>();
  const failAll = (why: string) => {
    for (const p of pending.values()) p.reject(new ArchiveUnpackFailure("IO", why));
    pending.clear();
  };
  const ensureWorker = (): Worker => {
    if (worker) return worker;
    const w = new Worker(new URL("./unpack_worker.ts", import.meta.url), { type: "module" });
    w.onmessage = (ev: MessageEvent) => {
      const r = ev.data as {
        id: number;
        ok: boolean;
        bytes?: number;
        entries?: number;
        code?: string;
        entry?: string;
        message?: string;
      };
      const p = pending.get(r.id);
      if (!p) return;
      pending.delete(r.id);
      if (r.ok) p.resolve({ bytes: r.bytes ?? 0, entries: r.entries ?? 0 });
      else {p.reject(
          new ArchiveUnpackFailure(r.code ?? "IO", r.message ?? "unpack failed", r.entry),
        );}
    };
    w.onerror = (ev) => {
      ev.preventDefault();
      // The worker died: fail what it held, start a fresh one for the next unpack.
      w.terminate();
      worker = undefined;
      failAll(`Cannot unpack archive: the unpack worker failed: ${ev.message}`);
    };
    worker = w;
    return w;
  };
  return {
    fingerprint,
    unpack(archive: string, dest: string, o: { signal?: AbortSignal }): Promise<TreeInfo> {
      return new Promise<TreeInfo>((resolve, reject) => {
        const w = ensureWorker();
        const id = nextId++;
        const onAbort = () => w.postMessage({ type: "abort", id });
        o.signal?.addEventListener("abort", onAbort, { once: true });
        pending.set(id, {
          resolve: (i) => {
            o.signal?.removeEventListener("abort", onAbort);
            resolve(i);
          },
          reject: (e) => {
            o.signal?.removeEventListener("abort", onAbort);
            reject(e);
          },
        });
        w.postMessage({ type: "unpack", id, archive, dest, options });
      });
    },
    close(): void {
      worker?.terminate();
      worker = undefined;
      failAll("Cannot unpack archive: the server is shutting down");
    },
  };
}
