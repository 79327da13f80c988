// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Python programs that live in `.py` files and run as `python -c`: constants are injected
 * once, from TypeScript, and the source keeps its own file name and line numbers.
 *
 * @module
 */

/**
 * A `python -c` program that binds `VALISE` to `constants` and runs `source` compiled under
 * `filename` (so its tracebacks carry that name and the source's own line numbers).
 *
 * @param source Python source.
 * @param filename The file name tracebacks show.
 * @param constants Numbers and strings, possibly nested in plain objects.
 * @returns The program.
 */
export function pythonStub(source: string, filename: string, constants: unknown): string {
  const literal = JSON.stringify(constants, (_k, v) => {
    if (v === null || typeof v === "boolean") {
      throw new TypeError("Cannot inject into Python: only numbers, strings and objects");
    }
    return v;
  });
  return `VALISE = ${literal}\nexec(compile(${JSON.stringify(source)}, ${
    JSON.stringify(filename)
  }, 'exec'))`;
}
