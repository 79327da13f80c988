// Copyright 2026 the Valise authors. Apache-2.0 license.
// What every command works with: the global options, the user's directory, the remote, where
// text goes, and Ctrl-C.
import type { Globals } from "./args.ts";

/** The remote without `--remote`, `$VALISE_REMOTE` or `$SPARK_REMOTE`. */
export const DEFAULT_REMOTE = "sc://localhost:15002";

/** What a command runs with. */
export interface Context {
  /** The global options (a command's own words may still set them). */
  globals: Globals;
  /** The directory relative paths are resolved against. */
  cwd: string;
  /**
   * The connection string: `--remote`, else `$VALISE_REMOTE`, else `$SPARK_REMOTE`, else the
   * default. `$VALISE_REMOTE` comes first so that a list of endpoints (`sc://h1,h2/`), which
   * PySpark cannot read, need not be put in the `$SPARK_REMOTE` PySpark reads too.
   */
  readonly remote: string;
  /** Writes a line to stderr unless `--quiet`. */
  notice: (line: string) => void;
  /** Writes one JSON line to stdout (with `--json`; commands print text otherwise). */
  emit: (record: JsonRecord) => void;
}

/** One line of `--json` output: its `type` says what it is (see docs/cli.md). */
export type JsonRecord = { type: string } & Record<string, unknown>;

/** The checkout's root, where `deno task` runs its commands (none when not run from files). */
const TASK_ROOT = import.meta.url.startsWith("file:")
  ? new URL("../../../", import.meta.url).pathname.replace(/\/$/, "")
  : undefined;

/**
 * The directory the user ran the command from: `deno task` runs it in the checkout's root and
 * keeps the user's directory in INIT_CWD. Elsewhere INIT_CWD is some enclosing `deno task`'s,
 * inherited (a script that runs `valise` in another directory): then the cwd is the truth.
 */
function userCwd(): string {
  const init = env("INIT_CWD");
  const cwd = Deno.cwd();
  return init !== undefined && cwd === TASK_ROOT ? init : cwd;
}

/**
 * Builds the context of a command line.
 *
 * @param globals The global options, filled in as the words are read.
 * @returns The context.
 */
export function makeContext(globals: Globals): Context {
  return {
    globals,
    cwd: userCwd(),
    get remote() {
      return globals.remote ?? env("VALISE_REMOTE") ?? env("SPARK_REMOTE") ?? DEFAULT_REMOTE;
    },
    notice: (line) => {
      if (!globals.quiet) err(`${line}\n`);
    },
    emit: (record) => out(`${JSON.stringify(record)}\n`),
  };
}

/**
 * An environment variable, `undefined` when unset, empty or not readable.
 *
 * @param name The variable.
 * @returns Its value.
 */
export function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

const encoder = new TextEncoder();

/**
 * Writes text to stdout.
 *
 * @param text The text.
 */
export function out(text: string): void {
  Deno.stdout.writeSync(encoder.encode(text));
}

/**
 * Writes text to stderr.
 *
 * @param text The text.
 */
export function err(text: string): void {
  Deno.stderr.writeSync(encoder.encode(text));
}

/**
 * Writes all of `data`, however many writes it takes.
 *
 * @param w Where to.
 * @param data The bytes.
 * @returns When written.
 */
export async function writeAll(
  w: { write(p: Uint8Array): Promise<number> },
  data: Uint8Array,
): Promise<void> {
  let at = 0;
  while (at < data.length) at += await w.write(data.subarray(at));
}

/**
 * Runs a command that Ctrl-C cancels: its signal aborts, and the exit code is then 130.
 *
 * @param fn The command, given the signal.
 * @returns Its exit code, or 130 when interrupted.
 */
export async function interruptible(fn: (signal: AbortSignal) => Promise<number>): Promise<number> {
  const ac = new AbortController();
  const onSignal = () => ac.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    return await fn(ac.signal);
  } catch (e) {
    if (ac.signal.aborted) return 130;
    throw e;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
  }
}
