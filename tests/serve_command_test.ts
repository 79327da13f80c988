// `deno task serve` as a user runs it: a process that prints where it listens, logs one line per
// RPC, restores sessions on restart, and exits cleanly on SIGTERM and SIGINT.
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { addArtifactsRequests, bytesArtifact, SparkConnectService } from "@valise/protocol";
import { removeTree } from "./_util.ts";

const MAIN = new URL("../packages/server/main.ts", import.meta.url).pathname;

async function start(dataDir: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--port", "0", "--data-dir", dataDir],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let first = "";
  while (!first.includes("\n")) {
    const { value, done } = await lines.read();
    if (done) throw new Error("server exited before listening");
    first += value;
  }
  lines.releaseLock();
  const port = Number(first.match(/listening on 127\.0\.0\.1:(\d+)/)![1]);
  return { child, port };
}

// SIGINT takes the same path (checked by hand with `kill -INT`); it is not sent from here because
// a SIGINT to a child of `deno test` leaves the test runner waiting.
for (const signal of ["SIGTERM"] as const) {
  Deno.test(`deno task serve logs each RPC, keeps sessions across a restart, exits 0 on ${signal}`, async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-serve-" });
    const dataDir = join(tmp, "data");
    try {
      let { child, port } = await start(dataDir);
      const sessionId = crypto.randomUUID();
      const client = (p: number) =>
        createClient(
          SparkConnectService,
          createGrpcTransport({ baseUrl: `http://127.0.0.1:${p}` }),
        );
      const added = await client(port).addArtifacts(addArtifactsRequests([
        bytesArtifact("pyfiles/m.py", new TextEncoder().encode("x = 1\n")),
      ], { sessionId }));
      child.kill(signal);
      let status = await child.status;
      let stderr = await new Response(child.stderr).text();
      equal(status.code, 0, stderr);
      ok(stderr.includes("rpc spark.connect.SparkConnectService/AddArtifacts OK"), stderr);
      ok(stderr.includes(`${signal}, shutting down`), stderr);

      ({ child, port } = await start(dataDir));
      const st = await client(port).artifactStatus({
        sessionId,
        names: ["pyfiles/m.py"],
        clientObservedServerSideSessionId: added.serverSideSessionId,
      });
      equal(st.statuses["pyfiles/m.py"]?.exists, true);
      equal(st.serverSideSessionId, added.serverSideSessionId);
      child.kill("SIGTERM");
      status = await child.status;
      stderr = await new Response(child.stderr).text();
      equal(status.code, 0, stderr);
      ok(stderr.includes("1 session(s) restored"), stderr);
    } finally {
      await removeTree(tmp);
    }
  });
}

Deno.test("deno task serve names its interpreters at start and refuses one that cannot run", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-serve-py-" });
  const run = (...args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, "--port", "0", "--data-dir", join(tmp, "data"), ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  try {
    await t.step("a default interpreter that does not exist", async () => {
      const out = await run("--python", "/nonexistent/python3");
      equal(out.code, 1);
      equal(text(out.stdout), "", "it must not say it listens");
      ok(
        /cannot start: .*\/nonexistent\/python3: it is not an executable file; choose the default interpreter with --python PATH/
          .test(text(out.stderr)),
        text(out.stderr),
      );
    });
    await t.step("an allow-list entry that does not exist", async () => {
      const out = await run("--allow-interpreter", "/nonexistent/python3");
      equal(out.code, 1);
      ok(
        text(out.stderr).includes(
          "Cannot allow interpreter /nonexistent/python3: it is not an executable file",
        ),
        text(out.stderr),
      );
    });
    await t.step(
      "the start-up log names the default's path and version and the allow-list",
      async () => {
        const child = new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "-A",
            MAIN,
            "--port",
            "0",
            "--data-dir",
            join(tmp, "data"),
            "--python",
            "/usr/bin/python3",
            "--allow-interpreter",
            "/usr/bin/python3",
          ],
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        const lines = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
        let seen = "";
        while (!/default interpreter .*\n/.test(seen)) {
          const { value, done } = await lines.read();
          if (done) break;
          seen += value;
        }
        child.kill("SIGTERM");
        await lines.cancel();
        await child.status;
        await child.stdout.cancel();
        const probe = await new Deno.Command("/usr/bin/python3", {
          args: ["-c", "import platform, sys; print(sys.executable, platform.python_version())"],
        }).output();
        const [exe, version] = new TextDecoder().decode(probe.stdout).trim().split(" ");
        ok(
          seen.includes(
            `default interpreter ${exe} (Python ${version}); sessions may choose it, interpreters ` +
              `inside their own directory and /usr/bin/python3`,
          ),
          seen,
        );
      },
    );
  } finally {
    await removeTree(tmp);
  }
});
