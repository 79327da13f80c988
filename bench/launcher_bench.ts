// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Launcher latency and throughput, in the same run as a bare interpreter start:
 *
 * - reference: `python -c 'print(1)'` spawned from this process (`Deno.Command`, the real
 *   executable of `python3`, not the pyenv shim), time to its exit;
 * - cold: `Launcher.run()` of `print(1)` in a new session each time (new fork server), time
 *   from the call to the `exited` event;
 * - warm: the same in one session whose fork server is up;
 * - throughput: 1,000 `print(1)` runs across 8 sessions, all submitted at once (default
 *   limits: 16 workers, 4 per session), runs/s; the reference is 200 bare spawns, 8 at a time.
 *
 * Each launcher case runs without and with the bubblewrap sandbox (when bwrap works). Prints a
 * Markdown section and writes it into `docs/BENCHMARKS.md` under `## Launcher`.
 *
 * Env: `VALISE_BENCH_SCALE` (default 1; 0.2 for a quick run).
 *
 * @module
 */
import { Launcher, type SessionSpec } from "../packages/launcher/mod.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const SCALE = Number(Deno.env.get("VALISE_BENCH_SCALE") ?? "1");
const n = (x: number) => Math.max(5, Math.round(x * SCALE));

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

// A root launcher runs workers as uids of their own, which cannot reach an interpreter in root's
// home (a pyenv default) without the sandbox: then both sides use the system's.
const realPython = Deno.uid() === 0 ? "/usr/bin/python3" : new TextDecoder().decode(
  (await new Deno.Command("python3", {
    args: ["-c", "import sys; sys.stdout.write(sys.executable)"],
    stdout: "piped",
  }).output()).stdout,
);

async function bare(): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(realPython, {
    args: ["-c", "print(1)"],
    stdout: "piped",
    stderr: "piped",
    clearEnv: true,
    env: { PATH: "/usr/bin:/bin", LANG: "C.UTF-8" },
  }).output();
  if (!out.success) throw new Error("bare python failed");
  return performance.now() - t0;
}

async function once(l: Launcher, s: SessionSpec): Promise<number> {
  const t0 = performance.now();
  let code = -2;
  for await (const ev of l.run(s, { code: "print(1)" })) {
    if (ev.kind === "exited") code = ev.exitCode;
  }
  if (code !== 0) throw new Error(`run failed: ${code}`);
  return performance.now() - t0;
}

const dir = await Deno.makeTempDir({ prefix: "valise-launcher-bench-" });
// Unsandboxed workers of another uid must reach their session's directory by path.
await Deno.chmod(dir, 0o711);
const session = (key: string): SessionSpec => ({ key, root: `${dir}/${key}`, pythonPath: [] });
const rows: string[] = [];
const thrRows: string[] = [];
try {
  for (let i = 0; i < 8; i++) await Deno.mkdir(`${dir}/s${i}`);
  // Warm the page cache and the reference.
  for (let i = 0; i < 3; i++) await bare();
  const bareLat: number[] = [];
  for (let i = 0; i < n(40); i++) bareLat.push(await bare());
  const bareP50 = pct(bareLat, 50);
  rows.push(
    `| bare \`python3 -c 'print(1)'\` (reference) | — | ${bareP50.toFixed(1)} | ${
      pct(bareLat, 95).toFixed(1)
    } | 1.00x |`,
  );

  const bareThrN = n(200);
  const t0 = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next++ < bareThrN) await bare();
  }));
  const bareThr = bareThrN / ((performance.now() - t0) / 1000);
  thrRows.push(`| bare spawns, 8 at a time (reference) | — | ${bareThr.toFixed(0)} | 1.00x |`);

  const modes: ("none" | "bwrap")[] = ["none"];
  try {
    new Launcher({ sandbox: "bwrap", logger: () => {} }).close();
    modes.push("bwrap");
  } catch {
    // no sandbox here
  }
  for (const sandbox of modes) {
    const l = new Launcher({
      sandbox,
      defaultPython: realPython,
      logger: () => {},
      limits: { maxQueue: 2000 },
    });
    try {
      await once(l, session("s0"));
      const cold: number[] = [];
      for (let i = 0; i < n(30); i++) {
        const key = `cold-${sandbox}-${i}`;
        await Deno.mkdir(`${dir}/${key}`);
        cold.push(await once(l, session(key)));
        await l.stopSession(key);
      }
      const warm: number[] = [];
      for (let i = 0; i < n(300); i++) warm.push(await once(l, session("s0")));
      for (
        const [name, xs] of [["cold (new session)", cold], ["warm (fork server)", warm]] as const
      ) {
        rows.push(
          `| ${name} | ${sandbox} | ${pct(xs, 50).toFixed(1)} | ${pct(xs, 95).toFixed(1)} | ${
            (pct(xs, 50) / bareP50).toFixed(2)
          }x |`,
        );
      }
      // Throughput: fork servers of the 8 sessions are warm from a first round.
      await Promise.all(Array.from({ length: 8 }, (_, i) => once(l, session(`s${i}`))));
      const total = n(1000);
      const t1 = performance.now();
      await Promise.all(Array.from({ length: total }, (_, i) => once(l, session(`s${i % 8}`))));
      const thr = total / ((performance.now() - t1) / 1000);
      thrRows.push(
        `| ${total} runs across 8 sessions | ${sandbox} | ${thr.toFixed(0)} | ${
          (thr / bareThr).toFixed(2)
        }x |`,
      );
    } finally {
      await l.close();
    }
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}

const cpu =
  (await Deno.readTextFile("/proc/cpuinfo")).split("\n").filter((l) => l.startsWith("processor"))
    .length;
const section = `## Launcher

\`deno task bench launcher\` (\`bench/launcher_bench.ts\`): time from \`Launcher.run()\` to the
\`exited\` event for \`print(1)\`, against a bare \`python3 -c 'print(1)'\` process spawned by the
same benchmark in the same run (the real ${realPython}, not the pyenv shim). Cold = a new
session (a new fork server, and a new bwrap sandbox when sandboxed); warm = a session whose
fork server is up. Ratio = p50 / reference p50 (lower is better). ${cpu} CPUs shared with other
work, so single runs vary.

Measured ${new Date().toISOString().slice(0, 10)}:

| case | sandbox | p50 ms | p95 ms | p50 vs bare |
|---|---|---|---|---|
${rows.join("\n")}

Throughput (runs/s, higher is better; default limits: 16 workers in total, 4 per session):

| case | sandbox | runs/s | vs bare |
|---|---|---|---|
${thrRows.join("\n")}

Target: warm p50 under 5 ms.
`;
// Keep the section as `deno fmt` would write it.
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
let doc = "";
try {
  doc = await Deno.readTextFile(docPath);
} catch {
  doc = "# Benchmarks\n";
}
const start = doc.indexOf("\n## Launcher\n");
if (start < 0) {
  doc = doc.replace(/\n*$/, "\n\n") + sectionText;
} else {
  const after = doc.indexOf("\n## ", start + 1);
  doc = doc.slice(0, start + 1) + sectionText + (after < 0 ? "" : "\n" + doc.slice(after + 1));
}
await Deno.writeTextFile(docPath, doc);
