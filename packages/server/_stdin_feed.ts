// Copyright 2026 the Valise authors. Apache-2.0 license.

/**
 * A run's stdin as the client sends it: a one-chunk hand-off between the loop that reads the
 * client's messages and the launcher, which pulls stdin only as the program takes it. The
 * reader waits in {@linkcode StdinFeed.put} until its chunk is taken, so it reads no further
 * message meanwhile and HTTP/2 flow control holds the client back: the server never keeps more
 * than one message of a run's stdin.
 */
export class StdinFeed implements AsyncIterable<Uint8Array> {
  #chunk: Uint8Array | undefined;
  #ended = false;
  #closed = false;
  #taken: (() => void) | undefined;
  #ready: (() => void) | undefined;

  /**
   * Hands a chunk to the run.
   *
   * @param chunk The bytes (not copied: the caller gives them up).
   * @returns Resolves when the launcher took it, or at once when the run is over (the chunk is
   *   then dropped).
   * @throws {RangeError} While another put waits.
   */
  put(chunk: Uint8Array): Promise<void> {
    // After end() nothing will pull it: the caller decides whether that is an error.
    if (this.#closed || this.#ended || chunk.length === 0) return Promise.resolve();
    if (this.#chunk !== undefined) throw new RangeError("a chunk is waiting already");
    this.#chunk = chunk;
    this.#wakeReader();
    return new Promise<void>((resolve) => this.#taken = resolve);
  }

  /** Ends stdin once the waiting chunk, if any, is taken (end of file for the program). */
  end(): void {
    this.#ended = true;
    this.#wakeReader();
  }

  /** The run is over (or stopped pulling): a waiting put resolves, the chunk is dropped, the iteration ends. */
  close(): void {
    this.#closed = true;
    this.#chunk = undefined;
    this.#release();
    this.#wakeReader();
  }

  /**
   * The chunks, as they are put; ends at {@linkcode StdinFeed.end} or
   * {@linkcode StdinFeed.close}.
   *
   * @returns The iterator the launcher pulls.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array, void, undefined> {
    try {
      while (true) {
        while (this.#chunk === undefined && !this.#ended && !this.#closed) {
          await new Promise<void>((resolve) => this.#ready = resolve);
        }
        if (this.#closed) return;
        const chunk = this.#chunk;
        if (chunk === undefined) return;
        this.#chunk = undefined;
        this.#release();
        yield chunk;
      }
    } finally {
      // The launcher stopped pulling (the run ended): nothing will take a chunk any more.
      this.close();
    }
  }

  #release(): void {
    const taken = this.#taken;
    this.#taken = undefined;
    taken?.();
  }

  #wakeReader(): void {
    const ready = this.#ready;
    this.#ready = undefined;
    ready?.();
  }
}
