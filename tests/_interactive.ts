// A RunInteractive call driven by a test over real gRPC: the test sends stdin, close_stdin and
// interrupts when it chooses (usually after it has seen the answer it waits for), and reads the
// run's events as they arrive.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { ConnectError, type createClient } from "@connectrpc/connect";
import {
  ErrorInfoSchema,
  type RunExited,
  type RunInput,
  RunInputSchema,
  type RunRequestSchema,
  type WorkerService,
} from "@valise/protocol";

type Workers = ReturnType<typeof createClient<typeof WorkerService>>;
type Input = NonNullable<MessageInitShape<typeof RunInputSchema>["input"]>;

/** One RunInteractive call. */
export class InteractiveCall {
  /** stdout so far. */
  stdout = "";
  /** stderr so far. */
  stderr = "";
  /** The `exited` event, once it came. */
  exit: RunExited | undefined;
  /** How the call failed, if it did. */
  failure: ConnectError | undefined;
  /** Messages after `start` that the transport took (pulled from the request stream). */
  sent = 0;
  /** Stdin bytes the transport took. */
  sentBytes = 0;
  /** Resolves when the call has ended (never rejects: see `failure`). */
  readonly done: Promise<void>;
  #queue: (Input | null)[] = [];
  #wake: (() => void) | undefined;
  #waiters: (() => void)[] = [];

  /**
   * Starts the call.
   *
   * @param workers The worker service's client.
   * @param start The `start` message.
   * @param options A signal that cancels the call.
   */
  constructor(
    workers: Workers,
    start: MessageInitShape<typeof RunRequestSchema>,
    options: { signal?: AbortSignal } = {},
  ) {
    const out = new TextDecoder();
    const err = new TextDecoder();
    this.done = (async () => {
      try {
        for await (const ev of workers.runInteractive(this.#requests(start), options)) {
          const e = ev.event;
          if (e.case === "stdout") this.stdout += out.decode(e.value, { stream: true });
          if (e.case === "stderr") this.stderr += err.decode(e.value, { stream: true });
          if (e.case === "exited") this.exit = e.value;
          this.#notify();
        }
      } catch (e) {
        this.failure = ConnectError.from(e);
      } finally {
        this.#ended = true;
        this.#notify();
      }
    })();
  }

  #ended = false;

  async *#requests(
    start: MessageInitShape<typeof RunRequestSchema>,
  ): AsyncGenerator<RunInput, void, undefined> {
    yield create(RunInputSchema, { input: { case: "start", value: start } });
    while (true) {
      while (this.#queue.length === 0) await new Promise<void>((r) => this.#wake = r);
      const next = this.#queue.shift()!;
      if (next === null) return;
      yield create(RunInputSchema, { input: next });
      this.sent++;
      if (next.case === "stdin") this.sentBytes += next.value.length;
    }
  }

  /**
   * Sends stdin.
   *
   * @param data Text or bytes.
   */
  send(data: string | Uint8Array): void {
    this.push({
      case: "stdin",
      value: typeof data === "string" ? new TextEncoder().encode(data) : data,
    });
  }

  /** Sends `close_stdin`. */
  closeStdin(): void {
    this.push({ case: "closeStdin", value: true });
  }

  /** Sends an interrupt. */
  interrupt(): void {
    this.push({ case: "interrupt", value: {} });
  }

  /** Ends the request stream. */
  end(): void {
    this.#queue.push(null);
    this.#wake?.();
  }

  /**
   * Resolves once `cond` holds (checked at each event); rejects if the call ends first.
   *
   * @param cond The condition.
   * @param what What is awaited, for the error.
   */
  async until(cond: () => boolean, what: string): Promise<void> {
    while (!cond()) {
      if (this.#ended) {
        throw new Error(
          `the call ended before ${what}; stdout ${JSON.stringify(this.stdout)}, stderr ${
            JSON.stringify(this.stderr)
          }, failure ${this.failure?.message}`,
        );
      }
      await new Promise<void>((r) => this.#waiters.push(r));
    }
  }

  /**
   * Resolves once stdout, from `from` on, contains `text`.
   *
   * @param text What to wait for.
   * @param from Where to look from.
   * @returns The index just past it.
   */
  async waitFor(text: string, from = 0): Promise<number> {
    await this.until(
      () => this.stdout.indexOf(text, from) >= 0,
      `stdout had ${JSON.stringify(text)}`,
    );
    return this.stdout.indexOf(text, from) + text.length;
  }

  /** The error class of the failure (ErrorInfo), if any. */
  get errorClass(): string | undefined {
    return this.failure?.findDetails(ErrorInfoSchema)[0]?.metadata.errorClass;
  }

  /**
   * Sends any message (a test of what the server refuses).
   *
   * @param input The message's `input`.
   */
  push(input: Input): void {
    this.#queue.push(input);
    this.#wake?.();
  }

  #notify(): void {
    for (const w of this.#waiters.splice(0)) w();
  }
}
