// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, throws } from "node:assert/strict";
import { posix } from "node:path";
import fc from "fast-check";
import {
  ArtifactNameError,
  executorViewName,
  MAX_ARTIFACT_NAME_BYTES,
  normalizeRelativePath,
  parseArtifactName,
} from "./artifact_name.ts";

function problem(name: string): string {
  try {
    parseArtifactName(name);
  } catch (e) {
    if (e instanceof ArtifactNameError) return e.problem;
    throw e;
  }
  return "accepted";
}

Deno.test("parseArtifactName() parses every Spark prefix", () => {
  deepEqual(parseArtifactName("pyfiles/util.py"), {
    raw: "pyfiles/util.py",
    path: "pyfiles/util.py",
    kind: "pyfiles",
    rest: "util.py",
  });
  equal(parseArtifactName("jars/a.jar").kind, "jars");
  equal(parseArtifactName("classes/com/x/A.class").rest, "com/x/A.class");
  equal(parseArtifactName("files/data.csv").kind, "files");
  equal(parseArtifactName("cache/" + "a".repeat(64)).kind, "cache");
  const other = parseArtifactName("abc.xyz");
  equal(other.kind, "other");
  equal(other.path, "abc.xyz");
});

Deno.test("parseArtifactName() reads #alias for archives only", () => {
  const a = parseArtifactName("archives/env.tar.gz#environment");
  equal(a.alias, "environment");
  equal(a.path, "archives/env.tar.gz");
  const f = parseArtifactName("files/a#b");
  equal(f.alias, undefined);
  equal(f.path, "files/a#b");
  equal(problem("archives/env.tar.gz#"), "BAD_ALIAS");
  equal(problem("archives/env.tar.gz#a/b"), "BAD_ALIAS");
  equal(problem("archives/env.tar.gz#.."), "BAD_ALIAS");
});

Deno.test("parseArtifactName() accepts Windows separators", () => {
  equal(parseArtifactName("pyfiles\\util.py").path, "pyfiles/util.py");
  equal(parseArtifactName("archives\\env.zip#env").alias, "env");
});

Deno.test("parseArtifactName() refuses unsafe names with a named problem", () => {
  equal(problem(""), "EMPTY");
  equal(problem("/etc/passwd"), "ABSOLUTE");
  equal(problem("\\\\server\\share"), "ABSOLUTE");
  equal(problem("C:/x"), "ABSOLUTE");
  equal(problem("c:x"), "ABSOLUTE");
  equal(problem("../foo/bar"), "ESCAPES_ROOT");
  equal(problem("foo/../../bar"), "ESCAPES_ROOT");
  equal(problem("files/.."), "ESCAPES_ROOT");
  equal(problem("./foo/bar\0baz"), "CONTROL_CHARACTER");
  equal(problem("files/a\nb"), "CONTROL_CHARACTER");
  equal(problem("pyfiles/"), "NO_FILE_NAME");
  equal(problem("cache/xyz"), "BAD_CACHE_HASH");
  equal(problem("files/" + "a".repeat(300)), "TOO_LONG");
  equal(problem("files/" + "a/".repeat(MAX_ARTIFACT_NAME_BYTES)), "TOO_LONG");
  throws(() => parseArtifactName("../x"), /Cannot accept artifact name "\.\.\/x"/);
});

Deno.test("parseArtifactName() keeps names that normalise inside the root, as Spark does", () => {
  equal(parseArtifactName("files/a/../b").path, "files/b");
  equal(parseArtifactName("./files//b").path, "files/b");
});

Deno.test("executorViewName() lays artifacts out as Spark executors do", () => {
  equal(executorViewName(parseArtifactName("files/dir/data.csv")), "data.csv");
  equal(executorViewName(parseArtifactName("pyfiles/lib.zip")), "lib.zip");
  equal(executorViewName(parseArtifactName("archives/env.tar.gz#environment")), "environment");
  equal(executorViewName(parseArtifactName("archives/env.tar.gz")), "env.tar.gz");
  equal(executorViewName(parseArtifactName("jars/a.jar")), undefined);
  equal(executorViewName(parseArtifactName("abc.xyz")), undefined);
});

const segmentChars = fc.constantFrom(
  "a",
  "b",
  ".",
  "..",
  "/",
  "\\",
  "#",
  "\0",
  "\n",
  ":",
  "C:",
  " ",
  "é",
  "pyfiles",
  "archives",
  "files",
  "cache",
);
const hostileName = fc.array(segmentChars, { maxLength: 24 }).map((parts) => parts.join(""));

Deno.test("parseArtifactName() properties", async (t) => {
  await t.step("every accepted name stays strictly inside any root", () => {
    fc.assert(
      fc.property(fc.oneof(hostileName, fc.string(), fc.string({ unit: "grapheme" })), (name) => {
        let parsed;
        try {
          parsed = parseArtifactName(name);
        } catch (e) {
          if (e instanceof ArtifactNameError) return;
          throw e;
        }
        const root = "/data/sessions/u/s";
        const target = posix.resolve(root, parsed.path);
        if (!target.startsWith(root + "/")) throw new Error(`escaped: ${name} -> ${target}`);
        for (const seg of parsed.path.split("/")) {
          if (seg === "" || seg === "." || seg === "..") throw new Error(`bad segment in ${name}`);
        }
        // deno-lint-ignore no-control-regex
        if (/[\u0000-\u001f\\]/.test(parsed.path)) throw new Error(`unsafe char in ${name}`);
        const view = executorViewName(parsed);
        if (view !== undefined && (view.includes("/") || view === "." || view === "..")) {
          throw new Error(`view name is not one segment: ${view}`);
        }
      }),
      { numRuns: 5000 },
    );
  });

  await t.step("backslashes and slashes are the same separator", () => {
    fc.assert(
      fc.property(hostileName, (name) => {
        const a = (() => {
          try {
            return normalizeRelativePath(name);
          } catch (e) {
            return (e as ArtifactNameError).problem;
          }
        })();
        const b = (() => {
          try {
            return normalizeRelativePath(name.replaceAll("/", "\\"));
          } catch (e) {
            return (e as ArtifactNameError).problem;
          }
        })();
        equal(a, b);
      }),
    );
  });

  await t.step("plain safe names round-trip unchanged", () => {
    const seg = fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}$/).filter((s) =>
      s !== "." && s !== ".."
    );
    fc.assert(
      fc.property(
        fc.constantFrom("pyfiles", "files", "jars", "archives"),
        fc.array(seg, { minLength: 1, maxLength: 5 }),
        (prefix, segs) => {
          const name = `${prefix}/${segs.join("/")}`;
          const parsed = parseArtifactName(name);
          equal(parsed.path, name);
          equal(parsed.kind, prefix);
          equal(parsed.rest, segs.join("/"));
        },
      ),
    );
  });
});
