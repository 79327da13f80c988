// Copyright 2026 the Valise authors. Apache-2.0 license.
// The one retry rule, through each kind of call against a real server: UNAVAILABLE is retried
// while nothing of the call was seen (and its request can be sent again), never after.
import { deepEqual, equal, ok } from "node:assert/strict";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { tableFromArrays } from "apache-arrow";
import { connect, type RunEvent, type Session, ValiseClientError } from "./mod.ts";
import { withServer } from "./_test_util.ts";

type Step = "before" | "after" | "pass";

/**
 * Fails the calls of one method by plan: `before` anything reaches the server, or `after` the
 * first response arrived; later calls pass.
 */
function flaky(method: string, plan: Step[]): { calls: () => number; interceptor: Interceptor } {
  let calls = 0;
  const lost = () => new ConnectError("connection lost", Code.Unavailable);
  const interceptor: Interceptor = (next) => async (req) => {
    if (req.method.name !== method) return next(req);
    const step = plan[calls++] ?? "pass";
    if (step === "before") throw lost();
    const res = await next(req);
    if (step === "pass" || !res.stream) return res;
    const source = res.message;
    return {
      ...res,
      message: (async function* () {
        for await (const m of source) {
          yield m;
          throw lost();
        }
      })(),
    } as typeof res;
  };
  return { calls: () => calls, interceptor };
}

async function withFlaky(
  method: string,
  plan: Step[],
  fn: (session: Session, calls: () => number) => Promise<void>,
): Promise<void> {
  await withServer(async ({ url }) => {
    const f = flaky(method, plan);
    await using session = connect(url, {
      interceptors: [f.interceptor],
      retry: { maxAttempts: 3, initialDelayMs: 1, maxDelayMs: 5 },
    });
    await fn(session, f.calls);
  });
}

async function unavailable(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (e) {
    ok(e instanceof ValiseClientError, String(e));
    deepEqual([e.errorClass, e.grpcCode], ["UNAVAILABLE", "Unavailable"]);
    return;
  }
  throw new Error("expected UNAVAILABLE");
}

const IDENTITY = { code: "def f(c):\n    return c\n", functionName: "f" };
const TABLE = tableFromArrays({ x: Int32Array.of(1, 2, 3) });

Deno.test("retry: a unary call is retried up to maxAttempts", async () => {
  await withFlaky("Config", ["before", "before"], async (session, calls) => {
    deepEqual(await session.conf.set("spark.r", "1"), []);
    equal(calls(), 3);
  });
  await withFlaky("Config", ["before", "before", "before"], async (session, calls) => {
    await unavailable(session.conf.set("spark.r", "1"));
    equal(calls(), 3);
  });
});

Deno.test("retry: a run is retried before its first event, not after", async () => {
  await withFlaky("Run", ["before", "before"], async (session, calls) => {
    const r = await session.runCollect({ code: "print('ran')" });
    equal(r.stdout, "ran\n");
    equal(calls(), 3);
  });
  await withFlaky("Run", ["after"], async (session, calls) => {
    const kinds: RunEvent["kind"][] = [];
    await unavailable((async () => {
      for await (const ev of session.run({ code: "print('ran')" })) kinds.push(ev.kind);
    })());
    deepEqual(kinds, ["started"]);
    equal(calls(), 1);
  });
});

Deno.test("retry: an apply is retried before any response when its input can be sent again", async () => {
  await withFlaky("Apply", ["before"], async (session, calls) => {
    const r = await session.applyCollect(IDENTITY, TABLE);
    equal(r.rowsOut, 3);
    equal(calls(), 2);
  });
  await withFlaky("Apply", ["before"], async (session, calls) => {
    // An iterable is read once: it cannot be sent again, so the call fails.
    await unavailable(session.applyCollect(IDENTITY, TABLE.batches.values()));
    equal(calls(), 1);
  });
  await withFlaky("Apply", ["after"], async (session, calls) => {
    await unavailable(session.applyCollect(IDENTITY, TABLE));
    equal(calls(), 1);
  });
});
