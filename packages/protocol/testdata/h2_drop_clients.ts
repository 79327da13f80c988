// Copyright 2026 the Valise authors. Apache-2.0 license.
// The clients of the connection-drop attack: each opens a connection, sends a small gRPC body,
// and closes the connection as soon as its answer has arrived, whether its own body has ended or
// not. Run as a script it reports what a server did under them:
//   deno run -A packages/protocol/testdata/h2_drop_clients.ts [--guard] [CONNECTIONS]
// (the reference for the guard: without it Deno 2.9.6's server died about once per 1,500
// connections here, with it not once in 150,000).
import * as http2 from "node:http2";

/** How a call's answer arrived. */
export type DropOutcome = "status" | "reset" | "none";

/**
 * Runs `connections` clients one after another against `port`, cycling through the answer
 * modes of `h2_drop_server.ts`.
 *
 * @param port The server's loopback port.
 * @param connections How many.
 * @param path The method called.
 * @returns How many calls ended each way.
 */
export async function dropConnections(
  port: number,
  connections: number,
  path = "/x.Y/Z",
): Promise<Record<DropOutcome, number>> {
  const modes = ["early", "reset", "late"];
  const seen: Record<DropOutcome, number> = { status: 0, reset: 0, none: 0 };
  const body = new Uint8Array(21);
  for (let i = 0; i < connections; i++) {
    const client = http2.connect(`http://127.0.0.1:${port}`);
    client.on("error", () => {});
    const req = client.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      "x-answer": modes[i % modes.length]!,
    });
    req.on("error", () => {});
    let outcome: DropOutcome = "none";
    const status = (h: http2.IncomingHttpHeaders) => {
      if (h["grpc-status"] !== undefined) outcome = "status";
    };
    req.on("response", status);
    req.on("trailers", status);
    req.on("data", () => {});
    const done = new Promise<void>((resolve) => {
      req.on("end", () => resolve());
      req.on("close", () => {
        if (outcome === "none" && req.rstCode) outcome = "reset";
        resolve();
      });
    });
    for (let j = 0; j < 4; j++) req.write(body);
    req.end();
    await done;
    seen[outcome]++;
    client.close();
  }
  return seen;
}

if (import.meta.main) {
  const { startDropServer } = await import("./h2_drop_server_process.ts");
  const guard = Deno.args.includes("--guard");
  const n = Number(Deno.args.find((a) => /^\d+$/.test(a)) ?? 30_000);
  const server = await startDropServer(guard);
  let done = 0;
  while (done < n && server.alive()) {
    await dropConnections(server.port, 300).catch(() => {});
    done += 300;
  }
  const status = server.alive() ? await server.stop() : await server.status;
  console.log(
    `guard ${guard}: ${done} connections, server ${
      status.signal === "SIGTERM" ? "survived" : `died (${status.signal ?? status.code})`
    }`,
  );
}
