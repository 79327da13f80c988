// Copyright 2026 the Valise authors. Apache-2.0 license.
import assert from "node:assert/strict";
import { BOOTSTRAP_FILENAME, BOOTSTRAP_STUB, FrameType } from "./_bootstrap.ts";
import { encodeFrame, FrameDecoder } from "./_frames.ts";
import { pythonStub } from "./python_stub.ts";
import { SYSTEM_PYTHON } from "./testdata/helpers.ts";

const SOURCE = await Deno.readTextFile(new URL("./fork_server.py", import.meta.url));

/** The 1-based number of the only line of `source` that contains `text`. */
function lineOf(source: string, text: string): number {
  const lines = source.split("\n");
  const at = lines.flatMap((l, i) => (l.includes(text) ? [i + 1] : []));
  assert.equal(at.length, 1, `"${text}" is on ${at.length} lines`);
  return at[0]!;
}

Deno.test("a fork server traceback names fork_server.py and the line that raised", async () => {
  const child = new Deno.Command(SYSTEM_PYTHON, {
    args: ["-c", BOOTSTRAP_STUB],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const frames = new FrameDecoder();
  const reader = child.stdout.getReader();
  let ready = false;
  while (!ready) {
    const { value, done } = await reader.read();
    assert.ok(!done, "the fork server exited before it was ready");
    ready = frames.push(value).some((f) => f.type === FrameType.READY);
  }
  // A RUN frame whose JSON is cut short: the fork server's own code raises.
  const bad = new TextEncoder().encode('{"kind": ');
  const payload = new Uint8Array(4 + bad.length);
  new DataView(payload.buffer).setUint32(0, bad.length);
  payload.set(bad, 4);
  const w = child.stdin.getWriter();
  await w.write(encodeFrame(FrameType.RUN, 1, payload));
  await w.close();
  while (!(await reader.read()).done) { /* drain */ }
  await child.status;
  const stderr = await new Response(child.stderr).text();
  const line = lineOf(SOURCE, "spec = json.loads(");
  assert.ok(
    stderr.includes(`File "${BOOTSTRAP_FILENAME}", line ${line}, in handle_frame`),
    stderr,
  );
});

Deno.test("pythonStub() injects numbers and strings only", () => {
  assert.equal(
    pythonStub("print(VALISE)", "x.py", { a: 1, b: { c: "d" } }),
    `VALISE = {"a":1,"b":{"c":"d"}}\nexec(compile("print(VALISE)", "x.py", 'exec'))`,
  );
  assert.throws(() => pythonStub("", "x.py", { a: true }), TypeError);
  assert.throws(() => pythonStub("", "x.py", { a: null }), TypeError);
});
