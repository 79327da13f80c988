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
  return {
    fingerprint,
    unpack(archive: string, dest: string, o: { signal?: AbortSignal }): Promise<TreeInfo> {
      return new Promise<TreeInfo>((resolve, reject) => {
        const worker = new Worker(new URL("./unpack_worker.ts", import.meta.url), {
          type: "module",
        });
        const onAbort = () => worker.postMessage({ type: "abort" });
        o.signal?.addEventListener("abort", onAbort, { once: true });
        const done = () => {
          o.signal?.removeEventListener("abort", onAbort);
          worker.terminate();
        };
        worker.onmessage = (ev: MessageEvent) => {
          done();
          const r = ev.data as {
            ok: boolean;
            bytes?: number;
            entries?: number;
            code?: string;
            entry?: string;
            message?: string;
          };
          if (r.ok) resolve({ bytes: r.bytes ?? 0, entries: r.entries ?? 0 });
          else {reject(
              new ArchiveUnpackFailure(r.code ?? "IO", r.message ?? "unpack failed", r.entry),
            );}
        };
        worker.onerror = (ev) => {
          ev.preventDefault();
          done();
          reject(new ArchiveUnpackFailure("IO", `Cannot unpack archive: ${ev.message}`));
        };
        worker.postMessage({ type: "unpack", archive, dest, options });
      });
    },
  };
}
