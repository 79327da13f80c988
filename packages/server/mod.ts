// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The Valise server: Spark Connect's artifact, config and session RPCs, Valise's
 * content-addressed store service and the standard health service, as routes that mount
 * anywhere — a `node:http2` gRPC server ({@linkcode serve}, `deno task serve`), `Deno.serve`
 * or a Hono app (`valise.fetch`, Connect and gRPC-web protocols).
 *
 * ```ts
 * import { createValise } from "@valise/server";
 * import { equal } from "node:assert/strict";
 *
 * const dataDir = await Deno.makeTempDir();
 * const valise = await createValise({ dataDir });
 * // Connect protocol, unary JSON: ask for a config value PySpark reads.
 * const res = await valise.fetch(
 *   new Request("http://localhost/spark.connect.SparkConnectService/Config", {
 *     method: "POST",
 *     headers: { "content-type": "application/json" },
 *     body: JSON.stringify({
 *       sessionId: crypto.randomUUID(),
 *       operation: { get: { keys: ["spark.sql.session.timeZone"] } },
 *     }),
 *   }),
 * );
 * equal((await res.json()).pairs[0].value, "UTC");
 * await valise.close();
 * await Deno.remove(dataDir, { recursive: true });
 * ```
 *
 * @module
 */
export * from "./blob_proof.ts";
export * from "./errors.ts";
export * from "./apply_service.ts";
export * from "./cli_options.ts";
export * from "./health_service.ts";
export * from "./metrics.ts";
export * from "./serve.ts";
export * from "./spark_service.ts";
export * from "./store_service.ts";
export * from "./unpacker.ts";
export * from "./valise.ts";
export * from "./worker_service.ts";
