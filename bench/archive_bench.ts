// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Archive unpack on tmpfs (`/dev/shm`, so disk writeback does not drown the figures):
 * (1) a ~1 GB, ~50k-file `.tar.gz` built from this machine's Python installation
 * (`/usr/lib/python3.11` + `/usr/lib/python3/dist-packages`, copied until big enough, symlinks
 * dereferenced), (2) the same tree as `.zip`, (3) 100k tiny files as `.tar.gz`. Each
 * extractor runs as its own process under `/usr/bin/time` (wall time, peak RSS), into a fresh
 * directory, alternating, `VALISE_BENCH_RUNS` times (median reported):
 * `@valise/archive` `unpack()`, GNU `tar -xzf`, `unzip`, Python's `tarfile` with
 * `filter="data"` (and `zipfile` for the zip).
 *
 * Env: `VALISE_BENCH_SCALE` (default 1; 0.1 for a quick run), `VALISE_BENCH_RUNS` (default 3;
 * Python runs once at most twice), `VALISE_BENCH_DIR` (default `/dev/shm/valise-archive-bench`,
 * kept between runs to reuse the archives; delete it to rebuild).
 *
 * @module
 */
const ROOT = new URL("../", import.meta.url).pathname;
const PY = "/usr/bin/python3";
const SCALE = Number(Deno.env.get("VALISE_BENCH_SCALE") ?? "1");
const RUNS = Number(Deno.env.get("VALISE_BENCH_RUNS") ?? "3");
const DIR = Deno.env.get("VALISE_BENCH_DIR") ?? "/dev/shm/valise-archive-bench";
const MB = 1e6;

// Child mode: `archive_bench.ts --unpack ARCHIVE DEST` runs just `unpack()`.
if (Deno.args[0] === "--unpack") {
  const { unpack } = await import("../packages/archive/mod.ts");
  const r = await unpack(Deno.args[1]!, Deno.args[2]!);
  console.log(JSON.stringify({ entries: r.entries, bytes: r.bytesWritten }));
  Deno.exit(0);
}

async function sh(cmd: string, cwd = DIR): Promise<string> {
  const out = await new Deno.Command("bash", {
    args: ["-c", cmd],
    cwd,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (!out.success) throw new Error(`${cmd}: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.lstat(p);
    return true;
  } catch {
    return false;
  }
}

interface Dataset {
  name: string;
  archive: string;
  bytes: number;
  files: number;
}

async function treeStats(dir: string): Promise<{ bytes: number; files: number }> {
  const out = await sh(`find . -type f -printf '%s\\n' | awk '{s+=$1; n++} END {print s, n}'`, dir);
  const [bytes, files] = out.trim().split(" ").map(Number);
  return { bytes: bytes!, files: files! };
}

async function prepare(): Promise<Dataset[]> {
  await Deno.mkdir(DIR, { recursive: true });
  const tag = `v2-s${SCALE}`;
  const src = `${DIR}/src-${tag}`;
  if (!(await exists(`${src}/.done`))) {
    await sh(`rm -rf ${src} && mkdir -p ${src}`);
    const target = 1e9 * SCALE;
    let k = 0;
    for (;;) {
      const { bytes } = await treeStats(src);
      if (bytes >= target * 0.95) break;
      await sh(
        `mkdir -p ${src}/copy${k} && (tar -chf - -C /usr/lib python3.11 python3/dist-packages 2>/dev/null || true) | tar -xf - -C ${src}/copy${k}`,
      );
      if (SCALE < 0.5) {
        // Trim the copy to the scale: drop whole top-level packages until small enough.
        await sh(`cd ${src}/copy${k}/python3/dist-packages && for d in $(ls -S); do
          s=$(du -sb ${src} | cut -f1); [ "$s" -le ${
          Math.round(target)
        } ] && break; rm -rf "$d"; done`);
      }
      k++;
    }
    // Top up with stdlib-only copies (many small files) to reach ~50k files per GB.
    for (;;) {
      const { files } = await treeStats(src);
      if (files >= 50_000 * SCALE) break;
      await sh(
        `mkdir -p ${src}/copy${k} && (tar -chf - -C /usr/lib python3.11 2>/dev/null || true) | tar -xf - -C ${src}/copy${k}`,
      );
      k++;
    }
    await Deno.writeTextFile(`${src}/.done`, "");
  }
  const tiny = `${DIR}/tiny-${tag}`;
  const tinyN = Math.round(100_000 * Math.max(SCALE, 0.1));
  if (!(await exists(`${tiny}/.done`))) {
    await sh(`rm -rf ${tiny} && mkdir -p ${tiny}`);
    await sh(
      `${PY} -c "
import os, sys
root = sys.argv[1]; n = int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, 'pkg%03d' % (i % 500), 'sub%d' % (i % 7))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'm%06d.py' % i), 'w') as f:
        f.write('x = %d\\n' % i)
" ${tiny} ${tinyN}`,
    );
    await Deno.writeTextFile(`${tiny}/.done`, "");
  }
  const sets: Dataset[] = [];
  const bigTgz = `${DIR}/big-${tag}.tar.gz`;
  if (!(await exists(bigTgz))) {
    await sh(
      `tar -cf - --exclude=.done -C ${src} . | gzip -6 > ${bigTgz}.tmp && mv ${bigTgz}.tmp ${bigTgz}`,
    );
  }
  const bigZip = `${DIR}/big-${tag}.zip`;
  if (!(await exists(bigZip))) {
    await sh(`cd ${src} && zip -q -r -6 ${bigZip}.tmp . -x .done && mv ${bigZip}.tmp ${bigZip}`);
  }
  const tinyTgz = `${DIR}/tiny-${tag}.tar.gz`;
  if (!(await exists(tinyTgz))) {
    await sh(
      `tar -cf - --exclude=.done -C ${tiny} . | gzip -6 > ${tinyTgz}.tmp && mv ${tinyTgz}.tmp ${tinyTgz}`,
    );
  }
  const s1 = await treeStats(src);
  const s3 = await treeStats(tiny);
  sets.push({ name: "python tree .tar.gz", archive: bigTgz, ...s1 });
  sets.push({ name: "python tree .zip", archive: bigZip, ...s1 });
  sets.push({ name: `${s3.files} tiny files .tar.gz`, archive: tinyTgz, ...s3 });
  return sets;
}

interface Tool {
  name: string;
  /** Command for archive → dest (dest exists and is empty unless `noMkdir`). */
  cmd(archive: string, dest: string): string[];
  noMkdir?: boolean;
  runs?: number;
}

const VALISE: Tool = {
  name: "@valise/archive unpack()",
  cmd: (a, d) => [Deno.execPath(), "run", "-A", `${ROOT}bench/archive_bench.ts`, "--unpack", a, d],
  noMkdir: true,
};
const GNU_TAR: Tool = { name: "GNU tar -xzf", cmd: (a, d) => ["tar", "-xzf", a, "-C", d] };
/** An interpreter whose `tarfile` has the PEP 706 filters: Debian's 3.11.2 lacks them. */
async function pythonWithFilters(): Promise<string | undefined> {
  const found = (await sh("which -a python3 || true", "/")).split("\n").filter(Boolean);
  for (const py of [PY, ...found]) {
    const r = await new Deno.Command(py, {
      args: ["-c", "import tarfile, sys; sys.exit(0 if hasattr(tarfile, 'data_filter') else 1)"],
    }).output().catch(() => undefined);
    if (r?.success) {
      return (await sh(`${py} -c 'import sys; print(sys.executable, sys.version.split()[0])'`, "/"))
        .trim();
    }
  }
  return undefined;
}
const PY_FILTER = await pythonWithFilters();
const PY_TAR: Tool = {
  name: `Python ${PY_FILTER?.split(" ")[1] ?? "?"} tarfile filter="data"`,
  cmd: (
    a,
    d,
  ) => [
    PY_FILTER!.split(" ")[0]!,
    "-c",
    "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')",
    a,
    d,
  ],
  runs: 1,
};
const UNZIP: Tool = { name: "unzip -q", cmd: (a, d) => ["unzip", "-q", a, "-d", d] };
const PY_ZIP: Tool = {
  name: "Python zipfile",
  cmd: (
    a,
    d,
  ) => [
    PY,
    "-c",
    "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])",
    a,
    d,
  ],
  runs: 1,
};

interface Run {
  wall: number;
  rssKB: number;
}

async function runOnce(tool: Tool, archive: string): Promise<Run> {
  const dest = `${DIR}/out`;
  await sh(`rm -rf ${dest}`);
  if (!tool.noMkdir) await Deno.mkdir(dest);
  await sh("sync");
  const t0 = performance.now();
  const out = await new Deno.Command("/usr/bin/time", {
    args: ["-f", "%M", ...tool.cmd(archive, dest)],
    stdout: "null",
    stderr: "piped",
  }).output();
  const wall = (performance.now() - t0) / 1000;
  const err = new TextDecoder().decode(out.stderr).trim();
  if (!out.success) throw new Error(`${tool.name} failed: ${err}`);
  const rssKB = Number(err.split("\n").at(-1));
  return { wall, rssKB };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
}

async function identical(tool: Tool, ref: Tool, archive: string): Promise<boolean> {
  const a = `${DIR}/cmp-a`;
  const b = `${DIR}/cmp-b`;
  await sh(`rm -rf ${a} ${b} && mkdir ${b}`);
  await new Deno.Command(tool.cmd(archive, a)[0]!, {
    args: tool.cmd(archive, a).slice(1),
    stdout: "null",
  }).output();
  await new Deno.Command(ref.cmd(archive, b)[0]!, {
    args: ref.cmd(archive, b).slice(1),
    stdout: "null",
  }).output();
  const r = await new Deno.Command("diff", {
    args: ["-r", "--no-dereference", a, b],
    stdout: "null",
    stderr: "null",
  })
    .output();
  await sh(`rm -rf ${a} ${b}`);
  return r.success;
}

const sets = await prepare();
const cpu = (await sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")).trim();
console.log(
  `Unpack on tmpfs (${DIR}), ${navigator.hardwareConcurrency} cores (${cpu}), Deno ${Deno.version.deno}, ` +
    `scale ${SCALE}, median of ${RUNS} runs (Python: ${
      Math.min(RUNS, 2)
    } at most). MB = 10^6 bytes of file content. ` +
    `Python with tarfile filters: ${
      PY_FILTER ?? "none found (Debian's /usr/bin/python3 3.11.2 has none)"
    }.\n`,
);
for (const ds of sets) {
  const isZip = ds.archive.endsWith(".zip");
  const size = (await Deno.stat(ds.archive)).size;
  const tools = isZip
    ? [VALISE, UNZIP, PY_ZIP]
    : PY_FILTER
    ? [VALISE, GNU_TAR, PY_TAR]
    : [VALISE, GNU_TAR];
  const ref = tools[1]!;
  console.log(
    `### ${ds.name}: ${(ds.bytes / MB).toFixed(0)} MB in ${ds.files} files, archive ${
      (size / MB).toFixed(0)
    } MB\n`,
  );
  const same = await identical(VALISE, ref, ds.archive);
  const results = new Map<Tool, Run[]>(tools.map((t) => [t, []]));
  for (let i = 0; i < RUNS; i++) {
    for (const t of tools) {
      if (i >= Math.min(RUNS, t.runs === 1 ? 2 : RUNS)) continue;
      results.get(t)!.push(await runOnce(t, ds.archive));
    }
  }
  const refWall = median(results.get(ref)!.map((r) => r.wall));
  console.log(`| extractor | wall s (runs) | MB/s | time vs ${ref.name} | peak RSS MB |`);
  console.log("| --- | --- | --- | --- | --- |");
  for (const t of tools) {
    const rs = results.get(t)!;
    const w = median(rs.map((r) => r.wall));
    const rss = Math.max(...rs.map((r) => r.rssKB)) / 1000;
    console.log(
      `| ${t.name} | ${w.toFixed(2)} (${rs.map((r) => r.wall.toFixed(2)).join(", ")}) | ${
        (ds.bytes / MB / w).toFixed(0)
      } | ${(w / refWall).toFixed(2)}× | ${rss.toFixed(0)} |`,
    );
  }
  console.log(`\nSame tree as ${ref.name}: ${same ? "yes" : "NO"}.\n`);
}
await sh(`rm -rf ${DIR}/out`);
