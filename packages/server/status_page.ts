// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The status page: plain HTML, no script and no build step, for operators. Everything a tenant
 * wrote (user ids, session ids, artifact names, error messages) is HTML-escaped, and the page's
 * Content-Security-Policy allows no script at all, so nothing a tenant names can run in an
 * operator's browser.
 *
 * Access needs an admin token: as `authorization: Bearer <token>` (curl), or, in a browser,
 * typed once into the page's form, which answers with a cookie that holds a random login id (never
 * the token), `HttpOnly`, `SameSite=Strict`, scoped to `/status`, valid for 8 hours or until the
 * server restarts. Tokens never travel in URLs.
 *
 * @module
 */
import type { AccessToken } from "./_tokens.ts";
import { TokenSet } from "./_tokens.ts";
import type { ServerStatus } from "./server_status.ts";

/** Options of {@linkcode StatusPage}. */
export interface StatusPageOptions {
  /** The admin tokens that open the page. */
  tokens: readonly AccessToken[];
  /**
   * How long a browser login lasts.
   * @default {28_800_000} 8 hours
   */
  loginTtlMs?: number;
  /**
   * Logins kept at once; the oldest go first.
   * @default {64}
   */
  maxLogins?: number;
}

const COOKIE = "valise_status";
/** A login form's body is a token and little else. */
const MAX_FORM_BYTES = 4096;
const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; " +
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  // Not no-referrer: with it, browsers send `Origin: null` on the page's own forms.
  "referrer-policy": "same-origin",
  "cache-control": "no-store",
};

/** How many rows of each table the page shows at most. */
export const STATUS_PAGE_ROWS: Readonly<
  { sessions: number; artifacts: number; trees: number; blobs: number; nodes: number }
> = Object.freeze({
  sessions: 200,
  artifacts: 500,
  trees: 200,
  blobs: 100,
  nodes: 200,
});

/**
 * Escapes text for HTML element content and quoted attribute values.
 *
 * @param text Any text.
 * @returns The text with `& < > " '` as character references.
 */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * Bytes for people: `512 B`, `1.5 KiB`, `20.0 MiB`.
 *
 * @param n Bytes.
 * @returns The size.
 */
export function formatSize(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** A duration for people: `0.8 s`, `12 s`, `3 min`, `2 h`. */
function duration(ms: number): string {
  const s = Math.max(0, ms / 1000);
  return s < 10
    ? `${s.toFixed(1)} s`
    : s < 120
    ? `${Math.round(s)} s`
    : s < 7200
    ? `${Math.round(s / 60)} min`
    : `${Math.round(s / 3600)} h`;
}

/** The cluster's nodes, when the server is a cluster's node; nothing otherwise. */
function clusterSection(status: ServerStatus): string[] {
  const c = status.cluster;
  if (!c) return [];
  const nodes = c.nodes.slice(0, STATUS_PAGE_ROWS.nodes);
  const live = c.nodes.filter((n) => n.live).length;
  return [
    `<h2>Cluster nodes (${live} live of ${c.nodes.length})</h2>`,
    `<p id="cluster">This is node ${code(c.nodeId)}: heartbeat every ${
      duration(c.heartbeatMs)
    }, gone after ${duration(c.ttlMs)} without one; ${
      num(c.stats.refusedRecords)
    } node records ignored (failed their checks)${
      c.stats.idConflicts
        ? `; <strong>${num(c.stats.idConflicts)} records under this node's id from another ` +
          "process</strong>"
        : ""
    }.</p>`,
    table(
      "nodes",
      ["node", "state", "last heartbeat", "sessions", "cache", "in flight", "version", "address"],
      nodes.map((n) => [
        code(n.nodeId) + (n.self ? " (this node)" : ""),
        n.live ? "live" : "<strong>expired</strong>",
        `${duration(n.heartbeatAgeMs)} ago`,
        num(n.record.sessions),
        size(n.record.blobBytes + n.record.treeBytes),
        num(n.record.inFlight),
        e(n.record.version),
        n.record.address === undefined ? "—" : code(n.record.address),
      ]),
      c.nodes.length - nodes.length,
    ),
  ];
}

function ago(at: number, now: number): string {
  const s = Math.max(0, Math.round((now - at) / 1000));
  const text = s < 120
    ? `${s} s ago`
    : s < 7200
    ? `${Math.round(s / 60)} min ago`
    : `${Math.round(s / 3600)} h ago`;
  return `<time datetime="${new Date(at).toISOString()}">${text}</time>`;
}

/** A table: header cells (trusted text) and rows of cells (already HTML). */
function table(id: string, head: string[], rows: string[][], more: number): string {
  if (rows.length === 0) return `<p id="${id}" class="empty">None.</p>`;
  return `<table id="${id}"><thead><tr>${head.map((h) => `<th>${h}</th>`).join("")}</tr></thead>` +
    `<tbody>${rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("")}` +
    `</tbody></table>` +
    (more > 0 ? `<p class="more">… and ${more} more not shown.</p>` : "");
}

const e = escapeHtml;
const code = (t: string) => `<code>${e(t)}</code>`;
const num = (n: number) => `<span class="n">${n}</span>`;
const size = (n: number) => `<span class="n">${formatSize(n)}</span>`;

/**
 * Renders the status page.
 *
 * @param status What to show.
 * @returns A complete HTML document.
 */
export function renderStatusPage(status: ServerStatus): string {
  const now = status.at;
  const R = STATUS_PAGE_ROWS;
  const sessions = status.sessions.slice(0, R.sessions);
  const artifacts = status.sessions.flatMap((s) => s.artifacts.map((a) => ({ s, a })));
  const running = status.sessions.filter((s) => s.running > 0);
  const trees = status.trees.slice(0, R.trees);
  const blobs = status.blobs.slice(0, R.blobs);
  const blobBytes = status.blobs.reduce((n, b) => n + b.size, 0);
  const treeBytes = status.trees.reduce((n, t) => n + t.bytes, 0);
  const hits = status.blobs.reduce((n, b) => n + b.hits, 0) +
    status.trees.reduce((n, t) => n + t.hits, 0);
  const parts = [
    `<h1>Valise status</h1>`,
    `<p id="summary">At <time datetime="${new Date(now).toISOString()}">${
      new Date(now).toISOString()
    }</time>: ${num(status.sessions.length)} sessions of ${num(status.users.length)} users; ` +
    `${num(status.running)} runs executing, ${num(status.queued)} queued, ` +
    `${num(status.forkServers)} warm fork servers; workers ` +
    `${status.sandboxed ? "sandboxed with bubblewrap" : "<strong>not sandboxed</strong>"}.</p>`,
    `<form method="post" action="/status/logout"><button>Log out</button></form>`,
    ...clusterSection(status),
    `<h2>Users</h2>`,
    table(
      "users",
      ["user", "sessions", "bytes", "running"],
      status.users.map((u) => [code(u.userId), num(u.sessions), size(u.bytes), num(u.running)]),
      0,
    ),
    `<h2>Sessions (${status.sessions.length})</h2>`,
    table(
      "sessions",
      ["user", "session", "artifacts", "bytes", "created", "last active", "running", "interpreter"],
      sessions.map((s) => [
        code(s.userId),
        code(s.sessionId),
        num(s.artifacts.length),
        size(s.bytes),
        ago(s.createdAt, now),
        ago(s.lastActive, now),
        num(s.running),
        s.interpreter === undefined ? "default" : code(s.interpreter),
      ]),
      status.sessions.length - sessions.length,
    ),
    `<h2>Artifacts (${artifacts.length})</h2>`,
    table(
      "artifacts",
      ["session", "name", "kind", "size", "sha256", "shown as"],
      artifacts.slice(0, R.artifacts).map(({ s, a }) => [
        code(s.sessionId.slice(0, 8)),
        code(a.name),
        e(a.kind),
        size(a.size),
        `<code title="${e(a.sha256)}">${e(a.sha256.slice(0, 12))}</code>`,
        a.view === undefined ? "—" : code(`./${a.view}${a.tree ? "/" : ""}`),
      ]),
      artifacts.length - Math.min(artifacts.length, R.artifacts),
    ),
    `<h2>Running workers (${status.running})</h2>`,
    table(
      "running",
      ["user", "session", "runs"],
      running.map((s) => [code(s.userId), code(s.sessionId), num(s.running)]),
      0,
    ),
    `<h2>Shared trees (${status.trees.length}, ${formatSize(treeBytes)})</h2>`,
    table(
      "trees",
      ["tree", "bytes", "entries", "sessions using it", "hits"],
      trees.map((t) => [
        `<code title="${e(t.key)}">${e(t.key.slice(0, 12))}…${e(t.key.slice(64))}</code>`,
        size(t.bytes),
        num(t.entries),
        t.sessions === 0 ? "0 (cached)" : num(t.sessions),
        num(t.hits),
      ]),
      status.trees.length - trees.length,
    ),
    `<h2>Blobs and cache</h2>`,
    `<p id="cache">${num(status.blobs.length)} blobs, ${size(blobBytes)}; ` +
    `${size(status.cache.unreferencedBytes)} of blobs and trees no session uses, kept as cache ` +
    `(budget ${size(status.cache.budgetBytes)}); ${num(hits)} hits (adds that found the ` +
    `content already stored or unpacked) since the start.</p>`,
    table(
      "blobs",
      ["blob", "size", "sessions using it", "hits"],
      blobs.map((b) => [
        `<code title="${e(b.sha256)}">${e(b.sha256.slice(0, 12))}</code>`,
        size(b.size),
        b.sessions === 0 ? "0 (cached)" : num(b.sessions),
        num(b.hits),
      ]),
      status.blobs.length - blobs.length,
    ),
    `<h2>Environment warnings (${(status.envWarnings ?? []).length})</h2>`,
    table(
      "env-warnings",
      ["session", "artifact", "warning"],
      (status.envWarnings ?? []).map((w) => [code(w.sessionId), code(w.artifact), e(w.warning)]),
      0,
    ),
    `<h2>Recent errors (${status.errors.length} of ${status.errorsTotal})</h2>`,
    table(
      "errors",
      ["when", "method", "code", "message"],
      status.errors.map((x) => [ago(x.at, now), code(x.method), e(x.code), e(x.message)]),
      0,
    ),
  ];
  return page("Valise status", parts.join("\n"));
}

/**
 * Renders the login form.
 *
 * @param problem What went wrong with the last try, if anything (trusted text).
 * @returns A complete HTML document.
 */
export function renderLoginPage(problem?: string): string {
  return page(
    "Valise status: log in",
    `<h1>Valise status</h1>
<p>This page needs one of the server's admin tokens (its <code>--admin-token-file</code>).</p>
${problem ? `<p class="problem" role="alert">${e(problem)}</p>` : ""}
<form method="post" action="/status/login">
<label>Admin token <input type="password" name="token" autocomplete="current-password" required autofocus></label>
<button>Log in</button>
</form>`,
  );
}

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${e(title)}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#111;background:#fff}
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.2em .6em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f3f3f3}td{overflow-wrap:anywhere}.n{font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,monospace}.problem{color:#a00}.empty,.more{color:#666}
form{margin:.5em 0}
</style></head>
<body>
${body}
</body></html>
`;
}

function respond(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body, {
    status,
    headers: { "content-type": "text/html; charset=utf-8", ...SECURITY_HEADERS, ...headers },
  });
}

/**
 * The status page's HTTP handler: `GET /status`, `POST /status/login`, `POST /status/logout`.
 * Mount it in any fetch-style server (the server's metrics port serves it).
 */
export class StatusPage {
  #tokens: TokenSet;
  #logins = new Map<string, number>();
  #ttl: number;
  #max: number;
  #source: { status(): Promise<ServerStatus> };

  /**
   * @param source What to show.
   * @param options The admin tokens and the login limits.
   */
  constructor(source: { status(): Promise<ServerStatus> }, options: StatusPageOptions) {
    this.#source = source;
    this.#tokens = new TokenSet(options.tokens);
    this.#ttl = options.loginTtlMs ?? 8 * 3600_000;
    this.#max = options.maxLogins ?? 64;
  }

  /**
   * Answers a request for the status page.
   *
   * @param req The request.
   * @returns The response, or `undefined` for a path that is not the page's.
   */
  async handle(req: Request): Promise<Response | undefined> {
    const url = new URL(req.url);
    if (url.pathname !== "/status" && !url.pathname.startsWith("/status/")) return undefined;
    if (req.method === "POST") {
      if (!this.#sameOrigin(req, url)) {
        return respond(403, renderLoginPage("This form must be sent from the status page itself."));
      }
      if (url.pathname === "/status/login") return await this.#login(req, url);
      if (url.pathname === "/status/logout") {
        const id = cookieOf(req);
        if (id) this.#logins.delete(id);
        return respond(303, "", {
          location: "/status",
          "set-cookie": `${COOKIE}=; Path=/status; HttpOnly; SameSite=Strict; Max-Age=0`,
        });
      }
    }
    if (url.pathname !== "/status" || (req.method !== "GET" && req.method !== "HEAD")) {
      return respond(404, renderLoginPage("There is no such page: the status page is /status."));
    }
    if (!this.#allowed(req)) {
      return respond(401, renderLoginPage(), {
        "www-authenticate": 'Bearer realm="valise-status"',
      });
    }
    return respond(200, renderStatusPage(await this.#source.status()));
  }

  #allowed(req: Request): boolean {
    const header = req.headers.get("authorization");
    if (header !== null) return this.#tokens.check(header).ok;
    const id = cookieOf(req);
    if (!id) return false;
    const until = this.#logins.get(id);
    if (until === undefined) return false;
    if (until <= Date.now()) {
      this.#logins.delete(id);
      return false;
    }
    return true;
  }

  async #login(req: Request, url: URL): Promise<Response> {
    const form = await readForm(req);
    const token = form?.get("token") ?? "";
    if (!token || !this.#tokens.check(`Bearer ${token}`).ok) {
      return respond(401, renderLoginPage("That is not one of this server's admin tokens."));
    }
    const bytes = crypto.getRandomValues(new Uint8Array(32));
    const id = btoa(String.fromCharCode(...bytes)).replace(
      /[+/=]/g,
      (c) => c === "+" ? "-" : c === "/" ? "_" : "",
    );
    const now = Date.now();
    for (const [k, until] of this.#logins) if (until <= now) this.#logins.delete(k);
    while (this.#logins.size >= this.#max) this.#logins.delete(this.#logins.keys().next().value!);
    this.#logins.set(id, now + this.#ttl);
    const secure = url.protocol === "https:" ? "; Secure" : "";
    return respond(303, "", {
      location: "/status",
      "set-cookie": `${COOKIE}=${id}; Path=/status; HttpOnly; SameSite=Strict; Max-Age=${
        Math.floor(this.#ttl / 1000)
      }${secure}`,
    });
  }

  /**
   * A form posted from another site (a page the operator happens to visit) is refused: browsers
   * say where a request comes from (`Sec-Fetch-Site`, else `Origin`); a client that says
   * neither is no browser (curl), which no other site can steer.
   */
  #sameOrigin(req: Request, url: URL): boolean {
    const site = req.headers.get("sec-fetch-site");
    if (site !== null) return site === "same-origin" || site === "none";
    const origin = req.headers.get("origin");
    if (origin === null || origin === "null") return origin === null;
    try {
      return new URL(origin).host === (req.headers.get("host") ?? url.host);
    } catch {
      return false;
    }
  }
}

function cookieOf(req: Request): string | undefined {
  for (const part of (req.headers.get("cookie") ?? "").split(";")) {
    const [k, v] = part.trim().split("=", 2);
    if (k === COOKIE && v && /^[A-Za-z0-9_-]{20,64}$/.test(v)) return v;
  }
  return undefined;
}

/** Reads a small urlencoded form; `undefined` when it is not one, or too large. */
async function readForm(req: Request): Promise<URLSearchParams | undefined> {
  const type = req.headers.get("content-type") ?? "";
  if (!type.startsWith("application/x-www-form-urlencoded") || !req.body) return undefined;
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let n = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      n += value.length;
      if (n > MAX_FORM_BYTES) return undefined;
      chunks.push(value);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  const all = new Uint8Array(n);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new URLSearchParams(new TextDecoder().decode(all));
}
