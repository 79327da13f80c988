// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * One way to watch a call to its end, unary or streamed: the log, the metrics and the redaction
 * of errors all need "when did it end, and how", and a streamed response ends only when its last
 * message was taken.
 *
 * @module
 */
import type { ContextValues, Interceptor } from "@connectrpc/connect";

/** What {@linkcode observingInterceptor} does at the end of each call. */
export interface CallObserver {
  /**
   * Called once per call when it ends: with `undefined` on success, else with the error.
   *
   * @param method `service/Method`.
   * @param error What the call failed with, if it did.
   * @param startedAt `performance.now()` when it started.
   */
  end?(method: string, error: unknown, startedAt: number): void;
  /**
   * Replaces the error a call fails with (after `end` saw the original).
   *
   * @param error What the call failed with.
   * @param signal The call's signal: aborted when the client went away, its deadline passed or
   *   the server is shutting down.
   * @param values The call's context values (what the transport adapter put there).
   * @returns What the client gets.
   */
  mapError?(error: unknown, signal: AbortSignal, values: ContextValues): unknown;
}

/**
 * An interceptor that reports each call's end to `observer`, and lets it replace the error a
 * call fails with, for unary calls and streamed responses alike.
 *
 * @param observer What to do at the end.
 * @returns The interceptor.
 */
export function observingInterceptor(observer: CallObserver): Interceptor {
  const map = observer.mapError ?? ((e: unknown) => e);
  return (next) => async (req) => {
    const startedAt = performance.now();
    const method = `${req.service.typeName}/${req.method.name}`;
    const failed = (e: unknown): unknown => {
      observer.end?.(method, e, startedAt);
      return map(e, req.signal, req.contextValues);
    };
    let res;
    try {
      res = await next(req);
    } catch (e) {
      throw failed(e);
    }
    if (!res.stream) {
      observer.end?.(method, undefined, startedAt);
      return res;
    }
    const inner = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* inner;
        } catch (e) {
          throw failed(e);
        }
        observer.end?.(method, undefined, startedAt);
      })(),
    };
  };
}
