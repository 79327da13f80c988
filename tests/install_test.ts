// Copyright 2026 the Valise authors. Apache-2.0 license.
// Valise outside its checkout, as README says to get it: the `valise` command installed with
// `deno install` and run from another directory, the client library imported by another project
// (`links`), and `deno task build`'s single executable (where `deno compile` can get its runtime).
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";
import { compileUnavailable } from "../tools/build.ts";

const ROOT = new URL("../", import.meta.url).pathname;

async function sh(
  cmd: string,
  args: string[],
  opts: { cwd: string; env?: Record<string, string> },
) {
  const out = await new Deno.Command(cmd, {
    args,
    cwd: opts.cwd,
    env: opts.env ?? {},
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("valise works outside its checkout: installed command, library from another project", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-install-" });
  const server = await startServer({ dataDir: join(tmp, "data") });
  const remote = `sc://127.0.0.1:${server.port}`;
  // Away from the checkout: no deno.json above it to find.
  const elsewhere = join(tmp, "elsewhere");
  await Deno.mkdir(elsewhere);
  const env = { VALISE_STATE_FILE: join(tmp, "state.json"), HOME: tmp };
  try {
    await t.step("deno task install's command runs from another directory", async () => {
      const install = await sh(Deno.execPath(), ["task", "install"], {
        cwd: ROOT,
        env: {
          PATH: Deno.env.get("PATH")!,
          HOME: Deno.env.get("HOME")!,
          DENO_INSTALL_ROOT: join(tmp, "root"),
        },
      });
      equal(install.code, 0, install.stderr);
      const bin = join(tmp, "root/bin/valise");
      const version = await sh(bin, ["--version"], {
        cwd: elsewhere,
        env: { ...env, PATH: Deno.env.get("PATH")! },
      });
      equal(version.code, 0, version.stderr);
      const meta = JSON.parse(await Deno.readTextFile(join(ROOT, "packages/client/deno.json")));
      equal(version.stdout.trim(), `valise ${meta.version}`);
      const run = await sh(bin, ["--remote", remote, "run", "-c", "print(6 * 7)"], {
        cwd: elsewhere,
        env: { ...env, PATH: Deno.env.get("PATH")! },
      });
      equal(run.code, 0, run.stderr);
      equal(run.stdout, "42\n");
    });
    await t.step("another project imports @valise/client through links", async () => {
      const project = join(tmp, "project");
      await Deno.mkdir(project);
      await Deno.writeTextFile(
        join(project, "deno.json"),
        JSON.stringify({
          links: [join(ROOT, "packages/client"), join(ROOT, "packages/protocol")],
          imports: { "@valise/client": "jsr:@valise/client@^0.1.0" },
        }),
      );
      await Deno.writeTextFile(
        join(project, "main.ts"),
        `import { connect } from "@valise/client";
const session = connect(Deno.args[0]!);
try {
  const r = await session.runCollect({ code: "import os; print(os.getcwd() != '')" });
  console.log(r.stdout.trim(), r.exitCode);
} finally {
  await session.release();
}
`,
      );
      const r = await sh(Deno.execPath(), ["run", "-A", "main.ts", remote], {
        cwd: project,
        env: { PATH: Deno.env.get("PATH")!, HOME: Deno.env.get("HOME")! },
      });
      equal(r.code, 0, r.stderr);
      equal(r.stdout, "True 0\n");
    });
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
});

const noCompile = await compileUnavailable();
const BUILD = "deno task build makes a valise executable that runs without Deno or the checkout";
Deno.test({
  name: noCompile ? `${BUILD} (ignored: ${noCompile})` : BUILD,
  ignore: noCompile !== undefined,
}, async () => {
  const built = await sh(Deno.execPath(), ["run", "-A", "tools/build.ts"], {
    cwd: ROOT,
    env: { PATH: Deno.env.get("PATH")!, HOME: Deno.env.get("HOME")! },
  });
  equal(built.code, 0, built.stderr);
  // No deno on PATH: the executable carries its runtime.
  const r = await sh(join(ROOT, "dist/valise"), ["--version"], {
    cwd: "/",
    env: { PATH: "/usr/bin:/bin" },
  });
  equal(r.code, 0, r.stderr);
  ok(r.stdout.startsWith("valise "), r.stdout);
});
