// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * One server per data directory. Two stores over one directory would each "restore" the other's
 * sessions, remove its staging and kill its workers: the second must refuse to start. The lock is
 * `server.lock` in the data directory, held with `flock` (which the kernel lets go when the holder
 * dies, however it dies) and naming its holder: pid and process start time (from
 * `/proc/<pid>/stat`), so that the refusal names the server to stop, and a record left by a
 * process that is gone — or whose pid another process now has — is taken over.
 *
 * @module
 */
import { join } from "node:path";

/** Why a data directory cannot be locked. */
export type DataDirLockErrorCode = "DATA_DIR_IN_USE";

/** The process a lock file names. */
export interface LockHolder {
  /** Its pid. */
  readonly pid: number;
  /** Its start time in clock ticks since boot (`/proc/<pid>/stat`, field 22). */
  readonly startTicks: number;
  /** When it took the lock (ISO 8601), for people. */
  readonly since: string;
  /** The host it runs on; a pid means nothing on another host. */
  readonly host: string;
}

/** Another server holds the data directory. */
export class DataDirLockError extends Error {
  override name = "DataDirLockError";
  /** Why. */
  readonly code: DataDirLockErrorCode;
  /** The holder the lock file names, when it names one. */
  readonly holder: LockHolder | undefined;

  /**
   * Creates the error.
   *
   * @param code Why.
   * @param message What to do about it.
   * @param holder The holder, if known.
   */
  constructor(code: DataDirLockErrorCode, message: string, holder?: LockHolder) {
    super(message);
    this.code = code;
    this.holder = holder;
  }
}

/** A held data-directory lock. */
export interface DataDirLock {
  /** The lock file. */
  readonly path: string;
  /** This process, as the lock file names it. */
  readonly holder: LockHolder;
  /** The holder named by a record that was left behind and taken over, if any. */
  readonly tookOverFrom: LockHolder | undefined;
  /** Clears the record and lets the lock go. */
  release(): Promise<void>;
}

/** The name of the lock file in a data directory. */
export const LOCK_FILE = "server.lock";

/**
 * The start time of a process in clock ticks since boot, `undefined` when there is no such
 * process (or no `/proc`).
 *
 * @param pid The process.
 * @returns Field 22 of `/proc/<pid>/stat`.
 */
export function processStartTicks(pid: number): number | undefined {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may itself hold spaces and parentheses:
  // the fields after it start after the last ")".
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[19]);
  return Number.isSafeInteger(ticks) ? ticks : undefined;
}

function hostname(): string {
  try {
    return Deno.hostname();
  } catch {
    return "";
  }
}

/**
 * Whether the process a record names is still running: same host, a process with that pid, and
 * the same start time (else the pid was reused).
 *
 * @param h The record.
 * @returns `true` when it runs.
 */
export function isRunning(h: LockHolder): boolean {
  if (h.host !== hostname()) return false;
  return processStartTicks(h.pid) === h.startTicks;
}

function parse(text: string): LockHolder | undefined {
  try {
    const v = JSON.parse(text) as Partial<LockHolder>;
    if (
      Number.isSafeInteger(v.pid) && Number.isSafeInteger(v.startTicks) &&
      typeof v.since === "string" && typeof v.host === "string"
    ) {
      return v as LockHolder;
    }
  } catch { /* empty (released cleanly) or damaged: names no one */ }
  return undefined;
}

function describe(h: LockHolder | undefined): string {
  return h ? `another Valise server (pid ${h.pid}, since ${h.since})` : "another Valise server";
}

/**
 * Takes the data directory's lock for this process.
 *
 * @param dataDir The data directory (it must exist).
 * @returns The held lock.
 * @throws {DataDirLockError} `DATA_DIR_IN_USE` when another process holds it; the message names
 *   its pid.
 */
export async function lockDataDir(dataDir: string): Promise<DataDirLock> {
  const path = join(dataDir, LOCK_FILE);
  const file = await Deno.open(path, { read: true, write: true, create: true, mode: 0o600 });
  try {
    const recorded = async () => parse(new TextDecoder().decode(await readAll(file)));
    const refuse = (h: LockHolder | undefined) =>
      new DataDirLockError(
        "DATA_DIR_IN_USE",
        `Cannot use the data directory ${dataDir}: ${describe(h)} is serving it (lock file ` +
          `${path}). Stop that server first, or give this one another --data-dir.`,
        h,
      );
    // Read only once the holder has had its turn: it writes its record right after the flock.
    if (!(await file.tryLock(true))) throw refuse(await recorded());
    // The flock was free. A record naming a live process still counts: a server that does not
    // take the flock (an older one) must not be run over either.
    const previous = await recorded();
    if (previous && previous.pid !== Deno.pid && isRunning(previous)) throw refuse(previous);
    const startTicks = processStartTicks(Deno.pid) ?? 0;
    const holder: LockHolder = {
      pid: Deno.pid,
      startTicks,
      since: new Date().toISOString(),
      host: hostname(),
    };
    await file.truncate(0);
    await writeAll(file, new TextEncoder().encode(JSON.stringify(holder) + "\n"));
    await file.sync();
    let released = false;
    return {
      path,
      holder,
      tookOverFrom: previous,
      async release() {
        if (released) return;
        released = true;
        try {
          // An empty file names no one: the next start has nothing to take over.
          await file.truncate(0);
          await file.sync();
          await file.unlock();
        } finally {
          file.close();
        }
      },
    };
  } catch (e) {
    file.close();
    throw e;
  }
}

async function readAll(file: Deno.FsFile): Promise<Uint8Array> {
  await file.seek(0, Deno.SeekMode.Start);
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(4096);
  // A lock record is a line; a file grown past 64 KiB is not one.
  for (let total = 0; total < 65_536;) {
    const n = await file.read(buf);
    if (n === null) break;
    chunks.push(buf.slice(0, n));
    total += n;
  }
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  await file.seek(0, Deno.SeekMode.Start);
  let at = 0;
  while (at < data.length) at += await file.write(data.subarray(at));
}
