// Copyright 2026 the Valise authors. Apache-2.0 license.
// The build sandbox's way out: only the hosts of the build's indexes, by name and port as given.
import { equal, match, ok } from "node:assert/strict";
import fc from "fast-check";
import { hostPort, PipProxy } from "./pip_proxy.ts";

/** A TCP server on loopback that answers every connection with `name` and counts them. */
function tcpServer(name: string): { port: number; count: () => number; close: () => void } {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let n = 0;
  (async () => {
    for await (const c of l) {
      n++;
      (async () => {
        const buf = new Uint8Array(4096);
        const got = await c.read(buf).catch(() => null);
        const req = got ? new TextDecoder().decode(buf.subarray(0, got)) : "";
        await c.write(new TextEncoder().encode(`${name} saw ${req.split("\r\n")[0]}\n`))
          .catch(() => {});
        c.close();
      })();
    }
  })().catch(() => {});
  return { port: (l.addr as Deno.NetAddr).port, count: () => n, close: () => l.close() };
}

/** Sends `request` on the proxy socket and reads until it closes. */
async function ask(path: string, request: string | Uint8Array): Promise<string> {
  const c = await Deno.connect({ transport: "unix", path });
  await c.write(typeof request === "string" ? new TextEncoder().encode(request) : request);
  let out = "";
  const buf = new Uint8Array(4096);
  for (;;) {
    const n = await c.read(buf).catch(() => null);
    if (n === null) break;
    out += new TextDecoder().decode(buf.subarray(0, n));
    if (out.includes(" saw ")) break;
  }
  c.close();
  return out;
}

Deno.test("pip proxy: tunnels to the build's index hosts only; other hosts, ports and names are refused before any connection", async () => {
  const index = tcpServer("index");
  const victim = tcpServer("victim");
  const refusals: string[] = [];
  const proxy = new PipProxy({ onRefuse: (t) => refusals.push(t) });
  const grant = await proxy.open([`127.0.0.1:${index.port}`]);
  try {
    const ok1 = await ask(grant.path, `CONNECT 127.0.0.1:${index.port} HTTP/1.1\r\n\r\nPING`);
    match(ok1, /^HTTP\/1\.1 200 /);
    match(ok1, /index saw PING/);
    const fwd = await ask(
      grant.path,
      `GET http://127.0.0.1:${index.port}/simple/six/ HTTP/1.1\r\nHost: x\r\nProxy-Connection: keep-alive\r\n\r\n`,
    );
    match(fwd, /index saw GET \/simple\/six\/ HTTP\/1\.1/);
    for (
      const req of [
        `CONNECT 127.0.0.1:${victim.port} HTTP/1.1\r\n\r\n`,
        `CONNECT localhost:${index.port} HTTP/1.1\r\n\r\n`,
        `CONNECT [::1]:${index.port} HTTP/1.1\r\n\r\n`,
        `GET http://127.0.0.1:${victim.port}/ HTTP/1.1\r\n\r\n`,
        `GET http://localhost:${index.port}/ HTTP/1.1\r\n\r\n`,
      ]
    ) {
      match(await ask(grant.path, req), /^HTTP\/1\.1 403 /, req);
    }
    match(await ask(grant.path, "GET /relative HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 400 /);
    match(await ask(grant.path, "GET https://x/ HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 400 /);
    match(await ask(grant.path, "A".repeat(20_000)), /^HTTP\/1\.1 431 /);
    equal(victim.count(), 0);
    equal(grant.connections, 2);
    ok(refusals.includes(`127.0.0.1:${victim.port}`), refusals.join());
    ok(grant.refused.includes(`localhost:${index.port}`));
  } finally {
    await proxy.close();
    index.close();
    victim.close();
  }
  equal(hostPort("https://pypi.org/simple"), "pypi.org:443");
  equal(hostPort("http://Mirror.example:8080/simple"), "mirror.example:8080");
});

Deno.test("pip proxy: arbitrary request bytes never reach a host off the list", async () => {
  const victim = tcpServer("victim");
  const proxy = new PipProxy();
  const grant = await proxy.open(["pypi.org:443"]);
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }),
          fc.string({ maxLength: 200 }).map((s) =>
            new TextEncoder().encode(
              `${s.includes(" ") ? s : `CONNECT ${s}:${victim.port}`} HTTP/1.1\r\n\r\n`,
            )
          ),
        ),
        async (bytes) => {
          const c = await Deno.connect({ transport: "unix", path: grant.path });
          await c.write(bytes).catch(() => {});
          // Half-close, then read whatever comes until the proxy closes (or a partial head
          // stays pending: then close it ourselves).
          await c.closeWrite().catch(() => {});
          const buf = new Uint8Array(1024);
          const t = setTimeout(() => c.close(), 200);
          await c.read(buf).catch(() => null);
          clearTimeout(t);
          try {
            c.close();
          } catch { /* closed by the timer */ }
        },
      ),
      { numRuns: 150 },
    );
    equal(victim.count(), 0);
  } finally {
    await proxy.close();
    victim.close();
  }
});
