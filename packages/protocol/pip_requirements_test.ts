// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal } from "node:assert/strict";
import fc from "fast-check";
import {
  formatRequirements,
  mergeRequirements,
  normalizeIndexUrl,
  parseRequirement,
  parseRequirements,
  parseWheelFilename,
  RequirementError,
  type RequirementProblem,
} from "./pip_requirements.ts";

function problem(fn: () => unknown): RequirementProblem {
  try {
    fn();
  } catch (e) {
    if (e instanceof RequirementError) return e.problem;
    throw e;
  }
  throw new Error("no error");
}

Deno.test("requirements: PEP 508 lines are normalized (name, extras, specifiers, markers)", () => {
  equal(parseRequirement("Requests==2.32.3").text, "requests==2.32.3");
  equal(parseRequirement("zope.interface").name, "zope-interface");
  equal(
    parseRequirement("Foo_Bar [ Socks , a ] ( <3 , >=2.31 )").text,
    "foo-bar[a,socks]<3,>=2.31",
  );
  equal(
    parseRequirement('idna ~= 3.7 ;  python_version >= "3.8"').text,
    'idna~=3.7; python_version >= "3.8"',
  );
  deepEqual(
    parseRequirements("# pinned\nsix==1.16.0  # a comment\n\n  idna\r\n").map((r) => r.text),
    ["six==1.16.0", "idna"],
  );
});

Deno.test("requirements: options, URLs, direct references and paths are refused", () => {
  for (
    const [line, want] of [
      ["--index-url https://evil.example/simple", "OPTION"],
      ["-e .", "OPTION"],
      ["-r other.txt", "OPTION"],
      ["--find-links=/etc", "OPTION"],
      ["six @ https://evil.example/six.whl", "URL"],
      ["git+https://github.com/x/y", "URL"],
      ["https://127.0.0.1:8080/pkg.tar.gz", "URL"],
      ["file:pkg", "URL"],
      ["./dist/mylib-1.0-py3-none-any.whl", "PATH"],
      ["/etc/passwd", "PATH"],
      ["~/pkg", "PATH"],
      ["..\\pkg", "PATH"],
      ["mylib-1.0-py3-none-any.whl", "PATH"],
      ["pkg.tar.gz", "PATH"],
      ["six==", "SYNTAX"],
      ["six; import os", "SYNTAX"],
      ["six;", "SYNTAX"],
      ["six $(id)", "SYNTAX"],
      ["six\u0000", "CONTROL_CHARACTER"],
      ["x".repeat(2000), "LINE_TOO_LONG"],
    ] as const
  ) {
    equal(problem(() => parseRequirement(line)), want, line);
  }
  equal(problem(() => parseRequirements("six\nSix==1")), "DUPLICATE");
  equal(problem(() => parseRequirements("six \\\n==1")), "SYNTAX");
  equal(
    problem(() =>
      parseRequirements("a\n".repeat(300).split("\n").map((_, i) => `p${i}`).join("\n"))
    ),
    "TOO_MANY",
  );
  equal(problem(() => parseRequirements("a".repeat(70_000))), "TOO_LARGE");
});

Deno.test("requirements: an added requirement replaces the one of the same name", () => {
  const set = mergeRequirements(parseRequirements("six==1.16.0\nidna==3.6"), [
    parseRequirement("IDNA==3.7"),
    parseRequirement("requests"),
  ]);
  equal(formatRequirements(set), "six==1.16.0\nidna==3.7\nrequests");
});

Deno.test("requirements: wheel file names give name and version; index URLs are checked", () => {
  deepEqual(parseWheelFilename("My_Lib-1.0-py3-none-any.whl"), { name: "my-lib", version: "1.0" });
  deepEqual(parseWheelFilename("six-1.16.0-1-py2.py3-none-any.whl"), {
    name: "six",
    version: "1.16.0",
  });
  equal(parseWheelFilename("six-1.16.0.tar.gz"), undefined);
  equal(parseWheelFilename("../six-1.16.0-py3-none-any.whl"), undefined);
  equal(normalizeIndexUrl("https://pypi.org/simple/"), "https://pypi.org/simple");
  equal(problem(() => normalizeIndexUrl("https://user:pw@pypi.org/simple")), "URL");
  equal(problem(() => normalizeIndexUrl("file:///etc")), "URL");
  equal(problem(() => normalizeIndexUrl("ftp://x/simple")), "URL");
});

Deno.test("requirements: no accepted line carries an option, a URL, a path or a control character", () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 80, unit: "binary" }), (s) => {
      let text: string;
      try {
        text = formatRequirements(parseRequirements(s));
      } catch (e) {
        if (e instanceof RequirementError) return;
        throw e;
      }
      for (const line of text.split("\n").filter((l) => l !== "")) {
        // deno-lint-ignore no-control-regex
        if (/^-|@|:\/\/|[/\\]|[\u0000-\u001f]/.test(line)) throw new Error(`accepted ${line}`);
      }
      // The canonical text reads back as itself.
      equal(formatRequirements(parseRequirements(text)), text);
    }),
    { numRuns: 2000 },
  );
});
