// Copyright 2026 the Valise authors. Apache-2.0 license.

/**
 * Yields what `source` yields, but fails with `onIdle()` when the next item takes longer than
 * `timeoutMs` to arrive. Time spent by the consumer between items does not count: only the
 * wait for the peer does. `0` waits forever.
 *
 * @param source A request stream.
 * @param timeoutMs The longest wait for one item; `0` for no limit.
 * @param onIdle The error to fail with.
 * @returns The items of `source`.
 */
export async function* idleLimited<T>(
  source: AsyncIterable<T>,
  timeoutMs: number,
  onIdle: () => unknown,
): AsyncGenerator<T, void, undefined> {
  if (timeoutMs <= 0) {
    yield* source;
    return;
  }
  const it = source[Symbol.asyncIterator]();
  let finished = false;
  try {
    while (true) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const idle = new Promise<"idle">((resolve) => {
        timer = setTimeout(() => resolve("idle"), timeoutMs);
      });
      let r: IteratorResult<T> | "idle";
      try {
        r = await Promise.race([it.next(), idle]);
      } finally {
        clearTimeout(timer);
      }
      if (r === "idle") throw onIdle();
      if (r.done) {
        finished = true;
        return;
      }
      yield r.value;
    }
  } finally {
    // The peer's stream is abandoned, not drained: its pending read ends with the call.
    if (!finished) it.return?.()?.catch(() => {});
  }
}
