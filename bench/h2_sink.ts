// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A bare HTTP/2 sink in its own process, the platform's ceiling for an upload on loopback: Deno's
 * `node:http2` (the layer Valise's server runs on) with Valise's server settings (4 MiB stream
 * windows, 16 MiB connection window, 1 MiB frames), counting what it receives and answering with
 * the count; no gRPC, no hashing, no disk. Prints its port on stdout.
 *
 * @module
 */
import http2 from "node:http2";

const server = http2.createServer({
  settings: { initialWindowSize: 4 << 20, maxFrameSize: 1 << 20 },
});
server.on("session", (s) => s.setLocalWindowSize(16 << 20));
server.on("stream", (stream: http2.ServerHttp2Stream) => {
  let n = 0;
  stream.on("data", (d: Uint8Array) => n += d.length);
  stream.on("end", () => {
    stream.respond({ ":status": 200 });
    stream.end(String(n));
  });
});
server.listen(0, "127.0.0.1", () => {
  const addr = server.address();
  console.log(typeof addr === "object" && addr ? addr.port : 0);
});
