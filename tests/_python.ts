// The project's Python environment (.venv/, from tools/requirements-test.txt, made by
// `deno task setup`): the real PySpark client and Spark Connect server, pyarrow, pandas,
// venv-pack, pex and uv. Tests that need it are ignored, with the reason, where it is missing.
import { join } from "node:path";

const ROOT = new URL("..", import.meta.url).pathname;

/** The environment's directory. */
export const VENV: string = join(ROOT, ".venv");

/** Its interpreter. */
export const VENV_PYTHON: string = join(VENV, "bin", "python");

/** A program of the environment (`venv-pack`, `pex`, `uv`, `spark-submit`, …). */
export function venvBin(name: string): string {
  return join(VENV, "bin", name);
}

/**
 * Why the environment cannot serve the tests, or `undefined` when it can: it exists and was
 * installed from the current requirements.
 */
export function venvMissing(): string | undefined {
  try {
    Deno.statSync(VENV_PYTHON);
    Deno.statSync(join(VENV, ".requirements-sha256"));
    return undefined;
  } catch {
    return "the project's Python environment .venv/ is not installed (run `deno task setup` " +
      "where PyPI is reachable)";
  }
}

/** Where the pyspark package (and Spark's jars) live in the environment. */
export function sparkHome(): string {
  const lib = join(VENV, "lib");
  for (const e of Deno.readDirSync(lib)) {
    if (e.name.startsWith("python3")) return join(lib, e.name, "site-packages", "pyspark");
  }
  throw new Error(`no python3.* under ${lib}`);
}

/**
 * The pinned requirement of a package of `tools/requirements-test.txt`, e.g. `pyarrow==26.0.1`,
 * for installing the same version elsewhere (a fixture environment).
 */
export function pinned(name: string): string {
  const text = Deno.readTextFileSync(join(ROOT, "tools", "requirements-test.txt"));
  const want = name.toLowerCase();
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)/.exec(line.trim());
    if (m && m[1]!.toLowerCase() === want) return `${m[1]}==${m[3]}`;
  }
  throw new Error(`${name} is not pinned in tools/requirements-test.txt`);
}

/**
 * `Deno.test` options for a test that needs the environment: where it is missing, the test is
 * ignored and its name says why.
 */
export function needsVenv(name: string): { name: string; ignore: boolean } {
  const why = venvMissing();
  return why === undefined
    ? { name, ignore: false }
    : { name: `${name} (ignored: ${why})`, ignore: true };
}
