// Copyright 2026 the Valise authors. Apache-2.0 license.
// `valise pip` end to end: a real server installing from PyPI with the project's uv, the CLI as
// a subprocess: install (names, -r FILE), list, uninstall, the installer's words on a failure,
// and requirements or indexes the rules refuse.
import { deepEqual, equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { cli, jsonLines, withServer, writeFile } from "./_test_util.ts";

const UV = new URL("../../.venv/bin/uv", import.meta.url).pathname;
const missing = (() => {
  try {
    Deno.statSync(UV);
    return undefined;
  } catch {
    return "the project's .venv/ with uv is not installed (deno task setup)";
  }
})();

Deno.test({
  name:
    "valise pip: install (names and -r FILE), list, run, uninstall; failures in the installer's words" +
    (missing ? ` (ignored: ${missing})` : ""),
  ignore: missing !== undefined,
  async fn() {
    await withServer(async ({ url, tmp }) => {
      const work = join(tmp, "work");
      await Deno.mkdir(work);
      const env = { VALISE_STATE_FILE: join(tmp, "state.json"), SPARK_REMOTE: url };
      await writeFile(work, "requirements.txt", "# pinned\nsix==1.16.0\n\nidna==3.7  # idna\n");
      const install = await cli(["pip", "install", "-r", "requirements.txt"], env, { cwd: work });
      equal(install.code, 0, install.stderr);
      equal(install.stdout, "idna==3.7\nsix==1.16.0\n");
      match(install.stderr, /\+ six==1\.16\.0/);
      match(install.stderr, /installed: requirements six==1\.16\.0 idna==3\.7; 2 distribution/);

      const list = await cli(["pip", "list"], env);
      equal(list.code, 0, list.stderr);
      equal(list.stdout, "idna==3.7\nsix==1.16.0\n");
      const run = await cli(["run", "-c", "import six, idna; print(six.__version__)"], env);
      equal(run.stdout, "1.16.0\n", run.stderr);

      const json = await cli(["--json", "pip", "uninstall", "idna"], env);
      equal(json.code, 0, json.stderr);
      const lines = jsonLines(json.stdout);
      deepEqual(lines.filter((l) => l.type === "pip_distribution"), [
        { type: "pip_distribution", name: "six", version: "1.16.0" },
      ]);
      deepEqual(lines.find((l) => l.type === "pip")?.requirements, ["six==1.16.0"]);

      const failed = await cli(["pip", "install", "six==99.99.99"], env);
      equal(failed.code, 1);
      // uv's own words stream first; then the summary and the hint.
      match(failed.stderr, /99\.99\.99/);
      match(failed.stderr, /valise: \[PIP_INSTALL_FAILED\] Cannot install six==99\.99\.99/);
      match(failed.stderr, /hint: the installer's output above says why/);
      equal((await cli(["pip", "list"], env)).stdout, "six==1.16.0\n");

      const notListed = await cli(["pip", "uninstall", "urllib3"], env);
      equal(notListed.code, 1);
      match(notListed.stderr, /\[PIP_NOT_INSTALLED\]/);
      const offIndex = await cli(
        ["pip", "install", "--index-url", "https://evil.example/simple", "six"],
        env,
      );
      equal(offIndex.code, 1);
      match(offIndex.stderr, /\[PIP_INVALID_REQUEST\] Cannot install from https:\/\/evil\.example/);
      await writeFile(work, "hostile.txt", "six\n-e git+https://evil.example/x\n");
      const hostile = await cli(["pip", "install", "-r", "hostile.txt"], env, { cwd: work });
      equal(hostile.code, 2);
      match(hostile.stderr, /\[PIP_INVALID_REQUEST\] .*installer options/);
      ok(!hostile.stderr.includes("Traceback"));
    }, { pip: { installer: UV } });
  },
});
