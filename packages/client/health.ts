// Copyright 2026 the Valise authors. Apache-2.0 license.

/**
 * What a health check answers (`grpc.health.v1`): `SERVING` while the server runs,
 * `NOT_SERVING` once it is shutting down.
 */
export type HealthStatus = "SERVING" | "NOT_SERVING" | "UNKNOWN" | "SERVICE_UNKNOWN";
