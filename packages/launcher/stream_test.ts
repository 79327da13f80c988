// Copyright 2026 the Valise authors. Apache-2.0 license.
// Streamed stdin and flow-controlled stdout: bytes arrive whole and in order, and neither side
// runs more than a window ahead of the other.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Launcher, type RunEvent, type SessionSpec } from "./mod.ts";
import { bwrapWorks, reachablePython } from "./testdata/helpers.ts";

const HAS_BWRAP = bwrapWorks();
const MiB = 1024 * 1024;

async function withSession(
  mode: "none" | "bwrap",
  fn: (l: Launcher, s: SessionSpec) => Promise<void>,
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "valise-stream-" });
  const l = new Launcher({ sandbox: mode, ...reachablePython(mode), logger: () => {} });
  try {
    await fn(l, { key: `stream-${mode}`, root, pythonPath: [] });
  } finally {
    await l.close();
    await Deno.remove(root, { recursive: true });
  }
}

function pattern(i: number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let j = 0; j < n; j++) b[j] = (i * 31 + j) & 0xff;
  return b;
}

const hex = (b: ArrayBuffer) =>
  Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");

for (const mode of ["none", "bwrap"] as const) {
  const ignore = mode === "bwrap" && !HAS_BWRAP;
  const why = ignore ? " (ignored: bubblewrap does not work here)" : "";
  Deno.test(
    { name: `streamed stdin arrives whole and in order (${mode})${why}`, ignore },
    async () => {
      await withSession(mode, async (l, s) => {
        const sizes = [0, 1, 70_000, 3 * MiB + 17, 5, 300_000];
        const all: Uint8Array[] = sizes.map((n, i) => pattern(i, n));
        const joined = new Uint8Array(all.reduce((a, b) => a + b.length, 0));
        let off = 0;
        for (const b of all) joined.set(b, (off += b.length) - b.length);
        async function* source() {
          for (const b of all) yield b;
        }
        let out = "";
        let exit: RunEvent | undefined;
        for await (
          const ev of l.run(s, {
            code:
              "import sys, hashlib; b = sys.stdin.buffer.read(); print(len(b), hashlib.sha256(b).hexdigest())",
            stdin: source(),
          })
        ) {
          if (ev.kind === "stdout") out += new TextDecoder().decode(ev.data);
          if (ev.kind === "exited") exit = ev;
        }
        const digest = hex(await crypto.subtle.digest("SHA-256", joined));
        assert.equal(out.trim(), `${joined.length} ${digest}`);
        assert.equal(exit?.kind === "exited" && exit.exitCode, 0);
      });
    },
  );

  Deno.test(
    { name: `streamed stdin is pulled only as the worker reads (${mode})${why}`, ignore },
    async () => {
      await withSession(mode, async (l, s) => {
        let pulled = 0;
        let finished = false;
        async function* endless() {
          try {
            while (true) {
              pulled += 64 * 1024;
              yield new Uint8Array(64 * 1024);
            }
          } finally {
            finished = true;
          }
        }
        for await (
          const ev of l.run(s, {
            code:
              "import sys, time; sys.stdin.buffer.read(100000); print('read', flush=True); time.sleep(60)",
            stdin: endless(),
          })
        ) {
          if (ev.kind === "stdout") {
            // Give an unbounded sender every chance to run ahead before looking.
            await new Promise((r) => setTimeout(r, 300));
            assert.ok(pulled < 3 * MiB, `pulled ${pulled} bytes while the worker read 100000`);
            break;
          }
        }
        // Breaking out killed the run; the source is let go with it.
        for (let i = 0; i < 100 && !finished; i++) await new Promise((r) => setTimeout(r, 20));
        assert.ok(finished, "the source was not closed after the run ended");
      });
    },
  );

  Deno.test({
    name: `streamStdout pauses the worker while the consumer does not take output (${mode})${why}`,
    ignore,
  }, async () => {
    await withSession(mode, async (l, s) => {
      const total = 24;
      let got = 0;
      let exitCode = NaN;
      let checked = false;
      for await (
        const ev of l.run(s, {
          code: `
import sys
chunk = b"x" * ${MiB}
for i in range(${total}):
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
    with open("progress", "w") as f:
        f.write(str(i + 1))
`,
          streamStdout: true,
          // Far above the output cap: flow-controlled stdout does not count toward it.
          timeoutMs: 60_000,
        })
      ) {
        if (ev.kind === "stdout") {
          got += ev.data.length;
          if (!checked) {
            checked = true;
            await new Promise((r) => setTimeout(r, 500));
            const progress = Number(
              await Deno.readTextFile(join(s.root, "progress")).catch(() => "0"),
            );
            assert.ok(progress <= 4, `the worker wrote ${progress} MiB while 1 chunk was taken`);
          }
        }
        if (ev.kind === "exited") {
          exitCode = ev.exitCode;
          assert.equal(ev.outputTruncated, false);
        }
      }
      assert.equal(got, total * MiB);
      assert.equal(exitCode, 0);
    });
  });
  Deno.test({
    name:
      `streamStdout past the run's streamBytes is cut there, killed and reported truncated (${mode})${why}`,
    ignore,
  }, async () => {
    await withSession(mode, async (l, s) => {
      let got = 0;
      let stderr = "";
      let exit: RunEvent | undefined;
      for await (
        const ev of l.run(
          { ...s, limits: { streamBytes: 3 * MiB + 5 } },
          {
            code: `
import sys
chunk = b"x" * ${MiB}
while True:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
`,
            streamStdout: true,
          },
        )
      ) {
        if (ev.kind === "stdout") got += ev.data.length;
        if (ev.kind === "stderr") stderr += new TextDecoder().decode(ev.data);
        if (ev.kind === "exited") exit = ev;
      }
      assert.equal(got, 3 * MiB + 5);
      assert.match(stderr, /\[valise\] output stream truncated at 3145733 bytes/);
      assert.ok(exit?.kind === "exited");
      assert.equal(exit.outputTruncated, true);
      assert.equal(exit.signal, "SIGKILL");
    });
  });
}
