// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Helpers of the PySpark UDF tests: the environment they run in (pyspark-client 4.2, no jars,
 * with pandas and pyarrow, and a marker package `udfmark` whose version tells environments
 * apart) and the client script (`conformance/udf_client.py`) run against a server.
 *
 * @module
 */
import { join } from "node:path";
import type { makeVenvPack } from "./fixtures/envs.ts";
import { pinned, VENV_PYTHON } from "./_python.ts";

const CLIENT = join(new URL(".", import.meta.url).pathname, "conformance", "udf_client.py");

/** Options of a venv-pack environment for UDFs, `udfmark.VERSION` = `version`. */
export function udfEnvOptions(version: string): Parameters<typeof makeVenvPack>[1] {
  return {
    creator: "uv",
    requirements: ["pyspark-client==4.2.0", ...["pandas", "pyarrow", "numpy"].map(pinned)],
    packages: { udfmark: `VERSION = "${version}"\n` },
    name: `udfenv-${version.replaceAll(".", "_")}`,
  };
}

/** One program's outcome, as udf_client.py prints it. */
export type UdfResult =
  | { ok: unknown }
  | { error: { type: string; errorClass: string | null; message: string } };

/**
 * Runs udf_client.py: one session with `env` as its environment, then the programs.
 *
 * @param remote `sc://host:port`.
 * @param env The venv-pack archive.
 * @param programs Program names (default: all).
 * @param user The session's user id.
 * @returns Program name → outcome.
 */
export async function udfClient(
  remote: string,
  env: string,
  programs: string[] = [],
  user = "udf-tester",
): Promise<Record<string, UdfResult>> {
  const out = await new Deno.Command(VENV_PYTHON, {
    args: [
      CLIENT,
      "--remote",
      remote,
      "--env",
      env,
      "--user",
      user,
      ...programs.flatMap((p) => ["--program", p]),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(
      `udf_client.py against ${remote} failed (${out.code}):\n${text}\n` +
        new TextDecoder().decode(out.stderr),
    );
  }
  return JSON.parse(text) as Record<string, UdfResult>;
}
