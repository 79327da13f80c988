// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, throws } from "node:assert/strict";
import fc from "fast-check";
import {
  type ConnectionString,
  formatConnectionString,
  parseConnectionString,
} from "./connection_string.ts";

Deno.test("parseConnectionString() reads every part of Spark Connect's format", () => {
  deepEqual(parseConnectionString("sc://localhost"), {
    host: "localhost",
    port: 15002,
    useSsl: false,
    params: {},
  });
  equal(parseConnectionString("sc://localhost/").port, 15002);
  equal(parseConnectionString("sc://h:1234").port, 1234);
  deepEqual(
    parseConnectionString(
      "sc://spark.example.com:443/;token=a%2Fb%3Dc;user_id=ada%20l;use_ssl=TRUE;" +
        "session_id=6D0F4C37-5B1C-4B4E-9B39-0A8B56F1D2A1;user_agent=my%20app;x-team=data;;",
    ),
    {
      host: "spark.example.com",
      port: 443,
      token: "a/b=c",
      userId: "ada l",
      useSsl: true,
      sessionId: "6d0f4c37-5b1c-4b4e-9b39-0a8b56f1d2a1",
      userAgent: "my app",
      params: { "x-team": "data" },
    },
  );
  deepEqual(parseConnectionString("sc://[::1]:15003/;use_ssl=false"), {
    host: "::1",
    port: 15003,
    useSsl: false,
    params: {},
  });
  equal(parseConnectionString("sc://10.0.0.7/;").host, "10.0.0.7");
});

Deno.test("parseConnectionString() names the problem in bad strings", () => {
  const bad: [string, RegExp][] = [
    ["localhost:15002", /must start with sc:\/\//],
    ["http://localhost:15002", /scheme must be "sc", not "http"/],
    ["sc://", /host is missing/],
    ["sc://:15002", /host is missing/],
    ["sc://h:port", /port "port" is not a number/],
    ["sc://h:70000", /port 70000 is not between 1 and 65535/],
    ["sc://h:0", /port 0/],
    ["sc://a:1:2", /'<host>:<port>' pattern/],
    ["sc://h:1/path", /path must be empty or "\/", not "\/path"/],
    ["sc://h:1;token=x", /must follow a '\/'/],
    ["sc://h:1/;token", /"token" should be a key=value pair/],
    ["sc://h:1/;a=b=c", /"a=b=c" should be a key=value pair/],
    ["sc://h:1/;=v", /key=value pair/],
    ["sc://h:1/;session_id=abc", /session_id "abc" is not a UUID/],
    ["sc://h:1/;use_ssl=yes", /use_ssl must be true or false/],
    ["sc://h:1/;token=%zz", /not valid URL encoding/],
    ["sc://h:1/;token=a;token=b", /"token" is given twice/],
    ["sc://u@h:1", /user information/],
    ["sc://h:1?x=1", /query/],
    ["sc://[::1", /no closing/],
    ["sc://[zz]:1", /not an IPv6 address/],
    ["sc://h h:1", /not a valid host name/],
    ["sc://h:1/;a b=c", /cannot be sent as a header/],
    // A typo is not sent as a header while the token goes missing.
    [
      "sc://h:1/;tokn=secret",
      /unknown parameter "tokn" \(did you mean "token"\?\): the known ones are token, user_id, session_id, use_ssl, user_agent; a custom request header's name starts with x-/,
    ],
    ["sc://h:1/;userid=ada", /unknown parameter "userid" \(did you mean "user_id"\?\)/],
    ["sc://h:1/;team=data", /unknown parameter "team": the known ones are token, /],
    // A path prefix is named as such, wherever the parameters start.
    [
      "sc://h:1/spark;token=x",
      /the path must be empty or "\/", not "\/spark": Spark Connect has no path prefix/,
    ],
    ["sc://h:1/spark/;token=x", /not "\/spark": Spark Connect has no path prefix/],
    ["sc://h:1/a/b", /not "\/a\/b": Spark Connect has no path prefix/],
  ];
  for (const [s, re] of bad) {
    throws(() => parseConnectionString(s), (e: unknown) => {
      equal(e instanceof SyntaxError, true, s);
      equal(re.test((e as Error).message), true, `${s}: ${(e as Error).message}`);
      equal((e as Error).message.includes(JSON.stringify(s)), true);
      return true;
    });
  }
  throws(() => parseConnectionString(42 as unknown as string), TypeError);
});

Deno.test("parseConnectionString() properties", async (t) => {
  const value = fc.string({ unit: "grapheme", maxLength: 12 });
  const host = fc.oneof(
    fc.domain(),
    fc.ipV4(),
    fc.ipV6().filter((h) => !h.includes("%")),
  );
  const conn: fc.Arbitrary<ConnectionString> = fc.record({
    host,
    port: fc.integer({ min: 1, max: 65535 }),
    useSsl: fc.boolean(),
    token: fc.option(value, { nil: undefined }),
    userId: fc.option(value, { nil: undefined }),
    sessionId: fc.option(fc.uuid(), { nil: undefined }),
    userAgent: fc.option(value, { nil: undefined }),
    params: fc.dictionary(
      fc.stringMatching(/^x-[a-z0-9_.-]{1,8}$/),
      value,
      { maxKeys: 3 },
    ),
  }, { requiredKeys: ["host", "port", "useSsl", "params"] }).map((c) => {
    const out = { ...c } as ConnectionString;
    for (const k of ["token", "userId", "sessionId", "userAgent"] as const) {
      if (out[k] === undefined) delete out[k];
    }
    return out;
  });
  await t.step("format then parse gives the parts back", () => {
    fc.assert(fc.property(conn, (c) => {
      deepEqual(parseConnectionString(formatConnectionString(c)), c);
    }));
  });
  await t.step("parse then format then parse is stable", () => {
    fc.assert(fc.property(conn, (c) => {
      const once = parseConnectionString(formatConnectionString(c));
      deepEqual(parseConnectionString(formatConnectionString(once)), once);
    }));
  });
  await t.step("any string either parses or throws SyntaxError", () => {
    fc.assert(fc.property(fc.string(), fc.string(), (a, b) => {
      for (const s of [a, `sc://${a}`, `sc://h:1/;${a}=${b}`]) {
        try {
          parseConnectionString(s);
        } catch (e) {
          equal(e instanceof SyntaxError, true);
        }
      }
    }));
  });
});
