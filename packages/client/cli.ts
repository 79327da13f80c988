// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The `valise` command line: add artifacts to a session, set its config, run Python in it,
 * apply Python functions to Arrow files in it, release it. Run it as `deno task valise …` or
 * `deno run -A jsr:@valise/client/cli …`.
 *
 * ```sh
 * deno task valise add --archive env.tar.gz#environment
 * deno task valise conf set spark.sql.execution.pyspark.python environment/bin/python
 * deno task valise run -c "import sys; print(sys.executable)"
 * deno task valise apply --fn util:double --in data.arrow --out result.arrow
 * deno task valise release
 * ```
 *
 * @module
 */
import { dirname, join, resolve } from "node:path";
import { formatConnectionString, parseConnectionString } from "./connection_string.ts";
import { open as fsOpen } from "node:fs/promises";
import {
  type RecordBatch,
  RecordBatchReader,
  type Schema,
  Table,
  tableFromIPC,
  tableToIPC,
} from "apache-arrow";
import type { ApplyFormName, ApplyFunction, ApplyInput, ApplySummary } from "./apply.ts";
import { isIpcFile } from "./_apply_input.ts";
import { ValiseClientError } from "./error.ts";
import type { RunSpec } from "./run.ts";
import { connect, type Session } from "./session.ts";
import { CLIENT_VERSION } from "./version.ts";
import { ipcStream } from "./_ipc.ts";
import { plainRenderer, type ProgressRenderer, quietRenderer, ttyRenderer } from "./_progress.ts";

const DEFAULT_REMOTE = "sc://localhost:15002";

const HELP: Record<string, string> = {
  main: `valise: add artifacts to a Valise (Spark Connect) session and run Python in it.

Usage: valise [OPTIONS] <COMMAND> [ARGS...]

Commands:
  add      Add local files to the session (--pyfile, --archive, --file)
  conf     Set, get, unset or list the session's config
  run      Run Python in the session (-c CODE, -m MODULE or SCRIPT)
  apply    Run a Python function over an Arrow file's record batches
  status   Show the session, or whether artifacts exist
  release  Release the session on the server and forget it

Options (also accepted after the command):
  --remote URL     Connection string (default: $SPARK_REMOTE, else ${DEFAULT_REMOTE})
  --session UUID   Use this session instead of the remembered one
  --retries N      Attempts per call while the server is unavailable (default 5)
  -q, --quiet      No progress or notices on stderr
  -h, --help       Show help (also: valise <COMMAND> --help)

Consecutive commands share a session: its id is remembered per remote in
$VALISE_STATE_FILE (default ~/.config/valise/cli-state.json). Relative paths are
resolved against $INIT_CWD when set (deno task), else the current directory.
`,
  add: `Usage: valise add [--pyfile | --archive | --file] PATH...

Adds local files to the session with PySpark's names:
  --pyfile   .py, .zip, .egg or .jar on the workers' sys.path   (pyfiles/NAME)
  --archive  .zip .jar .tar .tar.gz .tgz .tar.zst .tar.xz .tar.bz2, unpacked in the
             session directory; PATH#ALIAS unpacks it as ALIAS/ (archives/NAME#ALIAS)
  --file     any file, placed in the session directory          (files/NAME)
  (none)     .jar files only                                    (jars/NAME)
Files the server already holds are attached without sending their bytes.
Prints one line per artifact: NAME<TAB>SIZE<TAB>uploaded|attached.
`,
  conf: `Usage: valise conf set KEY VALUE
       valise conf get KEY
       valise conf unset KEY...
       valise conf list [PREFIX]

Reads and writes the session's config (Spark's spark.conf). 'list' prints KEY=VALUE
lines; with PREFIX, only keys under it (printed without the prefix, as Spark does).
`,
  run: `Usage: valise run [--stdin FILE] [--timeout-ms N] (-c CODE | -m MODULE | SCRIPT) [ARGS...]

Runs Python in the session's directory with its interpreter. Everything after CODE,
MODULE or SCRIPT is passed to the program. SCRIPT is a path in the session directory
(e.g. a file added with 'add --file'). stdout and stderr stream live; the exit code
is the program's (124 when the time limit killed it, 128+N for signal N).
  --stdin FILE      Send FILE's bytes ('-' for this stdin) to the program's stdin
  --timeout-ms N    Wall-clock limit in milliseconds (0: the server's default)
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
  status: `Usage: valise status [NAME...]

Without NAMEs, shows the remote, the session id and the user. With NAMEs (artifact
names such as pyfiles/util.py), prints NAME<TAB>exists|missing for each; the exit code
is 1 when any is missing.
`,
  release: `Usage: valise release

Releases the session on the server (its files are deleted) and forgets it locally.
`,
};

class UsageError extends Error {
  override name = "UsageError";
  readonly command: string;
  constructor(message: string, command = "main") {
    super(message);
    this.command = command;
  }
}

interface Globals {
  remote?: string;
  session?: string;
  retries?: number;
  quiet: boolean;
  help: boolean;
}

interface State {
  sessions: Record<string, { sessionId: string; updatedAt: string }>;
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

function statePath(): string {
  const explicit = env("VALISE_STATE_FILE");
  if (explicit) return explicit;
  const base = env("XDG_CONFIG_HOME") ?? join(env("HOME") ?? ".", ".config");
  return join(base, "valise", "cli-state.json");
}

async function readState(path: string): Promise<State> {
  try {
    const s = JSON.parse(await Deno.readTextFile(path));
    if (s && typeof s === "object" && s.sessions && typeof s.sessions === "object") return s;
  } catch { /* missing or damaged: start afresh */ }
  return { sessions: {} };
}

async function writeState(path: string, state: State): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${crypto.randomUUID()}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(state, null, 2) + "\n", { mode: 0o600 });
  await Deno.rename(tmp, path);
}

/** The state key of a remote: the connection string without its token and session id. */
function stateKey(remote: string): string {
  const c = parseConnectionString(remote);
  delete c.token;
  delete c.sessionId;
  return formatConnectionString(c);
}

function takeValue(args: string[], i: number, flag: string, command: string): string {
  const v = args[i + 1];
  if (v === undefined) throw new UsageError(`${flag} needs a value`, command);
  return v;
}

/** Parses a global option at `args[i]`; returns how many arguments it used (0: not one). */
function globalOption(args: string[], i: number, g: Globals, command: string): number {
  const a = args[i]!;
  const eq = a.indexOf("=");
  const [flag, inline] = a.startsWith("--") && eq > 0 ? [a.slice(0, eq), a.slice(eq + 1)] : [
    a,
    undefined,
  ];
  const value = () => inline ?? takeValue(args, i, flag, command);
  const used = inline === undefined ? 2 : 1;
  switch (flag) {
    case "--remote":
      g.remote = value();
      return used;
    case "--session":
      g.session = value();
      return used;
    case "--retries": {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 1) {
        throw new UsageError(`--retries must be a positive integer`, command);
      }
      g.retries = n;
      return used;
    }
    case "-q":
    case "--quiet":
      g.quiet = true;
      return 1;
    case "-h":
    case "--help":
      g.help = true;
      return 1;
  }
  return 0;
}

interface Context {
  globals: Globals;
  cwd: string;
  remote: string;
  notice: (line: string) => void;
}

async function openSession(
  ctx: Context,
  create = true,
): Promise<{ session: Session; isNew: boolean } | undefined> {
  const path = statePath();
  const key = stateKey(ctx.remote);
  const parsed = parseConnectionString(ctx.remote);
  let sessionId = ctx.globals.session ?? parsed.sessionId;
  let isNew = false;
  if (sessionId === undefined) {
    const state = await readState(path);
    sessionId = state.sessions[key]?.sessionId;
    if (sessionId === undefined) {
      if (!create) return undefined;
      sessionId = crypto.randomUUID();
      isNew = true;
      state.sessions[key] = { sessionId, updatedAt: new Date().toISOString() };
      await writeState(path, state);
      ctx.notice(`valise: new session ${sessionId} (remembered in ${path})`);
    }
  }
  const session = connect(ctx.remote, {
    sessionId,
    retry: { maxAttempts: ctx.globals.retries ?? 5 },
  });
  return { session, isNew };
}

async function forget(ctx: Context, sessionId: string): Promise<void> {
  const path = statePath();
  const key = stateKey(ctx.remote);
  const state = await readState(path);
  if (state.sessions[key]?.sessionId === sessionId) {
    delete state.sessions[key];
    await writeState(path, state);
  }
}

const encoder = new TextEncoder();
function out(text: string): void {
  Deno.stdout.writeSync(encoder.encode(text));
}
function err(text: string): void {
  Deno.stderr.writeSync(encoder.encode(text));
}

async function cmdAdd(args: string[], ctx: Context): Promise<number> {
  const flags = { pyfile: false, archive: false, file: false };
  const paths: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const used = globalOption(args, i, ctx.globals, "add");
    if (used > 0) {
      i += used - 1;
      continue;
    }
    if (a === "--pyfile") flags.pyfile = true;
    else if (a === "--archive") flags.archive = true;
    else if (a === "--file") flags.file = true;
    else if (a === "--") paths.push(...args.slice(i + 1)), i = args.length;
    else if (a.startsWith("-") && a !== "-") throw new UsageError(`unknown option ${a}`, "add");
    else paths.push(a);
  }
  if (ctx.globals.help) return help("add");
  if (paths.length === 0) throw new UsageError("add needs at least one PATH", "add");
  if ([flags.pyfile, flags.archive, flags.file].filter(Boolean).length > 1) {
    throw new UsageError("give at most one of --pyfile, --archive, --file", "add");
  }
  const renderer: ProgressRenderer = ctx.globals.quiet
    ? quietRenderer()
    : Deno.stderr.isTerminal()
    ? ttyRenderer(err, consoleColumns())
    : plainRenderer(err);
  const { session } = (await openSession(ctx))!;
  try {
    const added = await session.addArtifacts(paths, {
      ...flags,
      cwd: ctx.cwd,
      onProgress: (p) => renderer.update(p),
    });
    renderer.finish();
    for (const a of added) out(`${a.name}\t${a.size}\t${a.uploaded ? "uploaded" : "attached"}\n`);
    return 0;
  } finally {
    renderer.finish();
    session.close();
  }
}

function consoleColumns(): number {
  try {
    return Deno.consoleSize().columns;
  } catch {
    return 80;
  }
}

async function cmdConf(args: string[], ctx: Context): Promise<number> {
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const used = globalOption(args, i, ctx.globals, "conf");
    if (used > 0) {
      i += used - 1;
      continue;
    }
    if (args[i]!.startsWith("-") && args[i] !== "-" && rest.length < 2) {
      throw new UsageError(`unknown option ${args[i]}`, "conf");
    }
    rest.push(args[i]!);
  }
  if (ctx.globals.help) return help("conf");
  const [sub, ...xs] = rest;
  const arity: Record<string, [number, number]> = {
    set: [2, 2],
    get: [1, 1],
    unset: [1, Infinity],
    list: [0, 1],
  };
  if (sub === undefined) throw new UsageError("conf needs set, get, unset or list", "conf");
  const bounds = arity[sub];
  if (!bounds) throw new UsageError(`unknown conf command "${sub}"`, "conf");
  if (xs.length < bounds[0] || xs.length > bounds[1]) {
    throw new UsageError(`wrong number of arguments for conf ${sub}`, "conf");
  }
  const { session } = (await openSession(ctx))!;
  try {
    switch (sub) {
      case "set": {
        const warnings = await session.conf.set(xs[0]!, xs[1]!);
        for (const w of warnings) ctx.notice(`valise: warning: ${w}`);
        break;
      }
      case "get":
        out(`${await session.conf.get(xs[0]!)}\n`);
        break;
      case "unset":
        await session.conf.unset(xs);
        break;
      case "list": {
        const all = await session.conf.getAll(xs[0]);
        for (const k of Object.keys(all).sort()) out(`${k}=${all[k]}\n`);
        break;
      }
    }
    return 0;
  } finally {
    session.close();
  }
}

const SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGABRT: 6,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGSEGV: 11,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
  SIGXCPU: 24,
  SIGXFSZ: 25,
};

async function cmdRun(args: string[], ctx: Context): Promise<number> {
  let target: { code: string } | { module: string } | { script: string } | undefined;
  let stdinFile: string | undefined;
  let timeoutMs = 0;
  let progArgs: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const used = globalOption(args, i, ctx.globals, "run");
    if (used > 0) {
      i += used - 1;
      continue;
    }
    if (a === "-c" || a === "-m") {
      const v = takeValue(args, i, a, "run");
      target = a === "-c" ? { code: v } : { module: v };
      progArgs = args.slice(i + 2);
      break;
    } else if (a === "--stdin") {
      stdinFile = takeValue(args, i, a, "run");
      i++;
    } else if (a === "--timeout-ms") {
      const n = Number(takeValue(args, i, a, "run"));
      if (!Number.isInteger(n) || n < 0) {
        throw new UsageError("--timeout-ms must be a non-negative integer", "run");
      }
      timeoutMs = n;
      i++;
    } else if (a === "--") {
      const s = args[i + 1];
      if (s === undefined) throw new UsageError("-- needs a SCRIPT after it", "run");
      target = { script: s };
      progArgs = args.slice(i + 2);
      break;
    } else if (a.startsWith("-")) {
      throw new UsageError(`unknown option ${a}`, "run");
    } else {
      target = { script: a };
      progArgs = args.slice(i + 1);
      break;
    }
  }
  if (ctx.globals.help) return help("run");
  if (!target) throw new UsageError("run needs -c CODE, -m MODULE or SCRIPT", "run");
  let stdin: Uint8Array | undefined;
  if (stdinFile === "-") {
    stdin = new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer());
  } else if (stdinFile !== undefined) {
    stdin = await Deno.readFile(resolve(ctx.cwd, stdinFile));
  }
  const ac = new AbortController();
  const onSignal = () => ac.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  const { session } = (await openSession(ctx))!;
  try {
    const spec: RunSpec = {
      ...target,
      args: progArgs,
      timeoutMs,
      signal: ac.signal,
      ...(stdin ? { stdin } : {}),
    };
    let code = 1;
    for await (const ev of session.run(spec)) {
      if (ev.kind === "stdout") await writeAll(Deno.stdout, ev.data);
      else if (ev.kind === "stderr") await writeAll(Deno.stderr, ev.data);
      else if (ev.kind === "exited") {
        if (ev.outputTruncated) ctx.notice("valise: output was truncated by the server's limit");
        if (ev.timedOut) {
          ctx.notice("valise: the run hit its time limit and was killed");
          code = 124;
        } else if (ev.signal !== "") {
          code = 128 + (SIGNALS[ev.signal] ?? 0);
        } else {
          code = ev.exitCode;
        }
      }
    }
    return code;
  } catch (e) {
    if (ac.signal.aborted) return 130;
    throw e;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    session.close();
  }
}

async function cmdApply(args: string[], ctx: Context): Promise<number> {
  let fnName: string | undefined;
  let codeFile: string | undefined;
  let functionName: string | undefined;
  let form: ApplyFormName = "columns";
  let schemaFile: string | undefined;
  let inFile: string | undefined;
  let outFile: string | undefined;
  let timeoutMs = 0;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const used = globalOption(args, i, ctx.globals, "apply");
    if (used > 0) {
      i += used - 1;
      continue;
    }
    const eq = a.indexOf("=");
    const [flag, inline] = a.startsWith("--") && eq > 0
      ? [a.slice(0, eq), a.slice(eq + 1)]
      : [a, undefined];
    const value = (): string => {
      if (inline !== undefined) return inline;
      i++;
      return takeValue(args, i - 1, flag, "apply");
    };
    switch (flag) {
      case "--fn":
        fnName = value();
        break;
      case "--code":
        codeFile = value();
        break;
      case "--function":
        functionName = value();
        break;
      case "--form": {
        const f = value();
        if (f !== "columns" && f !== "pandas" && f !== "pyarrow") {
          throw new UsageError(`--form must be columns, pandas or pyarrow, not "${f}"`, "apply");
        }
        form = f;
        break;
      }
      case "--schema":
        schemaFile = value();
        break;
      case "--in":
        inFile = value();
        break;
      case "--out":
        outFile = value();
        break;
      case "--timeout-ms": {
        const n = Number(value());
        if (!Number.isInteger(n) || n < 0) {
          throw new UsageError("--timeout-ms must be a non-negative integer", "apply");
        }
        timeoutMs = n;
        break;
      }
      default:
        throw new UsageError(
          a.startsWith("-") ? `unknown option ${a}` : `unexpected argument ${a}`,
          "apply",
        );
    }
  }
  if (ctx.globals.help) return help("apply");
  if ((fnName === undefined) === (codeFile === undefined)) {
    throw new UsageError("give exactly one of --fn MOD:FN or --code FILE", "apply");
  }
  if (codeFile !== undefined && functionName === undefined) {
    throw new UsageError("--code needs --function NAME", "apply");
  }
  if (fnName !== undefined && functionName !== undefined) {
    throw new UsageError("--function goes with --code, not --fn", "apply");
  }
  if (inFile === undefined) throw new UsageError("apply needs --in FILE (or - for stdin)", "apply");
  if (outFile === undefined) {
    throw new UsageError("apply needs --out FILE (or - for stdout)", "apply");
  }
  const fn: ApplyFunction = fnName ?? {
    code: await Deno.readTextFile(resolve(ctx.cwd, codeFile!)),
    functionName: functionName!,
  };
  let outputSchema: Schema | undefined;
  if (schemaFile !== undefined) {
    const bytes = await Deno.readFile(resolve(ctx.cwd, schemaFile));
    try {
      outputSchema = tableFromIPC(bytes).schema;
    } catch (e) {
      throw new TypeError(
        `Cannot read the schema in ${schemaFile}: ${(e as Error).message} ` +
          `(it must be an Arrow IPC file or stream)`,
      );
    }
  }
  const input = inFile === "-" ? Deno.stdin.readable : await openInput(resolve(ctx.cwd, inFile));
  const outPath = outFile === "-" ? undefined : resolve(ctx.cwd, outFile);
  const ac = new AbortController();
  const onSignal = () => ac.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  const { session } = (await openSession(ctx))!;
  let out: Deno.FsFile | undefined;
  let ok = false;
  try {
    out = outPath === undefined ? undefined : await Deno.open(outPath, {
      write: true,
      create: true,
      truncate: true,
    });
    const sink = out ?? Deno.stdout;
    const it = session.apply(fn, input as ApplyInput, {
      form,
      timeoutMs,
      signal: ac.signal,
      onStderr: (data) => Deno.stderr.writeSync(data),
      ...(outputSchema ? { outputSchema } : {}),
    });
    let summary: ApplySummary | undefined;
    let written = 0;
    const batches = async function* (): AsyncGenerator<RecordBatch, void, undefined> {
      while (true) {
        const r = await it.next();
        if (r.done) {
          summary = r.value;
          return;
        }
        written++;
        yield r.value;
      }
    };
    for await (const piece of ipcStream(undefined, batches())) await writeAll(sink, piece);
    if (written === 0 && outputSchema) {
      await writeAll(sink, tableToIPC(new Table(outputSchema), "stream"));
    }
    const s = summary!;
    if (written === 0 && !outputSchema) {
      ctx.notice("valise: the function produced no output and no --schema was given: empty output");
    }
    ctx.notice(
      `valise: apply: ${s.rowsIn} rows in (${s.batchesIn} batches), ` +
        `${s.rowsOut} rows out (${s.batchesOut} batches); ${s.transport} transport, ${s.interpreter}`,
    );
    ok = true;
    return 0;
  } catch (e) {
    if (ac.signal.aborted) return 130;
    if (e instanceof ValiseClientError && e.traceback !== undefined) err(e.traceback);
    throw e;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    session.close();
    out?.close();
    if (!ok && outPath !== undefined) await Deno.remove(outPath).catch(() => {});
  }
}

/**
 * An IPC file is read batch by batch from its footer's blocks (apache-arrow writes a file's
 * schema only in the footer, so its bytes cannot always be read as a stream); anything else is
 * sent as bytes.
 */
async function openInput(path: string): Promise<AsyncIterable<Uint8Array | RecordBatch>> {
  const f = await Deno.open(path);
  const head = new Uint8Array(6);
  let n = 0;
  while (n < 6) {
    const k = await f.read(head.subarray(n));
    if (k === null) break;
    n += k;
  }
  if (n === 6 && isIpcFile(head)) {
    f.close();
    const handle = await fsOpen(path, "r");
    const reader = await RecordBatchReader.from(handle);
    await reader.open();
    return (async function* () {
      try {
        yield* reader;
      } finally {
        await handle.close();
      }
    })();
  }
  await f.seek(0, Deno.SeekMode.Start);
  return f.readable;
}

async function writeAll(w: { write(p: Uint8Array): Promise<number> }, data: Uint8Array) {
  let at = 0;
  while (at < data.length) at += await w.write(data.subarray(at));
}

async function cmdStatus(args: string[], ctx: Context): Promise<number> {
  const names: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const used = globalOption(args, i, ctx.globals, "status");
    if (used > 0) {
      i += used - 1;
      continue;
    }
    if (args[i]!.startsWith("-")) throw new UsageError(`unknown option ${args[i]}`, "status");
    names.push(args[i]!);
  }
  if (ctx.globals.help) return help("status");
  const { session } = (await openSession(ctx))!;
  try {
    const st = await session.status(names);
    if (names.length === 0) {
      out(`remote\t${stateKey(ctx.remote)}\n`);
      out(`session\t${session.sessionId}\n`);
      out(`server_side_session\t${session.serverSideSessionId ?? ""}\n`);
      out(`user\t${session.userId ?? ""}\n`);
      return 0;
    }
    for (const n of names) out(`${n}\t${st[n] ? "exists" : "missing"}\n`);
    return names.every((n) => st[n]) ? 0 : 1;
  } finally {
    session.close();
  }
}

async function cmdRelease(args: string[], ctx: Context): Promise<number> {
  for (let i = 0; i < args.length; i++) {
    const used = globalOption(args, i, ctx.globals, "release");
    if (used > 0) {
      i += used - 1;
      continue;
    }
    throw new UsageError(`unexpected argument ${args[i]}`, "release");
  }
  if (ctx.globals.help) return help("release");
  const opened = await openSession(ctx, false);
  if (!opened) {
    ctx.notice(`valise: no session to release for ${stateKey(ctx.remote)}`);
    return 0;
  }
  const { session } = opened;
  try {
    await session.release();
  } finally {
    session.close();
    await forget(ctx, session.sessionId);
  }
  ctx.notice(`valise: released session ${session.sessionId}`);
  return 0;
}

function help(command: string): number {
  out(HELP[command] ?? HELP.main!);
  return 0;
}

const HINTS: [RegExp, string][] = [
  [
    /^UNAVAILABLE$/,
    "is a server running there? Start one with `deno task serve`, or pass --remote / set SPARK_REMOTE",
  ],
  [/^UNAUTHENTICATED$/, "the server wants a token: add ;token=… to the connection string"],
  [
    /^INVALID_HANDLE\./,
    "the remembered session is gone: `valise release` forgets it, or pass --session UUID",
  ],
  [
    /^ARTIFACT_ALREADY_EXISTS$/,
    "artifacts cannot be overwritten: use another file name, or a new session (`valise release`)",
  ],
  [/^SQL_CONF_NOT_FOUND$/, "`valise conf list` shows the keys that are set"],
  [/^CRC_MISMATCH$/, "the bytes were damaged on the way: try again"],
  [
    /^INTEGRITY_ERROR$/,
    "the server answered for another session: `valise release` and start again",
  ],
  [/^PYTHON_INTERPRETER\./, "check spark.sql.execution.pyspark.python with `valise conf get`"],
  [
    /^QUOTA_EXCEEDED$/,
    "release sessions you no longer need, or ask the operator for a larger quota",
  ],
  [
    /^APPLY_FUNCTION_(NOT_FOUND|FAILED)$/,
    "check the function: --fn needs a module of the session (`valise add --pyfile`), or use --code",
  ],
  [/^APPLY_(PYARROW|PANDAS)_UNAVAILABLE$/, "use --form columns, or an interpreter that has it"],
  [/^APPLY_OUTPUT_TYPE_MISMATCH$/, "make the function's output fit --schema (or drop --schema)"],
  [/^APPLY_INVALID_INPUT$/, "--in must be an Arrow IPC stream or file"],
  [/^APPLY_TIMEOUT$/, "raise --timeout-ms, or the server's wall-time limit"],
  [/^INVALID_CONNECT_URL$/, "the format is sc://host:port/;token=…;user_id=…"],
];

function report(e: unknown, command: string): number {
  let errorClass: string;
  let message: string;
  let exit = 1;
  if (e instanceof UsageError) {
    errorClass = "USAGE";
    message = e.message;
    exit = 2;
    command = e.command;
  } else if (e instanceof ValiseClientError) {
    errorClass = e.errorClass;
    message = e.message.replace(/^\[[^\]]*\]\s*/, "");
  } else if (e instanceof SyntaxError) {
    errorClass = "INVALID_CONNECT_URL";
    message = e.message;
    exit = 2;
  } else if (e instanceof TypeError || e instanceof RangeError) {
    errorClass = "INVALID_ARGUMENT";
    message = e.message.replace(/^\[([^\]]*)\]\s*/, (_, c) => {
      errorClass = c;
      return "";
    });
    exit = 2;
  } else if (e instanceof Deno.errors.NotFound) {
    errorClass = "FILE_NOT_FOUND";
    message = (e as Error).message;
    exit = 2;
  } else {
    errorClass = "INTERNAL_ERROR";
    message = e instanceof Error ? e.message : String(e);
  }
  const hint = HINTS.find(([re]) => re.test(errorClass))?.[1] ??
    (command === "main" ? "see `valise --help`" : `see \`valise ${command} --help\``);
  err(`valise: [${errorClass}] ${message.split("\n")[0]}\nhint: ${hint}\n`);
  return exit;
}

/**
 * Runs the command line.
 *
 * @param args The arguments, without the program name.
 * @returns The exit code.
 */
export async function main(args: string[]): Promise<number> {
  const globals: Globals = { quiet: false, help: false };
  let command = "main";
  try {
    let i = 0;
    while (i < args.length) {
      const used = globalOption(args, i, globals, "main");
      if (used === 0) break;
      i += used;
    }
    const name = args[i];
    if (name === undefined || (name.startsWith("-") && !globals.help)) {
      if (globals.help) return help("main");
      if (name === "--version" || name === "-V") {
        out(`valise ${CLIENT_VERSION}\n`);
        return 0;
      }
      throw new UsageError(name === undefined ? "no command given" : `unknown option ${name}`);
    }
    if (!(name in HELP) || name === "main") throw new UsageError(`unknown command "${name}"`);
    command = name;
    const rest = args.slice(i + 1);
    const remote = globals.remote ?? env("SPARK_REMOTE") ?? DEFAULT_REMOTE;
    const ctx: Context = {
      globals,
      cwd: env("INIT_CWD") ?? Deno.cwd(),
      get remote() {
        return globals.remote ?? remote;
      },
      notice: (line) => {
        if (!globals.quiet) err(`${line}\n`);
      },
    };
    switch (name) {
      case "add":
        return await cmdAdd(rest, ctx);
      case "conf":
        return await cmdConf(rest, ctx);
      case "run":
        return await cmdRun(rest, ctx);
      case "apply":
        return await cmdApply(rest, ctx);
      case "status":
        return await cmdStatus(rest, ctx);
      default:
        return await cmdRelease(rest, ctx);
    }
  } catch (e) {
    return report(e, command);
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
