// Copyright 2026 the Valise authors. Apache-2.0 license.
// session.list() / session.remove() / session.health() and `valise ls`, `valise rm`,
// `valise health`, against a real server on a loopback port.
import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { connect } from "./session.ts";
import { isValiseClientError } from "./error.ts";
import { makeTar, sessionDir, withServer, writeFile } from "./_test_util.ts";

const CLI = new URL("./cli.ts", import.meta.url).pathname;

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

async function cli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
}

Deno.test("session.list() reports each artifact; remove() takes them away, all or none", async () => {
  await withServer(async (t) => {
    const util = await writeFile(t.tmp, "util.py", "X = 1\n");
    const data = await writeFile(t.tmp, "rows.csv", "a,b\n");
    const env = await makeTar(t.tmp, "env.tar", "lib.py", "Y = 2\n");
    const session = connect(`${t.url}/;user_id=ada`);
    try {
      // Listing a session the server does not have yet creates nothing.
      deepEqual(await session.list(), []);
      equal(session.serverSideSessionId, undefined);
      await rejects(sessionDir(t.dataDir, session.sessionId));
      await session.addArtifacts(util, { pyfile: true });
      await session.addArtifacts(data, { file: true });
      await session.addArtifacts(`${env}#env`, { archive: true });
      const list = await session.list();
      deepEqual(list.map((a) => [a.name, a.kind, a.size, a.view, a.alias]), [
        ["archives/env.tar#env", "archives", (await Deno.stat(env)).size, "env", "env"],
        ["files/rows.csv", "files", 4, "rows.csv", undefined],
        ["pyfiles/util.py", "pyfiles", 6, "util.py", undefined],
      ]);
      equal(list[2]!.sha256, sha256("X = 1\n"));
      ok(
        list[0]!.tree && list[0]!.tree.entries >= 1 && list[0]!.tree.bytes >= 6,
        String(list[0]!.tree),
      );
      equal(list[1]!.tree, undefined);
      ok(list.every((a) => a.addedAt.getTime() > Date.now() - 600_000));

      // A missing name removes nothing, and says so.
      await rejects(session.remove(["pyfiles/util.py", "pyfiles/nope.py"]), (e) => {
        ok(isValiseClientError(e));
        equal(e.errorClass, "ARTIFACT_NOT_FOUND");
        equal(e.grpcCode, "NotFound");
        match(
          e.message,
          /Cannot remove "pyfiles\/nope.py": the session holds no artifact of that name/,
        );
        return true;
      });
      equal((await session.list()).length, 3);

      const r = await session.remove(["pyfiles/util.py", "archives/env.tar#env"]);
      deepEqual(r.removed.map((a) => a.name), ["pyfiles/util.py", "archives/env.tar#env"]);
      equal(r.freedBytes, 6 + list[0]!.size + list[0]!.tree!.bytes);
      equal(r.inProgress, 0);
      deepEqual((await session.list()).map((a) => a.name), ["files/rows.csv"]);
      deepEqual(await session.status(["pyfiles/util.py", "files/rows.csv"]), {
        "pyfiles/util.py": false,
        "files/rows.csv": true,
      });
      const run = await session.runCollect({
        code: "import os; print(sorted(os.listdir('.')))",
      });
      equal(run.stdout, "['rows.csv']\n");
      await rejects(session.remove([]), TypeError);
      equal(await session.health(), "SERVING");
    } finally {
      await session.release();
    }
  });
});

Deno.test("valise ls, rm and health: tab-separated lines, errors with hints, no session created", async () => {
  await withServer(async (t) => {
    const state = join(t.tmp, "state.json");
    const env = { VALISE_STATE_FILE: state, SPARK_REMOTE: t.url };
    // No session yet: ls says so and creates none, rm fails clearly.
    const none = await cli(["ls"], env);
    equal(none.code, 0, none.stderr);
    equal(none.stdout, "");
    match(none.stderr, /no session for sc:\/\/127\.0\.0\.1:\d+\/: no artifacts/);
    await rejects(Deno.stat(state));
    const noRm = await cli(["rm", "files/x"], env);
    equal(noRm.code, 1);
    match(noRm.stderr, /^valise: \[ARTIFACT_NOT_FOUND\] There is no session for sc:\/\/127/);

    const util = await writeFile(t.tmp, "util.py", "X = 1\n");
    equal((await cli(["add", "--pyfile", util], env)).code, 0);
    const tar = await makeTar(t.tmp, "env.tar", "lib.py", "Y = 2\n");
    equal((await cli(["add", "--archive", `${tar}#env`], env)).code, 0);
    const listed = await cli(["ls"], env);
    equal(listed.code, 0, listed.stderr);
    const lines = listed.stdout.trimEnd().split("\n").map((l) => l.split("\t"));
    deepEqual(lines[1], ["pyfiles/util.py", "6", "pyfiles", sha256("X = 1\n"), "./util.py"]);
    equal(lines[0]![0], "archives/env.tar#env");
    match(lines[0]![4]!, /^\.\/env\/ \(unpacked: \d+ entries, \d+ B\)$/);
    match(listed.stderr, /valise: 2 artifact\(s\), .* with unpacked archives, in session /);
    const json = await cli(["ls", "--json", "-q"], env);
    equal(json.stderr, "");
    deepEqual(
      json.stdout.trimEnd().split("\n").map((l) => [JSON.parse(l).type, JSON.parse(l).name]),
      [["listed", "archives/env.tar#env"], ["listed", "pyfiles/util.py"]],
    );

    const missing = await cli(["rm", "pyfiles/nope.py"], env);
    equal(missing.code, 1);
    equal(
      missing.stderr,
      `valise: [ARTIFACT_NOT_FOUND] Cannot remove "pyfiles/nope.py": the session holds no ` +
        `artifact of that name. Names are as they were added, e.g. "archives/env.tar#env"; ` +
        "ListArtifacts lists them all.\nhint: `valise ls` lists the session's artifacts by the " +
        "names `rm` takes\n",
    );
    const bad = await cli(["rm", "files/../../manifest.json"], env);
    equal(bad.code, 1);
    match(bad.stderr, /^valise: \[INVALID_ARTIFACT_NAME\] Cannot accept artifact name/);
    const usage = await cli(["rm"], env);
    equal(usage.code, 2);
    match(usage.stderr, /\[USAGE\] rm needs at least one NAME/);

    const removed = await cli(["rm", "archives/env.tar#env"], env);
    equal(removed.code, 0, removed.stderr);
    equal(removed.stdout, "archives/env.tar#env\tremoved\n");
    match(removed.stderr, /freed .* of the session's quota/);
    equal((await cli(["ls", "-q"], env)).stdout.split("\t")[0], "pyfiles/util.py");

    const health = await cli(["health"], env);
    equal(health.code, 0, health.stderr);
    equal(health.stdout, "SERVING\n");
    const svc = await cli(["health", "valise.v1.SessionService"], env);
    equal(svc.stdout, "SERVING\n");
    for (const cmd of ["ls", "rm", "health"]) {
      const h = await cli([cmd, "--help"], env);
      equal(h.code, 0);
      match(h.stdout, new RegExp(`^Usage: valise ${cmd}`));
    }
  });
});

Deno.test("valise health reports an unreachable or unknown-service server with exit 1", async () => {
  const tmp = await Deno.makeTempDir();
  const free = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = free.addr.port;
  free.close();
  try {
    const env = { VALISE_STATE_FILE: join(tmp, "state.json") };
    const down = await cli(["health", "--remote", `sc://127.0.0.1:${port}`], env);
    equal(down.code, 1);
    match(down.stderr, /^valise: \[UNAVAILABLE\]/);
    await rejects(Deno.stat(join(tmp, "state.json")));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  await withServer(async (t) => {
    const r = await cli(["health", "no.such.Service", "--remote", t.url], {
      VALISE_STATE_FILE: join(t.tmp, "state.json"),
    });
    equal(r.code, 1);
    match(r.stderr, /unknown service "no\.such\.Service"/);
  });
});
