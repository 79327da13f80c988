// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, ok, throws } from "node:assert/strict";
import fc from "fast-check";
import { parseTokenFile, readTokenFile, TokenSet } from "./_tokens.ts";

Deno.test("parseTokenFile() reads one token per line, optionally bound to a user id", () => {
  const tokens = parseTokenFile(
    "# the team's tokens\n\nabc123\r\n  def456   ada  \nghi789 user with spaces\n",
    "tokens",
  );
  deepEqual(tokens, [
    { token: "abc123" },
    { token: "def456", userId: "ada" },
    { token: "ghi789", userId: "user with spaces" },
  ]);
});

Deno.test("parseTokenFile() refuses empty files, repeated tokens and unsendable characters, never echoing a token", () => {
  throws(() => parseTokenFile("# nothing\n\n", "f"), /f: the file lists no token/);
  throws(() => parseTokenFile("s3cret\ns3cret bob\n", "f"), (e: Error) => {
    ok(e instanceof SyntaxError);
    ok(e.message.startsWith("f:2: this token is already listed"), e.message);
    ok(!e.message.includes("s3cret"), e.message);
    return true;
  });
  throws(() => parseTokenFile("tøken\n", "f"), (e: Error) => {
    ok(e.message.startsWith("f:1: the token has characters"), e.message);
    ok(!e.message.includes("tøken"), e.message);
    return true;
  });
});

Deno.test("parseTokenFile() on arbitrary text returns visible-ASCII tokens or throws a SyntaxError", () => {
  fc.assert(fc.property(fc.string({ unit: "binary", maxLength: 300 }), (text) => {
    try {
      const tokens = parseTokenFile(text, "f");
      ok(tokens.length > 0);
      for (const t of tokens) {
        ok(/^[\x21-\x7e]+$/.test(t.token), JSON.stringify(t));
        ok(t.userId === undefined || t.userId.trim() === t.userId && t.userId !== "");
      }
    } catch (e) {
      ok(e instanceof SyntaxError, String(e));
    }
  }));
});

Deno.test("readTokenFile() reports a missing file as a SyntaxError naming it", () => {
  throws(
    () => readTokenFile("/nonexistent/valise-tokens"),
    /cannot read \/nonexistent\/valise-tokens/,
  );
});

Deno.test("TokenSet.check() tells missing, malformed and wrong tokens apart, and returns the bound user", () => {
  const set = new TokenSet([{ token: "any-token" }, { token: "ada-token", userId: "ada" }]);
  deepEqual(set.check(null), { ok: false, problem: "MISSING" });
  deepEqual(set.check("  "), { ok: false, problem: "MISSING" });
  deepEqual(set.check("any-token"), { ok: false, problem: "MALFORMED" });
  deepEqual(set.check("Basic YWxhZGRpbjpvcGVuc2VzYW1l"), { ok: false, problem: "MALFORMED" });
  deepEqual(set.check("Bearer any-token2"), { ok: false, problem: "WRONG" });
  deepEqual(set.check("Bearer any-toke"), { ok: false, problem: "WRONG" });
  deepEqual(set.check("Bearer any-token"), { ok: true, userId: undefined });
  deepEqual(set.check("bearer  ada-token "), { ok: true, userId: "ada" });
  throws(() => new TokenSet([]), TypeError);
  throws(() => new TokenSet([{ token: "" }]), TypeError);
});

Deno.test("TokenSet.check() accepts exactly the configured tokens", () => {
  const token = fc.stringMatching(/^[\x21-\x7e]{1,40}$/);
  fc.assert(fc.property(fc.uniqueArray(token, { minLength: 1, maxLength: 5 }), token, (ts, t) => {
    const set = new TokenSet(ts.map((x) => ({ token: x })));
    equal(set.check(`Bearer ${t}`).ok, ts.includes(t));
    for (const x of ts) equal(set.check(`Bearer ${x}`).ok, true);
  }));
});
