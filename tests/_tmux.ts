// A real terminal for tests: a program run in a tmux pane of a given size, its screen read with
// capture-pane, keys sent with send-keys. Each terminal has its own tmux server (its own socket),
// ended with it. Tests wait on what the pane shows (polling capture-pane), with a guard deadline.

/** Why tmux cannot be used here, or `undefined` when it can. */
export function tmuxMissing(): string | undefined {
  try {
    const r = new Deno.Command("tmux", { args: ["-V"], stdout: "null", stderr: "null" })
      .outputSync();
    return r.success ? undefined : "tmux -V failed";
  } catch {
    return "tmux is not installed (Debian: apt-get install tmux; deno task setup does it)";
  }
}

/** Options of {@linkcode Terminal.start}. */
export interface TerminalOptions {
  /** Columns. */
  width: number;
  /**
   * Rows.
   * @default {24}
   */
  height?: number;
  /** The program and its arguments, run directly (no shell). */
  command: string[];
  /**
   * Its environment (with TERM and PATH from this process).
   * @default {{}}
   */
  env?: Record<string, string>;
  /**
   * Its working directory.
   * @default {Deno.cwd()}
   */
  cwd?: string;
}

/** A tmux pane running one program; the pane stays when the program ends (remain-on-exit). */
export class Terminal {
  readonly #socket: string;
  readonly #conf: string;

  /**
   * Use {@linkcode Terminal.start}.
   *
   * @param socket The tmux server's socket name.
   * @param conf Its configuration file.
   */
  constructor(socket: string, conf: string) {
    this.#socket = socket;
    this.#conf = conf;
  }

  /**
   * Starts the program in a new detached tmux server of its own.
   *
   * @param options Size, program, environment, directory.
   * @returns The terminal.
   */
  static async start(options: TerminalOptions): Promise<Terminal> {
    const socket = `valise-test-${crypto.randomUUID()}`;
    const conf = await Deno.makeTempFile({ suffix: ".tmux.conf" });
    // No status line (the pane is the whole window); the pane and its screen stay after exit.
    await Deno.writeTextFile(
      conf,
      "set -g status off\nset -g remain-on-exit on\nset -g history-limit 2000\n",
    );
    const t = new Terminal(socket, conf);
    const env = Object.entries(options.env ?? {}).map(([k, v]) => `${k}=${v}`);
    await t.#tmux([
      "new-session",
      "-d",
      "-x",
      String(options.width),
      "-y",
      String(options.height ?? 24),
      "-c",
      options.cwd ?? Deno.cwd(),
      "--",
      "env",
      `PATH=${Deno.env.get("PATH") ?? "/usr/bin:/bin"}`,
      "TERM=screen",
      ...env,
      // The exit status is printed by a shell around the program: tmux's own record of it is
      // not dependable (it can miss the child's exit and leave it a zombie). The shell defers
      // Ctrl-C's SIGINT (a trap, not an ignore, so the program gets its default) until the
      // program has ended.
      "sh",
      "-c",
      `trap true INT; "$@"; echo "${EXIT}$?]"`,
      "sh",
      ...options.command,
    ]);
    return t;
  }

  async #tmux(args: string[]): Promise<string> {
    const r = await new Deno.Command("tmux", {
      args: ["-L", this.#socket, "-f", this.#conf, ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const d = new TextDecoder();
    if (!r.success) throw new Error(`tmux ${args[0]}: ${d.decode(r.stderr)}`);
    return d.decode(r.stdout);
  }

  /**
   * The rows as the terminal shows them (trailing blanks cut, empty rows at the end dropped),
   * from the first line of its history (when the program ended, tmux's own line about it
   * scrolls the screen) or of the screen.
   *
   * @param history Whether to start at the history's first line.
   * @returns The rows.
   */
  async rows(history = true): Promise<string[]> {
    const from = history ? ["-S", "-"] : [];
    return trimRows((await this.#tmux(["capture-pane", "-p", ...from])).split("\n"));
  }

  /**
   * The lines with wrapped rows joined back into the line that wrapped: a line longer than the
   * width shows here as one long line.
   *
   * @param history Whether to start at the history's first line.
   * @returns The lines.
   */
  async lines(history = true): Promise<string[]> {
    const from = history ? ["-S", "-"] : [];
    return trimRows((await this.#tmux(["capture-pane", "-p", "-J", ...from])).split("\n"));
  }

  /**
   * Sends keys (tmux key names, e.g. `C-c`, `Tab`, or literal text).
   *
   * @param keys The keys.
   */
  async send(...keys: string[]): Promise<void> {
    await this.#tmux(["send-keys", ...keys]);
  }

  /**
   * Sends text as typed, without key-name lookup.
   *
   * @param text The text.
   */
  async type(text: string): Promise<void> {
    await this.#tmux(["send-keys", "-l", text]);
  }

  /**
   * Polls the screen until `done` holds for its lines; fails with the screen after `guardMs`.
   *
   * @param what What is awaited, for the failure.
   * @param done The condition, given the joined lines and the rows.
   * @param options The deadline that turns a hang into a failure (default 60 s); whether to
   *   look at the history too (default) or at the screen only.
   * @returns The lines that satisfied it.
   */
  async waitFor(
    what: string,
    done: (lines: string[], rows: string[]) => boolean,
    options: { guardMs?: number; history?: boolean } = {},
  ): Promise<string[]> {
    const { guardMs = 60_000, history = true } = options;
    const deadline = Date.now() + guardMs;
    while (true) {
      const lines = await this.lines(history);
      if (done(lines, await this.rows(history))) return lines;
      if (Date.now() > deadline) {
        throw new Error(`timed out waiting for ${what}; the screen:\n${lines.join("\n")}`);
      }
      // Between two looks at the screen; the condition, not this pause, ends the wait.
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /**
   * Waits for the program to end: the shell around it prints `[exit N]` on the line after the
   * cursor's (so a program that left its cursor mid-line shows it there).
   *
   * @param guardMs The deadline that turns a hang into a failure.
   * @returns Its exit status.
   */
  async exited(guardMs = 60_000): Promise<number> {
    const lines = await this.waitFor(
      "the program to end",
      (ls) => ls.some((l) => l.includes(EXIT)),
      { guardMs },
    );
    const m = new RegExp(`${EXIT.replace("[", "\\[")}(\\d+)\\]$`).exec(
      lines.find((l) => l.includes(EXIT))!,
    );
    return Number(m?.[1]);
  }

  /** Ends the tmux server of this terminal (and its program, if still running). */
  async close(): Promise<void> {
    // The server leaves its socket behind when killed.
    const socket = await this.#tmux(["display-message", "-p", "#{socket_path}"])
      .then((s) => s.trim(), () => "");
    await this.#tmux(["kill-server"]).catch(() => {});
    if (socket.includes(this.#socket)) await Deno.remove(socket).catch(() => {});
    await Deno.remove(this.#conf).catch(() => {});
  }
}

/** How the shell around the program starts its exit status line. */
const EXIT = "[exit ";

/** tmux's own line under a dead pane (remain-on-exit): not the program's output. */
const DEAD = /^Pane is dead/;

function trimRows(rows: string[]): string[] {
  const out = rows.map((r) => r.replace(/\s+$/, "")).filter((r) => !DEAD.test(r));
  while (out.length > 0 && out.at(-1) === "") out.pop();
  return out;
}
