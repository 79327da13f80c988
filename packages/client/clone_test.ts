// Copyright 2026 the Valise authors. Apache-2.0 license.
// `session.clone()` and `valise clone` against a real server: the clone has the source's
// artifacts and config, is remembered by the CLI (unless --no-switch), and the two evolve apart.
import { deepEqual, equal, match, notEqual } from "node:assert/strict";
import { join } from "node:path";
import { connect } from "./session.ts";
import { isValiseClientError } from "./error.ts";
import { cli, jsonLines, stateOf, withServer, writeFile } from "./_test_util.ts";

Deno.test("session.clone() gives a session with the source's artifacts and config", async () => {
  await withServer(async ({ url, tmp }) => {
    const source = connect(url);
    await source.addArtifacts(await writeFile(tmp, "util.py", "X = 1\n"), { pyfile: true });
    await source.conf.set("spark.sql.shuffle.partitions", "7");
    const copy = await source.clone();
    try {
      notEqual(copy.sessionId, source.sessionId);
      deepEqual((await copy.list()).map((a) => a.name), ["pyfiles/util.py"]);
      equal(await copy.conf.get("spark.sql.shuffle.partitions"), "7");
      await copy.conf.set("spark.sql.shuffle.partitions", "9");
      equal(await source.conf.get("spark.sql.shuffle.partitions"), "7");
      // A taken id is refused with Spark's class.
      const err = await source.clone(copy.sessionId).then(() => undefined, (e) => e);
      equal(
        isValiseClientError(err) && err.errorClass,
        "INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_ALREADY_EXISTS",
      );
      await source.release();
      deepEqual((await copy.list()).map((a) => a.name), ["pyfiles/util.py"]);
    } finally {
      copy.close();
      source.close();
    }
  });
});

Deno.test("valise clone clones the remembered session and switches to the clone", async () => {
  await withServer(async ({ url, tmp }) => {
    const state = join(tmp, "state.json");
    const env = { VALISE_STATE_FILE: state, SPARK_REMOTE: url, INIT_CWD: tmp };
    await writeFile(tmp, "a.txt", "a");
    equal((await cli(["add", "--file", "a.txt"], env)).code, 0);
    const [first] = Object.values(stateOf(state)).map((s) => s.sessionId);
    const r = await cli(["clone"], env);
    equal(r.code, 0, r.stderr);
    const id = r.stdout.trim();
    match(r.stderr, new RegExp(`cloned session ${first} to ${id}`));
    deepEqual(Object.values(stateOf(state)).map((s) => s.sessionId), [id]);
    const ls = await cli(["ls"], env);
    match(ls.stdout, /^files\/a\.txt\t1\t/);
    const wanted = crypto.randomUUID();
    const j = await cli(["--json", "clone", "--as", wanted, "--no-switch"], env);
    equal(j.code, 0, j.stderr);
    deepEqual(jsonLines(j.stdout), [{ type: "cloned", session: id, clone: wanted }]);
    deepEqual(Object.values(stateOf(state)).map((s) => s.sessionId), [id]);
    const again = await cli(["clone", "--as", wanted], env);
    equal(again.code, 1);
    match(again.stderr, /TARGET_SESSION_ID_ALREADY_EXISTS/);
  });
});
