// Copyright 2026 the Valise authors. Apache-2.0 license.
import assert from "node:assert/strict";
import fc from "fast-check";
import { isUnpackError } from "./error.ts";
import { normalizeName } from "./_paths.ts";

const LIMITS = { maxPathBytes: 4096, maxComponentBytes: 255, maxDepth: 256 };

function code(name: string): string {
  try {
    return `ok:${normalizeName(name, LIMITS)}`;
  } catch (e) {
    assert.ok(isUnpackError(e));
    return e.code;
  }
}

Deno.test("normalizeName() accepts plain relative names and tidies them", () => {
  assert.equal(code("a/b.py"), "ok:a/b.py");
  assert.equal(code("./a/./b/"), "ok:a/b");
  assert.equal(code("a//b"), "ok:a/b");
  assert.equal(code("./"), "ok:");
  assert.equal(code("..foo/bar.."), "ok:..foo/bar..");
  assert.equal(code("%2e%2e/x"), "ok:%2e%2e/x");
  assert.equal(code("é/ü.py"), "ok:é/ü.py");
});

Deno.test("normalizeName() refuses traversal, absolute and odd names", () => {
  const cases: [string, string][] = [
    ["..", "PATH_ESCAPE"],
    ["../x", "PATH_ESCAPE"],
    ["a/../../x", "PATH_ESCAPE"],
    ["a/..", "PATH_ESCAPE"],
    ["/etc/passwd", "ABSOLUTE_PATH"],
    ["//x", "ABSOLUTE_PATH"],
    ["\\x", "ABSOLUTE_PATH"],
    ["\\\\server\\share", "ABSOLUTE_PATH"],
    ["C:/x", "ABSOLUTE_PATH"],
    ["C:..\\x", "ABSOLUTE_PATH"],
    ["c:x", "ABSOLUTE_PATH"],
    ["a\\..\\x", "BAD_NAME"],
    ["a\0b", "BAD_NAME"],
    ["a\nb", "BAD_NAME"],
    ["a\x7fb", "BAD_NAME"],
    ["", "BAD_NAME"],
    ["x".repeat(256), "BAD_NAME"],
    ["é".repeat(128), "BAD_NAME"], // 256 bytes in UTF-8
    [Array(257).fill("d").join("/"), "BAD_NAME"],
    ["a/".repeat(2100), "BAD_NAME"],
  ];
  for (const [name, want] of cases) assert.equal(code(name), want, JSON.stringify(name));
});

Deno.test("normalizeName() properties", async (t) => {
  await t.step("a result never has '..', '.', empty or absolute components", () => {
    fc.assert(
      fc.property(
        fc.string({ unit: fc.constantFrom("a", "/", ".", "\\", "C", ":", "\0", "é") }),
        (s) => {
          let out: string;
          try {
            out = normalizeName(s, LIMITS);
          } catch (e) {
            assert.ok(isUnpackError(e));
            return;
          }
          assert.ok(!out.startsWith("/"));
          for (const c of out === "" ? [] : out.split("/")) {
            assert.ok(
              c !== "" && c !== "." && c !== "..",
              `${JSON.stringify(s)} -> ${JSON.stringify(out)}`,
            );
          }
          assert.ok(!out.includes("\\") && !out.includes("\0"));
        },
      ),
      { numRuns: 2000 },
    );
  });
});
