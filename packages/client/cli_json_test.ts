// Copyright 2026 the Valise authors. Apache-2.0 license.
// What scripts read: each artifact as the server commits it, and --json lines on every command.
import { deepEqual, equal, match, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { tableFromArrays, tableFromIPC, tableToIPC } from "apache-arrow";
import { cli, jsonLines, withServer, writeFile } from "./_test_util.ts";

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

Deno.test("a multi-file add reports each artifact as it commits: a failure on the third still shows the first two", async () => {
  await withServer(async ({ url, tmp }) => {
    const env = { VALISE_STATE_FILE: join(tmp, "state.json"), SPARK_REMOTE: url, INIT_CWD: tmp };
    await Deno.mkdir(join(tmp, "v1"));
    await writeFile(join(tmp, "v1"), "c.txt", "first c");
    equal((await cli(["add", "--file", "v1/c.txt"], env)).code, 0);
    await writeFile(tmp, "a.txt", "aaa");
    await writeFile(tmp, "b.txt", "bb");
    await writeFile(tmp, "c.txt", "another c");

    const text = await cli(["add", "--file", "a.txt", "b.txt", "c.txt"], env);
    equal(text.code, 1);
    equal(text.stdout, "files/a.txt\t3\tuploaded\nfiles/b.txt\t2\tuploaded\n");
    match(text.stderr, /\[ARTIFACT_ALREADY_EXISTS\] .*files\/c\.txt/);

    await writeFile(tmp, "d.txt", "dddd");
    const json = await cli(["--json", "add", "--file", "a.txt", "d.txt", "c.txt"], env);
    equal(json.code, 1);
    const lines = jsonLines(json.stdout);
    deepEqual(lines.slice(0, 2), [
      {
        type: "artifact",
        name: "files/a.txt",
        path: join(tmp, "a.txt"),
        size: 3,
        sha256: sha256("aaa"),
        uploaded: false,
      },
      {
        type: "artifact",
        name: "files/d.txt",
        path: join(tmp, "d.txt"),
        size: 4,
        sha256: sha256("dddd"),
        uploaded: true,
      },
    ]);
    equal(lines.length, 3);
    equal(lines[2]!.type, "error");
    equal(lines[2]!.class, "ARTIFACT_ALREADY_EXISTS");
    equal(lines[2]!.exitCode, 1);
    ok(typeof lines[2]!.hint === "string" && typeof lines[2]!.message === "string");
  });
});

Deno.test("--json gives every command JSON lines on stdout", async () => {
  await withServer(async ({ url, tmp }) => {
    const env = { VALISE_STATE_FILE: join(tmp, "state.json"), SPARK_REMOTE: url, INIT_CWD: tmp };
    const j = async (args: string[], code = 0) => {
      const r = await cli(["--json", ...args], env);
      equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
      return jsonLines(r.stdout);
    };
    await writeFile(tmp, "util.py", "def double(c):\n    return {'y': [v * 2 for v in c['x']]}\n");
    const [added] = await j(["add", "--pyfile", "util.py"]);
    equal(added!.type, "artifact");
    equal(added!.name, "pyfiles/util.py");

    deepEqual(await j(["conf", "set", "spark.t.a", "1"]), [
      { type: "conf", key: "spark.t.a", value: "1", warnings: [] },
    ]);
    deepEqual(await j(["conf", "get", "spark.t.a"]), [{
      type: "conf",
      key: "spark.t.a",
      value: "1",
    }]);
    await j(["conf", "set", "spark.t.b", "2"]);
    deepEqual(await j(["conf", "list", "spark.t."]), [
      { type: "conf", key: "a", value: "1" },
      { type: "conf", key: "b", value: "2" },
    ]);
    deepEqual(await j(["conf", "unset", "spark.t.a", "spark.t.b"]), [
      { type: "conf_unset", key: "spark.t.a" },
      { type: "conf_unset", key: "spark.t.b" },
    ]);

    const run = await j([
      "run",
      "-c",
      "import sys; print('out é'); print('err', file=sys.stderr); sys.exit(3)",
    ], 3);
    deepEqual(run.filter((l) => l.type === "stdout").map((l) => l.text).join(""), "out é\n");
    deepEqual(run.filter((l) => l.type === "stderr").map((l) => l.text).join(""), "err\n");
    deepEqual(run.at(-1), {
      type: "exit",
      exitCode: 3,
      programExitCode: 3,
      signal: null,
      timedOut: false,
      outputTruncated: false,
    });

    const [st] = await j(["status"]);
    equal(st!.type, "session");
    equal(st!.state, "open");
    match(String(st!.session), /^[0-9a-f-]{36}$/);
    deepEqual(await j(["status", "pyfiles/util.py", "files/x"], 1), [
      { type: "artifact_status", name: "pyfiles/util.py", exists: true },
      { type: "artifact_status", name: "files/x", exists: false },
    ]);

    await Deno.writeFile(
      join(tmp, "in.arrow"),
      tableToIPC(tableFromArrays({ x: Int32Array.of(1, 2, 3) }), "file"),
    );
    const applied = await j([
      "apply",
      "--fn=util:double",
      "--in=in.arrow",
      "--out=out.arrow",
    ]);
    equal(applied.length, 1);
    equal(applied[0]!.type, "apply");
    equal(applied[0]!.rowsIn, 3);
    equal(applied[0]!.rowsOut, 3);
    equal(applied[0]!.out, join(tmp, "out.arrow"));
    deepEqual(
      [...tableFromIPC(await Deno.readFile(join(tmp, "out.arrow"))).getChild("y")!],
      [2n, 4n, 6n],
    );

    const [err] = await j(["conf", "get", "spark.nope"], 1);
    equal(err!.type, "error");
    equal(err!.class, "SQL_CONF_NOT_FOUND");
    const [usage] = await j(["conf", "frob"], 2);
    deepEqual(usage, {
      type: "error",
      class: "USAGE",
      message: 'unknown conf command "frob" (set, get, unset or list)',
      hint: "see `valise help conf`",
      exitCode: 2,
    });

    const [rel] = await j(["release"]);
    equal(rel!.type, "released");
    equal(rel!.session, st!.session);
    deepEqual(await j(["release"]), [{ type: "released", session: null }]);
  });
});
