// Copyright 2026 the Valise authors. Apache-2.0 license.
import { createHash } from "node:crypto";
import {
  isUnpackError,
  UnpackError,
  type UnpackErrorCode,
  type UnpackOptions,
} from "@valise/archive";
import type { Launcher } from "@valise/launcher";
import type { ArchiveUnpacker, TreeInfo } from "@valise/session-store";
import { reclaimTree, tool } from "./_reclaim.ts";

/** The archive package's codes, to check what the unpack worker posts back. */
const UNPACK_CODES: ReadonlySet<string> = new Set<UnpackErrorCode>([
  "PATH_ESCAPE",
  "ABSOLUTE_PATH",
  "BAD_NAME",
  "LINK_ESCAPE",
  "BAD_LINK",
  "THROUGH_LINK",
  "CONFLICT",
  "SPECIAL_FILE",
  "QUOTA_BYTES",
  "QUOTA_ENTRIES",
  "QUOTA_RATIO",
  "QUOTA_DISK",
  "CORRUPT",
  "OVERLAP",
  "ENCRYPTED",
  "UNSUPPORTED",
  "DEST_EXISTS",
  "POST_UNPACK",
  "ABORTED",
  "IO",
]);

/** Rebuilds an `UnpackError` from what the worker posted (a structured clone loses the class). */
function unpackError(code: string | undefined, message: string, entry?: string): UnpackError {
  const c = code !== undefined && UNPACK_CODES.has(code) ? code as UnpackErrorCode : "IO";
  return new UnpackError(c, message, entry === undefined ? {} : { entry });
}

/** Unpack options a server may set; the rest are the archive package's safe defaults. */
export type ServerUnpackOptions = Omit<
  UnpackOptions,
  "signal" | "condaUnpack" | "keepWriterThread"
>;

/**
 * Runs an unpacked conda-pack environment's `bin/conda-unpack` (code from the archive) at the
 * tree's final path. The server runs it in the workers' sandbox, never with its own rights.
 */
export type CondaUnpackRunner = (dest: string) => Promise<void>;

/**
 * The session store's archive unpacker, backed by `@valise/archive` running in a Web Worker
 * so that the server keeps answering other sessions while a large environment unpacks. The
 * fingerprint covers the options, so trees unpacked under different policies are not shared.
 *
 * @param options Unpack policy and quotas.
 * @returns The unpacker to pass as the store's `unpack` option.
 */
export function archiveUnpacker(
  options: ServerUnpackOptions = {},
  condaUnpack?: CondaUnpackRunner,
): ArchiveUnpacker {
  const fingerprint = createHash("sha256")
    .update(JSON.stringify(Object.entries(options).sort()))
    .digest("hex").slice(0, 12);
  let worker: Worker | undefined;
  let nextId = 0;
  type Done = TreeInfo & { flavor: string };
  const pending = new Map<number, { resolve: (i: Done) => void; reject: (e: Error) => void }>();
  const failAll = (why: string) => {
    for (const p of pending.values()) p.reject(unpackError("IO", why));
    pending.clear();
  };
  const ensureWorker = (): Worker => {
    if (worker) return worker;
    const w = new Worker(new URL("./_unpack_worker.ts", import.meta.url), { type: "module" });
    w.onmessage = (ev: MessageEvent) => {
      const r = ev.data as {
        id: number;
        ok: boolean;
        bytes?: number;
        entries?: number;
        flavor?: string;
        code?: string;
        entry?: string;
        message?: string;
      };
      const p = pending.get(r.id);
      if (!p) return;
      pending.delete(r.id);
      if (r.ok) p.resolve({ bytes: r.bytes ?? 0, entries: r.entries ?? 0, flavor: r.flavor ?? "" });
      else {p.reject(
          unpackError(r.code, r.message ?? "unpack failed", r.entry),
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
  // Started now, not at the first unpack: the worker's writer thread takes a second to come up.
  ensureWorker();
  return {
    fingerprint,
    async unpack(archive: string, dest: string, o: { signal?: AbortSignal }): Promise<TreeInfo> {
      const done = await new Promise<Done>((resolve, reject) => {
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
        // conda-unpack is code from the archive: never run inside the unpack, with the server's
        // rights; the runner below does it in the sandbox once the tree is in place.
        w.postMessage({
          type: "unpack",
          id,
          archive,
          dest,
          options: { ...options, condaUnpack: false },
        });
      });
      if (done.flavor === "conda-pack" && condaUnpack) {
        try {
          await condaUnpack(dest);
          // conda-unpack is the archive's own code and may have grown the tree: what counts
          // against quotas is what is on disk now, not what the archive declared.
          const now = await measure(dest);
          return {
            bytes: Math.max(done.bytes, now.bytes),
            entries: Math.max(done.entries, now.entries),
          };
        } catch (e) {
          await Deno.remove(dest, { recursive: true }).catch(() => {});
          throw isUnpackError(e) ? e : new UnpackError(
            "POST_UNPACK",
            `Cannot finish the conda-pack environment: ${e instanceof Error ? e.message : e}`,
          );
        }
      }
      return { bytes: done.bytes, entries: done.entries };
    },
    close(): void {
      worker?.terminate();
      worker = undefined;
      failAll("Cannot unpack archive: the server is shutting down");
    },
  };
}

/** Lends a worker uid/gid for running an archive's own code, or none. */
export type WorkerIdLease = () => { uid: number; gid: number; release: () => void } | undefined;

/**
 * Runs `bin/conda-unpack` of a freshly unpacked conda-pack environment with the environment's
 * own interpreter, through the launcher: in the workers' sandbox (with the tree bound
 * read-write at its real path, since conda-unpack rewrites it in place), never with the server's
 * rights. With a worker id lease (a root server), it runs as a uid of its own that owns the tree
 * only while it runs; then the tree is the server's again, and anything but files, directories
 * and symlinks it made (FIFOs, sockets) is removed.
 *
 * @param launcher The server's launcher.
 * @param lease Lends a worker uid/gid.
 * @param timeoutMs How long conda-unpack may run.
 * @returns The runner for {@linkcode archiveUnpacker}.
 */
export function sandboxedCondaUnpack(
  launcher: Launcher,
  lease: WorkerIdLease = () => undefined,
  timeoutMs = 300_000,
): CondaUnpackRunner {
  return async (dest) => {
    const key = `conda-unpack\u0000${dest}`;
    let stderr = "";
    let exit: { exitCode: number; signal: string; timedOut: boolean } | undefined;
    const dec = new TextDecoder();
    const id = lease();
    try {
      if (id) await tool("chown", ["-R", "-h", `${id.uid}:${id.gid}`, dest], prepareFailed);
      for await (
        const ev of launcher.run(
          {
            key,
            root: dest,
            pythonPath: [],
            interpreter: "bin/python",
            limits: { wallTimeMs: timeoutMs },
            ...(id ? { worker: { uid: id.uid, gid: id.gid } } : {}),
          },
          { script: "bin/conda-unpack", timeoutMs },
        )
      ) {
        if (ev.kind === "stderr") stderr = (stderr + dec.decode(ev.data)).slice(-4000);
        if (ev.kind === "exited") exit = ev;
      }
    } finally {
      await launcher.stopSession(key);
      if (id) {
        // Its processes are gone (stopSession): nothing races these walks.
        await reclaimTree(dest, prepareFailed);
        id.release();
      }
    }
    if (!exit || exit.exitCode !== 0) {
      const how = !exit
        ? "did not finish"
        : exit.timedOut
        ? `timed out after ${timeoutMs} ms`
        : exit.signal
        ? `was killed by ${exit.signal}`
        : `exited with ${exit.exitCode}`;
      throw new UnpackError(
        "POST_UNPACK",
        `Cannot finish the conda-pack environment: bin/conda-unpack ${how}${
          stderr ? `: ${stderr.trim()}` : ""
        }`,
      );
    }
  };
}

function prepareFailed(message: string): Error {
  return new UnpackError("IO", `Cannot prepare the environment: ${message}`);
}

/** Bytes of regular files and entries (files, directories, links) under `dir`, links not followed. */
async function measure(dir: string): Promise<TreeInfo> {
  const out: TreeInfo = { bytes: 0, entries: 0 };
  const pending = [dir];
  while (pending.length) {
    const d = pending.pop()!;
    for await (const e of Deno.readDir(d)) {
      const path = `${d}/${e.name}`;
      const st = await Deno.lstat(path);
      out.entries++;
      if (st.isFile) out.bytes += st.size;
      else if (st.isDirectory) pending.push(path);
    }
  }
  return out;
}
