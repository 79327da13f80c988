// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, ok, throws } from "node:assert/strict";
import fc from "fast-check";
import {
  type ConnectionString,
  endpointsOf,
  formatConnectionString,
  MAX_ENDPOINTS,
  parseConnectionString,
  parseEndpoints,
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

Deno.test("parseConnectionString() reads several endpoints, in order, each with its port", () => {
  deepEqual(parseConnectionString("sc://h1:15002,h2,[::1]:15003/;token=t;user_id=ada"), {
    host: "h1",
    port: 15002,
    failover: [{ host: "h2", port: 15002 }, { host: "::1", port: 15003 }],
    token: "t",
    userId: "ada",
    useSsl: false,
    params: {},
  });
  // Without a path or parameters too, and the same host on two ports is two endpoints.
  deepEqual(endpointsOf(parseConnectionString("sc://h:1,h:2")), [
    { host: "h", port: 1 },
    { host: "h", port: 2 },
  ]);
  equal(
    formatConnectionString(parseConnectionString("sc://a,b:2/;token=x%2Cy")),
    "sc://a:15002,b:2/;token=x%2Cy",
  );
  const max = Array.from({ length: MAX_ENDPOINTS }, (_, i) => `n${i}`).join(",");
  equal(endpointsOf(parseConnectionString(`sc://${max}`)).length, MAX_ENDPOINTS);
});

Deno.test("parseConnectionString() refuses hostile endpoint lists, naming the endpoint", () => {
  const bad: [string, RegExp][] = [
    ["sc://,h2", /endpoint 1 of 2 \(""\): the host is missing \(an empty entry between commas\?\)/],
    ["sc://h1,,h2", /endpoint 2 of 3 \(""\): the host is missing/],
    ["sc://h1,/", /endpoint 2 of 2 \(""\): the host is missing/],
    ["sc://h1, h2", /endpoint 2 of 2 \(" h2"\): " h2" is not a valid host name/],
    ["sc://h1,:15002", /endpoint 2 of 2 \(":15002"\): the host is missing/],
    ["sc://h1,h2:0", /endpoint 2 of 2 \("h2:0"\): the port 0 is not between 1 and 65535/],
    ["sc://h1,h2:99999", /the port 99999 is not between 1 and 65535/],
    ["sc://h1,h2:x", /endpoint 2 of 2 \("h2:x"\): the port "x" is not a number/],
    ["sc://h1,h2:1:2", /endpoint 2 of 2 .*'<host>:<port>' pattern/],
    ["sc://h1,[::1", /endpoint 2 of 2 .*no closing '\]'/],
    ["sc://h1:15002,H1", /endpoint 2 of 2 \("H1"\): H1:15002 is listed twice/],
    ["sc://[::1],[::1]:15002", /\[::1\]:15002 is listed twice/],
    // Credentials before the hosts: refused, saying where they go.
    ["sc://ada:secret@h1,h2", /user information .* a secret in ;token=/],
    ["sc://h1,ada@h2/;token=t", /user information/],
    // Endpoints after the parameters would be read as part of the token: refused.
    ["sc://h1:15002/;token=abc,h2:15002/", /the token holds an unencoded ',': endpoints go before/],
    ["sc://h1;token=t,h2/", /must follow a '\/'/],
    // One connection string per endpoint is not a list.
    ["sc://h1/;token=a,sc://h2/;token=b", /unencoded ','/],
    ["sc://h1/,h2/", /the path must be empty or "\/", not "\/,h2"/],
  ];
  for (const [s, re] of bad) {
    throws(() => parseConnectionString(s), (e: unknown) => {
      equal(e instanceof SyntaxError, true, s);
      ok(re.test((e as Error).message), `${s}: ${(e as Error).message}`);
      return true;
    });
  }
});

Deno.test("parseConnectionString() refuses a list of 10 000 endpoints (at most 64)", () => {
  const huge = `sc://${Array.from({ length: 10_000 }, (_, i) => `n${i}:1`).join(",")}/;token=t`;
  throws(() => parseConnectionString(huge), /more than 64 endpoints; list at most 64/);
  throws(
    () => parseConnectionString(`sc://${"h,".repeat(MAX_ENDPOINTS)}h`),
    /more than 64 endpoints/,
  );
});

Deno.test("parseEndpoints() reads host[:port] items by the same rules", () => {
  deepEqual(parseEndpoints(["a", "b:2", "[::1]:3"]), [
    { host: "a", port: 15002 },
    { host: "b", port: 2 },
    { host: "::1", port: 3 },
  ]);
  const bad: [unknown, RegExp][] = [
    [[], /the list is empty/],
    [[""], /the host is missing/],
    [["a", ""], /endpoint 2 of 2 \(""\): the host is missing/],
    [["a", "a"], /a:15002 is listed twice/],
    [["a:0"], /port 0/],
    [["sc://a"], /endpoint 1 "sc:\/\/a" must be host\[:port\] alone/],
    [["ada:pw@a"], /must be host\[:port\] alone .*credentials/],
    [["a,b"], /must be host\[:port\] alone/],
    [["a/;token=t"], /must be host\[:port\] alone/],
    [[1], /endpoint 1 is not a string/],
    [Array.from({ length: 10_000 }, (_, i) => `n${i}`), /10000 endpoints are more than the 64/],
  ];
  for (const [list, re] of bad) {
    throws(() => parseEndpoints(list as string[]), (e: unknown) => {
      equal(e instanceof SyntaxError, true, String(list));
      ok(re.test((e as Error).message), `${list}: ${(e as Error).message}`);
      return true;
    });
  }
  throws(() => parseEndpoints("a" as unknown as string[]), TypeError);
});

Deno.test("parseConnectionString() properties", async (t) => {
  const value = fc.string({ unit: "grapheme", maxLength: 12 });
  const host = fc.oneof(
    fc.domain(),
    fc.ipV4(),
    fc.ipV6().filter((h) => !h.includes("%")),
  );
  const endpoint = fc.record({ host, port: fc.integer({ min: 1, max: 65535 }) });
  const conn: fc.Arbitrary<ConnectionString> = fc.record({
    host,
    port: fc.integer({ min: 1, max: 65535 }),
    failover: fc.option(
      fc.uniqueArray(endpoint, {
        minLength: 1,
        maxLength: 4,
        selector: (e) => `${e.host.toLowerCase()}:${e.port}`,
      }),
      { nil: undefined },
    ),
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
    for (const k of ["token", "userId", "sessionId", "userAgent", "failover"] as const) {
      if (out[k] === undefined) delete out[k];
    }
    return out;
  }).filter((c) => {
    // The first endpoint may not be listed again among the others.
    const keys = endpointsOf(c).map((e) => `${e.host.toLowerCase()}:${e.port}`);
    return new Set(keys).size === keys.length;
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
      for (const s of [a, `sc://${a}`, `sc://h:1/;${a}=${b}`, `sc://h,${a},${b}/`]) {
        try {
          parseConnectionString(s);
        } catch (e) {
          equal(e instanceof SyntaxError, true);
        }
      }
    }));
  });
});
