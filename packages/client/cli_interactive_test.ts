// Copyright 2026 the Valise authors. Apache-2.0 license.
// The CLI's interactive side against a real server: `valise python` and `valise run -i` typed
// into a real terminal (a tmux pane: its screen read with capture-pane), Ctrl-C and Ctrl-D, and
// `run --stdin -` fed through a pipe line by line, each answer read before the next line.
import { equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { sessionDir, withServer, writeFile } from "./_test_util.ts";

const CLI = new URL("./cli.ts", import.meta.url).pathname;
const GUARD_MS = 60_000;

const hasTmux = (() => {
  try {
    return new Deno.Command("tmux", { args: ["-V"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
})();

function sh(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

async function tmux(socket: string, ...args: string[]): Promise<string> {
  const r = await new Deno.Command("tmux", { args: ["-S", socket, ...args], stdout: "piped" })
    .output();
  if (!r.success) throw new Error(`tmux ${args.join(" ")} failed`);
  return new TextDecoder().decode(r.stdout);
}

/** A terminal running one command, typed into and read like a person would. */
class Terminal {
  #socket: string;

  private constructor(socket: string) {
    this.#socket = socket;
  }

  /**
   * Starts `valise ARGS` in a 120x40 pane; when it ends, the pane shows `[exit N]`.
   */
  static async start(dir: string, args: string[], env: Record<string, string>): Promise<Terminal> {
    const socket = join(dir, `tmux-${crypto.randomUUID().slice(0, 8)}.sock`);
    const vars = Object.entries({ NO_COLOR: "1", ...env }).map(([k, v]) => `${k}=${sh(v)}`);
    const cmd = `env ${vars.join(" ")} ${sh(Deno.execPath())} run -A ${sh(CLI)} ${
      args.map(sh).join(" ")
    }; echo "[exit $?]"; exec sleep 3600`;
    await tmux(socket, "new-session", "-d", "-x", "120", "-y", "40", "-s", "t", cmd);
    return new Terminal(socket);
  }

  /** Everything the pane showed, wrapped lines joined. */
  screen(): Promise<string> {
    return tmux(this.#socket, "capture-pane", "-p", "-J", "-S", "-", "-t", "t");
  }

  /** Types a line and Enter. */
  async type(line: string): Promise<void> {
    await tmux(this.#socket, "send-keys", "-t", "t", "-l", line);
    await tmux(this.#socket, "send-keys", "-t", "t", "Enter");
  }

  /** Presses a key (`C-c`, `C-d`, `C-\\`). */
  async press(key: string): Promise<void> {
    await tmux(this.#socket, "send-keys", "-t", "t", key);
  }

  /** Waits until the screen matches (polling it, as a person would look). */
  waitFor(re: RegExp): Promise<string> {
    return this.until((text) => re.test(text), String(re));
  }

  /** Waits until the screen passes `check`. */
  async until(check: (screen: string) => boolean, what: string): Promise<string> {
    const deadline = Date.now() + GUARD_MS;
    while (true) {
      const text = await this.screen();
      if (check(text)) return text;
      if (Date.now() > deadline) throw new Error(`the screen never showed ${what}:\n${text}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Ends the pane and its processes. */
  async close(): Promise<void> {
    await tmux(this.#socket, "kill-server").catch(() => "");
  }
}

/** Waits until `check` holds, polling, within the guard. */
async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + GUARD_MS;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`never saw ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The number of lines of `text` that match. */
function count(text: string, re: RegExp): number {
  return text.split("\n").filter((l) => re.test(l)).length;
}

const ignoreTmux = !hasTmux;
const why = hasTmux ? "" : " (ignored: tmux is not installed)";

Deno.test({
  name:
    `valise python in a real terminal: prompts, results, the session's files, Ctrl-C, Ctrl-D${why}`,
  ignore: ignoreTmux,
  fn: async () => {
    await withServer(async ({ url, tmp }) => {
      const env = { VALISE_STATE_FILE: join(tmp, "state.json"), SPARK_REMOTE: url, INIT_CWD: tmp };
      await writeFile(tmp, "hello.txt", "hello from the session");
      const add = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", CLI, "add", "--file", "hello.txt"],
        env,
        stdout: "null",
        stderr: "piped",
      }).output();
      ok(add.success, new TextDecoder().decode(add.stderr));

      const term = await Terminal.start(tmp, ["python"], env);
      try {
        let screen = await term.waitFor(/^>>> ?$/m);
        match(screen, /valise: Python console in session [0-9a-f-]{36} \(.*python.*\); Ctrl-D/);
        match(screen, /^Python 3\.\d+/m);
        // Each line once the answer and the next prompt are back, as a person types: a line
        // typed ahead would be echoed by the terminal before the prompt.
        await term.type("open('hello.txt').read()");
        await term.waitFor(/^'hello from the session'\n>>>/m);
        await term.type("x = 6 * 7");
        await term.waitFor(/^>>> x = 6 \* 7\n>>>/m);
        await term.type("x");
        await term.waitFor(/^>>> x\n42\n>>>/m);
        await term.type("import time; print('napping'); time.sleep(600)");
        await term.waitFor(/^napping$/m);
        await term.press("C-c");
        await term.waitFor(/^KeyboardInterrupt\n>>>/m);
        await term.type("print('after', x)");
        screen = await term.waitFor(/^after 42\n>>>/m);
        equal(count(screen, /^\[exit/), 0, "still running");
        await term.press("C-d");
        screen = await term.waitFor(/^\[exit \d+\]$/m);
        match(screen, /^\[exit 0\]$/m);
      } finally {
        await term.close();
      }
    });
  },
});

Deno.test({
  name:
    `valise run -i SCRIPT: the script runs, then the console in its globals; exit(n) is the exit code${why}`,
  ignore: ignoreTmux,
  fn: async () => {
    await withServer(async ({ url, tmp }) => {
      const env = { VALISE_STATE_FILE: join(tmp, "state.json"), SPARK_REMOTE: url, INIT_CWD: tmp };
      await writeFile(
        tmp,
        "tool.py",
        "import sys\ngreeting = 'hi ' + sys.argv[1]\nprint('loaded')\n",
      );
      const add = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", CLI, "add", "--file", "tool.py"],
        env,
        stdout: "null",
        stderr: "null",
      }).output();
      ok(add.success);
      const term = await Terminal.start(tmp, ["run", "-i", "tool.py", "ada"], env);
      try {
        await term.waitFor(/^loaded\n>>> ?$/m);
        await term.type("greeting.upper()");
        await term.waitFor(/^'HI ADA'$/m);
        await term.type("exit(4)");
        const screen = await term.waitFor(/^\[exit \d+\]$/m);
        match(screen, /^\[exit 4\]$/m);
      } finally {
        await term.close();
      }
    });
  },
});

Deno.test({
  name:
    `Ctrl-C twice ends a run that ignores the first (130); Ctrl-\\ ends one at once (131)${why}`,
  ignore: ignoreTmux,
  fn: async () => {
    await withServer(async ({ url, tmp, dataDir }) => {
      const env = { VALISE_STATE_FILE: join(tmp, "state.json"), SPARK_REMOTE: url };
      // It answers an interrupt with no output, only a file: the CLI sees no answer.
      const deaf = await Terminal.start(tmp, [
        "run",
        "--stdin",
        "-",
        "-c",
        "import signal, time\nsignal.signal(signal.SIGINT, lambda *a: open('got-sigint', 'w').close())\n" +
        "print('ready', flush=True)\nwhile True: time.sleep(600)",
      ], env);
      try {
        const id = /new session ([0-9a-f-]{36})/.exec(await deaf.waitFor(/^ready$/m))![1]!;
        await deaf.press("C-c");
        // The first Ctrl-C reached the program (two at once may reach this process as one).
        const mark = join(await sessionDir(dataDir, id), "root", "got-sigint");
        await until(() => Deno.stat(mark).then(() => true, () => false), "the interrupt");
        await deaf.press("C-c");
        const screen = await deaf.waitFor(/^\[exit \d+\]$/m);
        match(screen, /valise: cancelled; the worker was stopped/);
        match(screen, /^\[exit 130\]$/m);
      } finally {
        await deaf.close();
      }
      const busy = await Terminal.start(tmp, ["python"], env);
      try {
        await busy.waitFor(/^>>> ?$/m);
        await busy.type("import time; print('napping'); time.sleep(600)");
        await busy.waitFor(/^napping$/m);
        await busy.press("C-\\");
        const screen = await busy.waitFor(/^\[exit \d+\]$/m);
        match(screen, /^\[exit 131\]$/m);
      } finally {
        await busy.close();
      }
    });
  },
});

Deno.test("valise run --stdin - streams a pipe: each answer comes back before the next line is written", async () => {
  await withServer(async ({ url, tmp }) => {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        CLI,
        "run",
        "--stdin",
        "-",
        "-c",
        "import sys\nfor l in sys.stdin:\n    print(len(l.strip()), flush=True)\nprint('done')",
      ],
      env: { NO_COLOR: "1", VALISE_STATE_FILE: join(tmp, "state.json"), SPARK_REMOTE: url },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let out = "";
    const readUntil = async (text: string) => {
      const deadline = Date.now() + GUARD_MS;
      while (!out.includes(text)) {
        ok(Date.now() < deadline, `no ${JSON.stringify(text)} in ${JSON.stringify(out)}`);
        const { value, done } = await reader.read();
        if (done) throw new Error(`stdout ended before ${JSON.stringify(text)}: ${out}`);
        out += value;
      }
    };
    for (const [i, line] of ["a", "bb", "ccc"].entries()) {
      // Written only after the previous answer came back through the server.
      await writer.write(new TextEncoder().encode(`${line}\n`));
      await readUntil(`${i + 1}\n`);
    }
    await writer.close();
    await readUntil("done\n");
    reader.releaseLock();
    await child.stdout.cancel().catch(() => {});
    const status = await child.status;
    await child.stderr.cancel();
    equal(status.code, 0);
    equal(out, "1\n2\n3\ndone\n");
  });
});
