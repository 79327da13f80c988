// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `deno task serve`: starts Valise on 127.0.0.1:15002 with a data directory under the working
 * directory, or wherever flags and environment variables say.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { serve } from "./serve.ts";

const USAGE = `Usage: deno task serve [options]

Serves Spark Connect's artifact RPCs (and Valise's own) over gRPC.

Options:
  --host HOST            address to listen on        (env VALISE_HOST, default 127.0.0.1)
  --port PORT            port to listen on; 0 = any  (env VALISE_PORT, default 15002)
  --data-dir DIR         where sessions and blobs live (env VALISE_DATA_DIR, default ./.data)
  --token TOKEN          require 'authorization: Bearer TOKEN' (env VALISE_TOKEN)
  --idle-timeout-min N   release sessions idle for N minutes; 0 = never (default 60)
  --quiet                no per-RPC log lines
  -h, --help             this help
`;

function fail(message: string): never {
  console.error(`valise: ${message}\n\n${USAGE}`);
  Deno.exit(2);
}

let args;
try {
  args = parseArgs({
    args: Deno.args,
    options: {
      host: { type: "string" },
      port: { type: "string" },
      "data-dir": { type: "string" },
      token: { type: "string" },
      "idle-timeout-min": { type: "string" },
      quiet: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  }).values;
} catch (e) {
  fail(e instanceof Error ? e.message : String(e));
}
if (args.help) {
  console.log(USAGE);
  Deno.exit(0);
}
const env = (k: string) => Deno.env.get(k) || undefined;
const host = args.host ?? env("VALISE_HOST") ?? "127.0.0.1";
const portText = args.port ?? env("VALISE_PORT") ?? "15002";
const port = Number(portText);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`invalid port "${portText}"`);
// `deno task` runs in the workspace root; INIT_CWD keeps the directory the user ran it from.
const dataDir = resolve(
  env("INIT_CWD") ?? Deno.cwd(),
  args["data-dir"] ?? env("VALISE_DATA_DIR") ?? ".data",
);
const idleText = args["idle-timeout-min"] ?? "60";
const idleMin = Number(idleText);
if (!Number.isFinite(idleMin) || idleMin < 0) fail(`invalid idle timeout "${idleText}"`);

const log = args.quiet ? undefined : (line: string) => console.error(`valise: ${line}`);
let server;
try {
  server = await serve({
    host,
    port,
    dataDir,
    token: args.token ?? env("VALISE_TOKEN"),
    idleTimeoutMs: idleMin * 60_000,
    log,
  });
} catch (e) {
  console.error(`valise: cannot start: ${e instanceof Error ? e.message : e}`);
  Deno.exit(1);
}
console.log(`valise listening on ${server.host}:${server.port}`);
console.error(
  `valise: data directory ${dataDir}; ${server.valise.store.sessions().length} session(s) restored`,
);

let stopping = false;
const stop = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  console.error(`valise: ${signal}, shutting down`);
  await server.close();
  Deno.exit(0);
};
Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
