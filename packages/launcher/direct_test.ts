// Copyright 2026 the Valise authors. Apache-2.0 license.
// `directStdio`: a bulk-data run's stdin and stdout are one Unix socket to the launcher, not
// pipes relayed by the fork server. The bytes arrive whole both ways, and what a worker does
// with the socket (not reading, flooding, keeping it after its run) stays bounded.
import assert from "node:assert/strict";
import { DIRECT_STDIN_WINDOW } from "./_fork_server.ts";
import { Launcher, type RunEvent, type SessionSpec } from "./mod.ts";
import { bwrapWorks, reachablePython } from "./testdata/helpers.ts";

const HAS_BWRAP = bwrapWorks();
const MiB = 1024 * 1024;
const decoder = new TextDecoder();

async function withSession(
  mode: "none" | "bwrap",
  fn: (l: Launcher, s: SessionSpec) => Promise<void>,
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "valise-direct-" });
  const l = new Launcher({ sandbox: mode, ...reachablePython(mode), logger: () => {} });
  try {
    await fn(l, { key: `direct-${mode}`, root, pythonPath: [] });
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

/** Copies stdin to stdout; says on stderr what kind of file each is. */
const ECHO = `
import os, stat, sys
kind = lambda fd: 'socket' if stat.S_ISSOCK(os.fstat(fd).st_mode) else 'pipe'
sys.stderr.write('%s %s\\n' % (kind(0), kind(1)))
sys.stderr.flush()
while True:
    b = os.read(0, 1 << 20)
    if not b:
        break
    v = memoryview(b)
    while v:
        v = v[os.write(1, v):]
`;

interface Outcome {
  stdout: Uint8Array[];
  stderr: string;
  exit: RunEvent | undefined;
}

async function collect(events: AsyncIterable<RunEvent>): Promise<Outcome> {
  const out: Outcome = { stdout: [], stderr: "", exit: undefined };
  for await (const ev of events) {
    if (ev.kind === "stdout") out.stdout.push(ev.data);
    if (ev.kind === "stderr") out.stderr += decoder.decode(ev.data);
    if (ev.kind === "exited") out.exit = ev;
  }
  return out;
}

const joined = (parts: Uint8Array[]): Uint8Array<ArrayBuffer> => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) out.set(p, (off += p.length) - p.length);
  return out;
};

for (const mode of ["none", "bwrap"] as const) {
  const ignore = mode === "bwrap" && !HAS_BWRAP;
  const why = ignore ? " (ignored: bubblewrap does not work here)" : "";

  Deno.test(
    {
      name:
        `directStdio: stdin and stdout are the data socket, bytes whole both ways (${mode})${why}`,
      ignore,
    },
    async () => {
      await withSession(mode, async (l, s) => {
        const sizes = [0, 1, 70_000, 3 * MiB + 17, 5, 9 * MiB, 300_000];
        const input = sizes.map((n, i) => pattern(i, n));
        async function* source() {
          for (const b of input) yield b;
        }
        const direct = await collect(
          l.run(s, { code: ECHO, stdin: source(), streamStdout: true, directStdio: true }),
        );
        assert.equal(direct.exit?.kind === "exited" && direct.exit.exitCode, 0, direct.stderr);
        assert.equal(direct.stderr, "socket socket\n");
        const want = hex(await crypto.subtle.digest("SHA-256", joined(input)));
        assert.equal(hex(await crypto.subtle.digest("SHA-256", joined(direct.stdout))), want);
        // Without it (and for runs that do not stream both ways), the pipes as before.
        const piped = await collect(l.run(s, { code: ECHO, stdin: source(), streamStdout: true }));
        assert.equal(piped.stderr, "pipe pipe\n");
        assert.equal(hex(await crypto.subtle.digest("SHA-256", joined(piped.stdout))), want);
        const oneWay = await collect(
          l.run(s, { code: ECHO, stdin: new Uint8Array(3), directStdio: true }),
        );
        assert.equal(oneWay.stderr, "pipe pipe\n");
      });
    },
  );

  Deno.test(
    {
      name:
        `directStdio: a worker that never reads holds at most a window of stdin (${mode})${why}`,
      ignore,
    },
    async () => {
      await withSession(mode, async (l, s) => {
        let pulled = 0;
        let finished = false;
        async function* endless() {
          try {
            while (true) {
              pulled += MiB;
              yield new Uint8Array(MiB);
            }
          } finally {
            finished = true;
          }
        }
        for await (
          const ev of l.run(s, {
            code: "import sys, time\nsys.stderr.write('ready\\n')\nsys.stderr.flush()\n" +
              "time.sleep(3600)\n",
            stdin: endless(),
            streamStdout: true,
            directStdio: true,
          })
        ) {
          if (ev.kind === "stderr" && decoder.decode(ev.data).includes("ready")) {
            // Give an unbounded sender every chance to run ahead before looking.
            await new Promise((r) => setTimeout(r, 300));
            // The window, what the kernel buffers of the socket, and the chunk in hand.
            const bound = DIRECT_STDIN_WINDOW + 8 * MiB + MiB;
            assert.ok(pulled <= bound, `pulled ${pulled} bytes of a worker that reads none`);
            break;
          }
        }
        // Breaking out killed the run; the source is let go with it.
        for (let i = 0; i < 200 && !finished; i++) await new Promise((r) => setTimeout(r, 20));
        assert.ok(finished, "the source was not closed after the run ended");
      });
    },
  );

  Deno.test(
    {
      name:
        `directStdio: stdout past streamBytes is cut there, killed, reported truncated (${mode})${why}`,
      ignore,
    },
    async () => {
      await withSession(mode, async (l, s) => {
        const r = await collect(l.run({ ...s, limits: { streamBytes: 3 * MiB + 5 } }, {
          code: "import os\nchunk = b'x' * (1 << 20)\nwhile True:\n    os.write(1, chunk)\n",
          stdin: (async function* () {})(),
          streamStdout: true,
          directStdio: true,
        }));
        assert.equal(r.stdout.reduce((n, b) => n + b.length, 0), 3 * MiB + 5);
        assert.match(r.stderr, /\[valise\] output stream truncated at 3145733 bytes/);
        assert.ok(r.exit?.kind === "exited");
        assert.equal(r.exit.outputTruncated, true);
        assert.equal(r.exit.signal, "SIGKILL");
      });
    },
  );

  Deno.test(
    {
      name:
        `directStdio: a process that keeps the socket after its run does not hold the run (${mode})${why}`,
      ignore,
    },
    async () => {
      await withSession(mode, async (l, s) => {
        // The run's leader exits; a grandchild that left its process group keeps fd 1 (the
        // socket) open and never writes (its stderr, a pipe, it lets go). The run still ends (after the kill grace), with what
        // the leader wrote.
        const r = await collect(l.run(s, {
          code: "import os, time\nif os.fork() == 0:\n    os.setsid()\n" +
            "    os.dup2(os.open('/dev/null', os.O_WRONLY), 2)\n    time.sleep(3600)\n" +
            "os.write(1, b'leader')\n",
          stdin: (async function* () {})(),
          streamStdout: true,
          directStdio: true,
        }));
        assert.equal(decoder.decode(joined(r.stdout)), "leader");
        assert.ok(r.exit?.kind === "exited");
        assert.equal(r.exit.exitCode, 0);
      });
    },
  );
}
