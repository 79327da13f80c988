// Copyright 2026 the Valise authors. Apache-2.0 license.
// The CLI with several endpoints (--remote sc://h1,h2 or $VALISE_REMOTE): a node that is not
// there is passed over with one notice line; $VALISE_REMOTE wins over $SPARK_REMOTE (which
// PySpark also reads and could not parse a list from); the hint names every endpoint.
import { equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { cli, stateOf, withServer } from "./_test_util.ts";

function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

Deno.test("valise --remote sc://dead,live: the command goes to the next node and says so", async () => {
  await withServer(async ({ port, tmp }) => {
    const dead = closedPort();
    const state = join(tmp, "state.json");
    const list = `sc://127.0.0.1:${dead},127.0.0.1:${port}`;
    const r = await cli(["--remote", list, "conf", "set", "spark.k", "v"], {
      VALISE_STATE_FILE: state,
    });
    equal(r.code, 0, r.stderr);
    match(
      r.stderr,
      new RegExp(
        `^valise: node 127\\.0\\.0\\.1:${dead} unreachable, retrying on 127\\.0\\.0\\.1:${port} ` +
          `\\(attempt 2 of 5\\)$`,
        "m",
      ),
    );
    // The session is remembered for the list as a whole, and the next command finds it.
    const remembered = Object.keys(stateOf(state));
    equal(remembered.length, 1);
    equal(remembered[0], `sc://127.0.0.1:${dead},127.0.0.1:${port}/`);
    // $VALISE_REMOTE is read before $SPARK_REMOTE.
    const get = await cli(["conf", "get", "spark.k"], {
      VALISE_STATE_FILE: state,
      VALISE_REMOTE: list,
      SPARK_REMOTE: "sc://127.0.0.1:1",
    });
    equal(get.code, 0, get.stderr);
    equal(get.stdout, "v\n");
    const health = await cli(["health"], { VALISE_REMOTE: list });
    equal(health.code, 0, health.stderr);
    equal(health.stdout, "SERVING\n");
    match(health.stderr, /unreachable, retrying on 127\.0\.0\.1:\d+ \(attempt 2 of 2\)/);
  });
});

Deno.test("valise with every node down: one notice per retry, the hint names every endpoint", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const [a, b] = [closedPort(), closedPort()];
    const r = await cli(
      ["--retries", "2", "--remote", `sc://127.0.0.1:${a},127.0.0.1:${b}`, "conf", "list"],
      { VALISE_STATE_FILE: join(tmp, "s.json") },
    );
    equal(r.code, 1);
    const lines = r.stderr.trimEnd().split("\n");
    equal(lines.length, 3, r.stderr);
    match(lines[0]!, new RegExp(`^valise: node 127\\.0\\.0\\.1:${a} unreachable, retrying on`));
    match(lines[1]!, /^valise: \[UNAVAILABLE\] The node 127\.0\.0\.1:\d+ is unreachable .*gave up/);
    match(
      lines[2]!,
      new RegExp(`^hint: is a server running at 127\\.0\\.0\\.1:${a}, 127\\.0\\.0\\.1:${b}\\?`),
    );
    ok(!r.stderr.includes("new session"), "nothing remembered");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("valise refuses a bad endpoint list before sending anything", async () => {
  const r = await cli(["--remote", "sc://h1,,h2", "conf", "list"], {});
  equal(r.code, 2);
  match(
    r.stderr,
    /^valise: \[INVALID_CONNECT_URL\] .*endpoint 2 of 3 \(""\): the host is missing/m,
  );
});
