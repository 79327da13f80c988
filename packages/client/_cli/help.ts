// Copyright 2026 the Valise authors. Apache-2.0 license.
import { closest, parseCommand, UsageError } from "./args.ts";
import { type Context, DEFAULT_REMOTE, out } from "./context.ts";
import { HELP_COMMAND } from "./specs.ts";

/** The help of the CLI (`main`) and of each command. */
export const HELP: Record<string, string> = {
  main: `valise: add artifacts to a Valise (Spark Connect) session and run Python in it.

Usage: valise [OPTIONS] <COMMAND> [ARGS...]

Commands:
  add      Add local files to the session (--pyfile, --archive, --file)
  conf     Set, get, unset or list the session's config
  run      Run Python in the session (-c CODE, -m MODULE or SCRIPT)
  python   Python's interactive console in the session
  apply    Run a Python function over an Arrow file's record batches
  pip      Install, list or uninstall packages in the session
  status   Show the session, or whether artifacts exist
  release  Release the session on the server and forget it
  ls       List the session's artifacts (name, size, kind, sha256, view)
  rm       Remove artifacts from the session
  health   Ask the server whether it serves (no token needed)
  new      Start a new session (releasing the remembered one)
  help     Show this help, or a command's: valise help COMMAND
  completions bash|zsh|fish
           Print a shell completion script

Options (also accepted after the command):
  --remote URL     Connection string, several nodes as sc://H1:PORT,H2:PORT/;…
                   (default: $VALISE_REMOTE, $SPARK_REMOTE, else ${DEFAULT_REMOTE})
  --session UUID   Use this session instead of the remembered one
  --retries N      Attempts per call while nodes are unavailable (default 5)
  --json           Print JSON lines on stdout, for scripts (see docs/cli.md)
  -q, --quiet      No progress or notices on stderr
  -h, --help       Show help (also: valise help COMMAND, valise COMMAND --help)
  -V, --version    Show the version

Every option also takes its value as --opt=value.

Consecutive commands share a session: its id is remembered per remote in
$VALISE_STATE_FILE (default ~/.config/valise/cli-state.json). When the server has
closed it (released, or idle too long), the next command starts a new one and
says so. Relative paths are resolved against $INIT_CWD when set (deno task), else
the current directory.
`,
  add: `Usage: valise add [--pyfile | --archive | --file] PATH...

Adds local files to the session with PySpark's names:
  --pyfile   .py, .zip, .egg or .jar on the workers' sys.path   (pyfiles/NAME)
  --archive  .zip .jar .tar .tar.gz .tgz .tar.zst .tar.xz .tar.bz2, unpacked in the
             session directory; PATH#ALIAS unpacks it as ALIAS/ (archives/NAME#ALIAS)
  --file     any file, placed in the session directory          (files/NAME)
  (none)     .jar files only                                    (jars/NAME)
Files the server already holds are attached without sending their bytes.
Prints one line per artifact as the server commits it:
NAME<TAB>SIZE<TAB>uploaded|attached. A directory must be packed first (zip or tar).
`,
  conf: `Usage: valise conf set KEY VALUE
       valise conf get KEY
       valise conf unset KEY...
       valise conf list [PREFIX]

Reads and writes the session's config (Spark's spark.conf). 'list' prints KEY=VALUE
lines; with PREFIX, only keys under it (printed without the prefix, as Spark does).
`,
  run:
    `Usage: valise run [-i] [--stdin FILE] [--timeout-ms N] (-c CODE | -m MODULE | SCRIPT) [ARGS...]

Runs Python in the session's directory with its interpreter. Everything after CODE,
MODULE or SCRIPT is passed to the program. SCRIPT is a path in the session directory
(e.g. a file added with 'add --file'). stdout and stderr stream live; the exit code
is the program's (124 when the time limit killed it, 128+N for signal N).
  --stdin FILE      Send FILE's bytes to the program's stdin. '-' streams this stdin
                    as it comes (a pipe, or lines typed at the terminal; Ctrl-D ends it)
  -i, --interactive After the target (or alone), Python's console on this terminal,
                    like python -i; stderr then goes to stdout
  --timeout-ms N    Wall-clock limit in milliseconds (0: the server's default; runs
                    with a streamed stdin have the server's interactive limit, 1 hour)
With a streamed stdin (--stdin -, -i), Ctrl-C interrupts the program (KeyboardInterrupt);
a second Ctrl-C that got no answer ends the run (exit code 130), and so does Ctrl-\\
at once (131). Otherwise Ctrl-C ends the run.
`,
  python: `Usage: valise python [--timeout-ms N] [-- ARGS...]

Python's interactive console in the session: its interpreter, working directory and
artifacts, as 'pyspark' gives a shell. Lines typed reach it as they are entered; its
prompts, results and tracebacks come back in order on stdout. ARGS become sys.argv[1:].
Ctrl-D ends it (exit code 0, or n after exit(n)); Ctrl-C interrupts the statement that
runs (KeyboardInterrupt, back to the prompt); a second Ctrl-C that got no answer ends
the run (exit code 130), and so does Ctrl-\\ at once (131). Same as 'valise run -i'.
  --timeout-ms N    Wall-clock limit in milliseconds (0: the server's interactive
                    limit, 1 hour by default)
`,
  apply: `Usage: valise apply (--fn MOD:FN | --code FILE --function NAME) --in FILE --out FILE
                    [--form columns|pandas|pyarrow] [--schema FILE] [--timeout-ms N]

Runs a Python function in the session (its interpreter and sys.path) once per record
batch of an Arrow IPC stream or file, streaming, and writes what it returns as an Arrow
IPC stream, batch by batch as they arrive. What the function prints goes to stderr; a
summary line (rows in and out) follows unless --quiet.
  --fn MOD:FN        A function importable in the session (e.g. from 'add --pyfile')
  --code FILE        A local Python file that defines the function ...
  --function NAME    ... named NAME
  --form FORM        What the function gets per batch: columns (dict of lists, the
                     default), pandas (a DataFrame) or pyarrow (a RecordBatch)
  --schema FILE      An Arrow IPC file or stream whose schema the output must have
                     (default: inferred from the first output batch)
  --in FILE          The input ('-' for stdin)
  --out FILE         The output ('-' for stdout); removed again if the call fails
  --timeout-ms N     Wall-clock limit in milliseconds (0: the server's)
`,
  pip: `Usage: valise pip install [--index-url URL] [--extra-index-url URL,...] [--replace]
                        [-r FILE] PKG|WHEEL...
       valise pip list
       valise pip uninstall NAME...

Installs packages into the session: its requirement set (spark.valise.pip.requirements)
with these in it, resolved and installed together on the server into a layer that its
runs see on sys.path after its pyfiles (and that every session with the same set, the
same interpreter and the same index shares). The resolver's and installer's output
streams to stderr; stdout gets NAME==VERSION for each distribution the layer holds.
  PKG               A requirement: requests==2.32.3, idna>=3.7, pkg[extra]
  WHEEL             A local wheel file (./dist/mylib-1.0-py3-none-any.whl): uploaded as
                    files/NAME and required by its name and version
  -r FILE           The requirements of FILE, one per line (no pip options in it)
  --index-url URL   Install from this index (one the server offers)
  --extra-index-url URL,...  More indexes (ones the server offers)
  --replace         The set becomes these requirements alone
'list' prints what the layer holds, without installing anything; 'uninstall' takes
requirements out of the set (their layer goes; what is left is installed if need be).
`,
  status: `Usage: valise status [NAME...]

Without NAMEs, shows the remote, the session id, its state (open, closed or none)
and the user. With NAMEs (artifact names such as pyfiles/util.py), prints
NAME<TAB>exists|missing for each; the exit code is 1 when any is missing. Never
starts a session.
`,
  new: `Usage: valise new

Starts a new session for the remote and remembers it; the remembered one, if the
server still has it, is released first (its files are deleted). Prints the new
session's id.
`,
  clone: `Usage: valise clone [--as UUID] [--no-switch]

Clones the session on the server (Spark's CloneSession): a new session holding the
same artifacts, shared by reference (an environment of any size costs no copy), and
the same config. The two are independent afterwards. Prints the clone's id and,
unless --no-switch, remembers it for the remote so that the next commands use it.
`,
  ls: `Usage: valise ls [--json]

Lists the session's artifacts, one per line:
NAME<TAB>SIZE<TAB>KIND<TAB>SHA256<TAB>VIEW, where VIEW is how the session's working
directory shows it (./util.py, ./env/ for an unpacked archive with its entries and
size, - when it does not). A summary goes to stderr unless --quiet, and so do the
warnings the server's environment checks recorded for an artifact. --json prints one
JSON object per artifact instead (with its warnings). Creates no session.
`,
  rm: `Usage: valise rm NAME...

Removes artifacts from the session, all or none: NAMEs are as 'valise ls' prints them
(e.g. archives/env.tar.gz#env). Prints NAME<TAB>removed for each. The session's quota
gets the bytes back at once. Runs in progress keep seeing the removed artifacts in
their working directory until they end; runs started later do not.
`,
  health: `Usage: valise health [SERVICE]

Asks the server's standard health service (grpc.health.v1) whether it serves, and
prints SERVING or NOT_SERVING (shutting down); the exit code is 0 only for SERVING.
SERVICE is a service name such as valise.v1.WorkerService (default: the server). No
token and no session are needed; one attempt per node of --remote unless --retries N.
`,
  release: `Usage: valise release

Releases the session on the server (its files are deleted) and forgets it locally.
`,
  help: `Usage: valise help [COMMAND]

Shows the help of the CLI, or of COMMAND (the same as valise COMMAND --help).
`,
  completions: `Usage: valise completions bash|zsh|fish

Prints a completion script for the shell. To use it:
  bash  source <(valise completions bash)      # in ~/.bashrc
  zsh   source <(valise completions zsh)       # in ~/.zshrc, after compinit
  fish  valise completions fish > ~/.config/fish/completions/valise.fish
`,
};

/**
 * Prints a command's help (the CLI's for an unknown one).
 *
 * @param command The command, or `main`.
 * @returns The exit code, 0.
 */
export function help(command: string): number {
  out(HELP[command] ?? HELP.main!);
  return 0;
}

/**
 * A command's usage lines (from `Usage:` to the first blank line), for usage errors.
 *
 * @param command The command, or `main`.
 * @returns The lines, ending with a newline; empty for a command without help.
 */
export function usageOf(command: string): string {
  const text = HELP[command] ?? "";
  const at = text.indexOf("Usage:");
  if (at < 0) return "";
  const end = text.indexOf("\n\n", at);
  return `${text.slice(at, end < 0 ? undefined : end)}\n`;
}

/**
 * `valise help [COMMAND]`.
 *
 * @param args The words after `help`.
 * @param ctx The context.
 * @param commands The CLI's commands.
 * @returns The exit code.
 */
export function helpCommand(args: string[], ctx: Context, commands: readonly string[]): number {
  const { positionals } = parseCommand(args, ctx.globals, HELP_COMMAND);
  if (positionals.length > 1) throw new UsageError("help takes at most one COMMAND", "help");
  const [name] = positionals;
  if (name === undefined) return help("main");
  if (!commands.includes(name)) {
    const near = closest(name, commands);
    throw new UsageError(
      `unknown command "${name}"${near === undefined ? "" : `; did you mean "${near}"?`}`,
      "help",
    );
  }
  if (HELP[name] === undefined) {
    // A command without an entry here answers its own --help.
    return -1;
  }
  return help(name);
}
