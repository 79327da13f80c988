// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, throws } from "node:assert/strict";
import { resolveArtifact } from "./artifact_path.ts";

Deno.test("resolveArtifact() names artifacts as PySpark does", () => {
  const cwd = "/home/ada/proj";
  const name = (p: string, f: Parameters<typeof resolveArtifact>[1]) =>
    resolveArtifact(p, f, cwd).name;
  equal(name("util.py", { pyfile: true }), "pyfiles/util.py");
  equal(name("lib/dep.zip", { pyfile: true }), "pyfiles/dep.zip");
  equal(name("dep.egg", { pyfile: true }), "pyfiles/dep.egg");
  equal(name("env.tar.gz#environment", { archive: true }), "archives/env.tar.gz#environment");
  equal(name("env.tar.gz", { archive: true }), "archives/env.tar.gz");
  for (const ext of [".zip", ".jar", ".tgz", ".tar", ".tar.zst", ".tar.xz", ".tar.bz2"]) {
    equal(name(`e${ext}#a`, { archive: true }), `archives/e${ext}#a`);
  }
  equal(name("data/table.csv", { file: true }), "files/table.csv");
  equal(name("app.jar", {}), "jars/app.jar");
  deepEqual(resolveArtifact("../x/env.tgz#e", { archive: true }, cwd), {
    name: "archives/env.tgz#e",
    path: "/home/ada/x/env.tgz",
  });
  deepEqual(resolveArtifact("file:///tmp/a%20b.py", { pyfile: true }, cwd), {
    name: "pyfiles/a b.py",
    path: "/tmp/a b.py",
  });
  equal(
    resolveArtifact("file:///tmp/env.tar.gz#env", { archive: true }, cwd).name,
    "archives/env.tar.gz#env",
  );
  equal(resolveArtifact("/abs/f.py", { pyfile: true }, cwd).path, "/abs/f.py");
});

Deno.test("resolveArtifact() refuses what PySpark refuses, with a clear message", () => {
  const cases: [string, Parameters<typeof resolveArtifact>[1], RegExp][] = [
    ["a.py", { pyfile: true, file: true }, /INVALID_MULTIPLE_ARGUMENT_CONDITIONS/],
    ["a.py", { pyfile: true, archive: true, file: true }, /cannot be True together/],
    ["env.rar", { archive: true }, /Unsupported file format: .*env\.rar/],
    ["notes.txt", { pyfile: true }, /Unsupported file format/],
    ["notes.txt", {}, /Unsupported file format/],
    ["a#b.tar.gz#x", { archive: true }, /'#' in the path is not supported/],
    ["data#1.csv", { file: true }, /only allowed to give an archive an alias/],
    ["env.tgz#a/b", { archive: true }, /is not a directory name/],
    ["env.tgz#..", { archive: true }, /is not a directory name/],
    ["s3://bucket/x.py", { pyfile: true }, /unsupported scheme "s3"/],
    ["", { file: true }, /path is empty/],
  ];
  for (const [p, f, re] of cases) {
    throws(() => resolveArtifact(p, f, "/w"), (e: unknown) => {
      equal(e instanceof TypeError, true);
      equal(re.test((e as Error).message), true, `${p}: ${(e as Error).message}`);
      return true;
    });
  }
});
