// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The admin API (`valise.v1.AdminService/ListSessions`) against a real `serve` process: sessions
 * per user with bytes, last activity and running workers, for an admin token only. A tenant's
 * token is PERMISSION_DENIED, a missing or wrong one UNAUTHENTICATED, and without
 * `--admin-token-file` the API is off (UNIMPLEMENTED) whatever token is sent.
 *
 * @module
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AdminService, SparkConnectService } from "@valise/protocol";
import { connect } from "@valise/client";
import { type ServerProcess, startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const ADMIN = "admin-token-4b1d0c9e7f";
const ADA = "ada-token-9a8b7c6d5e";
const ANY = "shared-token-1f2e3d4c5b";

function clients(server: ServerProcess, token?: string) {
  const transport = createGrpcTransport({
    baseUrl: server.baseUrl,
    interceptors: [(next) => (req) => {
      if (token !== undefined) req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    }],
  });
  return {
    admin: createClient(AdminService, transport),
    spark: createClient(SparkConnectService, transport),
  };
}

async function outcome(call: Promise<unknown>): Promise<string> {
  try {
    await call;
    return "OK";
  } catch (e) {
    const c = ConnectError.from(e);
    return `${c.code} ${c.rawMessage}`;
  }
}

async function files(tmp: string): Promise<{ tenants: string; admins: string }> {
  const tenants = join(tmp, "tokens");
  const admins = join(tmp, "admin-tokens");
  await Deno.writeTextFile(tenants, `${ADA} ada\n${ANY}\n`);
  await Deno.writeTextFile(admins, `# operators\n${ADMIN}\n`);
  await Deno.chmod(tenants, 0o600);
  await Deno.chmod(admins, 0o600);
  return { tenants, admins };
}

Deno.test("ListSessions: every session per user with bytes, activity and running workers, for admins only", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-admin-" });
  const { tenants, admins } = await files(tmp);
  const server = await startServer({
    dataDir: join(tmp, "data"),
    args: ["--token-file", tenants, "--admin-token-file", admins],
  });
  try {
    await server.waitForLog("admin API on (valise.v1.AdminService, 1 admin token(s))");
    const url = `sc://127.0.0.1:${server.port}/`;
    const ada = connect(`${url};user_id=ada;token=${ADA}`);
    const bob = connect(`${url};user_id=bob;token=${ANY}`);
    const bob2 = connect(`${url};user_id=bob;token=${ANY}`);
    await Deno.writeTextFile(join(tmp, "a.py"), "A = 1\n");
    await ada.addArtifacts(join(tmp, "a.py"), { pyfile: true });
    await bob.conf.set("spark.app.name", "b");
    await bob2.conf.set("spark.sql.execution.pyspark.python", "/usr/bin/python3");
    // One run of bob's executes while the admin asks (until the test stops it).
    const run = bob.run({ code: "import time; print('up', flush=True); time.sleep(600)" });
    for (let ev = await run.next(); ev.value?.kind !== "stdout"; ev = await run.next()) {
      ok(!ev.done, "the run ended before it was up");
    }

    const admin = clients(server, ADMIN).admin;
    const all = await admin.listSessions({});
    equal(all.sessions.length, 3);
    const byId = new Map(all.sessions.map((s) => [s.sessionId, s]));
    const a = byId.get(ada.sessionId)!;
    equal(a.userId, "ada");
    equal(a.artifacts, 1);
    equal(a.bytes, 6n);
    equal(a.runningWorkers, 0);
    ok(a.lastActiveMs >= a.createdAtMs && a.lastActiveMs <= BigInt(Date.now()));
    equal(byId.get(bob.sessionId)!.runningWorkers, 1);
    equal(byId.get(bob2.sessionId)!.interpreter, "/usr/bin/python3");
    deepEqual(
      all.users.map((u) => [u.userId, u.sessions, u.bytes, u.runningWorkers]),
      [["ada", 1, 6n, 0], ["bob", 2, 0n, 1]],
    );
    // Most recently used first.
    ok(
      all.sessions.every((s, i) => i === 0 || all.sessions[i - 1]!.lastActiveMs >= s.lastActiveMs),
    );
    const onlyBob = await admin.listSessions({ userId: "bob" });
    deepEqual(onlyBob.sessions.map((s) => s.userId), ["bob", "bob"]);
    equal((await admin.listSessions({ userId: "nobody" })).sessions.length, 0);

    // Tenants' tokens, bound or not, are not admin tokens; no token, a wrong one, neither.
    for (const token of [ADA, ANY]) {
      const got = await outcome(clients(server, token).admin.listSessions({}));
      equal(
        got,
        "7 [PERMISSION_DENIED] This is a tenant's token: the admin API needs one of the server's " +
          "admin tokens (its --admin-token-file).",
      );
    }
    ok((await outcome(clients(server).admin.listSessions({}))).startsWith("16 [UNAUTHENTICATED]"));
    equal(
      await outcome(clients(server, "guess").admin.listSessions({})),
      "16 [UNAUTHENTICATED] The bearer token is not one of this server's admin tokens.",
    );
    // An admin token is no tenant's: it opens nothing else.
    ok(
      (await outcome(
        clients(server, ADMIN).spark.config({
          sessionId: crypto.randomUUID(),
          operation: { opType: { case: "get", value: { keys: ["x"] } } },
        }),
      )).startsWith("16 [UNAUTHENTICATED]"),
    );
    await server.waitForLog(/rpc valise\.v1\.AdminService\/ListSessions PermissionDenied/);
    await run.return();
    bob.close();
    ada.close();
    bob2.close();
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
});

Deno.test("without --admin-token-file the admin API is off, whatever the token", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-admin-" });
  const { tenants } = await files(tmp);
  const server = await startServer({
    dataDir: join(tmp, "data"),
    args: ["--token-file", tenants, "--metrics-port", "0"],
  });
  try {
    const metrics = (await server.waitForLog(/metrics on http:\/\/\S+/)).match(/http:\/\/\S+/)![0];
    const page = await fetch(metrics.replace(/\/metrics$/, "/status"), {
      headers: { authorization: `Bearer ${ADMIN}` },
    });
    equal(page.status, 404);
    equal(
      await page.text(),
      "The status page is off: start the server with --admin-token-file FILE.\n",
    );
    for (const token of [undefined, ANY, ADMIN]) {
      equal(
        await outcome(clients(server, token).admin.listSessions({})),
        "12 [ADMIN_API_DISABLED] The admin API is off on this server: start it with " +
          "--admin-token-file FILE to turn it on.",
      );
    }
    ok(!server.log.some((l) => l.includes("admin API on")));
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
});
