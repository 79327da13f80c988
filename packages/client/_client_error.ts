// Copyright 2026 the Valise authors. Apache-2.0 license.
import { type ClientErrorClass, type GrpcCodeName, ValiseClientError } from "./error.ts";

/**
 * An error the client raises itself: its message starts with `[CLASS]`, as the server's do.
 *
 * @param errorClass One of the client's own classes.
 * @param grpcCode The gRPC code it stands for.
 * @param message What went wrong.
 * @param details The message parameters and the cause, when there are.
 * @returns The error.
 */
export function clientError(
  errorClass: ClientErrorClass,
  grpcCode: GrpcCodeName,
  message: string,
  details: { parameters?: Record<string, string>; cause?: unknown } = {},
): ValiseClientError {
  return new ValiseClientError(`[${errorClass}] ${message}`, { errorClass, grpcCode, ...details });
}
