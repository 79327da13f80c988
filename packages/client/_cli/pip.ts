// Copyright 2026 the Valise authors. Apache-2.0 license.
import { resolve } from "node:path";
import { RequirementError } from "@valise/protocol";
import { parseCommand, UsageError } from "./args.ts";
import { CliError } from "./cli_error.ts";
import { type Context, out } from "./context.ts";
import { help } from "./help.ts";
import { PIP } from "./specs.ts";
import { existingSession, stateKey, withSession } from "./state.ts";
import { formatBytes } from "../_progress.ts";
import { isValiseClientError } from "../error.ts";
import type { PipResult } from "../pip.ts";

/**
 * `valise pip install [-r FILE] [--index-url URL] [--extra-index-url URL,…] [--replace] PKG…`,
 * `valise pip list`, `valise pip uninstall NAME…`: the session's packages. The installer's
 * output streams to stderr; stdout gets `NAME==VERSION` per distribution the layer holds.
 *
 * @param args The words after `pip`.
 * @param ctx The context.
 * @returns The exit code.
 */
export async function pip(args: string[], ctx: Context): Promise<number> {
  const { values, positionals } = parseCommand(args, ctx.globals, PIP);
  if (ctx.globals.help) return help("pip");
  const [sub, ...words] = positionals;
  if (sub === "list") {
    if (words.length) throw new UsageError("pip list takes no arguments", "pip");
    return await list(ctx);
  }
  if (sub !== "install" && sub !== "uninstall") {
    throw new UsageError(
      sub === undefined
        ? "pip needs install, list or uninstall"
        : `unknown pip command "${sub}" (install, list or uninstall)`,
      "pip",
    );
  }
  if (sub === "uninstall") {
    if (words.length === 0) throw new UsageError("pip uninstall needs at least one NAME", "pip");
    if (values.requirement || values["index-url"] || values["extra-index-url"] || values.replace) {
      throw new UsageError("pip uninstall takes only NAMEs", "pip");
    }
  }
  const requirements = [...words];
  if (values.requirement !== undefined) {
    requirements.push(...await requirementsFile(resolve(ctx.cwd, values.requirement)));
  }
  if (sub === "install" && requirements.length === 0 && !values.replace) {
    throw new UsageError("pip install needs a PKG, a wheel file or -r FILE", "pip");
  }
  let shown = false;
  const onProgress = (line: string) => {
    shown = true;
    if (ctx.globals.json) ctx.emit({ type: "pip_progress", line });
    else ctx.notice(line);
  };
  try {
    const result = await withSession(
      ctx,
      (session) =>
        sub === "install"
          ? session.pip.install(requirements, {
            cwd: ctx.cwd,
            onProgress,
            ...(values["index-url"] !== undefined ? { indexUrl: values["index-url"] } : {}),
            ...(values["extra-index-url"] !== undefined
              ? { extraIndexUrls: values["extra-index-url"].split(/[\s,]+/).filter((u) => u) }
              : {}),
            ...(values.replace ? { replace: true } : {}),
          })
          : session.pip.uninstall(requirements, { onProgress }),
    );
    print(ctx, result, sub === "install" ? "installed" : "uninstalled");
    return 0;
  } catch (e) {
    if (e instanceof RequirementError) {
      throw new CliError("PIP_INVALID_REQUEST", e.message, {
        exitCode: 2,
        hint: "requirements are names and versions (requests==2.32.3); a local wheel is given " +
          "by its path (./dist/mylib-1.0-py3-none-any.whl); the index with --index-url",
      });
    }
    if (shown && isValiseClientError(e) && e.errorClass === "PIP_INSTALL_FAILED") {
      // The installer's words were shown as they came: the summary line is enough.
      throw new CliError(e.errorClass, e.message.replace(/^\[[^\]]*\]\s*/, "").split("\n")[0]!, {
        hint: "the installer's output above says why; check the names and versions",
        cause: e,
      });
    }
    throw e;
  }
}

async function list(ctx: Context): Promise<number> {
  const session = await existingSession(ctx);
  if (!session) {
    ctx.notice(`valise: no session for ${stateKey(ctx.remote)}: no packages`);
    return 0;
  }
  try {
    const r = await session.pip.list();
    print(ctx, r, "listed");
    if (r.requirements.length && r.layer === undefined) {
      ctx.notice(
        "valise: not installed yet on this server: the next run (or valise pip install) installs it",
      );
    }
    return 0;
  } finally {
    session.close();
  }
}

function print(ctx: Context, r: PipResult, what: string): void {
  for (const d of r.distributions) {
    if (ctx.globals.json) ctx.emit({ type: "pip_distribution", name: d.name, version: d.version });
    else out(`${d.name}==${d.version}\n`);
  }
  if (ctx.globals.json) {
    ctx.emit({
      type: "pip",
      requirements: r.requirements,
      layer: r.layer ?? null,
      bytes: r.bytes,
      reused: r.reused,
      indexUrl: r.indexUrl ?? null,
      extraIndexUrls: r.extraIndexUrls,
    });
    return;
  }
  const set = r.requirements.length ? r.requirements.join(" ") : "(none)";
  const layer = r.layer === undefined
    ? ""
    : `; layer ${r.layer.slice(0, 12)}, ${formatBytes(r.bytes)}` +
      (what === "listed" ? "" : r.reused ? ", reused" : ", built");
  const from = r.indexUrl === undefined ? "uploaded wheels only" : r.indexUrl;
  ctx.notice(
    `valise: ${what}: requirements ${set}; ${r.distributions.length} distribution(s)${layer}; ` +
      `index ${from}`,
  );
}

/** The requirement lines of a requirements file (comments and blank lines dropped). */
async function requirementsFile(path: string): Promise<string[]> {
  let text: string;
  try {
    const st = await Deno.stat(path);
    if (st.size > 64 * 1024) {
      throw new CliError("PIP_INVALID_REQUEST", `${path} is ${st.size} bytes; the most is 64 KiB`, {
        exitCode: 2,
      });
    }
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new CliError("FILE_NOT_FOUND", `Cannot read requirements: ${path} does not exist`, {
        exitCode: 2,
      });
    }
    throw e;
  }
  return text.split(/\r?\n/).map((l) => l.replace(/(^|\s)#.*$/, "").trim()).filter((l) => l);
}
