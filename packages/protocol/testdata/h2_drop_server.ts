// Copyright 2026 the Valise authors. Apache-2.0 license.
// A plain node:http2 server for the connection-drop attack (http2_session_guard_test.ts): it
// answers each call as a refusing gRPC server does, in the way the request's `x-answer` header
// names, and prints "listening on 127.0.0.1:PORT". With `--guard` its sessions are guarded.
//   early: a trailers-only answer before the request body has ended
//   reset: the same, then RST_STREAM(CANCEL), as a server stops reading a refused body
//   late:  the answer once the whole body has arrived
import * as http2 from "node:http2";
import { guardHttp2Session } from "../http2_session_guard.ts";

const guard = Deno.args.includes("--guard");
const server = http2.createServer();
server.on("session", (session) => {
  if (guard) guardHttp2Session(session);
  session.on("error", () => {});
});
server.on("request", (req, res) => {
  req.on("error", () => {});
  const answer = () => {
    res.writeHead(200, {
      "content-type": "application/grpc+proto",
      "grpc-status": "16",
      "grpc-message": "refused",
    });
    res.end();
  };
  const mode = req.headers["x-answer"];
  if (mode === "late") {
    req.on("data", () => {});
    req.on("end", answer);
    return;
  }
  answer();
  if (mode === "reset") req.stream.close(http2.constants.NGHTTP2_CANCEL);
  req.on("data", () => {});
});
server.listen(0, "127.0.0.1", () => {
  const { port } = server.address() as { port: number };
  console.log(`listening on 127.0.0.1:${port}`);
});
