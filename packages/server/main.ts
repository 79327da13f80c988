// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `deno task serve`: starts Valise on 127.0.0.1:15002 with a data directory under the working
 * directory, or wherever flags and environment variables say (`--help`).
 *
 * @module
 */
import { parseServeCommand, USAGE, UsageError } from "./_cli_options.ts";
import { serveMetrics } from "./metrics.ts";
import { StatusPage } from "./status_page.ts";
import { serve } from "./serve.ts";

const env = (k: string) => Deno.env.get(k);
let cmd;
try {
  // `deno task` runs in the checkout's root and keeps the user's directory in INIT_CWD; run
  // from anywhere else, an INIT_CWD is an enclosing task's, inherited, and the cwd is the truth.
  const taskRoot = import.meta.url.startsWith("file:")
    ? new URL("../../", import.meta.url).pathname.replace(/\/$/, "")
    : undefined;
  const init = env("INIT_CWD");
  cmd = parseServeCommand(Deno.args, env, init && Deno.cwd() === taskRoot ? init : Deno.cwd());
} catch (e) {
  if (!(e instanceof UsageError)) throw e;
  // The error last, where the eye lands; the full usage only on --help.
  console.error(
    `${USAGE.split("\n")[0]}\nvalise: ${e.message}\n(deno task serve --help lists every option)`,
  );
  Deno.exit(2);
}
// Read once; nothing started later (unpack sandboxes, helpers) needs to inherit it.
Deno.env.delete("VALISE_TOKEN");
if (cmd.help) {
  console.log(USAGE);
  Deno.exit(0);
}

const log = (line: string) => console.error(`valise: ${line}`);
let server;
try {
  server = await serve({ ...cmd.options, ...(cmd.quiet ? {} : { log }) });
} catch (e) {
  console.error(`valise: cannot start: ${e instanceof Error ? e.message : e}`);
  Deno.exit(1);
}
// A default interpreter that cannot start would fail every session's first run: refuse now.
let python;
try {
  python = await server.valise.launcher.defaultInterpreterInfo();
} catch (e) {
  console.error(
    `valise: cannot start: ${e instanceof Error ? e.message : e}; choose the default ` +
      `interpreter with --python PATH`,
  );
  await server.valise.close();
  Deno.exit(1);
}
console.log(`valise listening on ${server.host}:${server.port}`);
log(
  `data directory ${cmd.options.dataDir}; ${server.valise.store.sessions().length} session(s) restored; ` +
    `workers ${server.valise.launcher.sandboxed ? "sandboxed with bubblewrap" : "NOT sandboxed"}`,
);
log(`workers run as ${server.valise.workerIdentity}; ${server.valise.launcher.containment}`);
const allowed = server.valise.launcher.allowedInterpreters;
log(
  `default interpreter ${python.path} (Python ${python.version}); ` +
    `sessions may choose it, interpreters inside their own directory` +
    (allowed.length ? ` and ${allowed.join(", ")}` : " (--allow-interpreter adds host ones)"),
);
const adminTokens = cmd.options.adminTokens;
const status = adminTokens?.length
  ? new StatusPage(server.valise, { tokens: adminTokens })
  : undefined;
// The operators' HTTP port listens where the RPC port does (--host).
const metrics = cmd.metricsPort !== undefined
  ? serveMetrics(server.valise, {
    port: cmd.metricsPort,
    hostname: cmd.options.host ?? "127.0.0.1",
    tokens: cmd.metricsTokens,
    status,
  })
  : undefined;
const httpBase = metrics && `http://${hostForUrl(metrics.hostname)}:${metrics.port}`;
if (metrics) log(`metrics on ${httpBase}/metrics`);
if (adminTokens?.length) {
  log(
    `admin API on (valise.v1.AdminService, ${adminTokens.length} admin token(s)); status page ` +
      (metrics ? `on ${httpBase}/status` : "off: give --metrics-port to serve it"),
  );
}

let stopping = false;
const stop = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  log(`${signal}, shutting down`);
  await metrics?.close();
  // Workers are stopped; connections are left to the process exit. Closing them from here
  // (GOAWAY or reset through Deno's node:http2) can crash Deno-based clients still connected.
  await server.valise.close();
  Deno.exit(0);
};
Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
// Asks the installer its version: not waited for, so a stop signal is handled meanwhile.
server.valise.pip?.describe().then((line) => {
  if (!stopping) log(line);
});

function hostForUrl(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}
