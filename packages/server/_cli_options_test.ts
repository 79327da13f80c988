// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { parseServeCommand, parseSize, USAGE, UsageError } from "./_cli_options.ts";

const noEnv = () => undefined;

Deno.test("parseServeCommand() defaults: loopback, 15002, ./.data under the user's directory", () => {
  const c = parseServeCommand([], noEnv, "/home/ada/project");
  equal(c.options.host, "127.0.0.1");
  equal(c.options.port, 15002);
  equal(c.options.dataDir, "/home/ada/project/.data");
  equal(c.options.idleTimeoutMs, 3_600_000);
  equal(c.options.token, undefined);
  equal(c.metricsPort, undefined);
  deepEqual(c.options.workers, {
    sandbox: "auto",
    workerNetwork: false,
    allowedInterpreters: [],
    limits: {},
  });
});

Deno.test("parseServeCommand() reads flags over environment variables", () => {
  const env = (k: string) =>
    ({ VALISE_HOST: "0.0.0.0", VALISE_PORT: "9000", VALISE_DATA_DIR: "/srv/v", VALISE_TOKEN: "t" })[
      k
    ];
  const fromEnv = parseServeCommand([], env, "/x");
  equal(fromEnv.options.host, "0.0.0.0");
  equal(fromEnv.options.port, 9000);
  equal(fromEnv.options.dataDir, "/srv/v");
  equal(fromEnv.options.token, "t");
  const flags = parseServeCommand(
    [
      "--port=0",
      "--data-dir",
      "rel",
      "--cache-bytes",
      "2G",
      "--max-session-bytes",
      "512M",
      "--max-session-artifacts",
      "7",
      "--min-free-bytes",
      "1.5G",
      "--allow-interpreter",
      "/usr/bin/python3",
      "--allow-interpreter",
      "/opt/py/bin/python",
      "--sandbox",
      "none",
      "--worker-network",
      "--worker-memory",
      "1G",
      "--max-workers",
      "3",
      "--worker-stream-bytes",
      "2G",
      "--interactive-timeout-ms=600000",
      "--metrics-port",
      "9100",
      "--idle-timeout-min",
      "0",
      "--apply-max-parallelism",
      "8",
    ],
    env,
    "/work",
  );
  equal(flags.options.applyMaxParallelism, 8);
  equal(parseServeCommand([], noEnv, "/x").options.applyMaxParallelism, undefined);
  equal(flags.options.port, 0);
  equal(flags.options.dataDir, "/work/rel");
  equal(flags.options.cacheBytes, 2 * 2 ** 30);
  deepEqual(flags.options.quotas, {
    maxSessionBytes: 512 * 2 ** 20,
    maxSessionArtifacts: 7,
    minFreeBytes: 1.5 * 2 ** 30,
  });
  deepEqual(flags.options.workers, {
    sandbox: "none",
    workerNetwork: true,
    allowedInterpreters: ["/usr/bin/python3", "/opt/py/bin/python"],
    limits: {
      maxWorkersTotal: 3,
      memoryBytes: 2 ** 30,
      streamBytes: 2 * 2 ** 30,
      interactiveTimeMs: 600_000,
    },
  });
  equal(flags.metricsPort, 9100);
  equal(flags.options.idleTimeoutMs, 0);
});

Deno.test("parseServeCommand() refuses bad input with a message naming the flag", () => {
  const bad = (args: string[], re: RegExp) =>
    throws(
      () => parseServeCommand(args, noEnv, "/x"),
      (e: unknown) => e instanceof UsageError && re.test((e as Error).message),
    );
  bad(["--port", "70000"], /--port: "70000"/);
  bad(["--sandbox", "docker"], /--sandbox: "docker" is not one of auto, bwrap, none/);
  bad(["--allow-interpreter", "python3"], /not an absolute path/);
  bad(["--cache-bytes", "lots"], /--cache-bytes: "lots" is not a size/);
  bad(["--worker-stream-bytes", "lots"], /--worker-stream-bytes: "lots" is not a size/);
  bad(["--max-workers", "0"], /--max-workers: "0"/);
  bad(["--interactive-timeout-ms", "soon"], /--interactive-timeout-ms: "soon"/);
  bad(
    ["--apply-max-parallelism", "0"],
    /--apply-max-parallelism: "0" is not a whole number from 1 to 64/,
  );
  bad(["--apply-max-parallelism", "65"], /--apply-max-parallelism: "65"/);
  bad(["--nope"], /nope/);
  bad(["extra"], /extra/);
});

Deno.test("parseSize() takes plain bytes and K/M/G/T suffixes", () => {
  equal(parseSize("1048576", "x"), 1048576);
  equal(parseSize("512K", "x"), 512 * 1024);
  equal(parseSize("10g", "x"), 10 * 2 ** 30);
  equal(parseSize("1.5GiB", "x"), 1.5 * 2 ** 30);
  equal(parseSize("2T", "x"), 2 * 2 ** 40);
});

Deno.test("parseServeCommand() reads --token-file (or VALISE_TOKEN_FILE) relative to the user's directory", async () => {
  const dir = await Deno.makeTempDir({ prefix: "valise-cli-" });
  try {
    await Deno.writeTextFile(`${dir}/tokens`, "# ops\nt-one\nt-two ada\n");
    const flag = parseServeCommand(["--token-file", "tokens"], noEnv, dir);
    deepEqual(flag.options.tokens, [{ token: "t-one" }, { token: "t-two", userId: "ada" }]);
    equal(flag.options.token, undefined);
    const env = (k: string) => ({ VALISE_TOKEN_FILE: `${dir}/tokens`, VALISE_TOKEN: "t-env" })[k];
    const fromEnv = parseServeCommand([], env, "/elsewhere");
    deepEqual(fromEnv.options.tokens, [{ token: "t-one" }, { token: "t-two", userId: "ada" }]);
    equal(fromEnv.options.token, "t-env");
    await Deno.writeTextFile(`${dir}/metrics`, "m-one\n");
    const metrics = parseServeCommand(["--metrics-token-file", `${dir}/metrics`], noEnv, "/x");
    deepEqual(metrics.metricsTokens, [{ token: "m-one" }]);
    equal(parseServeCommand([], noEnv, "/x").metricsTokens, undefined);
    const bad = (args: string[], re: RegExp) =>
      throws(
        () => parseServeCommand(args, noEnv, dir),
        (e: unknown) => e instanceof UsageError && re.test((e as Error).message),
      );
    bad(["--token-file", "missing"], /--token-file: cannot read .*missing/);
    await Deno.writeTextFile(`${dir}/empty`, "# none yet\n");
    bad(["--token-file", "empty"], /--token-file: .*empty: the file lists no token/);
    bad(["--metrics-token-file", "tokens"], /metrics tokens are not bound to users/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseServeCommand() reads --stream-idle-timeout-s in seconds, 0 for never", () => {
  equal(parseServeCommand([], noEnv, "/x").options.streamIdleTimeoutMs, undefined);
  equal(
    parseServeCommand(["--stream-idle-timeout-s", "5"], noEnv, "/x").options.streamIdleTimeoutMs,
    5000,
  );
  equal(
    parseServeCommand(["--stream-idle-timeout-s", "0"], noEnv, "/x").options.streamIdleTimeoutMs,
    0,
  );
  throws(
    () => parseServeCommand(["--stream-idle-timeout-s", "1.5"], noEnv, "/x"),
    /--stream-idle-timeout-s: "1.5" is not a whole number/,
  );
});

Deno.test("parseServeCommand() --cluster: NATS URLs, node id, replicas, credentials by file", () => {
  const none = parseServeCommand([], noEnv, "/x");
  equal(none.options.cluster, undefined, "a single node unless --cluster is given");
  const c = parseServeCommand(
    [
      "--cluster",
      "nats://10.0.0.1:4222, nats://10.0.0.2:4222",
      "--node-id",
      "v1",
      "--cluster-replicas",
      "3",
      "--cluster-creds-file",
      "nats.creds",
    ],
    noEnv,
    "/etc/valise",
  );
  deepEqual(c.options.cluster, {
    servers: ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"],
    nodeId: "v1",
    replicas: 3,
    credentialsFile: "/etc/valise/nats.creds",
  });
  const env = (k: string) =>
    ({
      VALISE_CLUSTER: "nats://n:4222",
      VALISE_NODE_ID: "v2",
      VALISE_CLUSTER_CREDS_FILE: "/run/secrets/nats",
    })[k];
  deepEqual(parseServeCommand([], env, "/x").options.cluster, {
    servers: ["nats://n:4222"],
    nodeId: "v2",
    replicas: 1,
    credentialsFile: "/run/secrets/nats",
  });
  const hb = parseServeCommand(
    ["--cluster", "nats://n:4222", "--node-id", "a.b-1", "--cluster-heartbeat", "0.5"],
    noEnv,
    "/x",
  );
  deepEqual(hb.options.cluster, {
    servers: ["nats://n:4222"],
    nodeId: "a.b-1",
    replicas: 1,
    heartbeatMs: 500,
  });
});

Deno.test("parseServeCommand() --cluster-gc-grace: the blob GC's grace period as a duration", () => {
  const grace = (text: string) =>
    parseServeCommand(["--cluster", "nats://a:4222", "--cluster-gc-grace", text], noEnv, "/x")
      .options.cluster?.gcGraceMs;
  equal(grace("24h"), 86_400_000);
  equal(grace("30m"), 1_800_000);
  equal(grace("2.5s"), 2500);
  equal(grace("7d"), 7 * 86_400_000);
  equal(
    parseServeCommand(["--cluster", "nats://a:4222"], noEnv, "/x").options.cluster?.gcGraceMs,
    undefined,
    "the default (24h) is createValise's",
  );
});

Deno.test("parseServeCommand() --cluster refuses credentials in the URL and bad values", () => {
  const bad: [string[], RegExp][] = [
    [["--cluster", "nats://user:secret@10.0.0.1:4222"], /never in the URL/],
    [["--cluster", "http://10.0.0.1:4222"], /not a NATS URL/],
    [["--cluster", "nats://a:4222", "--cluster-replicas", "2"], /even/],
    [["--cluster", "nats://a:4222", "--cluster-replicas", "7"], /from 1 to 5/],
    [["--cluster", "nats://a:4222", "--node-id", "../x"], /not a node name/],
    [["--cluster", "nats://a:4222", "--node-id", "a..b"], /not a node name/],
    [["--cluster", "nats://a:4222", "--node-id", "a."], /not a node name/],
    [["--node-id", "v1"], /needs --cluster/],
    [["--cluster-heartbeat", "1"], /needs --cluster/],
    [["--cluster", "nats://a:4222", "--cluster-heartbeat", "0"], /from 0.1 to 600/],
    [["--cluster", "nats://a:4222", "--cluster-heartbeat", "1e3"], /number of seconds/],
    [["--cluster", "nats://a:4222", "--cluster-heartbeat", "601"], /from 0.1 to 600/],
    [["--cluster-gc-grace", "1h"], /needs --cluster/],
    [["--cluster", "nats://a:4222", "--cluster-gc-grace", "24"], /not a duration/],
    [["--cluster", "nats://a:4222", "--cluster-gc-grace=-1h"], /not a duration/],
    [["--cluster", "nats://a:4222", "--cluster-gc-grace", "500ms"], /from 1s to 365d/],
    [["--cluster", "nats://a:4222", "--cluster-gc-grace", "400d"], /from 1s to 365d/],
    [["--apply-offer-wait-ms", "100"], /--apply-offer-wait-ms needs --cluster/],
    [["--cluster", "nats://a:4222", "--apply-offer-wait-ms", "-1"], /--apply-offer-wait-ms/],
  ];
  equal(
    parseServeCommand(["--cluster", "nats://a:4222", "--apply-offer-wait-ms", "5000"], noEnv, "/x")
      .options.applyOfferWaitMs,
    5000,
  );
  for (const [args, why] of bad) {
    throws(() => parseServeCommand(args, noEnv, "/x"), (e) => {
      equal(e instanceof UsageError, true);
      equal(why.test((e as Error).message), true, (e as Error).message);
      return true;
    });
  }
});

Deno.test("parseServeCommand() reads --admin-token-file: unbound tokens, none of them a tenant's", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/admin`, "# operators\nadmin-one\nadmin-two\n");
    await Deno.writeTextFile(`${dir}/tenants`, "tenant-one ada\nshared\n");
    const c = parseServeCommand(
      ["--admin-token-file", "admin", "--token-file", "tenants"],
      noEnv,
      dir,
    );
    deepEqual(c.options.adminTokens, [{ token: "admin-one" }, { token: "admin-two" }]);
    const env = (k: string) => ({ VALISE_ADMIN_TOKEN_FILE: `${dir}/admin` })[k];
    deepEqual(parseServeCommand([], env, "/x").options.adminTokens?.length, 2);
    equal(parseServeCommand([], noEnv, "/x").options.adminTokens, undefined);
    const bad = (args: string[], re: RegExp, e: (k: string) => string | undefined = noEnv) =>
      throws(
        () => parseServeCommand(args, e, dir),
        (x: unknown) => x instanceof UsageError && re.test((x as Error).message),
      );
    bad(["--admin-token-file", "tenants"], /admin tokens are not bound to users/);
    await Deno.writeTextFile(`${dir}/overlap`, "admin-one\nshared\n");
    bad(
      ["--admin-token-file", "overlap", "--token-file", "tenants"],
      /a token of the file is also a tenant's token .*give operators tokens of their own/,
    );
    bad(
      ["--admin-token-file", "admin"],
      /also a tenant's token/,
      (k) => ({ VALISE_TOKEN: "admin-two" })[k],
    );
    bad(["--admin-token-file", "missing"], /--admin-token-file: cannot read/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the usage text says the metrics and status port listens on --host", () => {
  const c = parseServeCommand(["--host", "0.0.0.0", "--metrics-port", "9100"], noEnv, "/x");
  equal(c.options.host, "0.0.0.0");
  equal(c.metricsPort, 9100);
  ok(USAGE.includes("serve HTTP on HOST:PORT (HOST: the --host address)"), USAGE);
  ok(!USAGE.includes("127.0.0.1:PORT/metrics"));
});

Deno.test("parseServeCommand() reads the --pip-* flags, and refuses indexes and hosts that are not ones", () => {
  const c = parseServeCommand(
    [
      "--pip-installer",
      "tools/uv",
      "--pip-index-url",
      "https://mirror.example/simple/",
      "--pip-extra-index-url",
      "https://extra.example/simple",
      "--pip-allow-index",
      "https://pypi.org/simple",
      "--pip-allow-host",
      "files.mirror.example:8443",
      "--pip-timeout",
      "120",
      "--pip-allow-sdist",
    ],
    noEnv,
    "/srv",
  );
  deepEqual(c.options.pip, {
    installer: "/srv/tools/uv",
    indexUrl: "https://mirror.example/simple",
    extraIndexUrls: ["https://extra.example/simple"],
    allowedIndexUrls: ["https://pypi.org/simple"],
    allowHosts: ["files.mirror.example:8443"],
    offline: false,
    timeoutMs: 120_000,
    allowSdist: true,
  });
  const offline = parseServeCommand(["--pip-offline"], noEnv, "/").options.pip;
  equal(offline && offline.offline, true);
  ok(USAGE.includes("--pip-offline"));
  for (
    const args of [
      ["--pip-index-url", "ftp://x/simple"],
      ["--pip-index-url", "https://u:p@x/simple"],
      ["--pip-allow-host", "a b"],
      ["--pip-timeout", "0"],
      ["--pip-offline", "--pip-index-url", "https://x/simple"],
    ]
  ) {
    throws(() => parseServeCommand(args, noEnv, "/"), UsageError, args.join(" "));
  }
});
