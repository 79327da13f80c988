// Copyright 2026 the Valise authors. Apache-2.0 license.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  type Health,
  HealthCheckResponse_ServingStatus,
  HealthCheckResponseSchema,
} from "@valise/protocol";

/** Names of the services a health check may ask about ("" is the server as a whole). */
export const HEALTH_SERVICES: readonly string[] = [
  "",
  "spark.connect.SparkConnectService",
  "valise.v1.StoreService",
  "valise.v1.SessionService",
  "valise.v1.WorkerService",
  "valise.v1.PipService",
  "grpc.health.v1.Health",
];

/**
 * The standard `grpc.health.v1.Health` service: SERVING while the server runs, NOT_SERVING
 * once `shutdown` fires (so load balancers drain before the port closes).
 *
 * @param shutdown Aborted when the server starts shutting down.
 * @returns The service implementation.
 */
export function createHealthService(shutdown: AbortSignal): ServiceImpl<typeof Health> {
  const status = (service: string) => {
    if (!HEALTH_SERVICES.includes(service)) {
      throw new ConnectError(`unknown service ${JSON.stringify(service)}`, Code.NotFound);
    }
    return create(HealthCheckResponseSchema, {
      status: shutdown.aborted
        ? HealthCheckResponse_ServingStatus.NOT_SERVING
        : HealthCheckResponse_ServingStatus.SERVING,
    });
  };
  return {
    check(req) {
      return status(req.service);
    },
    async *watch(req, call) {
      yield status(req.service);
      if (shutdown.aborted) return;
      await new Promise<void>((resolve) => {
        const done = () => resolve();
        shutdown.addEventListener("abort", done, { once: true });
        call.signal.addEventListener("abort", done, { once: true });
      });
      if (!call.signal.aborted) yield status(req.service);
    },
  };
}
