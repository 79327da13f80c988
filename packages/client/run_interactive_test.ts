// Copyright 2026 the Valise authors. Apache-2.0 license.
// session.run() with a streamed stdin (RunInteractive) against a real server: a ReadableStream
// written line by line, each answer seen before the next line is written; Python's console
// with interrupts; the stream cancelled when the program exits; big stdin in small messages;
// a failing stream.
import { equal, ok, rejects } from "node:assert/strict";
import { connect, RunControl, type RunEvent, type Session } from "./mod.ts";
import { withServer } from "./_test_util.ts";

const GUARD_MS = 60_000;

/** The run's stdout as it arrives, with waits for what it should say. */
class Output {
  text = "";
  exit: Extract<RunEvent, { kind: "exited" }> | undefined;
  failure: unknown;
  readonly done: Promise<void>;
  #waiters: (() => void)[] = [];
  #over = false;

  constructor(events: AsyncIterable<RunEvent>) {
    const dec = new TextDecoder();
    this.done = (async () => {
      try {
        for await (const ev of events) {
          if (ev.kind === "stdout") this.text += dec.decode(ev.data, { stream: true });
          if (ev.kind === "exited") this.exit = ev;
          this.#notify();
        }
      } catch (e) {
        this.failure = e;
      } finally {
        this.#over = true;
        this.#notify();
      }
    })();
  }

  /** Resolves once stdout, from `from` on, holds `text`; fails if the run ends or hangs first. */
  async waitFor(text: string, from = 0): Promise<number> {
    const deadline = Date.now() + GUARD_MS;
    while (this.text.indexOf(text, from) < 0) {
      if (this.#over || Date.now() > deadline) {
        throw new Error(`no ${JSON.stringify(text)} in ${JSON.stringify(this.text)}`);
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        timer = setTimeout(r, GUARD_MS);
      });
      clearTimeout(timer);
    }
    return this.text.indexOf(text, from) + text.length;
  }

  #notify(): void {
    for (const w of this.#waiters.splice(0)) w();
  }
}

/** A stdin the test writes to, line by line. */
function typedStdin(): { stream: ReadableStream<Uint8Array>; type(t: string): void; end(): void } {
  let ctl!: ReadableStreamDefaultController<Uint8Array>;
  const stream = new ReadableStream<Uint8Array>({ start: (c) => void (ctl = c) });
  return {
    stream,
    type: (t) => ctl.enqueue(new TextEncoder().encode(t)),
    end: () => ctl.close(),
  };
}

async function withSession(fn: (s: Session) => Promise<void>): Promise<void> {
  await withServer(async (t) => {
    const session = connect(t.url);
    try {
      await fn(session);
    } finally {
      session.close();
    }
  });
}

Deno.test("run() with a ReadableStream stdin: each line's answer comes before the next line is written; the end is EOF", async () => {
  await withSession(async (session) => {
    const stdin = typedStdin();
    const out = new Output(session.run({
      code: "import sys\nfor l in sys.stdin:\n    print(l.strip()[::-1], flush=True)\nprint('eof')",
      stdin: stdin.stream,
    }));
    let at = 0;
    for (const word of ["stressed", "drawer", "live"]) {
      // Written only once the previous answer is back: a client that sent stdin whole, or a
      // server that read it whole, would never answer.
      stdin.type(`${word}\n`);
      at = await out.waitFor(`${[...word].reverse().join("")}\n`, at);
    }
    stdin.end();
    await out.done;
    equal(out.failure, undefined);
    equal(out.text, "desserts\nreward\nevil\neof\n");
    equal(out.exit?.exitCode, 0);
  });
});

Deno.test("run({ repl: true }) with a RunControl: prompts, answers, an interrupt, exit()", async () => {
  await withSession(async (session) => {
    const stdin = typedStdin();
    const control = new RunControl();
    equal(control.interrupt(), false, "no run yet");
    const out = new Output(session.run({ repl: true, stdin: stdin.stream, control }));
    let at = await out.waitFor(">>> ");
    stdin.type("total = sum(range(10))\n");
    at = await out.waitFor(">>> ", at);
    stdin.type("total\n");
    at = await out.waitFor("45\n>>> ", at);
    stdin.type("import time\n");
    at = await out.waitFor(">>> ", at);
    stdin.type("print('sleeping', flush=True); time.sleep(600)\n");
    at = await out.waitFor("sleeping\n", at);
    equal(control.interrupt(), true);
    at = await out.waitFor("KeyboardInterrupt\n>>> ", at);
    stdin.type("exit(7)\n");
    await out.done;
    equal(out.failure, undefined);
    equal(out.exit?.exitCode, 7);
    equal(control.interrupt(), false, "the run is over");
  });
});

Deno.test("run(): the stdin stream is cancelled once the program exits, though it never ended", async () => {
  await withSession(async (session) => {
    let cancelled!: () => void;
    const wasCancelled = new Promise<void>((r) => cancelled = r);
    const stream = new ReadableStream<Uint8Array>({
      start: (c) => c.enqueue(new TextEncoder().encode("only line\n")),
      cancel: () => cancelled(),
    });
    const r = await session.runCollect({ code: "print(input().upper())", stdin: stream });
    equal(r.stdout, "ONLY LINE\n");
    equal(r.exitCode, 0);
    await wasCancelled;
  });
});

Deno.test("run(): a 3 MiB chunk of an async iterable goes in 64 KiB messages and arrives whole", async () => {
  await withSession(async (session) => {
    const big = new Uint8Array(3 * 1024 * 1024 + 5);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
    async function* source() {
      yield big;
      yield Uint8Array.of(1, 2, 3);
    }
    const r = await session.runCollect({
      code:
        "import sys, hashlib\nb = sys.stdin.buffer.read()\nprint(len(b), hashlib.sha256(b).hexdigest())",
      stdin: source(),
    });
    const all = new Uint8Array(big.length + 3);
    all.set(big);
    all.set([1, 2, 3], big.length);
    const hex = [...new Uint8Array(await crypto.subtle.digest("SHA-256", all))]
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    equal(r.stdout, `${all.length} ${hex}\n`);
  });
});

Deno.test("run() with a control and stdin given whole: the bytes, then the end of stdin", async () => {
  await withSession(async (session) => {
    const r = await session.runCollect({
      code: "import sys; print(repr(sys.stdin.read()))",
      stdin: "all of it",
      control: new RunControl(),
    });
    equal(r.stdout, "'all of it'\n");
  });
});

Deno.test("runCollect({ repl: true }) with stdin given whole: the console reads it to its end (Run)", async () => {
  await withSession(async (session) => {
    const r = await session.runCollect({ code: "x = 2", repl: true, stdin: "x * 21\n" });
    equal(r.stdout, ">>> 42\n>>> \n");
    equal(r.exitCode, 0);
  });
});

Deno.test("run(): a stdin stream that fails fails the run with its own error, and the worker is killed", async () => {
  await withServer(async (t) => {
    const session = connect(t.url);
    try {
      let answered!: () => void;
      const running = new Promise<void>((r) => answered = r);
      let pulls = 0;
      const stream = new ReadableStream<Uint8Array>({
        pull: async (c) => {
          if (pulls++ === 0) c.enqueue(new TextEncoder().encode("first\n"));
          else {
            // Fails while the worker runs: it answered the first line.
            await running;
            equal(t.server.valise.launcher.stats().running, 1);
            c.error(new Error("the disk went away"));
          }
        },
      });
      await rejects(
        (async () => {
          for await (
            const ev of session.run({
              code: "import sys, time\nprint(sys.stdin.readline(), flush=True)\ntime.sleep(600)",
              stdin: stream,
            })
          ) if (ev.kind === "stdout") answered();
        })(),
        /the disk went away/,
      );
      // The server saw the call cancelled and killed the run (its slot is free again).
      const deadline = Date.now() + GUARD_MS;
      while (t.server.valise.launcher.stats().running > 0) {
        ok(Date.now() < deadline, "the run was not killed");
        await new Promise((r) => setTimeout(r, 20));
      }
    } finally {
      session.close();
    }
  });
});

Deno.test("run(): bad specs are refused before anything is sent", async () => {
  const session = connect("sc://127.0.0.1:1");
  try {
    await rejects(
      session.runCollect({} as never),
      /exactly one of code, module or script, or repl/,
    );
    await rejects(
      session.runCollect({ code: "1", module: "m" } as never),
      /exactly one of code, module or script/,
    );
    await rejects(
      session.runCollect({ code: "1", control: {} as RunControl }),
      /control must be a RunControl/,
    );
  } finally {
    session.close();
  }
});

Deno.test("a RunControl belongs to one run at a time", async () => {
  await withSession(async (session) => {
    const stdin = typedStdin();
    const control = new RunControl();
    const first = new Output(session.run({ repl: true, stdin: stdin.stream, control }));
    await first.waitFor(">>> ");
    await rejects(session.runCollect({ code: "pass", control }), /already belongs to a run/);
    stdin.end();
    await first.done;
    equal(first.exit?.exitCode, 0);
    const again = await session.runCollect({ code: "print('free')", control });
    equal(again.stdout, "free\n");
  });
});
