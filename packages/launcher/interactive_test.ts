// Copyright 2026 the Valise authors. Apache-2.0 license.
// Interactive runs: Python's console on a streamed stdin (`repl`, like `python -i`), answering
// each line before the next is typed; interrupts (Ctrl-C) through the fork server; the longer
// wall-clock limit of runs a person types into.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Launcher, type LauncherLimits, RunControl, type SessionSpec } from "./mod.ts";
import { eachSandbox, reachablePython } from "./testdata/helpers.ts";
import { Transcript, Typist } from "./testdata/conversation.ts";

async function withSession(
  sandbox: "none" | "bwrap",
  fn: (l: Launcher, s: SessionSpec) => Promise<void>,
  limits: Partial<LauncherLimits> = {},
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "valise-interactive-" });
  const l = new Launcher({ sandbox, ...reachablePython(sandbox), logger: () => {}, limits });
  try {
    await fn(l, { key: `interactive-${sandbox}`, root, pythonPath: [] });
  } finally {
    await l.close();
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("the console answers each line before the next is typed; Ctrl-D ends it", async (t) => {
  await eachSandbox(t, (sandbox) =>
    withSession(sandbox, async (l, s) => {
      const typist = new Typist();
      const run = new Transcript(l.run(s, { repl: true, stdin: typist.stdin() }));
      let at = await run.waitFor(">>> ");
      assert.match(run.stdout, /^Python 3\.\d+/, "the banner names Python");
      typist.type("6 * 7\n");
      at = await run.waitFor("42\n>>> ", at);
      // The first answer came while the second line was not typed yet.
      assert.equal(typist.pulled, 1);
      typist.type("for i in range(2):\n");
      at = await run.waitFor("... ", at);
      typist.type("    print('line', i)\n");
      at = await run.waitFor("... ", at);
      typist.type("\n");
      at = await run.waitFor("line 0\nline 1\n>>> ", at);
      // The program's own input() gets the next line, not the console.
      typist.type("name = input('who? ')\n");
      at = await run.waitFor("who? ", at);
      typist.type("ada\n");
      at = await run.waitFor(">>> ", at);
      typist.type("name\n");
      at = await run.waitFor("'ada'\n>>> ", at);
      typist.type("import os; os.getcwd() == " + JSON.stringify(s.root) + "\n");
      at = await run.waitFor("True\n>>> ", at);
      // Tracebacks come on the same stream, in order, before the next prompt.
      typist.type("1 / 0\n");
      at = await run.waitFor("ZeroDivisionError: division by zero\n>>> ", at);
      typist.end();
      await run.done;
      assert.equal(run.exit?.exitCode, 0, run.stdout + run.stderr);
      assert.equal(run.stderr, "");
    }));
});

Deno.test("repl after a script: the console sees the script's own globals, like python -i", async (t) => {
  await eachSandbox(t, (sandbox) =>
    withSession(sandbox, async (l, s) => {
      await Deno.writeTextFile(
        join(s.root, "tool.py"),
        "import sys\ncount = 0\ndef bump():\n    global count\n    count += 1\nprint('args', sys.argv[1:])\n",
      );
      const typist = new Typist();
      const run = new Transcript(
        l.run(s, { script: "tool.py", args: ["a"], repl: true, stdin: typist.stdin() }),
      );
      let at = await run.waitFor("args ['a']\n>>> ");
      typist.type("bump(); bump(); count\n");
      at = await run.waitFor("2\n>>> ", at);
      typist.type("exit(3)\n");
      await run.done;
      assert.equal(run.exit?.exitCode, 3);
    }));
});

Deno.test("repl after code that raises SystemExit: the traceback shows and the console starts", async () => {
  await withSession("none", async (l, s) => {
    const typist = new Typist();
    const run = new Transcript(
      l.run(s, { code: "x = 5\nraise SystemExit(4)", repl: true, stdin: typist.stdin() }),
    );
    // The traceback comes first, on the console's stream.
    const at = await run.waitFor("SystemExit: 4\n>>> ");
    typist.type("x\n");
    await run.waitFor("5\n>>> ", at);
    typist.end();
    await run.done;
    assert.equal(run.exit?.exitCode, 0);
  });
});

Deno.test("repl with a script that does not exist exits 2, as python -i does", async () => {
  await withSession("none", async (l, s) => {
    const typist = new Typist();
    const run = new Transcript(l.run(s, { script: "nope.py", repl: true, stdin: typist.stdin() }));
    await run.done;
    assert.equal(run.exit?.exitCode, 2);
    assert.match(run.stderr, /can't open file/);
  });
});

Deno.test("an interrupt stops the statement that runs; the console carries on", async (t) => {
  await eachSandbox(t, (sandbox) =>
    withSession(sandbox, async (l, s) => {
      const typist = new Typist();
      const control = new RunControl();
      const run = new Transcript(l.run(s, { repl: true, stdin: typist.stdin(), control }));
      let at = await run.waitFor(">>> ");
      typist.type("exec(\"print('spinning', flush=True)\\nwhile True: pass\")\n");
      at = await run.waitFor("spinning\n", at);
      assert.equal(control.interrupt(), true);
      at = await run.waitFor("KeyboardInterrupt\n>>> ", at);
      // At the prompt too: the line typed so far is dropped.
      typist.type("for i in range(3):\n");
      at = await run.waitFor("... ", at);
      control.interrupt();
      at = await run.waitFor("KeyboardInterrupt\n>>> ", at);
      typist.type("'still' + ' here'\n");
      await run.waitFor("'still here'\n>>> ", at);
      typist.end();
      await run.done;
      assert.equal(run.exit?.exitCode, 0);
      assert.equal(control.interrupt(), false, "the run is over");
    }));
});

Deno.test("an interrupt ends a program that does not catch it, by SIGINT", async () => {
  await withSession("none", async (l, s) => {
    const typist = new Typist();
    const control = new RunControl();
    const run = new Transcript(l.run(s, {
      code: "import sys\nprint('ready', flush=True)\nsys.stdin.read()",
      stdin: typist.stdin(),
      control,
    }));
    await run.waitFor("ready\n");
    control.interrupt();
    await run.done;
    assert.equal(run.exit?.signal, "SIGINT");
    assert.match(run.stderr, /KeyboardInterrupt/);
  });
});

Deno.test("a RunControl serves one run at a time", async () => {
  await withSession("none", async (l, s) => {
    const typist = new Typist();
    const control = new RunControl();
    const first = new Transcript(l.run(s, { repl: true, stdin: typist.stdin(), control }));
    await first.waitFor(">>> ");
    await assert.rejects(
      (async () => {
        for await (const _ of l.run(s, { code: "pass", control })) { /* refused */ }
      })(),
      /already belongs to a run/,
    );
    typist.end();
    await first.done;
    // Free again once its run ended.
    const again = new Transcript(l.run(s, { code: "print('ok')", control }));
    await again.done;
    assert.equal(again.stdout, "ok\n");
  });
});

Deno.test("interactive runs have interactiveTimeMs, not wallTimeMs", async () => {
  // wallTimeMs of 1 ms: a run waiting for stdin that is never typed is always killed by it.
  await withSession("none", async (l, s) => {
    const idle = new Typist();
    const plain = new Transcript(l.run(s, { repl: true, stdin: idle.stdin() }));
    await plain.done;
    assert.equal(plain.exit?.timedOut, true);

    const typist = new Typist();
    const run = new Transcript(l.run(s, { repl: true, interactive: true, stdin: typist.stdin() }));
    const at = await run.waitFor(">>> ");
    typist.type("1 + 1\n");
    await run.waitFor("2\n>>> ", at);
    typist.end();
    await run.done;
    assert.equal(run.exit?.timedOut, false);
    assert.equal(run.exit?.exitCode, 0);
  }, { wallTimeMs: 1 });
  await withSession("none", async (l, s) => {
    const idle = new Typist();
    const run = new Transcript(l.run(s, { repl: true, interactive: true, stdin: idle.stdin() }));
    await run.done;
    assert.equal(run.exit?.timedOut, true);
  }, { interactiveTimeMs: 1 });
});

Deno.test("a run without a target needs repl", () => {
  const l = new Launcher({ sandbox: "none", logger: () => {} });
  return (async () => {
    try {
      await assert.rejects(
        (async () => {
          for await (const _ of l.run({ key: "k", root: "/tmp", pythonPath: [] }, {} as never)) {
            // refused
          }
        })(),
        TypeError,
      );
    } finally {
      await l.close();
    }
  })();
});
