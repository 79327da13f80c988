// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The Valise client: open a Spark Connect session on a Valise server, add artifacts with
 * PySpark's names and chunking (plus a fast path that sends only the bytes the server lacks),
 * set its config, run Python in it, apply Python functions to Arrow record batches in it
 * (`session.apply`), release it. Errors are {@linkcode ValiseClientError}s
 * carrying the server's error class. The command line is `deno task valise` (`./cli`).
 *
 * ```ts
 * import { connect } from "@valise/client";
 * import { serve } from "@valise/server";
 * import { equal } from "node:assert/strict";
 * import { join } from "node:path";
 *
 * const tmp = await Deno.makeTempDir();
 * const server = await serve({ dataDir: join(tmp, "data"), port: 0 });
 * await Deno.writeTextFile(join(tmp, "util.py"), "GREETING = 'hello'\n");
 *
 * const session = connect(`sc://127.0.0.1:${server.port}/;user_id=ada`);
 * const [added] = await session.addArtifacts(join(tmp, "util.py"), { pyfile: true });
 * equal(added!.name, "pyfiles/util.py");
 * await session.conf.set("spark.app.name", "demo");
 * equal(await session.conf.get("spark.app.name"), "demo");
 * equal((await session.status(["pyfiles/util.py"]))["pyfiles/util.py"], true);
 * await session.release();
 *
 * await server.close();
 * await Deno.remove(tmp, { recursive: true });
 * ```
 *
 * @module
 */
export type * from "./apply.ts";
export type { ArtifactEntry, RemovedArtifacts } from "./artifacts.ts";
export type { HealthStatus } from "./health.ts";
export {
  ARCHIVE_EXTENSIONS,
  type ArtifactKindFlags,
  type LocalArtifact,
  PYSPARK_ARCHIVE_EXTENSIONS,
  resolveArtifact,
} from "./artifact_path.ts";
export { RuntimeConfig } from "./config.ts";
export type { ConnectOptions, RetryOptions, RetryReport } from "./connect_options.ts";
export {
  type ConnectionString,
  DEFAULT_PORT,
  type Endpoint,
  endpointsOf,
  formatConnectionString,
  formatEndpoint,
  MAX_ENDPOINTS,
  parseConnectionString,
  parseEndpoints,
  RESERVED_PARAMS,
} from "./connection_string.ts";
export {
  type ClientErrorClass,
  type GrpcCodeName,
  isValiseClientError,
  ValiseClientError,
  type ValiseClientErrorInit,
} from "./error.ts";
export { type PipDistribution, type PipInstallOptions, type PipResult, SessionPip } from "./pip.ts";
export type { RunEvent, RunOptions, RunResult, RunSpec, RunTarget } from "./run.ts";
export { RunControl } from "./run_control.ts";
export { connect, RetryEvent, Session } from "./session.ts";
export {
  type AddArtifactsOptions,
  type AddedArtifact,
  type ArtifactProgress,
  ArtifactProgressEvent,
  sha256File,
} from "./upload.ts";
export { CLIENT_VERSION } from "./version.ts";
