// Copyright 2026 the Valise authors. Apache-2.0 license.
// The CLI's session across commands: a session the server closed does not block it, `valise new`
// starts one on purpose, `status` never creates one, and only sessions the server confirmed are
// remembered.
import { deepEqual, equal, match, notEqual, ok } from "node:assert/strict";
import { join } from "node:path";
import { connect } from "./session.ts";
import { cli, jsonLines, stateOf, withServer, writeFile } from "./_test_util.ts";

const ID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/;

function remembered(state: string): string[] {
  return Object.values(stateOf(state)).map((s) => s.sessionId);
}

Deno.test("a session the server released or expired does not block the CLI: the next command starts a new one and says so in one line", async () => {
  await withServer(async ({ url, tmp, server }) => {
    const state = join(tmp, "state.json");
    const env = { VALISE_STATE_FILE: state, SPARK_REMOTE: url, INIT_CWD: tmp };
    await writeFile(tmp, "a.txt", "a");
    equal((await cli(["add", "--file", "a.txt"], env)).code, 0);
    const [first] = remembered(state);
    ok(first);

    // Released by someone else (another client, PySpark's stop()): the CLI still remembers it.
    await connect(url, { sessionId: first }).release();
    const set = await cli(["conf", "set", "spark.k", "v"], env);
    equal(set.code, 0, set.stderr);
    const lines = set.stderr.trimEnd().split("\n");
    equal(lines.length, 1, set.stderr);
    match(
      lines[0]!,
      new RegExp(
        `^valise: session ${first} is closed on the server \\(released, or idle too long\\); ` +
          `started new session (${ID.source})$`,
      ),
    );
    const [second] = remembered(state);
    notEqual(second, first);
    ok(lines[0]!.endsWith(second!));
    equal((await cli(["conf", "get", "spark.k"], env)).stdout, "v\n");

    // Idle too long: the server's own expiry (its clock moved past the idle limit).
    const expired = await server.valise.store.expireIdle(Date.now() + 24 * 3_600_000);
    ok(expired.includes(second!), `${expired}`);
    const st = await cli(["status"], env);
    equal(st.code, 0, st.stderr);
    match(st.stdout, new RegExp(`^remote\\t.*\\nsession\\t${second}\\nstate\\tclosed\\n`));
    match(st.stderr, /is closed on the server .*: the next command starts a new one\n$/);
    equal(server.valise.store.sessions().length, 0, "status created no session");
    const run = await cli(["run", "-c", "print('still here')"], env);
    equal(run.code, 0, run.stderr);
    equal(run.stdout, "still here\n");
    match(run.stderr, new RegExp(`^valise: session ${second} is closed on the server`));
    const [third] = remembered(state);
    ok(third !== second && third !== first);

    // A session the user names is theirs to replace: its closure is reported, with a hint.
    const named = await cli(["--session", first!, "conf", "get", "spark.k"], env);
    equal(named.code, 1);
    match(named.stderr, /\[INVALID_HANDLE\.SESSION_CLOSED\] .*\nhint: the server no longer has/);
    deepEqual(remembered(state), [third]);
  });
});

Deno.test("valise new releases the remembered session and starts another; with none it just starts one", async () => {
  await withServer(async ({ url, tmp, server }) => {
    const state = join(tmp, "state.json");
    const env = { VALISE_STATE_FILE: state, SPARK_REMOTE: url };
    const fresh = await cli(["new"], env);
    equal(fresh.code, 0, fresh.stderr);
    const first = fresh.stdout.trim();
    match(first, new RegExp(`^${ID.source}$`));
    deepEqual(remembered(state), [first]);
    ok(server.valise.store.sessions().some((s) => s.sessionId === first));

    const again = await cli(["new"], env);
    equal(again.code, 0, again.stderr);
    const second = again.stdout.trim();
    notEqual(second, first);
    match(again.stderr, new RegExp(`released session ${first}`));
    deepEqual(remembered(state), [second]);
    // The old one is gone from the server: a new session is not a second one.
    deepEqual(server.valise.store.sessions().map((s) => s.sessionId), [second]);

    const json = await cli(["--json", "-q", "new"], env);
    equal(json.code, 0, json.stderr);
    equal(json.stderr, "");
    const [line] = jsonLines(json.stdout);
    equal(line!.type, "session");
    equal(line!.released, second);
    deepEqual(remembered(state), [line!.session]);
  });
});

Deno.test("status never creates a session: with none it says so, and a named artifact is missing", async () => {
  await withServer(async ({ url, tmp, server }) => {
    const state = join(tmp, "state.json");
    const env = { VALISE_STATE_FILE: state, SPARK_REMOTE: url };
    const st = await cli(["status"], env);
    equal(st.code, 0, st.stderr);
    match(st.stdout, /^remote\tsc:\/\/127\.0\.0\.1:\d+\/\nsession\t\nstate\tnone\n/);
    match(st.stderr, /^valise: no session for sc:\/\/127\.0\.0\.1:\d+\/: the next command/);
    const names = await cli(["status", "files/a.txt"], env);
    equal(names.code, 1);
    equal(names.stdout, "files/a.txt\tmissing\n");
    const json = await cli(["--json", "status"], env);
    const [line, ...more] = jsonLines(json.stdout);
    equal(more.length, 0);
    deepEqual({ ...line, user: undefined }, {
      type: "session",
      remote: url + "/",
      session: null,
      state: "none",
      serverSideSession: null,
      user: undefined,
    });
    equal(server.valise.store.sessions().length, 0);
    deepEqual(stateOf(state), {});
  });
});

Deno.test("failed attempts against a wrong remote remember no session; the first confirmed one is", async () => {
  const http404 = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("not here", { status: 404 }),
  );
  try {
    await withServer(async ({ url, tmp, server }) => {
      const state = join(tmp, "state.json");
      const env = { VALISE_STATE_FILE: state, INIT_CWD: tmp };
      await writeFile(tmp, "a.txt", "a");
      const wrong = [
        ["--retries=1", "--remote=sc://127.0.0.1:1", "add", "--file", "a.txt"],
        ["--remote=sc://127.0.0.1:1", "--retries=1", "conf", "set", "spark.k", "v"],
        [`--remote=sc://127.0.0.1:${http404.addr.port}`, "run", "-c", "print(1)"],
        [`--remote=${url}/;token=nope`, "conf", "list"],
        [`--remote=${url}/;use_ssl=true`, "--retries=1", "status", "files/a.txt"],
        [`--remote=${url}/;tokn=t`, "conf", "list"],
        // Bad paths are found before any session is opened.
        [`--remote=${url}`, "add", "--file", "missing.txt"],
        [`--remote=${url}`, "add", "--pyfile", "."],
        [`--remote=${url}`, "add", "--pyfile", "a.txt"],
      ];
      for (const args of wrong) {
        const r = await cli(args, env);
        notEqual(r.code, 0, args.join(" "));
        ok(!r.stderr.includes("new session"), `${args.join(" ")}: ${r.stderr}`);
        deepEqual(stateOf(state), {}, args.join(" "));
      }
      equal(server.valise.store.sessions().length, 0);
      const ok1 = await cli([`--remote=${url}/;token=right`, "add", "--file", "a.txt"], env);
      equal(ok1.code, 0, ok1.stderr);
      const ids = remembered(state);
      equal(ids.length, 1);
      deepEqual(server.valise.store.sessions().map((s) => s.sessionId), ids);
    }, { token: "right" });
  } finally {
    await http404.shutdown();
  }
});
