// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Taking back a tree that a lent worker uid wrote (an unpack's conda-unpack step, a pip build):
 * the server owns everything in it afterwards, and only files, directories and links remain.
 *
 * @module
 */

/**
 * Runs a tool to its end, its stderr in the error.
 *
 * @param program The tool.
 * @param args Its arguments.
 * @param fail Makes the error, from a message naming the tool and its stderr.
 */
export async function tool(
  program: string,
  args: string[],
  fail: (message: string) => Error,
): Promise<void> {
  const out = await new Deno.Command(program, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) {
    throw fail(`${program} failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/**
 * Gives the server's uid and gid everything under `dir` (links not followed) and deletes FIFOs,
 * sockets and device nodes. Call it only once the uid's processes are gone, so that nothing
 * races the walks.
 *
 * @param dir The tree.
 * @param fail Makes the error when a tool fails.
 */
export async function reclaimTree(dir: string, fail: (message: string) => Error): Promise<void> {
  await tool("chown", ["-R", "-h", `${Deno.uid()}:${Deno.gid()}`, dir], fail);
  const special = ["-type", "p", "-o", "-type", "s", "-o", "-type", "b", "-o", "-type", "c"];
  await tool("find", [dir, "(", ...special, ")", "-delete"], fail);
}
