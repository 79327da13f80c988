/**
 * Regenerates `packages/protocol/gen` from `packages/protocol/proto` with buf and
 * protoc-gen-es (both from npm), plus a binary FileDescriptorSet that the Python test
 * clients load. With `--check`, generates into a temporary directory and fails when the
 * committed code differs, so stale generated code cannot land.
 *
 * @module
 */
import { join } from "node:path";

const BUF = "npm:@bufbuild/buf@1.75.0";
const PROTOC_GEN_ES = "npm:@bufbuild/protoc-gen-es@2.17.0";
const root = new URL("../packages/protocol/", import.meta.url).pathname;
const check = Deno.args.includes("--check");

async function run(cmd: string[], cwd: string, env: Record<string, string>): Promise<void> {
  const out = await new Deno.Command(cmd[0]!, { args: cmd.slice(1), cwd, env }).output();
  if (!out.success) {
    throw new Error(
      `Cannot generate code: ${cmd.join(" ")} failed\n${new TextDecoder().decode(out.stderr)}`,
    );
  }
}

async function generate(workDir: string): Promise<void> {
  // buf finds local plugins on PATH; a shim runs the npm plugin under Deno.
  const shimDir = await Deno.makeTempDir({ prefix: "valise-gen-" });
  const shim = join(shimDir, "protoc-gen-es");
  await Deno.writeTextFile(
    shim,
    `#!/bin/sh\nexec "${Deno.execPath()}" run -A --no-lock ${PROTOC_GEN_ES} "$@"\n`,
  );
  await Deno.chmod(shim, 0o755);
  const env = { PATH: `${shimDir}:${Deno.env.get("PATH") ?? ""}` };
  try {
    await run([Deno.execPath(), "run", "-A", "--no-lock", BUF, "generate"], workDir, env);
    await run(
      [Deno.execPath(), "run", "-A", "--no-lock", BUF, "build", "-o", "gen/descriptors.binpb"],
      workDir,
      env,
    );
  } finally {
    await Deno.remove(shimDir, { recursive: true });
  }
}

async function listFiles(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(join(dir, prefix))) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await listFiles(dir, rel));
    else out.push(rel);
  }
  return out.sort();
}

async function copyDir(from: string, to: string): Promise<void> {
  for (const rel of await listFiles(from)) {
    await Deno.mkdir(join(to, rel, ".."), { recursive: true });
    await Deno.copyFile(join(from, rel), join(to, rel));
  }
}

if (!check) {
  await generate(root);
  console.log("generated packages/protocol/gen");
} else {
  const tmp = await Deno.makeTempDir({ prefix: "valise-gen-check-" });
  try {
    await copyDir(join(root, "proto"), join(tmp, "proto"));
    for (const f of ["buf.yaml", "buf.gen.yaml"]) {
      await Deno.copyFile(join(root, f), join(tmp, f));
    }
    await generate(tmp);
    const want = await listFiles(join(tmp, "gen"));
    const have = await listFiles(join(root, "gen")).catch(() => []);
    const stale: string[] = [];
    for (const f of new Set([...want, ...have])) {
      const a = await Deno.readFile(join(tmp, "gen", f)).catch(() => null);
      const b = await Deno.readFile(join(root, "gen", f)).catch(() => null);
      if (!a || !b || a.length !== b.length || a.some((x, i) => x !== b[i])) stale.push(f);
    }
    if (stale.length) {
      console.error(`Generated code is stale; run \`deno task gen\`. Differs: ${stale.join(", ")}`);
      Deno.exit(1);
    }
    console.log("generated code is up to date");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}
