import { equal, strictEqual } from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { classifyAborted } from "./_cancelled.ts";

const premature = new Error("Premature close");

function aborted(reason: unknown): AbortSignal {
  const ac = new AbortController();
  ac.abort(reason);
  return ac.signal;
}

Deno.test("classifyAborted() leaves the error of a call the client did not abandon", () => {
  const live = new AbortController().signal;
  strictEqual(classifyAborted(premature, live, live), premature);
});

Deno.test("classifyAborted() reports a reset call as CANCELED with what the handler saw", () => {
  const reset = new ConnectError(
    "http/2 stream closed with error code CANCEL (0x8)",
    Code.Canceled,
  );
  const e = ConnectError.from(
    classifyAborted(premature, aborted(reset), new AbortController().signal),
  );
  equal(e.code, Code.Canceled);
  equal(
    e.rawMessage,
    "[CANCELLED] The client cancelled the call, or its connection closed, before it completed " +
      "(HTTP/2 stream closed with error code CANCEL (0x8)) (the handler saw: Premature close)",
  );
  // The signal's own reason, thrown by the handler, is not repeated as a symptom.
  equal(
    ConnectError.from(classifyAborted(reset, aborted(reset), new AbortController().signal))
      .rawMessage,
    "[CANCELLED] The client cancelled the call, or its connection closed, before it completed " +
      "(HTTP/2 stream closed with error code CANCEL (0x8))",
  );
});

Deno.test("classifyAborted() reports a call past its deadline as DEADLINE_EXCEEDED", () => {
  const late = new ConnectError("the operation timed out", Code.DeadlineExceeded);
  const e = ConnectError.from(
    classifyAborted(premature, aborted(late), new AbortController().signal),
  );
  equal(e.code, Code.DeadlineExceeded);
  equal(
    e.rawMessage,
    "[DEADLINE_EXCEEDED] The call's deadline passed before it completed (the handler saw: " +
      "Premature close)",
  );
});

Deno.test("classifyAborted() keeps the error of a call ended by the server's shutdown", () => {
  const down = aborted(new DOMException("shutdown", "AbortError"));
  strictEqual(classifyAborted(premature, down, down), premature);
});
