// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Detect and safely unpack untrusted Python environment archives: conda-pack and
 * venv-pack tars (`.tar`, `.tar.gz`, `.tar.bz2`, `.tar.xz`, `.tar.zst`), zips, zipapps and
 * PEX files.
 *
 * - {@linkcode detect} decides format and flavor from the bytes, not the file name.
 * - {@linkcode unpack} streams the archive into a fresh temporary directory under a policy
 *   modelled on Python's `tarfile` `data` filter and node-tar's advisories, with quotas on the
 *   bytes produced, then renames it into place. Failures throw {@linkcode UnpackError} with a
 *   stable `code`.
 *
 * ```ts
 * import { detect, isUnpackError, unpack } from "@valise/archive";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await Deno.mkdir(`${dir}/env/bin`, { recursive: true });
 * await Deno.writeTextFile(`${dir}/env/pyvenv.cfg`, "home = /usr/bin\n");
 * await Deno.symlink("/usr/bin/python3", `${dir}/env/bin/python3`);
 * await new Deno.Command("tar", { args: ["-czf", `${dir}/env.tgz`, "-C", `${dir}/env`, "."] }).output();
 *
 * const d = await detect(`${dir}/env.tgz`);
 * assert.equal(d.compression, "gzip");
 * assert.equal(d.container, "tar");
 * assert.equal(d.flavor, "venv");
 *
 * const r = await unpack(`${dir}/env.tgz`, `${dir}/out`);
 * assert.equal(r.flavor, "venv");
 * assert.deepEqual(r.interpreterLinks, [{ path: "bin/python3", target: "/usr/bin/python3" }]);
 *
 * // The destination must not exist yet.
 * await assert.rejects(unpack(`${dir}/env.tgz`, `${dir}/out`), (e) => isUnpackError(e) && e.code === "DEST_EXISTS");
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @module
 */
export {
  isUnpackError,
  UnpackError,
  type UnpackErrorCode,
  type UnpackErrorOptions,
} from "./error.ts";
export {
  type Compression,
  type Container,
  detect,
  type Detection,
  type DetectOptions,
  type Flavor,
} from "./detect.ts";
export {
  type ChangeKind,
  type ChangeRecord,
  type PostUnpackReport,
  removeStaleTemps,
  unpack,
  type UnpackOptions,
  type UnpackResult,
} from "./unpack.ts";
