// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The floor of an Apply call over this RPC stack: a server with the same HTTP/2 settings and the
 * same Connect adapter as Valise's, whose `WorkerService/Apply` sends every `arrow_ipc` piece it
 * receives straight back (no session, no worker, no copy of its own). What the pyarrow form's
 * identity costs beyond this is Valise's; what this costs is the wire's (`apply_inprocess_bench`).
 * Prints `listening on 127.0.0.1:<port>` once up.
 *
 * @module
 */
import * as http2 from "node:http2";
import { create } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { type ApplyRequest, ApplyResponseSchema, WorkerService } from "@valise/protocol";

const routes = (router: ConnectRouter) =>
  router.service(WorkerService, {
    async *apply(requests: AsyncIterable<ApplyRequest>) {
      let rows = 0n;
      for await (const r of requests) {
        if (r.request.case !== "arrowIpc") continue;
        rows++;
        yield create(ApplyResponseSchema, {
          response: { case: "arrowIpc", value: r.request.value },
        });
      }
      yield create(ApplyResponseSchema, {
        response: { case: "done", value: { batchesIn: rows, transport: "echo" } },
      });
    },
  });

const server = http2.createServer(
  { settings: { initialWindowSize: 4 * 2 ** 20, maxFrameSize: 2 ** 20 } },
  connectNodeAdapter({ routes, readMaxBytes: 64 * 2 ** 20 }),
);
server.on("session", (s) => {
  try {
    s.setLocalWindowSize(16 * 2 ** 20);
  } catch {
    // keeps the default
  }
});
server.listen(0, "127.0.0.1", () => {
  const a = server.address();
  console.log(`listening on 127.0.0.1:${typeof a === "object" && a ? a.port : 0}`);
});
Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
