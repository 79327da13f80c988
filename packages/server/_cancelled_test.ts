import { equal, ok, strictEqual } from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { classifyAborted, peerResetProbe } from "./_cancelled.ts";

const premature = new Error("Premature close");

function aborted(reason: unknown): AbortSignal {
  const ac = new AbortController();
  ac.abort(reason);
  return ac.signal;
}

Deno.test("classifyAborted() leaves the error of a call the client did not abandon", () => {
  const live = new AbortController().signal;
  const disk = new Error("No space left on device");
  strictEqual(classifyAborted(disk, live, live), disk);
});

Deno.test("classifyAborted() reports a request stream closed short as CANCELED before the reset arrives", () => {
  // The race seen under load: the handler's read fails before the HTTP/2 reset aborts the signal.
  const live = new AbortController().signal;
  const wrapped = new ConnectError(
    "[INTERNAL_ERROR] Premature close",
    Code.Internal,
    undefined,
    [],
    premature,
  );
  const e = ConnectError.from(classifyAborted(wrapped, live, live));
  equal(e.code, Code.Canceled);
  equal(
    e.rawMessage,
    "[CANCELLED] The client cancelled the call, or its connection closed, before it completed " +
      "(the stream was closed) (the handler saw: Premature close)",
  );
  const nodeStyle = Object.assign(new Error("stream ended"), {
    code: "ERR_STREAM_PREMATURE_CLOSE",
  });
  equal(ConnectError.from(classifyAborted(nodeStyle, live, live)).code, Code.Canceled);
  // A shutting-down server keeps its own error.
  const down = new AbortController();
  down.abort();
  strictEqual(classifyAborted(wrapped, live, down.signal), wrapped);
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

Deno.test("classifyAborted() takes a stream the client reset as cancelled before the signal says so", () => {
  const live = new AbortController().signal;
  const short = new ConnectError(
    "[INVALID_ARTIFACT_STREAM] Missing data chunks for artifact: files/big.bin.",
    Code.InvalidArgument,
  );
  // A client's half-close short of its chunks is its error: no reset.
  strictEqual(
    classifyAborted(short, live, live, peerResetProbe({ stream: { rstCode: 0 } })()),
    short,
  );
  strictEqual(classifyAborted(short, live, live, peerResetProbe({})()), short);
  for (const stream of [{ rstCode: 8 }, { rstCode: 0, aborted: true }]) {
    const got = ConnectError.from(classifyAborted(short, live, live, peerResetProbe({ stream })()));
    strictEqual(got.code, Code.Canceled);
    ok(got.rawMessage.includes("(the handler saw: Missing data chunks"), got.rawMessage);
  }
});
