// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, notEqual, ok, rejects } from "node:assert/strict";
import fc from "fast-check";
import { DataSocket, MAX_HANDSHAKES, TOKEN_BYTES } from "./_data_socket.ts";

const encoder = new TextEncoder();
const HOUR = 3_600_000;

async function withSocket(
  fn: (s: DataSocket, dir: string) => Promise<void>,
  handshakeMs = HOUR,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "valise-data-socket-" });
  const s = DataSocket.open(dir, undefined, handshakeMs);
  try {
    await fn(s, dir);
  } finally {
    await s.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Reads until the peer closes; the bytes read. */
async function readToEnd(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: number[] = [];
  const buf = new Uint8Array(65536);
  try {
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      parts.push(...buf.subarray(0, n));
    }
  } catch {
    // reset by the peer: an end too
  }
  return Uint8Array.from(parts);
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

const connect = (s: DataSocket) => Deno.connect({ transport: "unix", path: s.path });

Deno.test("data socket: a child that sends its run's token gets a connection both ways", async () => {
  await withSocket(async (s) => {
    const claim = s.claim()!;
    equal(claim.token.length, TOKEN_BYTES * 2);
    equal((await Deno.stat(s.path)).mode! & 0o777, 0o600);
    const child = await connect(s);
    await writeAll(child, encoder.encode(claim.token));
    const server = await claim.conn;
    await writeAll(child, encoder.encode("to the server"));
    await child.closeWrite();
    deepEqual(new TextDecoder().decode(await readToEnd(server)), "to the server");
    await writeAll(server, encoder.encode("to the child"));
    server.close();
    deepEqual(new TextDecoder().decode(await readToEnd(child)), "to the child");
    child.close();
  });
});

Deno.test("data socket: a wrong, reused or cancelled token is closed; the run still gets its child", async () => {
  await withSocket(async (s) => {
    const claim = s.claim()!;
    const other = s.claim()!;
    other.cancel();
    await rejects(other.conn, /ended before its child connected/);
    for (const token of ["0".repeat(TOKEN_BYTES * 2), other.token, claim.token.toUpperCase()]) {
      const c = await connect(s);
      await writeAll(c, encoder.encode(token));
      equal((await readToEnd(c)).length, 0, `token ${token} was heard`);
      c.close();
    }
    const child = await connect(s);
    await writeAll(child, encoder.encode(claim.token));
    const server = await claim.conn;
    // The same token a second time: nobody waits for it any more.
    const again = await connect(s);
    await writeAll(again, encoder.encode(claim.token));
    equal((await readToEnd(again)).length, 0);
    again.close();
    server.close();
    child.close();
  });
});

Deno.test("data socket: a connection that does not finish its token is closed after the handshake time", async () => {
  await withSocket(async (s) => {
    const claim = s.claim()!;
    const c = await connect(s);
    await writeAll(c, encoder.encode(claim.token.slice(0, 10)));
    // No bytes, then the end: the launcher let go of it (the guard of the test runner is
    // the only deadline).
    equal((await readToEnd(c)).length, 0);
    c.close();
    // The claim is still open for its real child.
    const child = await connect(s);
    await writeAll(child, encoder.encode(claim.token));
    (await claim.conn).close();
    child.close();
  }, 50);
});

Deno.test("data socket: at most MAX_HANDSHAKES silent connections are held; the rest are closed at once", async () => {
  await withSocket(async (s) => {
    const claim = s.claim()!;
    const conns = await Promise.all(Array.from({ length: 100 }, () => connect(s)));
    // The handshake time is an hour: every end seen here is the cap's.
    let closed = 0;
    let enough!: () => void;
    const reached = new Promise<void>((r) => enough = r);
    const ends = conns.map((c) =>
      readToEnd(c).then(() => {
        if (++closed === 100 - MAX_HANDSHAKES) enough();
      })
    );
    await reached;
    equal(closed, 100 - MAX_HANDSHAKES);
    // The held ones are given up by the attacker; then the run's child is heard again.
    for (const c of conns) c.close();
    await Promise.all(ends);
    let child: Deno.UnixConn | undefined;
    for (;;) {
      // The launcher counts a handshake as done once it saw the end of it: retry until then.
      child = await connect(s);
      await writeAll(child, encoder.encode(claim.token));
      const won = await Promise.race([claim.conn.then(() => true), readToEnd(child)]);
      if (won === true) break;
      child.close();
    }
    (await claim.conn).close();
    child.close();
  });
});

Deno.test("data socket: no bytes but the exact token of a waiting run give its connection (fast-check)", async () => {
  await withSocket(async (s) => {
    const claim = s.claim()!;
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 0, maxLength: TOKEN_BYTES * 4 }),
        async (bytes) => {
          const c = await connect(s);
          try {
            await writeAll(c, bytes);
          } catch {
            // closed under us: fine
          }
          await c.closeWrite().catch(() => {});
          // The launcher closes what it does not take: the end arrives.
          await readToEnd(c);
          c.close();
        },
      ),
      { numRuns: 60 },
    );
    // None of them took the run's connection: the one it gets is its child's.
    const child = await connect(s);
    await writeAll(child, encoder.encode(claim.token + "child"));
    await child.closeWrite();
    const server = await claim.conn;
    equal(new TextDecoder().decode(await readToEnd(server)), "child");
    server.close();
    child.close();
  });
});

Deno.test("data socket: close() fails waiting runs and removes the socket", async () => {
  const dir = await Deno.makeTempDir({ prefix: "valise-data-socket-" });
  try {
    const s = DataSocket.open(dir);
    const claim = s.claim()!;
    notEqual(claim, undefined);
    await s.close();
    await rejects(claim.conn, /closed/);
    equal(s.claim(), undefined);
    await rejects(Deno.stat(s.path), Deno.errors.NotFound);
    ok(true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("data socket: a directory too deep for a Unix socket's path fails at open, leaving nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "valise-data-socket-" });
  try {
    const deep = `${dir}/${"d".repeat(120)}`;
    await Deno.mkdir(deep);
    let failed = false;
    try {
      DataSocket.open(deep);
    } catch {
      failed = true;
    }
    ok(failed, "a socket path past 108 bytes was opened");
    deepEqual([...Deno.readDirSync(deep)], []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("data socket: a child that connected before its run's exit was seen is still heard", async () => {
  await withSocket(async (s) => {
    const claim = s.claim()!;
    // The child connects, then its exit is seen before the launcher heard its token (what load
    // makes happen): the run gives up only once that connection is heard, and gets its bytes.
    const child = await connect(s);
    const giveUp = claim.cancelWhenHeard();
    await writeAll(child, encoder.encode(claim.token));
    await writeAll(child, encoder.encode("written before the exit"));
    child.close();
    await giveUp;
    const server = await claim.conn;
    equal(new TextDecoder().decode(await readToEnd(server)), "written before the exit");
    server.close();
  });
});

Deno.test("data socket: a run whose child never connected gives up once the backlog is heard", async () => {
  await withSocket(async (s) => {
    const claim = s.claim()!;
    const other = s.claim()!;
    // A stranger holds a handshake open (no token ever): waiting for it is bounded by the
    // handshake time, here short.
    const stranger = await connect(s);
    await claim.cancelWhenHeard();
    await rejects(claim.conn, /before its child connected/);
    deepEqual(await readToEnd(stranger), new Uint8Array(0), "closed after the handshake time");
    stranger.close();
    // The socket still serves the next run.
    const child = await connect(s);
    await writeAll(child, encoder.encode(other.token));
    (await other.conn).close();
    child.close();
  }, 50);
});
