// Copyright 2026 the Valise authors. Apache-2.0 license.
// One real nats-server for a unit test file of the cluster package (the tests/ cluster suites
// start whole clusters with tests/_nats.ts).

/** Where Debian's nats-server is. */
export const NATS_SERVER = "/usr/sbin/nats-server";

/** Whether nats-server is installed here. */
export const hasNats: boolean = (() => {
  try {
    return Deno.statSync(NATS_SERVER).isFile;
  } catch {
    return false;
  }
})();

/** A running nats-server. */
export interface NatsProcess {
  /** `nats://127.0.0.1:PORT`. */
  readonly url: string;
  /** Stops it and waits for its exit. */
  stop(): Promise<void>;
}

/**
 * Starts nats-server on a free loopback port and waits until it says it is ready; the rest of
 * its log is drained so that the pipe never fills.
 *
 * @param args Its arguments, given the port.
 * @returns The server.
 */
export async function startNats(args: (port: number) => string[]): Promise<NatsProcess> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const child = new Deno.Command(NATS_SERVER, {
    args: args(port),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("Server is ready")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`nats-server exited:\n${seen}`);
    seen += value;
  }
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  return {
    url: `nats://127.0.0.1:${port}`,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}
