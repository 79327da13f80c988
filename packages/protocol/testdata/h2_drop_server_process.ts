// Copyright 2026 the Valise authors. Apache-2.0 license.
// Starts h2_drop_server.ts as its own process: a runtime crash there is an exit status to look
// at, not the end of the test runner.

/** The server process. */
export interface DropServer {
  readonly port: number;
  /** Resolves with its exit status. */
  readonly status: Promise<Deno.CommandStatus>;
  /** Whether it has not exited yet. */
  alive(): boolean;
  /** SIGTERM, then the exit status. */
  stop(): Promise<Deno.CommandStatus>;
}

/**
 * Starts the server and waits for its "listening" line.
 *
 * @param guard Whether its sessions are guarded.
 * @returns The running server.
 */
export async function startDropServer(guard: boolean): Promise<DropServer> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("./h2_drop_server.ts", import.meta.url).pathname,
      ...(guard ? ["--guard"] : []),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  let exited = false;
  const status = child.status.then((s) => (exited = true, s));
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let first = "";
  while (!first.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) {
      throw new Error(`the drop server exited before listening: ${JSON.stringify(await status)}`);
    }
    first += value;
  }
  reader.releaseLock();
  child.stdout.cancel().catch(() => {});
  const port = Number(first.match(/:(\d+)/)![1]);
  return {
    port,
    status,
    alive: () => !exited,
    stop() {
      if (!exited) child.kill("SIGTERM");
      return status;
    },
  };
}
