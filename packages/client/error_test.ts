// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, ok } from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "@valise/protocol";
import { type ClientErrorClass, isValiseClientError, ValiseClientError } from "./error.ts";

Deno.test("ValiseClientError keeps the server's error class apart from the gRPC code", () => {
  const info = create(ErrorInfoSchema, {
    reason: "x",
    metadata: {
      errorClass: "ARTIFACT_ALREADY_EXISTS",
      sqlState: "42713",
      messageParameters: '{"normalizedRemoteRelativePath":"pyfiles/m.py"}',
      "valise.reason": "OTHER_BYTES",
    },
  });
  const wire = new ConnectError("exists", Code.AlreadyExists, undefined, [
    { desc: ErrorInfoSchema, value: info },
  ]);
  const e = ValiseClientError.from(wire);
  equal(e.errorClass, "ARTIFACT_ALREADY_EXISTS");
  equal(e.grpcCode, "AlreadyExists");
  equal(e.sqlState, "42713");
  equal(e.reason, "OTHER_BYTES");
  deepEqual(e.parameters, { normalizedRemoteRelativePath: "pyfiles/m.py" });
  equal(e.cause, wire);
  equal(ValiseClientError.from(e), e);
});

Deno.test("ValiseClientError falls back to the client's own classes without the server's", () => {
  const want: [Code, ClientErrorClass][] = [
    [Code.Unavailable, "UNAVAILABLE"],
    [Code.Unauthenticated, "UNAUTHENTICATED"],
    [Code.PermissionDenied, "PERMISSION_DENIED"],
    [Code.DeadlineExceeded, "DEADLINE_EXCEEDED"],
    [Code.Canceled, "CANCELLED"],
    [Code.Unimplemented, "UNIMPLEMENTED"],
    [Code.Internal, "RPC_ERROR"],
    [Code.NotFound, "RPC_ERROR"],
  ];
  for (const [code, errorClass] of want) {
    const e = ValiseClientError.from(new ConnectError("down", code));
    deepEqual([e.errorClass, e.grpcCode], [errorClass, Code[code]]);
  }
  const plain = ValiseClientError.from(new Error("boom"));
  deepEqual([plain.errorClass, plain.grpcCode, plain.message], ["RPC_ERROR", "Unknown", "boom"]);
});

Deno.test("isValiseClientError recognises the error, also from another copy of the package", () => {
  const e = new ValiseClientError("[CRC_MISMATCH] bad", {
    errorClass: "CRC_MISMATCH",
    grpcCode: "DataLoss",
  });
  ok(isValiseClientError(e));
  ok(e instanceof ValiseClientError);
  // What a second copy of @valise/client would throw: same shape, another class object.
  const copy = Object.assign(new Error("x"), {
    name: "ValiseClientError",
    errorClass: "UNAVAILABLE",
    grpcCode: "Unavailable",
  });
  ok(isValiseClientError(copy));
  ok(copy instanceof ValiseClientError);
  for (const other of [new Error("x"), null, "ValiseClientError", { name: "ValiseClientError" }]) {
    ok(!isValiseClientError(other), String(other));
    ok(!(other instanceof ValiseClientError));
  }
});
