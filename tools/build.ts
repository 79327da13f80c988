// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `deno task build`: the `valise` command and the server as single executables in `dist/`
 * (`deno compile`), to copy anywhere on `PATH`; they need neither Deno nor this checkout.
 *
 * `deno compile` adds Deno's runtime (`denort`), which it downloads from dl.deno.land once per
 * Deno version; where that host is out of reach, `DENORT_BIN` names a `denort` binary of the
 * same Deno version (from a machine that has one). Without either the build stops with that
 * advice; `deno install` (README) needs neither.
 *
 * Usage: `deno task build [--target TRIPLE]` (e.g. `aarch64-unknown-linux-gnu`).
 *
 * @module
 */
import { parseArgs } from "node:util";

const ROOT = new URL("..", import.meta.url).pathname;

/** What gets built: the output name and its entry point. */
export const TARGETS: readonly { name: string; entry: string }[] = [
  { name: "valise", entry: "packages/client/cli.ts" },
  { name: "valise-server", entry: "packages/server/main.ts" },
];

/**
 * Why `deno compile` cannot produce an executable here, or `undefined` when it can: it needs
 * `DENORT_BIN`, a cached runtime, or dl.deno.land.
 *
 * @returns The reason, or `undefined`.
 */
export async function compileUnavailable(): Promise<string | undefined> {
  if (Deno.env.get("DENORT_BIN")) return undefined;
  const cache = `${
    Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`
  }/dl/release/v${Deno.version.deno}`;
  try {
    for (const e of Deno.readDirSync(cache)) if (e.name.startsWith("denort-")) return undefined;
  } catch {
    // no cached runtime
  }
  try {
    await Deno.resolveDns("dl.deno.land", "A");
    return undefined;
  } catch {
    return `deno compile needs Deno's runtime (denort ${Deno.version.deno}) from dl.deno.land, ` +
      `which this machine cannot reach; set DENORT_BIN to a denort binary of Deno ` +
      `${Deno.version.deno}, or install the command with \`deno install\` (README)`;
  }
}

if (import.meta.main) {
  const { values } = parseArgs({ args: Deno.args, options: { target: { type: "string" } } });
  const why = await compileUnavailable();
  if (why) {
    console.error(`build: ${why}`);
    Deno.exit(1);
  }
  for (const { name, entry } of TARGETS) {
    const output = `dist/${name}`;
    const out = await new Deno.Command(Deno.execPath(), {
      cwd: ROOT,
      args: [
        "compile",
        "-A",
        "--quiet",
        ...(values.target ? ["--target", values.target] : []),
        "--output",
        output,
        entry,
      ],
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (!out.success) {
      console.error(`build: deno compile of ${entry} failed (exit ${out.code})`);
      Deno.exit(1);
    }
    console.error(`build: ${output}`);
  }
}
