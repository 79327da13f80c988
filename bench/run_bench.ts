// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A warm `Run` of `print(1)` over RPC (issue 16, goal 1), beside a bare start of the same
 * interpreter in the same run:
 *
 * - reference: `/usr/bin/python3 -c 'print(1)'` spawned from this process, time to its exit;
 * - Valise: `Session.run({ code: "print(1)" })` of `@valise/client` against a real server
 *   (`packages/server/main.ts`, its defaults: workers in bubblewrap when it works, a uid per
 *   session, cgroups when available; `--python /usr/bin/python3`), in one session whose fork
 *   server is up, time from the call to the end of the stream. The times at which the client
 *   saw `started`, the first `stdout` and `exited` are kept too: where the time goes.
 *
 * Both are sampled in alternating rounds, so that both see the same load from other work.
 * Prints a Markdown section and writes it into `docs/BENCHMARKS.md` under
 * `## Warm run over RPC (issue 16, goal 1)`.
 *
 * Env: `VALISE_BENCH_SCALE` (default 1; 0.2 for a quick run).
 *
 * @module
 */
import { connect } from "@valise/client";
import { startServer } from "../tests/_server.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const PYTHON = "/usr/bin/python3";
const SCALE = Number(Deno.env.get("VALISE_BENCH_SCALE") ?? "1");
const ROUNDS = Math.max(2, Math.round(10 * SCALE));
const BARE_PER_ROUND = 8;
const WARM_PER_ROUND = 40;
const HEADING = "## Warm run over RPC (issue 16, goal 1)";

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

async function bare(): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(PYTHON, {
    args: ["-c", "print(1)"],
    stdout: "piped",
    stderr: "piped",
    clearEnv: true,
    env: { PATH: "/usr/bin:/bin", LANG: "C.UTF-8" },
  }).output();
  if (!out.success || new TextDecoder().decode(out.stdout) !== "1\n") {
    throw new Error("bare python failed");
  }
  return performance.now() - t0;
}

interface Sample {
  started: number;
  stdout: number;
  exited: number;
  total: number;
}

const dataDir = await Deno.makeTempDir({ prefix: "valise-run-bench-" });
const server = await startServer({ dataDir, args: ["--quiet", "--python", PYTHON] });
const bareLat: number[] = [];
const warm: Sample[] = [];
let sandboxed = "";
try {
  const session = connect(`sc://127.0.0.1:${server.port}/;user_id=bench`);
  try {
    const once = async (): Promise<Sample> => {
      const t0 = performance.now();
      const s: Sample = { started: 0, stdout: 0, exited: 0, total: 0 };
      let out = "";
      let code = -2;
      for await (const ev of session.run({ code: "print(1)" })) {
        const t = performance.now() - t0;
        if (ev.kind === "started") s.started = t;
        else if (ev.kind === "stdout") {
          if (!out) s.stdout = t;
          out += new TextDecoder().decode(ev.data);
        } else if (ev.kind === "exited") {
          s.exited = t;
          code = ev.exitCode;
        }
      }
      s.total = performance.now() - t0;
      if (code !== 0 || out !== "1\n") throw new Error(`run failed: ${code} ${out}`);
      return s;
    };
    // The fork server, its sandbox and the page cache warm up; the reference's too.
    for (let i = 0; i < 20; i++) await once();
    for (let i = 0; i < 3; i++) await bare();
    sandboxed = server.log.some((l) => l.includes("workers sandboxed with bubblewrap"))
      ? "bwrap"
      : "none";
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < BARE_PER_ROUND; i++) bareLat.push(await bare());
      for (let i = 0; i < WARM_PER_ROUND; i++) warm.push(await once());
    }
    await session.release();
  } finally {
    session.close();
  }
} finally {
  await server.stop();
  await Deno.remove(dataDir, { recursive: true });
}

const bareP50 = pct(bareLat, 50);
const col = (k: keyof Sample) => warm.map((s) => s[k]);
const total = col("total");
const ratio = pct(total, 50) / bareP50;
const row = (name: string, xs: number[], vs: boolean) =>
  `| ${name} | ${xs.length} | ${pct(xs, 50).toFixed(2)} | ${pct(xs, 95).toFixed(2)} | ${
    vs ? `${(pct(xs, 50) / bareP50).toFixed(3)}x` : "—"
  } |`;
const cpu =
  (await Deno.readTextFile("/proc/cpuinfo")).split("\n").filter((l) => l.startsWith("processor"))
    .length;
const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
const section = `${HEADING}

\`deno task bench run\` (\`bench/run_bench.ts\`): a warm \`Run\` of \`print(1)\` over gRPC
(\`@valise/client\`'s \`Session.run\` against a real \`packages/server/main.ts\` on loopback, workers
${
  sandboxed === "bwrap"
    ? "in bubblewrap"
    : "not sandboxed"
}, a uid per session; one session whose fork server is up), time from the call to the end of
its stream, beside a bare \`${PYTHON} -c 'print(1)'\` spawned by the same benchmark (the same
interpreter the server runs), sampled in ${ROUNDS} alternating rounds (${BARE_PER_ROUND} bare, ${WARM_PER_ROUND} runs). ${cpu} CPUs, load average at the end ${load}.

Measured ${new Date().toISOString().slice(0, 10)}:

| case | n | p50 ms | p95 ms | p50 vs bare |
|---|---|---|---|---|
${row(`bare \`python3 -c 'print(1)'\` (reference)`, bareLat, true)}
${row("warm Run over RPC, call → end of stream", total, true)}
${row("… client saw \`started\`", col("started"), false)}
${row("… client saw the first \`stdout\`", col("stdout"), false)}
${row("… client saw \`exited\`", col("exited"), false)}

Goal: warm Run p50 ≤ 0.1x the bare start: **${ratio.toFixed(3)}x** in this run.
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

// Only the table and its lead-in are rewritten; the profile notes below them stay.
const docPath = `${ROOT}docs/BENCHMARKS.md`;
const doc = await Deno.readTextFile(docPath).catch(() => "# Benchmarks\n");
const start = doc.indexOf(`\n${HEADING}\n`);
if (start < 0) {
  await Deno.writeTextFile(docPath, doc.replace(/\n*$/, "\n\n") + sectionText);
} else {
  const notes = doc.indexOf("\n### ", start + 1);
  const next = doc.indexOf("\n## ", start + 1);
  const end = notes >= 0 && (next < 0 || notes < next) ? notes : next;
  await Deno.writeTextFile(
    docPath,
    doc.slice(0, start + 1) + sectionText + (end < 0 ? "" : doc.slice(end)),
  );
}
