// Copyright 2026 the Valise authors. Apache-2.0 license.
import { equal, ok } from "node:assert/strict";
import { createRequire } from "node:module";
import { guardAbandonedSockets } from "./_socket_guard.ts";

const require = createRequire(import.meta.url);

Deno.test("a guarded socket's error after removeAllListeners() is dropped, not uncaught", async () => {
  guardAbandonedSockets();
  guardAbandonedSockets(); // idempotent: one guard, one listener
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept();
  const net = require("node:net");
  const socket = net.createConnection((listener.addr as Deno.NetAddr).port, "127.0.0.1");
  const conn = await accepted;
  try {
    equal(socket.listenerCount("error"), 1);
    const seen: unknown[] = [];
    socket.on("error", (e: unknown) => seen.push(e));
    socket.on("data", () => {});
    socket.emit("error", new Error("reaches its owner"));
    equal(seen.length, 1, "errors still reach the listeners their owner adds");
    socket.removeAllListeners();
    // Every listener went (its owner's data handler too), and one that ignores errors is back.
    equal(socket.listenerCount("data"), 0);
    equal(socket.listenerCount("error"), 1);
    ok(socket.emit("error", new Error("read ECONNRESET")), "handled, so it does not throw");
    equal(seen.length, 1);
    socket.removeAllListeners("error");
    equal(socket.listenerCount("error"), 1);
  } finally {
    socket.destroy();
    conn.close();
    listener.close();
  }
});
