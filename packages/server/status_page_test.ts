import { equal, match, ok } from "node:assert/strict";
import fc from "fast-check";
import { escapeHtml, renderStatusPage, StatusPage } from "./status_page.ts";
import type { ServerStatus } from "./server_status.ts";

const HOSTILE = `<script>window.pwned=1</script><img src=x onerror="alert(1)">'"&amp;`;

function statusWith(text: string): ServerStatus {
  const at = Date.now();
  return {
    at,
    sandboxed: true,
    running: 1,
    queued: 0,
    forkServers: 1,
    sessions: [{
      userId: text,
      sessionId: "0b3f6c2e-7e61-4d0e-8a55-3f8f5f0c9f10",
      serverSideSessionId: "s",
      artifacts: [{
        name: `files/${text}`,
        kind: "files",
        size: 3,
        sha256: "a".repeat(64),
        view: text,
        tree: undefined,
      }],
      bytes: 3,
      createdAt: at,
      lastActive: at,
      running: 1,
      interpreter: text,
    }],
    users: [{ userId: text, sessions: 1, bytes: 3, running: 1 }],
    trees: [],
    blobs: [{ sha256: "a".repeat(64), size: 3, sessions: 1, hits: 2 }],
    cache: { budgetBytes: 1024, unreferencedBytes: 0 },
    errors: [{ at, method: "s/M", code: "InvalidArgument", message: text }],
    errorsTotal: 1,
  };
}

Deno.test("escapeHtml() leaves no markup character of any text, and loses none", () => {
  fc.assert(fc.property(fc.string({ unit: "binary" }), (s) => {
    const out = escapeHtml(s);
    ok(!/[<>"']/.test(out));
    ok(!/&(?!#\d+;)/.test(out));
    equal(out.replace(/&#(\d+);/g, (_, n) => String.fromCharCode(Number(n))), s);
  }));
});

Deno.test("renderStatusPage() escapes every text a tenant wrote", () => {
  const html = renderStatusPage(statusWith(HOSTILE));
  ok(!html.includes("<script"), "a raw <script> tag");
  ok(!html.includes("<img"), "a raw <img> tag");
  ok(!html.includes('onerror="'), "a raw attribute");
  const escaped = escapeHtml(HOSTILE);
  // User id, artifact name, view, interpreter and error message: each shown, escaped.
  ok(html.split(escaped).length - 1 >= 5, html);
  match(html, /<h2>Recent errors \(1 of 1\)<\/h2>/);
});

Deno.test("StatusPage: a bearer admin token or a login cookie, never a tenant's or no token", async () => {
  const page = new StatusPage({ status: () => Promise.resolve(statusWith("ada")) }, {
    tokens: [{ token: "admin-secret-token" }],
  });
  const base = "http://127.0.0.1:9/status";
  equal(await page.handle(new Request("http://127.0.0.1:9/metrics")), undefined);
  const anon = (await page.handle(new Request(base)))!;
  equal(anon.status, 401);
  match(await anon.text(), /needs one of the server's admin tokens/);
  equal(anon.headers.get("content-security-policy")?.includes("default-src 'none'"), true);
  const wrong = await page.handle(
    new Request(base, { headers: { authorization: "Bearer tenant-token" } }),
  );
  equal(wrong!.status, 401);
  const bearer = await page.handle(
    new Request(base, { headers: { authorization: "Bearer admin-secret-token" } }),
  );
  equal(bearer!.status, 200);
  match(await bearer!.text(), /<h1>Valise status<\/h1>/);

  const post = (path: string, body: string, headers: Record<string, string> = {}) =>
    page.handle(
      new Request(`http://127.0.0.1:9${path}`, {
        method: "POST",
        body,
        headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
      }),
    ).then((r) => r!);
  const bad = await post("/status/login", "token=nope");
  equal(bad.status, 401);
  equal(bad.headers.get("set-cookie"), null);
  match(await bad.text(), /not one of this server&#39;s admin tokens/);
  // Another site's page cannot post the form.
  equal(
    (await post("/status/login", "token=admin-secret-token", { origin: "http://evil.example" }))
      .status,
    403,
  );
  equal(
    (await post("/status/login", "token=admin-secret-token", { "sec-fetch-site": "cross-site" }))
      .status,
    403,
  );
  // A form body past 4 KiB is not read to its end.
  equal((await post("/status/login", `token=${"x".repeat(10_000)}`)).status, 401);
  const ok1 = await post("/status/login", "token=admin-secret-token", {
    origin: "http://127.0.0.1:9",
  });
  equal(ok1.status, 303);
  equal(ok1.headers.get("location"), "/status");
  const cookie = ok1.headers.get("set-cookie")!;
  match(
    cookie,
    /^valise_status=[A-Za-z0-9_-]{43}; Path=\/status; HttpOnly; SameSite=Strict; Max-Age=28800$/,
  );
  ok(!cookie.includes("admin-secret-token"));
  const withCookie = (c: string) =>
    page.handle(new Request(base, { headers: { cookie: c } })).then((r) => r!.status);
  const pair = cookie.split(";")[0]!;
  equal(await withCookie(pair), 200);
  equal(await withCookie("valise_status=forgedforgedforgedforgedforged"), 401);
  equal((await post("/status/logout", "", { cookie: pair })).status, 303);
  equal(await withCookie(pair), 401);
});

Deno.test("StatusPage: logins expire and are bounded in number", async () => {
  const page = new StatusPage({ status: () => Promise.resolve(statusWith("ada")) }, {
    tokens: [{ token: "admin-secret-token" }],
    loginTtlMs: 0,
    maxLogins: 2,
  });
  const login = async () =>
    (await page.handle(
      new Request("http://127.0.0.1:9/status/login", {
        method: "POST",
        body: "token=admin-secret-token",
        headers: { "content-type": "application/x-www-form-urlencoded" },
      }),
    ))!.headers.get("set-cookie")!.split(";")[0]!;
  const c = await login();
  // A login that lasts 0 ms has expired by the next request.
  const r = await page.handle(new Request("http://127.0.0.1:9/status", { headers: { cookie: c } }));
  equal(r!.status, 401);
  for (let i = 0; i < 10; i++) await login();
});

Deno.test("renderStatusPage() shows the cluster's nodes, escaped; nothing for a single node", () => {
  const single = renderStatusPage(statusWith("ada"));
  ok(!single.includes("Cluster nodes"), "no cluster section on a single node");
  const record = {
    nodeId: HOSTILE,
    instance: "0b6f9d1e-4f3a-4a8e-9c55-2f9d8f0e7a10",
    host: HOSTILE,
    pid: 1,
    version: HOSTILE,
    address: HOSTILE,
    startedAt: 0,
    heartbeatAt: 0,
    ttlMs: 3000,
    sessions: 4,
    blobBytes: 1024,
    treeBytes: 1024,
    inFlight: 2,
  };
  const html = renderStatusPage({
    ...statusWith("ada"),
    cluster: {
      nodeId: "v1",
      heartbeatMs: 1000,
      ttlMs: 3000,
      nodes: [
        { nodeId: "v1", live: true, self: true, heartbeatAgeMs: 400, ttlMs: 3000, record },
        { nodeId: HOSTILE, live: false, self: false, heartbeatAgeMs: 65_000, ttlMs: 3000, record },
      ],
      stats: { refusedRecords: 3, idConflicts: 0, heartbeats: 9, heartbeatFailures: 0 },
    },
  });
  ok(!html.includes("<script"), "a raw <script> tag");
  ok(!html.includes("<img"), "a raw <img> tag");
  match(html, /<h2>Cluster nodes \(1 live of 2\)<\/h2>/);
  match(html, /This is node <code>v1<\/code>: heartbeat every 1\.0 s, gone after 3\.0 s/);
  match(html, /<span class="n">3<\/span> node records ignored/);
  match(
    html,
    /<code>v1<\/code> \(this node\)<\/td><td>live<\/td><td>0\.4 s ago<\/td><td><span class="n">4<\/span><\/td><td><span class="n">2\.0 KiB<\/span><\/td><td><span class="n">2<\/span>/,
  );
  match(html, /<strong>expired<\/strong><\/td><td>65 s ago/);
});
