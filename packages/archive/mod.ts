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
 * ## Policy (defaults; see {@linkcode UnpackOptions} for the switches)
 *
 * - Names: absolute names (`/x`, `\x`, `C:x`), any `..` component, `\`, NUL and control
 *   characters, names over 4096 bytes, components over 255 bytes and paths over 256 levels
 *   are refused, never repaired. Leading `./` and empty components are dropped.
 * - Nothing is written through a symlink: regular files, directories and hardlinks are
 *   created first, with `O_CREAT|O_EXCL`, in a tree that holds no symlink yet; symlinks are
 *   created last, after a virtual `realpath` over all the archive's links shows each one ends
 *   inside the destination (not at the destination itself); the check has a CPU budget, so
 *   a maze of long link chains fails with `BAD_LINK` instead of spinning. A member below a symlink member
 *   is refused (`THROUGH_LINK`). Exception: in an archive with a root `pyvenv.cfg`, the
 *   interpreter links `bin/python`, `bin/python3`, `bin/python3.X` may point at an absolute
 *   path (every venv has one); they are reported in `interpreterLinks`.
 * - Hardlinks only to a regular file unpacked earlier in the same archive (`linkname` is
 *   relative to the archive root).
 * - Duplicates: the later member wins, as in tar, by unlinking the earlier file or dropping
 *   the pending symlink — never by writing through it, so a hardlink to the earlier file keeps
 *   the earlier bytes. A directory is never replaced by a non-directory or the reverse
 *   (`CONFLICT`), a symlink member that is not created yet may be replaced by a directory.
 * - No devices, FIFOs, sockets (`SPECIAL_FILE`), no sparse or unknown member types
 *   (`UNSUPPORTED`). File modes: owner read/write forced; setuid, setgid, sticky and
 *   group/other write removed (reported); group/other execute kept only when the owner has
 *   it. Directories are `0755`. Owners are never applied. File mtimes are kept.
 * - Quotas on bytes produced: 20 GiB in total, 4 GiB per entry, 1,000,000 entries (and as
 *   many directories, counting those implied by deep names), a
 *   decompression ratio of 100 once 64 MiB were produced (real environments are 3–5:1), 512
 *   MiB kept free on the destination's file system (checked before and every 64 MiB).
 * - Zip: central directory read by our own reader (Zip64, preambles), each local header
 *   cross-checked (name, method), overlapping entries refused (`OVERLAP`), encrypted entries
 *   refused (`ENCRYPTED`), sizes and CRC-32 verified on the bytes produced.
 * - Atomicity: everything happens in a fresh `0700` sibling temporary directory, renamed to
 *   `dest` when complete; on failure it is removed. A killed process leaves it behind:
 *   {@linkcode removeStaleTemps} clears such leftovers.
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
  type BinaryFact,
  type BinaryFormat,
  classifyHeader,
  ELF_MACHINES,
  type EnvFacts,
  inspectEnvironment,
  type InspectOptions,
  type PexFacts,
  readPyvenvCfg,
} from "./env_facts.ts";
export { readPexInfo, readPexInfoFromZip } from "./pex_info.ts";
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
  prestartWriterThread,
  removeStaleTemps,
  stopWriterThread,
  unpack,
  type UnpackOptions,
  type UnpackResult,
} from "./unpack.ts";
