// Copyright 2026 the Valise authors. Apache-2.0 license.
// The one retry rule, through each kind of call against a real server: UNAVAILABLE is retried
// while nothing that counts was delivered (a run's output, an apply's batches) and the request can
// be sent again, never after; the error then says why it was not.
import { deepEqual, equal, ok } from "node:assert/strict";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { tableFromArrays } from "apache-arrow";
import { connect, type RunEvent, type Session, ValiseClientError } from "./mod.ts";
import { withServer } from "./_test_util.ts";

type Step = "before" | "after" | "after2" | "pass";

/**
 * Fails the calls of one method by plan: `before` anything reaches the server, `after` the
 * first response arrived, or `after2` the second; later calls pass.
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
    const failAt = step === "after" ? 1 : 2;
    return {
      ...res,
      message: (async function* () {
        let n = 0;
        for await (const m of source) {
          yield m;
          if (++n === failAt) throw lost();
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

async function unavailable(p: Promise<unknown>, why?: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    ok(e instanceof ValiseClientError, String(e));
    deepEqual([e.errorClass, e.grpcCode], ["UNAVAILABLE", "Unavailable"]);
    if (why) ok(why.test(e.message), e.message);
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
    await unavailable(
      session.conf.set("spark.r", "1"),
      /gave up after 3 attempts on 127\.0\.0\.1:\d+/,
    );
    equal(calls(), 3);
  });
});

Deno.test("retry: a run is retried until its output was delivered, not after", async () => {
  await withFlaky("Run", ["before", "before"], async (session, calls) => {
    const r = await session.runCollect({ code: "print('ran')" });
    equal(r.stdout, "ran\n");
    equal(calls(), 3);
  });
  // After `started` alone: the program is started again, and says so with a second `started`.
  await withFlaky("Run", ["after"], async (session, calls) => {
    const kinds: RunEvent["kind"][] = [];
    for await (const ev of session.run({ code: "print('ran')" })) {
      // Output may come in several pieces.
      if (ev.kind !== "stdout" || kinds.at(-1) !== "stdout") kinds.push(ev.kind);
    }
    deepEqual(kinds, ["started", "started", "stdout", "exited"]);
    equal(calls(), 2);
  });
  await withFlaky("Run", ["after2"], async (session, calls) => {
    const kinds: RunEvent["kind"][] = [];
    await unavailable(
      (async () => {
        for await (const ev of session.run({ code: "print('ran')" })) kinds.push(ev.kind);
      })(),
      /not sent again: the run's output \(stdout, stderr or its exit\) had already been delivered/,
    );
    deepEqual(kinds, ["started", "stdout"]);
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
    await unavailable(
      session.applyCollect(IDENTITY, TABLE.batches.values()),
      /its input is a stream the caller gave, already read/,
    );
    equal(calls(), 1);
  });
  await withFlaky("Apply", ["after"], async (session, calls) => {
    await unavailable(session.applyCollect(IDENTITY, TABLE), /the call's output had already/);
    equal(calls(), 1);
  });
});
