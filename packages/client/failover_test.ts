// Copyright 2026 the Valise authors. Apache-2.0 license.
// Several endpoints against real servers on loopback: a closed port and a peer that drops every
// connection are failures of the node, and the call goes on to the next endpoint when sending it
// again is safe; the endpoint that failed is passed over for a while and then tried again; a
// removal that may have been done is not sent twice; a failover onto a server that does not share
// the session is refused; a file changed between attempts is never committed.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import type { Interceptor } from "@connectrpc/connect";
import { connect, type RetryReport, ValiseClientError } from "./mod.ts";
import { withServer, writeFile } from "./_test_util.ts";

/** A loopback port nothing listens on (bound, then closed). */
function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/**
 * A peer that accepts each connection, reads the start of what the client sends and closes it:
 * a node dying under every call. (One that closes before reading anything crashes the client's
 * process with an uncaught `write EPIPE` in Deno's node:http2: see docs/client.md.)
 */
function dropper(): { port: number; accepted: () => number; close: () => Promise<void> } {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let accepted = 0;
  const loop = (async () => {
    for await (const conn of l) {
      accepted++;
      await conn.read(new Uint8Array(64)).catch(() => null);
      conn.close();
    }
  })().catch(() => {});
  return {
    port: (l.addr as Deno.NetAddr).port,
    accepted: () => accepted,
    close: async () => {
      l.close();
      await loop;
    },
  };
}

/** Records the endpoint of every call that leaves the client. */
function recorder(): { urls: string[]; interceptor: Interceptor } {
  const urls: string[] = [];
  return {
    urls,
    interceptor: (next) => (req) => {
      urls.push(new URL(req.url).host);
      return next(req);
    },
  };
}

Deno.test("failover: a closed port first, the call goes to the next endpoint at once", async () => {
  await withServer(async ({ port }) => {
    const dead = closedPort();
    const rec = recorder();
    const reports: RetryReport[] = [];
    await using session = connect(`sc://127.0.0.1:${dead},127.0.0.1:${port}/;user_id=ada`, {
      interceptors: [rec.interceptor],
      onRetry: (r) => reports.push(r),
    });
    deepEqual(session.endpoints, [`http://127.0.0.1:${dead}`, `http://127.0.0.1:${port}`]);
    let events = 0;
    session.addEventListener("retry", () => events++);
    deepEqual(await session.conf.set("spark.f", "1"), []);
    equal(reports.length, 1);
    const r = reports[0]!;
    deepEqual(
      [r.method, r.endpoint, r.next, r.reason, r.attempt, r.delayMs],
      ["Config", `127.0.0.1:${dead}`, `127.0.0.1:${port}`, "unreachable", 1, 0],
    );
    equal(r.error.grpcCode, "Unavailable");
    equal(events, 1);
    // The endpoint that failed is passed over for a while: the next calls go straight on.
    equal(session.endpoint, `http://127.0.0.1:${port}`);
    equal(await session.conf.get("spark.f"), "1");
    deepEqual(rec.urls, [`127.0.0.1:${dead}`, `127.0.0.1:${port}`, `127.0.0.1:${port}`]);
    equal(reports.length, 1);
  });
});

Deno.test("failover: an endpoint that failed is tried again later, and used once it is back", async () => {
  await withServer(async (first) => {
    await withServer(async (second) => {
      const rec = recorder();
      const reports: RetryReport[] = [];
      // No cool-down: every call starts at the first endpoint again.
      await using session = connect(`sc://127.0.0.1:${first.port},127.0.0.1:${second.port}`, {
        interceptors: [rec.interceptor],
        onRetry: (r) => reports.push(r),
        retry: { endpointCooldownMs: 0 },
      });
      equal(await session.health(), "SERVING");
      await first.stop();
      equal(await session.health(), "SERVING");
      deepEqual(reports.map((r) => [r.endpoint, r.next, r.reason]), [
        [`127.0.0.1:${first.port}`, `127.0.0.1:${second.port}`, "unreachable"],
      ]);
      await first.restart();
      equal(await session.health(), "SERVING");
      deepEqual(rec.urls, [
        `127.0.0.1:${first.port}`,
        `127.0.0.1:${first.port}`,
        `127.0.0.1:${second.port}`,
        `127.0.0.1:${first.port}`,
      ]);
    });
  });
});

Deno.test("failover: a node that drops the connection: reads go on, a removal is not sent twice", async () => {
  await withServer(async ({ port, tmp }) => {
    const drop = dropper();
    try {
      const reports: RetryReport[] = [];
      await using session = connect(`sc://127.0.0.1:${drop.port},127.0.0.1:${port}/;user_id=ada`, {
        onRetry: (r) => reports.push(r),
        // Every call starts at the dropping node, so each one meets it.
        retry: { endpointCooldownMs: 0 },
      });
      await session.addArtifacts(await writeFile(tmp, "keep.py", "K = 1\n"), { pyfile: true });
      deepEqual(await session.status(["pyfiles/keep.py"]), { "pyfiles/keep.py": true });
      ok(reports.length >= 2, JSON.stringify(reports.map((r) => r.reason)));
      ok(reports.every((r) => r.reason === "lost" && r.endpoint === `127.0.0.1:${drop.port}`));
      const before = reports.length;
      const accepted = drop.accepted();
      await rejects(session.remove("pyfiles/keep.py"), (e: unknown) => {
        ok(e instanceof ValiseClientError);
        deepEqual([e.errorClass, e.grpcCode], ["UNAVAILABLE", "Unavailable"]);
        ok(
          e.message.includes(`node 127.0.0.1:${drop.port} died or dropped the connection`) &&
            /not sent again: RemoveArtifacts may have been done before the node failed/.test(
              e.message,
            ),
          e.message,
        );
        return true;
      });
      equal(reports.length, before, "no retry of the removal");
      ok(drop.accepted() > accepted, "the removal reached the dropping node");
      // Nothing removed it elsewhere either.
      deepEqual(await session.status(["pyfiles/keep.py"]), { "pyfiles/keep.py": true });
    } finally {
      await drop.close();
    }
  });
});

Deno.test("failover: a removal that never reached a node goes to the next one", async () => {
  await withServer(async ({ port, tmp }) => {
    const dead = closedPort();
    const reports: RetryReport[] = [];
    await using session = connect(`sc://127.0.0.1:${dead},127.0.0.1:${port}/;user_id=ada`, {
      onRetry: (r) => reports.push(r),
      retry: { endpointCooldownMs: 0 },
    });
    await session.addArtifacts(await writeFile(tmp, "gone.py", "G = 1\n"), { pyfile: true });
    const removed = await session.remove("pyfiles/gone.py");
    deepEqual(removed.removed.map((a) => a.name), ["pyfiles/gone.py"]);
    deepEqual(reports.map((r) => [r.method, r.reason]), [
      ["AddArtifacts", "unreachable"],
      ["RemoveArtifacts", "unreachable"],
    ]);
  });
});

Deno.test("failover: onto a server that does not share the session is refused", async () => {
  await withServer(async (first) => {
    await withServer(async (second) => {
      await using session = connect(
        `sc://127.0.0.1:${first.port},127.0.0.1:${second.port}/;user_id=ada`,
      );
      await session.conf.set("spark.x", "on-first");
      const id = session.serverSideSessionId;
      ok(id !== undefined);
      await first.stop();
      // The second server is not in a cluster with the first: it refuses the server-side id the
      // client saw, and the client does not take another session's answers for this one's.
      await rejects(session.conf.get("spark.x"), (e: unknown) => {
        ok(e instanceof ValiseClientError);
        equal(e.errorClass, "INVALID_HANDLE.SESSION_CHANGED", e.message);
        ok(e.message.includes(`the client saw server-side session ${id}`), e.message);
        return true;
      });
      equal(session.serverSideSessionId, id);
    });
  });
});

Deno.test("failover: a file changed after it was hashed is never committed", async () => {
  await withServer(async ({ port, tmp }) => {
    const size = 4 * 2 ** 20;
    const path = await writeFile(tmp, "moving.bin", size);
    await using session = connect(`sc://127.0.0.1:${port}/;user_id=ada`);
    let changed = false;
    await rejects(
      session.addArtifacts(path, {
        file: true,
        fastPath: false,
        onProgress: (p) => {
          // Once bytes are on their way: the same size, other bytes further in.
          if (p.phase === "upload" && !changed) {
            changed = true;
            using f = Deno.openSync(path, { write: true });
            f.seekSync(size - 1024, Deno.SeekMode.Start);
            f.writeSync(new Uint8Array(1024).fill(7));
          }
        },
      }),
      (e: unknown) => {
        ok(e instanceof TypeError, String(e));
        ok(
          /the file changed while it was being added .* nothing of it was committed/.test(
            e.message,
          ),
        );
        return true;
      },
    );
    ok(changed);
    deepEqual(await session.status(["files/moving.bin"]), { "files/moving.bin": false });
  });
});
