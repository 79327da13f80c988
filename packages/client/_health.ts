// Copyright 2026 the Valise authors. Apache-2.0 license.
// grpc.health.v1.Health/Check, as a word.
import { HealthCheckResponse_ServingStatus } from "@valise/protocol";
import type { HealthStatus } from "./health.ts";
import type { SessionCore } from "./_core.ts";

/**
 * Checks the server's health (retried while it is unavailable, as every call).
 *
 * @param core The connection.
 * @param service A service name; `""` for the server as a whole.
 * @returns The status.
 */
export async function checkHealth(core: SessionCore, service: string): Promise<HealthStatus> {
  const res = await core.retry.call("Check", (node) => node.health.check({ service }));
  return (HealthCheckResponse_ServingStatus[res.status] ?? "UNKNOWN") as HealthStatus;
}
