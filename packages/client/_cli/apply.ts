// Copyright 2026 the Valise authors. Apache-2.0 license.
import { open as fsOpen } from "node:fs/promises";
import { resolve } from "node:path";
import {
  type RecordBatch,
  RecordBatchReader,
  type Schema,
  Table,
  tableFromIPC,
  tableToIPC,
} from "apache-arrow";
import type { ApplyFormName, ApplyFunction, ApplyInput, ApplySummary } from "../apply.ts";
import { isValiseClientError } from "../error.ts";
import type { Session } from "../session.ts";
import { isIpcFile } from "../_apply_input.ts";
import { ipcStream } from "../_ipc.ts";
import { parseCommand, UsageError, wholeNumber } from "./args.ts";
import { type Context, err, interruptible, writeAll } from "./context.ts";
import { help } from "./help.ts";
import { CliError } from "./cli_error.ts";
import { APPLY } from "./specs.ts";
import { withSession } from "./state.ts";

const FORMS: readonly string[] = ["columns", "pandas", "pyarrow"] satisfies ApplyFormName[];

/** What `valise apply` was asked to do, read from its words and files. */
interface ApplyCommand {
  fn: ApplyFunction;
  form: ApplyFormName;
  outputSchema: Schema | undefined;
  inFile: string;
  outFile: string;
  timeoutMs: number;
}

/**
 * `valise apply (--fn MOD:FN | --code FILE --function NAME) --in FILE --out FILE [--form F]
 * [--schema FILE] [--timeout-ms N]`
 *
 * @param args The words after `apply`.
 * @param ctx The context.
 * @returns The exit code.
 */
export async function apply(args: string[], ctx: Context): Promise<number> {
  const cmd = await applyCommand(args, ctx);
  if (cmd === undefined) return help("apply");
  const input = cmd.inFile === "-"
    ? Deno.stdin.readable
    : await openInput(resolve(ctx.cwd, cmd.inFile));
  const outPath = cmd.outFile === "-" ? undefined : resolve(ctx.cwd, cmd.outFile);
  return await interruptible((signal) =>
    withSession(ctx, async (session) => {
      let out: Deno.FsFile | undefined;
      let ok = false;
      try {
        out = outPath === undefined
          ? undefined
          : await Deno.open(outPath, { write: true, create: true, truncate: true });
        const s = await applyTo(session, cmd, input as ApplyInput, out ?? Deno.stdout, signal);
        if (s.batchesWritten === 0 && !cmd.outputSchema) {
          ctx.notice(
            "valise: the function produced no output and no --schema was given: empty output",
          );
        }
        ctx.notice(
          `valise: apply: ${s.rowsIn} rows in (${s.batchesIn} batches), ` +
            `${s.rowsOut} rows out (${s.batchesOut} batches); ${s.transport} transport, ` +
            s.interpreter,
        );
        if (ctx.globals.json) {
          ctx.emit({
            type: "apply",
            rowsIn: s.rowsIn,
            batchesIn: s.batchesIn,
            rowsOut: s.rowsOut,
            batchesOut: s.batchesOut,
            transport: s.transport,
            interpreter: s.interpreter,
            out: outPath ?? null,
          });
        }
        ok = true;
        return 0;
      } catch (e) {
        if (!signal.aborted && isValiseClientError(e) && e.traceback !== undefined) {
          err(e.traceback);
        }
        if (isValiseClientError(e) && e.errorClass === "APPLY_OUTPUT_TYPE_MISMATCH") {
          throw new CliError(e.errorClass, e.message.replace(/^\[[^\]]*\]\s*/, ""), {
            hint: mismatchHint(e.message, cmd.outputSchema !== undefined),
            cause: e,
          });
        }
        throw e;
      } finally {
        out?.close();
        if (!ok && outPath !== undefined) await Deno.remove(outPath).catch(() => {});
      }
    })
  );
}

/**
 * What to do about output that does not fit: fit the declared schema, or declare one when the
 * types could not be inferred. Other misfits (a wrong return type, column lengths) need no hint
 * about a schema.
 */
function mismatchHint(message: string, declared: boolean): string | undefined {
  if (declared) return "make the function's output fit the schema of --schema FILE";
  if (/cannot infer|declare the output schema/.test(message)) {
    return "give each output column values of one type, or declare the output's types with " +
      "--schema FILE (an Arrow IPC file holding the schema)";
  }
  return "the message names the column and what the function returned";
}

/** Reads the words; `undefined` for `--help`. */
async function applyCommand(args: string[], ctx: Context): Promise<ApplyCommand | undefined> {
  const command = "apply";
  const { values: v } = parseCommand(args, ctx.globals, APPLY);
  const form = v.form ?? "columns";
  if (!FORMS.includes(form)) {
    throw new UsageError(`--form must be columns, pandas or pyarrow, not "${form}"`, command);
  }
  const timeoutMs = v["timeout-ms"] === undefined
    ? 0
    : wholeNumber(v["timeout-ms"], "--timeout-ms", command);
  if (ctx.globals.help) return undefined;
  if ((v.fn === undefined) === (v.code === undefined)) {
    throw new UsageError("give exactly one of --fn MOD:FN or --code FILE", command);
  }
  if (v.code !== undefined && v.function === undefined) {
    throw new UsageError("--code needs --function NAME", command);
  }
  if (v.fn !== undefined && v.function !== undefined) {
    throw new UsageError("--function goes with --code, not --fn", command);
  }
  if (v.in === undefined) throw new UsageError("apply needs --in FILE (or - for stdin)", command);
  if (v.out === undefined) {
    throw new UsageError("apply needs --out FILE (or - for stdout)", command);
  }
  if (v.out === "-" && ctx.globals.json) {
    throw new UsageError("--json writes to stdout: give --out a FILE, not -", command);
  }
  const fn: ApplyFunction = v.fn ?? {
    code: await Deno.readTextFile(resolve(ctx.cwd, v.code!)),
    functionName: v.function!,
  };
  return {
    fn,
    form: form as ApplyFormName,
    outputSchema: v.schema === undefined ? undefined : await readSchema(ctx, v.schema),
    inFile: v.in,
    outFile: v.out,
    timeoutMs,
  };
}

async function readSchema(ctx: Context, file: string): Promise<Schema> {
  const bytes = await Deno.readFile(resolve(ctx.cwd, file));
  try {
    return tableFromIPC(bytes).schema;
  } catch (e) {
    throw new TypeError(
      `Cannot read the schema in ${file}: ${(e as Error).message} ` +
        `(it must be an Arrow IPC file or stream)`,
    );
  }
}

/** Runs the call, writing its output as one IPC stream, batch by batch as it arrives. */
async function applyTo(
  session: Session,
  cmd: ApplyCommand,
  input: ApplyInput,
  sink: { write(p: Uint8Array): Promise<number> },
  signal: AbortSignal,
): Promise<ApplySummary & { batchesWritten: number }> {
  const it = session.apply(cmd.fn, input, {
    form: cmd.form,
    timeoutMs: cmd.timeoutMs,
    signal,
    onStderr: (data) => Deno.stderr.writeSync(data),
    ...(cmd.outputSchema ? { outputSchema: cmd.outputSchema } : {}),
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
  if (written === 0 && cmd.outputSchema) {
    await writeAll(sink, tableToIPC(new Table(cmd.outputSchema), "stream"));
  }
  return { ...summary!, batchesWritten: written };
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
