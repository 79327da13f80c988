// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Writes of a staged file that run behind the upload instead of in its way: the receiving loop
 * hands over a full buffer and goes on reading the stream while the write completes on the
 * runtime's I/O threads. Measured with the real PySpark client: awaiting each 1 MiB write (a hop
 * to a blocking thread on a busy 2-core machine) held the loop 0.15–0.7 s of a 1.4 s upload of
 * 256 MiB, while the write itself costs ~75 ms of CPU.
 *
 * @module
 */

/** Bytes one staging buffer gathers before it is written (chunks are 32 KiB). */
export const WRITE_BUFFER_BYTES = 1 << 20;

/**
 * Buffers that may be queued or being written at once, per file. Bounds the memory of one
 * upload to `(WRITE_BEHIND_DEPTH + 1) × WRITE_BUFFER_BYTES` whatever the client sends: the
 * receiving loop waits for the oldest write before it queues another.
 */
export const WRITE_BEHIND_DEPTH = 3;

/**
 * An append-only file written in order by a chain of writes that the caller does not wait for,
 * except when {@linkcode WRITE_BEHIND_DEPTH} buffers are queued. The first failure is kept:
 * later writes are skipped and the next {@linkcode WriteBehind.push} or
 * {@linkcode WriteBehind.close} throws it.
 */
export class WriteBehind {
  #file: Deno.FsFile;
  #inFlight: Promise<void>[] = [];
  #tail: Promise<void> = Promise.resolve();
  #error: { e: unknown } | undefined;
  #free: Uint8Array[] = [];
  #closed = false;

  /**
   * Writes to `file`, which it closes.
   *
   * @param file An open file positioned where the bytes go.
   */
  constructor(file: Deno.FsFile) {
    this.#file = file;
  }

  /**
   * A buffer of {@linkcode WRITE_BUFFER_BYTES} to fill, reused once its earlier write is done.
   *
   * @returns An empty buffer.
   */
  buffer(): Uint8Array {
    return this.#free.pop() ?? new Uint8Array(WRITE_BUFFER_BYTES);
  }

  /**
   * Queues `length` bytes of `buffer` (one from {@linkcode WriteBehind.buffer}, which must not
   * be touched after) after the bytes queued before; waits while too many writes are queued.
   *
   * @param buffer The buffer.
   * @param length How many of its bytes to write.
   * @throws The error of an earlier write.
   */
  async push(buffer: Uint8Array, length: number): Promise<void> {
    this.#throwIfFailed();
    if (this.#closed) throw new Error("Cannot write a staged file: it is closed.");
    const bytes = buffer.subarray(0, length);
    const write = this.#tail.then(async () => {
      if (this.#error) return;
      try {
        let at = 0;
        while (at < bytes.length) at += await this.#file.write(bytes.subarray(at));
      } catch (e) {
        this.#error ??= { e };
      } finally {
        this.#free.push(buffer);
      }
    });
    this.#tail = write;
    this.#inFlight.push(write);
    while (this.#inFlight.length >= WRITE_BEHIND_DEPTH) await this.#inFlight.shift();
    this.#throwIfFailed();
  }

  /**
   * Waits for every queued write, then closes the file.
   *
   * @throws The first write's error.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#tail;
    this.#inFlight = [];
    this.#free = [];
    try {
      this.#file.close();
    } catch { /* already closed */ }
    this.#throwIfFailed();
  }

  /** Closes the file without waiting for the bytes (the upload is dropped). */
  async abort(): Promise<void> {
    this.#error ??= { e: new Error("Cannot write a staged file: the upload was aborted.") };
    this.#closed = true;
    // A write in progress still holds the file; it is closed once that write returns.
    await this.#tail;
    try {
      this.#file.close();
    } catch { /* already closed */ }
  }

  #throwIfFailed(): void {
    if (this.#error) throw this.#error.e;
  }
}
