// Copyright 2026 the Valise authors. Apache-2.0 license.
// Each command's words as data: its commands read them with parseCommand, and the shell
// completions are generated from them, so the two cannot disagree.
import type { CommandSpec, Options } from "./args.ts";

/** A command's words, with what the completions need. */
export interface CommandInfo<O extends Options = Options> extends CommandSpec<O> {
  /** One line for `valise help` and the completions. */
  summary: string;
  /**
   * What its plain words complete to: local paths (`file`), the CLI's commands (`commands`),
   * or these words (first word only, e.g. `conf set`). Nothing when absent.
   */
  args?: "file" | "commands" | readonly string[];
}

/** The CLI's own words before a command. */
export const MAIN = {
  command: "main",
  summary: "valise",
  options: { version: { type: "boolean", short: "V", help: "show the version" } },
  positionals: "stop",
  args: "commands",
} as const satisfies CommandInfo;

const timeoutMs = { type: "string", help: "wall-clock limit in milliseconds" } as const;

/** `valise add`. */
export const ADD = {
  command: "add",
  summary: "Add local files to the session (--pyfile, --archive, --file)",
  options: {
    pyfile: { type: "boolean", help: "a .py/.zip/.egg on the workers' sys.path" },
    archive: { type: "boolean", help: "an archive unpacked in the session (PATH#ALIAS)" },
    file: { type: "boolean", help: "any file, placed in the session directory" },
  },
  positionals: "any",
  args: "file",
} as const satisfies CommandInfo;

/** `valise conf`. */
export const CONF = {
  command: "conf",
  summary: "Set, get, unset or list the session's config",
  options: {},
  positionals: "any",
  // A value may start with a dash (`conf set KEY -1`).
  plainAfter: 2,
  args: ["set", "get", "unset", "list"],
} as const satisfies CommandInfo;

/** `valise run`. */
export const RUN = {
  command: "run",
  summary: "Run Python in the session (-c CODE, -m MODULE or SCRIPT)",
  options: {
    stdin: {
      type: "string",
      help: "send this file's bytes to stdin (- for stdin)",
      values: "file",
    },
    "timeout-ms": timeoutMs,
    interactive: {
      type: "boolean",
      short: "i",
      help: "then Python's console in the program's globals, like python -i",
    },
    // Named by their letters, like Python's own -c and -m.
    c: { type: "string", short: "c", help: "Python code to run" },
    m: { type: "string", short: "m", help: "a module to run" },
  },
  positionals: "stop",
  stopAt: ["c", "m"],
} as const satisfies CommandInfo;

/** `valise apply`. */
export const APPLY = {
  command: "apply",
  summary: "Run a Python function over an Arrow file's record batches",
  options: {
    fn: { type: "string", help: "MOD:FN, a function importable in the session" },
    code: { type: "string", help: "a local Python file defining the function", values: "file" },
    function: { type: "string", help: "the function's name in --code" },
    form: {
      type: "string",
      help: "what the function gets per batch",
      values: ["columns", "pandas", "pyarrow"],
    },
    schema: { type: "string", help: "an Arrow file with the output's schema", values: "file" },
    in: { type: "string", help: "the input Arrow file (- for stdin)", values: "file" },
    out: { type: "string", help: "the output Arrow stream (- for stdout)", values: "file" },
    "timeout-ms": timeoutMs,
  },
  positionals: "none",
} as const satisfies CommandInfo;

/** `valise pip`. */
export const PIP = {
  command: "pip",
  summary: "Install, list or uninstall packages in the session",
  options: {
    requirement: {
      type: "string",
      short: "r",
      help: "install the requirements of this file",
      values: "file",
    },
    "index-url": { type: "string", help: "an index the server offers" },
    "extra-index-url": { type: "string", help: "more indexes the server offers (URL,URL)" },
    replace: { type: "boolean", help: "the set becomes these requirements alone" },
  },
  positionals: "any",
  args: ["install", "list", "uninstall"],
} as const satisfies CommandInfo;

/** `valise status`. */
export const STATUS = {
  command: "status",
  summary: "Show the session, or whether artifacts exist",
  options: {},
  positionals: "any",
} as const satisfies CommandInfo;

/** `valise new`. */
export const NEW = {
  command: "new",
  summary: "Start a new session (releasing the remembered one)",
  options: {},
  positionals: "none",
} as const satisfies CommandInfo;

/** `valise clone`. */
export const CLONE = {
  command: "clone",
  summary: "Clone the session (artifacts by reference, config) and switch to the clone",
  options: {
    as: { type: "string", help: "the clone's session id (a UUID; a new one by default)" },
    "no-switch": { type: "boolean", help: "keep using the session cloned" },
  },
  positionals: "none",
} as const satisfies CommandInfo;

/** `valise release`. */
export const RELEASE = {
  command: "release",
  summary: "Release the session on the server and forget it",
  options: {},
  positionals: "none",
} as const satisfies CommandInfo;

/** `valise help`. */
export const HELP_COMMAND = {
  command: "help",
  summary: "Show the help of the CLI or of a command",
  options: {},
  positionals: "any",
  args: "commands",
} as const satisfies CommandInfo;

/** `valise completions`. */
export const COMPLETIONS = {
  command: "completions",
  summary: "Print a shell completion script (bash, zsh or fish)",
  options: {},
  positionals: "any",
  args: ["bash", "zsh", "fish"],
} as const satisfies CommandInfo;

/**
 * The specs by command name, in the order `valise help` lists them. A command without one here
 * still works; its completions are the global options and local paths.
 */
export const SPECS: Readonly<Record<string, CommandInfo>> = {
  add: ADD,
  conf: CONF,
  run: RUN,
  apply: APPLY,
  pip: PIP,
  status: STATUS,
  new: NEW,
  clone: CLONE,
  release: RELEASE,
  help: HELP_COMMAND,
  completions: COMPLETIONS,
};
