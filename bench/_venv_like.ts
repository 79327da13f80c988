// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The benchmarks' venv-like environment: `pyvenv.cfg` at the root, `bin/python3` →
 * `/usr/bin/python3`, `lib/python3.11/site-packages/` filled with copies of this machine's
 * `/usr/lib/python3.11` and `/usr/lib/python3/dist-packages` (symlinks dereferenced) until big
 * enough, topped up with small modules up to the file count, packed as `.tar.gz` (pigz -6).
 * Used by `store_bench.ts` and `cluster_bench.ts` (the "1 GB environment").
 *
 * @module
 */

const SOURCES = ["/usr/lib/python3.11", "/usr/lib/python3/dist-packages"];

/** Runs a bash command; its stdout, or an error with its stderr. */
export async function sh(cmd: string, cwd = "/"): Promise<string> {
  const out = await new Deno.Command("bash", {
    args: ["-c", cmd],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`${cmd}: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

/** Quotes a string for bash. */
export const q = (s: string): string => `'${s.replaceAll("'", `'\\''`)}'`;

/** Free bytes of the file system holding `dir`. */
export async function freeBytes(dir: string): Promise<number> {
  return Number((await sh(`df -B1 --output=avail ${q(dir)} | tail -1`)).trim());
}

/** Bytes and regular files under `dir`. */
export async function treeStats(dir: string): Promise<{ bytes: number; files: number }> {
  const out = await sh(
    `find . -type f -printf '%s\\n' | awk '{s+=$1; n++} END {print s+0, n+0}'`,
    dir,
  );
  const [bytes, files] = out.trim().split(" ").map(Number);
  return { bytes: bytes!, files: files! };
}

/** Bytes of the distinct inodes under the paths (one `du` run: a hard link counts once). */
export async function duBytes(...paths: string[]): Promise<number> {
  const out = await sh(`du -sbc ${paths.map(q).join(" ")} | tail -1`);
  return Number(out.split("\t")[0]);
}

/** A built environment. */
export interface Env {
  /** The `.tar.gz`. */
  archive: string;
  /** Its size. */
  archiveBytes: number;
  /** Bytes of the unpacked tree. */
  bytes: number;
  /** Files of the unpacked tree. */
  files: number;
}

/**
 * Builds `<dir>/env` as a venv (`pyvenv.cfg`, `bin/python3` → `/usr/bin/python3`,
 * `lib/python3.11/site-packages/…`) and packs it as `<dir>/env.tar.gz` (pigz -6).
 */
export async function buildEnv(
  dir: string,
  target: { bytes: number; files: number },
): Promise<Env> {
  const TARGET_BYTES = target.bytes;
  const TARGET_FILES = target.files;
  const env = `${dir}/env`;
  const site = `${env}/lib/python3.11/site-packages`;
  await Deno.mkdir(`${env}/bin`, { recursive: true });
  await Deno.mkdir(site, { recursive: true });
  await Deno.writeTextFile(
    `${env}/pyvenv.cfg`,
    "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n",
  );
  await Deno.symlink("/usr/bin/python3", `${env}/bin/python3`);
  await Deno.symlink("python3", `${env}/bin/python`);
  // Top-level entries of the sources with their dereferenced sizes, to pick whole packages.
  const entries: { path: string; bytes: number }[] = [];
  for (const src of SOURCES) {
    const out = await sh(`du -sbL ${q(src)}/* 2>/dev/null || true`);
    for (const line of out.trim().split("\n")) {
      const [b, p] = line.split("\t");
      if (p && Number(b) > 0) entries.push({ path: p, bytes: Number(b) });
    }
  }
  let bytes = 0;
  for (let copy = 0; bytes < TARGET_BYTES * 0.97; copy++) {
    const before = bytes;
    const dest = `${site}/_copy${copy}`;
    await Deno.mkdir(dest, { recursive: true });
    const picked: string[] = [];
    for (const e of entries) {
      const left = TARGET_BYTES - bytes;
      if (left <= 0) break;
      // At small scales, skip packages that would overshoot by much.
      if (e.bytes > left + TARGET_BYTES * 0.05) continue;
      const prefix = e.path.startsWith("/usr/lib/python3.11/") ? "stdlib_" : "";
      picked.push(`cp -rL ${q(e.path)} ${q(`${dest}/${prefix}${e.path.split("/").at(-1)}`)}`);
      bytes += e.bytes;
    }
    if (bytes === before) break;
    // Dangling links in the sources make cp complain; what was copied is measured below.
    await sh(`{ ${picked.join("; ")}; } 2>/dev/null || true`);
  }
  let { files } = await treeStats(env);
  if (files < TARGET_FILES) {
    // Real environments have more small files per GB than Debian's Python (`.pyc`, stubs, …).
    await sh(
      `/usr/bin/python3 -c ${
        q(`
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "_small", "pkg%03d" % (i % 200))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "m%06d.py" % i), "w") as f:
        f.write("VALUE = %d\\nNAME = 'module %d of a generated package'\\n" % (i, i))
`)
      } ${q(site)} ${TARGET_FILES - files}`,
    );
  }
  ({ bytes, files } = await treeStats(env));
  const archive = `${dir}/env.tar.gz`;
  await sh(`tar -cf - -C ${q(env)} pyvenv.cfg bin lib | pigz -6 > ${q(archive)}`);
  await Deno.remove(env, { recursive: true });
  return { archive, archiveBytes: (await Deno.stat(archive)).size, bytes, files };
}
