// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Session-scoped `pip install`, in the same run as the installers themselves, all from PyPI with
 * a fresh download cache each time (a Valise build starts from an empty one too):
 *
 * - first install: `session.pip.install(SET)` into a fresh server's session, from the call to
 *   its result (the interpreter probe, the sandbox, uv's resolution, downloads and install);
 * - reuse: a second session (and more) asking for the same set: the layer is there, nothing is
 *   installed (target: under 50 ms);
 * - references: `uv pip install --target DIR` of the same set, `uv venv` + `uv pip install`, and
 *   `python -m venv` + `pip install` into a fresh venv, each timed as a process from start to
 *   exit.
 *
 * SET: 10 pinned pure-Python distributions (requests and its four dependencies, six, attrs,
 * packaging, click, python-dateutil). Prints a Markdown section and writes it into
 * `docs/BENCHMARKS.md` under `## Pip install`. Needs the project's `.venv/` (uv) and PyPI.
 *
 * Env: `VALISE_BENCH_SCALE` (default 1; 0.2 for a quick run).
 *
 * @module
 */
import { join } from "node:path";
import { connect } from "../packages/client/mod.ts";
import { serve } from "../packages/server/mod.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const UV = join(ROOT, ".venv", "bin", "uv");
const SCALE = Number(Deno.env.get("VALISE_BENCH_SCALE") ?? "1");
const ROUNDS = Math.max(2, Math.round(3 * SCALE));
const REUSES = Math.max(5, Math.round(20 * SCALE));
const PYTHON = "/usr/bin/python3";

const SET = [
  "requests==2.32.3",
  "urllib3==2.2.2",
  "idna==3.7",
  "certifi==2024.8.30",
  "charset-normalizer==3.3.2",
  "six==1.16.0",
  "attrs==24.2.0",
  "packaging==24.1",
  "click==8.1.7",
  "python-dateutil==2.9.0.post0",
];

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

async function timed(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped", env }).output();
  const ms = performance.now() - t0;
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  return ms;
}

try {
  Deno.statSync(UV);
} catch {
  console.log("Skipped: the project's .venv/ (uv) is not installed: run `deno task setup`.");
  Deno.exit(0);
}

const work = await Deno.makeTempDir({ prefix: "valise-pip-bench-" });
const first: number[] = [];
const reuse: number[] = [];
const uvTarget: number[] = [];
const uvVenv: number[] = [];
const pipVenv: number[] = [];
let distributions = 0;
let layerBytes = 0;
try {
  for (let round = 0; round < ROUNDS; round++) {
    const dir = join(work, `r${round}`);
    await Deno.mkdir(dir);
    // References first, alternating with Valise round by round, each with an empty cache.
    uvTarget.push(
      await timed(UV, [
        "pip",
        "install",
        "--quiet",
        "--no-config",
        "--python",
        PYTHON,
        "--cache-dir",
        join(dir, "uv-cache-1"),
        "--target",
        join(dir, "target"),
        ...SET,
      ]),
    );
    const venvStart = performance.now();
    await timed(UV, ["venv", "--quiet", "--no-config", "--python", PYTHON, join(dir, "uvvenv")]);
    await timed(UV, [
      "pip",
      "install",
      "--quiet",
      "--no-config",
      "--python",
      join(dir, "uvvenv", "bin", "python"),
      "--cache-dir",
      join(dir, "uv-cache-2"),
      ...SET,
    ]);
    uvVenv.push(performance.now() - venvStart);
    const pipStart = performance.now();
    await timed(PYTHON, ["-m", "venv", join(dir, "pipvenv")]);
    await timed(join(dir, "pipvenv", "bin", "python"), [
      "-m",
      "pip",
      "install",
      "--quiet",
      "--no-cache-dir",
      "--disable-pip-version-check",
      ...SET,
    ]);
    pipVenv.push(performance.now() - pipStart);

    const server = await serve({
      dataDir: join(dir, "data"),
      port: 0,
      workers: { defaultPython: PYTHON },
      pip: { installer: UV },
    });
    try {
      const remote = `sc://127.0.0.1:${server.port}/;user_id=bench`;
      {
        await using s = connect(remote);
        // The session exists before the clock starts (a first call of its own).
        await s.conf.set("spark.sql.session.timeZone", "UTC");
        const t0 = performance.now();
        const r = await s.pip.install(SET);
        first.push(performance.now() - t0);
        if (r.reused) throw new Error("the first install reused a layer");
        distributions = r.distributions.length;
        layerBytes = r.bytes;
        const check = await s.runCollect({ code: "import requests, six, attrs; print('ok')" });
        if (check.stdout.trim() !== "ok") throw new Error(`layer not importable: ${check.stderr}`);
      }
      for (let i = 0; i < REUSES; i++) {
        await using s = connect(remote);
        await s.conf.set("spark.sql.session.timeZone", "UTC");
        const t0 = performance.now();
        const r = await s.pip.install(SET);
        reuse.push(performance.now() - t0);
        if (!r.reused) throw new Error("a second session did not reuse the layer");
      }
    } finally {
      await server.close();
    }
  }
} finally {
  await new Deno.Command("chmod", { args: ["-R", "u+w", work] }).output();
  await Deno.remove(work, { recursive: true });
}

const med = (xs: number[]) => pct(xs, 50);
const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const ref = med(uvTarget);
const runs = (xs: number[]) => xs.map((x) => (x / 1000).toFixed(2)).join(", ");
const section = `## Pip install

\`deno task bench pip\` (\`bench/pip_bench.ts\`): ${SET.length} pinned distributions from PyPI
(${SET.join(", ")}; ${distributions} installed, ${(layerBytes / 2 ** 20).toFixed(1)} MiB), for
/usr/bin/python3, each install with an empty download cache (a Valise build starts from one). First
install = \`session.pip.install(SET)\` in a fresh server's session, call to result: the interpreter
probe, the one-off sandbox, uv's resolution, downloads and install, the layer made read-only.
Reuse = another session asking for the same set (the layer is there: no install). References are
the installers as processes, start to exit, in the same run, alternating with Valise round by round
(${ROUNDS} rounds, ${REUSES} reuses each). Ratio = median / \`uv pip install --target\` median.

Measured ${new Date().toISOString().slice(0, 10)}:

| case | median | runs | vs \`uv pip install --target\` |
|---|---|---|---|
| \`uv pip install --target DIR\` (reference) | ${s(ref)} | ${runs(uvTarget)} | 1.00x |
| \`uv venv\` + \`uv pip install\` | ${s(med(uvVenv))} | ${runs(uvVenv)} | ${
  (med(uvVenv) / ref).toFixed(2)
}x |
| \`python -m venv\` + \`pip install\` | ${s(med(pipVenv))} | ${runs(pipVenv)} | ${
  (med(pipVenv) / ref).toFixed(2)
}x |
| Valise, first install | ${s(med(first))} | ${runs(first)} | ${(med(first) / ref).toFixed(2)}x |
| Valise, reuse by another session, p50 | ${med(reuse).toFixed(1)} ms | p95 ${
  pct(reuse, 95).toFixed(1)
} ms | ${(med(reuse) / ref).toFixed(3)}x |

Target: reuse under 50 ms (${
  pct(reuse, 95) < 50 ? "met at p95" : med(reuse) < 50 ? "met at p50" : "not met"
}).
`;
const fmt = new Deno.Command(Deno.execPath(), {
  args: ["fmt", "--ext", "md", "-"],
  stdin: "piped",
  stdout: "piped",
}).spawn();
const w = fmt.stdin.getWriter();
await w.write(new TextEncoder().encode(section));
await w.close();
const formatted = await fmt.output();
const sectionText = formatted.success ? new TextDecoder().decode(formatted.stdout) : section;
console.log(sectionText);

const docPath = `${ROOT}docs/BENCHMARKS.md`;
let doc = await Deno.readTextFile(docPath).catch(() => "# Benchmarks\n");
const start = doc.indexOf("\n## Pip install\n");
if (start < 0) {
  doc = doc.replace(/\n*$/, "\n\n") + sectionText;
} else {
  const after = doc.indexOf("\n## ", start + 1);
  doc = doc.slice(0, start + 1) + sectionText + (after < 0 ? "" : "\n" + doc.slice(after + 1));
}
await Deno.writeTextFile(docPath, doc);
