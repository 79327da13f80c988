// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Batches small whole files and writes them on a worker thread (see `_write_worker.ts`),
 * or on the calling thread when the worker is already busy, so both cores write. The main
 * thread stays synchronous: it waits with `Atomics.wait`, never on a promise, so the
 * extractor's ordering guarantees hold. {@linkcode WritePool.drain} is the barrier taken
 * before anything that depends on earlier files being on disk (replacing a file, linking to
 * it, creating symlinks, renaming the tree).
 */

/** A batch of files: `data` holds their contents back to back. */
export interface Batch {
  paths: string[];
  /** Mode per file, or -1 for the process default (saves an `fchmod`). */
  modes: number[];
  /** mtime per file in seconds, or `null` to leave it. */
  mtimes: (number | null)[];
  /** `offsets[i]..offsets[i+1]` is file i's content. */
  offsets: number[];
  data: ArrayBuffer;
  /** Entry names, for error messages. */
  entries: string[];
}

/** The first failure of a batch. */
export interface BatchFailure {
  entry: string;
  message: string;
}

export const COMPLETED = 0;
export const ERROR = 1;
export const CANCEL = 2;
export const READY = 3;
/** How long to wait for the worker to start before giving up (it never took 1 s here). */
const START_TIMEOUT_MS = 30_000;

/** Writes a batch; returns the first failure. `stop()` is polled between files. */
export function writeBatch(b: Batch, stop: () => boolean): BatchFailure | undefined {
  const data = new Uint8Array(b.data);
  for (let i = 0; i < b.paths.length; i++) {
    if (stop()) return undefined;
    const path = b.paths[i]!;
    const mode = b.modes[i]!;
    try {
      Deno.writeFileSync(
        path,
        data.subarray(b.offsets[i]!, b.offsets[i + 1]!),
        mode < 0 ? { createNew: true } : { mode, createNew: true },
      );
      const t = b.mtimes[i];
      if (t !== null && t !== undefined) Deno.utimeSync(path, t, t);
    } catch (e) {
      return { entry: b.entries[i]!, message: e instanceof Error ? e.message : String(e) };
    }
  }
  return undefined;
}

const BATCH_FILES = 512;
const BATCH_BYTES = 1 << 20;
const MAX_IN_FLIGHT = 4;

interface Thread {
  worker: Worker;
  ctl: Int32Array;
  err: Uint8Array;
}

// A writer thread kept between unpacks (`keepThread`): inside a Worker, Deno takes about a
// second to start a nested Worker, which would dominate the unpack of a small archive.
let spare: Thread | undefined;

function startThread(): Thread {
  const t: Thread = {
    worker: new Worker(new URL("./_write_worker.ts", import.meta.url), { type: "module" }),
    ctl: new Int32Array(new SharedArrayBuffer(16)),
    err: new Uint8Array(new SharedArrayBuffer(4096)),
  };
  t.worker.postMessage({ init: { ctl: t.ctl.buffer, err: t.err.buffer } });
  return t;
}

/**
 * Starts the writer thread that later unpacks with `keepWriterThread` reuse, so that not even
 * the first pays for starting it.
 */
export function prestartWriterThread(): void {
  spare ??= startThread();
}

/** Stops a kept writer thread, if any (an idle Worker keeps a Deno process alive). */
export function stopWriterThread(): void {
  spare?.worker.terminate();
  spare = undefined;
}

/** Collects files into batches and hands them to a worker (or writes them itself). */
export class WritePool {
  #worker: Worker;
  #ctl: Int32Array;
  #err: Uint8Array;
  #thread: Thread;
  #keep: boolean;
  #submitted = 0;
  #paths: string[] = [];
  #modes: number[] = [];
  #mtimes: (number | null)[] = [];
  #offsets: number[] = [0];
  #entries: string[] = [];
  #buf = new Uint8Array(BATCH_BYTES);
  #fill = 0;
  #closed = false;

  /** @param keepThread On close, keep the (idle) writer thread for the next pool. */
  constructor(keepThread = false) {
    this.#thread = spare ?? startThread();
    spare = undefined;
    this.#worker = this.#thread.worker;
    this.#ctl = this.#thread.ctl;
    this.#err = this.#thread.err;
    this.#keep = keepThread;
  }

  /** Queues a file. Throws the first failure of an earlier batch. */
  add(path: string, data: Uint8Array, mode: number, mtime: number | null, entry: string): void {
    if (this.#fill + data.length > this.#buf.length && this.#paths.length) this.#flush();
    if (data.length > this.#buf.length) {
      const bigger = new Uint8Array(data.length);
      this.#buf = bigger;
    }
    this.#buf.set(data, this.#fill);
    this.#fill += data.length;
    this.#paths.push(path);
    this.#modes.push(mode);
    this.#mtimes.push(mtime);
    this.#entries.push(entry);
    this.#offsets.push(this.#fill);
    if (this.#paths.length >= BATCH_FILES) this.#flush();
  }

  #flush(): void {
    if (!this.#paths.length) return;
    const batch: Batch = {
      paths: this.#paths,
      modes: this.#modes,
      mtimes: this.#mtimes,
      offsets: this.#offsets,
      entries: this.#entries,
      data: this.#buf.buffer.slice(0, this.#fill) as ArrayBuffer,
    };
    this.#paths = [];
    this.#modes = [];
    this.#mtimes = [];
    this.#offsets = [0];
    this.#entries = [];
    this.#fill = 0;
    this.check();
    if (
      Atomics.load(this.#ctl, READY) === 0 ||
      this.#submitted - Atomics.load(this.#ctl, COMPLETED) >= MAX_IN_FLIGHT
    ) {
      // The worker is still starting (which can take a second inside a Worker) or behind: this
      // thread writes this batch itself rather than wait.
      const f = writeBatch(batch, () => false);
      if (f !== undefined) throw f;
      return;
    }
    this.#submitted++;
    this.#worker.postMessage(batch, [batch.data]);
  }

  /** Blocks until the worker finished every submitted batch. */
  #waitAll(): void {
    const t0 = Date.now();
    for (;;) {
      const done = Atomics.load(this.#ctl, COMPLETED);
      if (done >= this.#submitted) return;
      if (Atomics.load(this.#ctl, READY) === 0 && Date.now() - t0 > START_TIMEOUT_MS) {
        throw { entry: "", message: "the writer thread did not start" } satisfies BatchFailure;
      }
      Atomics.wait(this.#ctl, COMPLETED, done, 100);
    }
  }

  /** Throws the worker's first failure, if any. */
  check(): void {
    if (Atomics.load(this.#ctl, ERROR) === 0) return;
    const end = this.#err.indexOf(0);
    const text = new TextDecoder().decode(this.#err.slice(0, end < 0 ? this.#err.length : end));
    throw JSON.parse(text) as BatchFailure;
  }

  /** Writes everything queued and waits until it is on disk. Throws a {@linkcode BatchFailure}. */
  drain(): void {
    this.#flush();
    this.#waitAll();
    this.check();
  }

  /** Stops the worker: after `drain()` on success, or to abandon queued work on failure. */
  close(abandon: boolean): void {
    if (this.#closed) return;
    this.#closed = true;
    if (abandon) {
      Atomics.store(this.#ctl, CANCEL, 1);
      // Let the batch in progress stop before the caller removes the tree under it.
      try {
        this.#waitAll();
      } catch {
        // never started: nothing to wait for
      }
    }
    // Reuse only a thread that is idle and clean: every batch completed, no failure.
    if (
      this.#keep && spare === undefined && Atomics.load(this.#ctl, READY) === 1 &&
      Atomics.load(this.#ctl, ERROR) === 0 &&
      Atomics.load(this.#ctl, COMPLETED) >= this.#submitted
    ) {
      Atomics.store(this.#ctl, COMPLETED, 0);
      Atomics.store(this.#ctl, CANCEL, 0);
      spare = this.#thread;
      return;
    }
    this.#worker.terminate();
  }
}
