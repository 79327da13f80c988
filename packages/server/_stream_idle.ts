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
  // One timer per stream, not one per item (an upload is tens of thousands of 32 KiB messages):
  // it checks the wait in progress and sleeps until that wait would reach the limit.
  let waitingSince = -1;
  let fail: ((e: unknown) => void) | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const check = () => {
    timer = undefined;
    if (waitingSince < 0) return; // the consumer holds an item: the next wait re-arms
    const left = waitingSince + timeoutMs - performance.now();
    if (left > 0) timer = setTimeout(check, left);
    else fail?.(onIdle());
  };
  try {
    while (true) {
      waitingSince = performance.now();
      timer ??= setTimeout(check, timeoutMs);
      const r = await new Promise<IteratorResult<T>>((resolve, reject) => {
        fail = reject;
        it.next().then(resolve, reject);
      });
      waitingSince = -1;
      fail = undefined;
      if (r.done) {
        finished = true;
        return;
      }
      yield r.value;
    }
  } finally {
    clearTimeout(timer);
    // The peer's stream is abandoned, not drained: its pending read ends with the call.
    if (!finished) it.return?.()?.catch(() => {});
  }
}
