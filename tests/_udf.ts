// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Helpers of the PySpark UDF tests: the environment they run in (pyspark-client 4.2, no jars,
 * with pandas and pyarrow, and a marker package `udfmark` whose version tells environments
 * apart) and the client script (`conformance/udf_client.py`) run against a server.
 *
 * @module
 */
import { join } from "node:path";
import type { makeCondaPackLike, makePex, makeVenvPack } from "./fixtures/envs.ts";
import { pinned, VENV_PYTHON } from "./_python.ts";

const CLIENT = join(new URL(".", import.meta.url).pathname, "conformance", "udf_client.py");

/** What a UDF environment needs beside `udfmark`: the client's pyspark, pandas and pyarrow. */
const UDF_REQUIREMENTS = (): string[] => [
  "pyspark-client==4.2.0",
  ...["pandas", "pyarrow", "numpy"].map(pinned),
];

/** Options of a venv-pack environment for UDFs, `udfmark.VERSION` = `version`. */
export function udfEnvOptions(version: string): Parameters<typeof makeVenvPack>[1] {
  return {
    creator: "uv",
    requirements: UDF_REQUIREMENTS(),
    packages: { udfmark: `VERSION = "${version}"\n` },
    name: `udfenv-${version.replaceAll(".", "_")}`,
  };
}

/**
 * Options of a PEX for UDFs (the seed's PEX flow, with Spark's own recipe: pyspark inside the
 * PEX), `udfmark.VERSION` = `version`.
 */
export function udfPexOptions(version: string): Parameters<typeof makePex>[1] {
  return {
    requirements: UDF_REQUIREMENTS(),
    packages: { udfmark: `VERSION = "${version}"\n` },
    name: `udf-${version.replaceAll(".", "_")}.pex`,
  };
}

/** Options of a conda-pack shaped environment for UDFs, `udfmark.VERSION` = `version`. */
export function udfCondaOptions(version: string): Parameters<typeof makeCondaPackLike>[1] {
  return {
    requirements: UDF_REQUIREMENTS(),
    packages: { udfmark: `VERSION = "${version}"\n` },
    name: `udfconda-${version.replaceAll(".", "_")}`,
  };
}

/**
 * How a session gets its environment: an archive added as `archives/<name>#environment` with
 * the interpreter `environment/bin/python` (venv-pack, conda-pack), or a PEX added as a file
 * with the interpreter `./<name>.pex`.
 */
export type UdfEnv = string | { archive: string } | { pex: string };

/** One program's outcome, as udf_client.py prints it. */
export type UdfResult =
  | { ok: unknown }
  | { error: { type: string; errorClass: string | null; message: string } };

/**
 * Runs udf_client.py: one session with `env` as its environment, then the programs.
 *
 * @param remote `sc://host:port`.
 * @param env The environment: an archive (a path alone means one) or a PEX.
 * @param programs Program names (default: all).
 * @param user The session's user id.
 * @returns Program name → outcome.
 */
export async function udfClient(
  remote: string,
  env: UdfEnv,
  programs: string[] = [],
  user = "udf-tester",
): Promise<Record<string, UdfResult>> {
  const out = await new Deno.Command(VENV_PYTHON, {
    args: [
      CLIENT,
      "--remote",
      remote,
      ...(typeof env === "string"
        ? ["--env", env]
        : "archive" in env
        ? ["--env", env.archive]
        : ["--pex", env.pex]),
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
