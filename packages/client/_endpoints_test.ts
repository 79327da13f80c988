// Copyright 2026 the Valise authors. Apache-2.0 license.
import { equal, ok } from "node:assert/strict";
import * as http2 from "node:http2";
import { GuardedSessionManager } from "./_endpoints.ts";

Deno.test("the client's connections are guarded: their teardown waits for the next turn", async () => {
  const server = http2.createServer((_req, res) => res.end());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  const manager = new GuardedSessionManager(`http://127.0.0.1:${port}`);
  try {
    const stream = await manager.request("POST", "/x.Y/Z", {}, {});
    stream.on("error", () => {});
    stream.end();
    const session = stream.session;
    ok(session, "the stream has its connection");
    const closed = new Promise<void>((resolve) => session.once("close", () => resolve()));
    // A plain session would be destroyed before destroy() returns, from wherever it is called:
    // inside the runtime's frame processing too (see guardHttp2Session).
    session.destroy();
    equal(session.destroyed, false);
    await closed;
    equal(session.destroyed, true);
  } finally {
    manager.abort();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});
