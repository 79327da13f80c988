// Copyright 2026 the Valise authors. Apache-2.0 license.
// The command line's words: node:util's parseArgs splits them (so `--opt value`, `--opt=value`,
// `-q`, short groups and `--` work the same in every command); this file checks them against a
// command's options and says what is wrong in the CLI's own words.
import { parseArgs } from "node:util";
import { editDistance } from "../_edit_distance.ts";

/** A command-line mistake: reported as `[USAGE]` with the command's help hint, exit 2. */
export class UsageError extends Error {
  override name = "UsageError";
  /** The command whose `--help` the hint names (`main`: the CLI's). */
  readonly command: string;
  /**
   * Creates the error.
   *
   * @param message What is wrong.
   * @param command The command it is about.
   */
  constructor(message: string, command = "main") {
    super(message);
    this.command = command;
  }
}

/** One option: it takes a value (`string`) or not (`boolean`). */
export interface OptionSpec {
  /** Whether it takes a value. */
  type: "string" | "boolean";
  /** Its one-letter form, if any. */
  short?: string;
  /** What it does, in a few words (shell completions show it). */
  help?: string;
  /** What completes its value: local paths (`file`), or one of these words. */
  values?: "file" | readonly string[];
}

/** The options of a command, by long name. */
export type Options = Record<string, OptionSpec>;

/** The values given, by long name (the last one wins). */
export type Values<O extends Options> = {
  [K in keyof O]?: O[K]["type"] extends "string" ? string : boolean;
};

/** The options every command takes, before or after its name. */
export const GLOBAL_OPTIONS = {
  remote: { type: "string", help: "connection string sc://HOST:PORT[,HOST:PORT…]/;…" },
  session: { type: "string", help: "use this session id" },
  retries: { type: "string", help: "attempts while nodes are unavailable" },
  json: { type: "boolean", help: "JSON lines on stdout" },
  quiet: { type: "boolean", short: "q", help: "no progress or notices" },
  help: { type: "boolean", short: "h", help: "show help" },
} as const satisfies Options;

/** What the global options set. */
export interface Globals {
  /** `--remote`. */
  remote?: string;
  /** `--session`. */
  session?: string;
  /** `--retries`. */
  retries?: number;
  /** `--json`: JSON lines on stdout instead of text. */
  json: boolean;
  /** `-q`, `--quiet`. */
  quiet: boolean;
  /** `-h`, `--help`. */
  help: boolean;
}

/** How a command reads its words. */
export interface CommandSpec<O extends Options> {
  /** The command, for messages and the help hint. */
  command: string;
  /** Its own options (the global ones are added). */
  options: O;
  /**
   * What the words that are not options are: `none` (each one is a mistake), `any`, or `stop`:
   * the first one, `--`, or one of the `stopAt` options ends the command's words and what
   * follows belongs to someone else (the program `valise run` runs).
   */
  positionals: "none" | "any" | "stop";
  /** With `stop`: the options (by long name) that also end the command's words. */
  stopAt?: readonly string[];
  /** Words that look like options are plain words once this many plain words came. */
  plainAfter?: number;
}

/** Where a `stop` command's words ended. */
export interface Stop {
  /** What ended them: an option's long name, `""` for a plain word, `"--"`. */
  by: string;
  /** The option's value, the plain word, or the word after `--` (`undefined`: none). */
  value: string | undefined;
  /** The words after it. */
  rest: string[];
}

/** A command's words, read. */
export interface Parsed<O extends Options> {
  /** The command's own option values. */
  values: Values<O>;
  /** Its plain words. */
  positionals: string[];
  /** With `stop`: where its words ended, if they did. */
  stop: Stop | undefined;
}

/**
 * Reads a command's words: global options go to `globals`, the command's to `values`.
 *
 * @param args The words after the command's name.
 * @param globals Receives the global options.
 * @param spec The command's options and what its plain words are.
 * @returns The values, the plain words and, for `stop`, where they ended.
 * @throws {UsageError} For an unknown option, a missing or unexpected value, a stray word.
 */
export function parseCommand<O extends Options>(
  args: string[],
  globals: Globals,
  spec: CommandSpec<O>,
): Parsed<O> {
  const { command } = spec;
  const options: Options = { ...GLOBAL_OPTIONS, ...spec.options };
  const { tokens } = parseArgs({
    args,
    // parseArgs knows only the type and the letter.
    options: Object.fromEntries(
      Object.entries(options).map(([k, o]) => [
        k,
        o.short ? { type: o.type, short: o.short } : {
          type: o.type,
        },
      ]),
    ),
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  // A short group such as `-qx` is one word: it is an option only when all its letters are.
  const unknown = new Set(
    tokens.flatMap((t) => t.kind === "option" && !Object.hasOwn(options, t.name) ? [t.index] : []),
  );
  const values: Record<string, string | boolean> = {};
  const positionals: string[] = [];
  let stop: Stop | undefined;
  let done = -1;
  for (const t of tokens) {
    if (t.index === done) continue;
    if (t.kind === "option-terminator") {
      if (spec.positionals !== "stop") continue;
      stop = { by: "--", ...after(args, t.index + 1) };
      break;
    }
    if (t.kind === "positional") {
      if (spec.positionals === "stop") {
        stop = { by: "", ...after(args, t.index) };
        break;
      }
      if (spec.positionals === "none") {
        throw new UsageError(`unexpected argument ${t.value}`, command);
      }
      positionals.push(t.value);
      continue;
    }
    if (unknown.has(t.index)) {
      done = t.index;
      const word = args[t.index]!;
      if (spec.plainAfter !== undefined && positionals.length >= spec.plainAfter) {
        positionals.push(word);
        continue;
      }
      const near = word.startsWith("--")
        ? closest(word.slice(2).split("=")[0]!, Object.keys(options))
        : undefined;
      throw new UsageError(
        `unknown option ${word}${near === undefined ? "" : `; did you mean --${near}?`}`,
        command,
      );
    }
    if (options[t.name]!.type === "boolean") {
      if (t.inlineValue) throw new UsageError(`${t.rawName} takes no value`, command);
      values[t.name] = true;
      continue;
    }
    if (t.value === undefined) throw new UsageError(`${t.rawName} needs a value`, command);
    if (spec.positionals === "stop" && spec.stopAt?.includes(t.name)) {
      stop = { by: t.name, value: t.value, rest: args.slice(t.index + (t.inlineValue ? 1 : 2)) };
      break;
    }
    values[t.name] = t.value;
  }
  return { values: takeGlobals<O>(values, globals, command), positionals, stop };
}

function after(args: string[], index: number): { value: string | undefined; rest: string[] } {
  return { value: args[index], rest: args.slice(index + 1) };
}

function takeGlobals<O extends Options>(
  values: Record<string, string | boolean>,
  globals: Globals,
  command: string,
): Values<O> {
  const own = { ...values };
  for (const name of Object.keys(GLOBAL_OPTIONS)) delete own[name];
  if (typeof values.remote === "string") globals.remote = values.remote;
  if (typeof values.session === "string") globals.session = values.session;
  if (typeof values.retries === "string") {
    globals.retries = wholeNumber(values.retries, "--retries", command, 1);
  }
  if (values.json === true) globals.json = true;
  if (values.quiet === true) globals.quiet = true;
  if (values.help === true) globals.help = true;
  return own as Values<O>;
}

/**
 * Reads a whole number of at least `min`.
 *
 * @param text The option's value.
 * @param flag The option, for the message.
 * @param command The command, for the hint.
 * @param min The least value allowed.
 * @returns The number.
 * @throws {UsageError} When it is not one.
 */
export function wholeNumber(text: string, flag: string, command: string, min = 0): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) {
    const what = min === 1 ? "a positive integer" : "a non-negative integer";
    throw new UsageError(`${flag} must be ${what}`, command);
  }
  return n;
}

/**
 * The word of `words` closest to `word` (a typo's intended word), if one is close enough: at
 * most a third of its letters differ.
 *
 * @param word What was typed.
 * @param words The known words.
 * @returns The closest, or `undefined`.
 */
export function closest(word: string, words: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(word.length / 3)) + 1;
  for (const w of words) {
    const d = editDistance(word, w);
    if (d < bestDistance) {
      best = w;
      bestDistance = d;
    }
  }
  return best;
}
