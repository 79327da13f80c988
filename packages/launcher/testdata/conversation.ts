// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A conversation with an interactive run: stdin that the test feeds line by line, only after it
 * has seen the answer it waits for, and the run's output as it arrives.
 *
 * @module
 */
import type { RunEvent, RunExitedEvent } from "../mod.ts";

/** Stdin the test writes to while the run reads it. */
export class Typist {
  #queue: (Uint8Array | null)[] = [];
  #wake: (() => void) | undefined;
  /** Lines handed to the run so far (pulled by it). */
  pulled = 0;

  /**
   * Types text (a line with its newline, usually).
   *
   * @param text What to type.
   */
  type(text: string): void {
    this.#queue.push(new TextEncoder().encode(text));
    this.#wake?.();
  }

  /** Ends stdin (Ctrl-D). */
  end(): void {
    this.#queue.push(null);
    this.#wake?.();
  }

  /**
   * The stdin to give the run.
   *
   * @returns The bytes typed, as they are typed.
   */
  async *stdin(): AsyncGenerator<Uint8Array, void, undefined> {
    while (true) {
      while (this.#queue.length === 0) await new Promise<void>((r) => this.#wake = r);
      const next = this.#queue.shift()!;
      if (next === null) return;
      this.pulled++;
      yield next;
    }
  }
}

/** A run's output, read in the background, with waits for what it should say. */
export class Transcript {
  /** stdout so far. */
  stdout = "";
  /** stderr so far. */
  stderr = "";
  /** The `exited` event, once it came. */
  exit: RunExitedEvent | undefined;
  /** Resolves when the events end. */
  readonly done: Promise<void>;
  #waiters: { test: () => boolean; resolve: () => void }[] = [];
  #out = new TextDecoder();
  #err = new TextDecoder();

  /**
   * Starts reading.
   *
   * @param events The run's events.
   */
  constructor(events: AsyncIterable<RunEvent>) {
    this.done = (async () => {
      try {
        for await (const ev of events) {
          if (ev.kind === "stdout") this.stdout += this.#out.decode(ev.data, { stream: true });
          if (ev.kind === "stderr") this.stderr += this.#err.decode(ev.data, { stream: true });
          if (ev.kind === "exited") this.exit = ev;
          this.#check();
        }
      } finally {
        this.#check(true);
      }
    })();
  }

  /**
   * Resolves once stdout, from `from` on, contains `text`; rejects if the run ends first.
   *
   * @param text What to wait for.
   * @param from Where in stdout to look from.
   * @returns The index just past the text.
   */
  waitFor(text: string, from = 0): Promise<number> {
    const at = () => {
      const i = this.stdout.indexOf(text, from);
      return i < 0 ? -1 : i + text.length;
    };
    return new Promise((resolve, reject) => {
      const test = () => at() >= 0;
      const done = () => {
        const i = at();
        if (i >= 0) resolve(i);
        else {
          reject(
            new Error(
              `the run ended before it wrote ${JSON.stringify(text)}; stdout ${
                JSON.stringify(this.stdout)
              }, stderr ${JSON.stringify(this.stderr)}`,
            ),
          );
        }
      };
      if (test() || this.exit) done();
      else this.#waiters.push({ test, resolve: done });
    });
  }

  #check(ended = false): void {
    for (const w of [...this.#waiters]) {
      if (ended || w.test()) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  }
}
