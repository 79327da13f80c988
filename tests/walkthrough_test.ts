// Copyright 2026 the Valise authors. Apache-2.0 license.
// A newcomer's first hour, automated: a fresh clone of this repository, the README's commands in
// the README's order, as written (the only additions are what a newcomer brings: an
// `env.tar.gz` with a `mylib`, a `util.py`, a `data.arrow`), each output checked. A command the
// README adds or changes and this walk-through does not know fails it: README and walk-through
// change together.
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { makeVenvPack } from "./fixtures/envs.ts";
import { VENV, VENV_PYTHON, venvMissing } from "./_python.ts";
import { removeTree } from "./_util.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const PORT = 15002;

/** The README's shell commands, in order, without comments; the fenced `sh` and `python` blocks. */
function readmeBlocks(readme: string): { lang: string; lines: string[] }[] {
  const blocks: { lang: string; lines: string[] }[] = [];
  for (const m of readme.matchAll(/^```(sh|python)\n([\s\S]*?)^```$/gm)) {
    const lines = m[2]!.split("\n").map((l) => m[1] === "sh" ? l.replace(/\s+#\s.*$/, "") : l)
      .filter((l) => l.trim() !== "");
    blocks.push({ lang: m[1]!, lines });
  }
  return blocks;
}

function portBusy(): string | undefined {
  try {
    Deno.listen({ hostname: "127.0.0.1", port: PORT }).close();
    return undefined;
  } catch {
    return `127.0.0.1:${PORT}, the README's address, is in use on this machine (a server of yours?)`;
  }
}

function gitMissing(): string | undefined {
  try {
    new Deno.Command("git", { args: ["--version"], stdout: "null" }).outputSync();
    return undefined;
  } catch {
    return "git is not installed";
  }
}

const why = venvMissing() ?? gitMissing() ?? portBusy();
const NAME = "README walk-through: a fresh clone, the README's commands as written, each output";

Deno.test(
  { name: why ? `${NAME} (ignored: ${why})` : NAME, ignore: why !== undefined },
  async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-walk-" });
    const clone = join(tmp, "valise");
    const home = join(tmp, "home");
    await Deno.mkdir(home);
    const sh = async (line: string, opts: { stdin?: string } = {}) => {
      const child = new Deno.Command("bash", {
        args: ["-c", line],
        cwd: clone,
        env: {
          PATH: `${join(home, ".deno/bin")}:${Deno.env.get("PATH")}`,
          HOME: Deno.env.get("HOME")!,
          DENO_INSTALL_ROOT: join(home, ".deno"),
          VALISE_STATE_FILE: join(home, "state.json"),
        },
        clearEnv: true,
        stdin: opts.stdin === undefined ? "null" : "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      if (opts.stdin !== undefined) {
        const w = child.stdin.getWriter();
        await w.write(new TextEncoder().encode(opts.stdin));
        await w.close();
      }
      const out = await child.output();
      const text = (b: Uint8Array) => new TextDecoder().decode(b);
      return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
    };
    let server: Deno.ChildProcess | undefined;
    const serverLog: string[] = [];
    try {
      // The committed state, as a newcomer gets it; the clone shares the checkout's .venv/ (the
      // README's test task would build the same one from the pinned requirements).
      const cloned = await new Deno.Command("git", {
        args: ["clone", "--quiet", "--no-hardlinks", ROOT, clone],
        stdout: "null",
        stderr: "piped",
      }).output();
      equal(cloned.code, 0, new TextDecoder().decode(cloned.stderr));
      await Deno.symlink(VENV, join(clone, ".venv"));
      // What the newcomer brings: an environment with mylib (VERSION and a transform), util.py,
      // and an Arrow file.
      const env = await makeVenvPack(join(tmp, "fixtures"), {
        packages: {
          mylib: 'VERSION = "1.0.0"\n\n\ndef transform(batch):\n' +
            '    return {"x": [v * 2 for v in batch["x"]]}\n',
        },
        name: "walk-env",
      });
      await Deno.copyFile(env.archive, join(clone, "env.tar.gz"));
      await Deno.writeTextFile(join(clone, "util.py"), "def hello():\n    return 'hi'\n");
      const arrow = await new Deno.Command(VENV_PYTHON, {
        args: [
          "-c",
          "import pyarrow as pa, sys; t = pa.table({'x': [1, 2, 3]}); " +
          "w = pa.ipc.new_file(sys.argv[1], t.schema); w.write_table(t); w.close()",
          join(clone, "data.arrow"),
        ],
      }).output();
      equal(arrow.code, 0, new TextDecoder().decode(arrow.stderr));

      const blocks = readmeBlocks(await Deno.readTextFile(join(clone, "README.md")));
      const [quick, python, cli, anywhere] = blocks;
      equal(blocks.length, 4, `the README's code blocks changed: ${JSON.stringify(blocks)}`);

      await t.step(
        "Quick start: the server starts on 127.0.0.1:15002 with data in ./.data",
        async () => {
          equal(quick!.lang, "sh");
          equal(quick!.lines.length, 2, quick!.lines.join("\n"));
          ok(/task serve$/.test(quick!.lines[0]!), quick!.lines[0]);
          // The second line is the test task: this walk-through is part of it.
          ok(/task test$/.test(quick!.lines[1]!), quick!.lines[1]);
          // A group of its own: `deno task` does not pass SIGTERM on to the server it started
          // (a terminal's Ctrl-C reaches the whole group), so the group is what gets stopped.
          server = new Deno.Command("setsid", {
            args: ["bash", "-c", `exec ${quick!.lines[0]}`],
            cwd: clone,
            stdin: "null",
            stdout: "piped",
            stderr: "piped",
          }).spawn();
          const out = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
          let first = "";
          while (!first.includes("\n")) {
            const { value, done } = await out.read();
            if (done) break;
            first += value;
          }
          out.releaseLock();
          (async () => {
            for await (const t of server!.stderr.pipeThrough(new TextDecoderStream())) {
              serverLog.push(t);
            }
          })();
          equal(first.trim(), `valise listening on 127.0.0.1:${PORT}`);
          ok((await Deno.stat(join(clone, ".data"))).isDirectory);
        },
      );

      await t.step("PySpark: addArtifacts and conf.set as written", async () => {
        equal(python!.lang, "python");
        const r = await sh(`.venv/bin/python -`, { stdin: python!.lines.join("\n") + "\n" });
        equal(r.code, 0, r.stderr);
        // The server committed both artifacts for that session.
        const log = serverLog.join("");
        ok((log.match(/AddArtifacts OK/g) ?? []).length >= 2, log);
      });

      await t.step("the command line, line by line", async () => {
        equal(cli!.lang, "sh");
        const expect: [RegExp, (r: Awaited<ReturnType<typeof sh>>) => void][] = [
          [/valise add --archive env\.tar\.gz#environment$/, (r) => {
            ok(/new session [0-9a-f-]{36}/.test(r.stderr), r.stderr);
            ok(
              r.stdout.includes("archives/env.tar.gz#environment") ||
                r.stderr.includes("archives/env.tar.gz"),
              r.stdout + r.stderr,
            );
          }],
          [
            /valise conf set spark\.sql\.execution\.pyspark\.python environment\/bin\/python$/,
            () => {},
          ],
          [
            /valise run -c 'import mylib; print\(mylib\.VERSION\)'$/,
            (r) => equal(r.stdout, "1.0.0\n"),
          ],
          [/valise apply --fn mylib:transform --in data\.arrow --out result\.arrow$/, () => {
            ok(Deno.statSync(join(clone, "result.arrow")).size > 0);
          }],
          [/valise release$/, () => {}],
        ];
        equal(cli!.lines.length, expect.length, cli!.lines.join("\n"));
        for (const [i, line] of cli!.lines.entries()) {
          const [pattern, check] = expect[i]!;
          ok(pattern.test(line), `README line ${line} is not ${pattern}`);
          const r = await sh(line);
          equal(r.code, 0, `${line}\n${r.stderr}`);
          check(r);
        }
        const doubled = await new Deno.Command(VENV_PYTHON, {
          args: [
            "-c",
            "import pyarrow as pa, sys; print(pa.ipc.open_stream(open(sys.argv[1], 'rb')).read_all()['x'].to_pylist())",
            join(clone, "result.arrow"),
          ],
        }).output();
        equal(new TextDecoder().decode(doubled.stdout), "[2, 4, 6]\n");
      });

      await t.step("the valise command anywhere: install, run, build", async () => {
        equal(anywhere!.lang, "sh");
        equal(anywhere!.lines.length, 3, anywhere!.lines.join("\n"));
        ok(/^deno task install$/.test(anywhere!.lines[0]!), anywhere!.lines[0]);
        let r = await sh(anywhere!.lines[0]!);
        equal(r.code, 0, r.stderr);
        ok(
          /^valise --remote sc:\/\/localhost:15002 run -c 'print\(42\)'$/.test(anywhere!.lines[1]!),
        );
        r = await sh(`cd / && ${anywhere!.lines[1]!}`);
        equal(r.code, 0, r.stderr);
        equal(r.stdout, "42\n");
        ok(/^deno task build$/.test(anywhere!.lines[2]!), anywhere!.lines[2]);
        r = await sh(anywhere!.lines[2]!);
        // Where Deno's runtime cannot be downloaded the build says so and why; else it builds.
        if (r.code === 0) {
          const v = await sh("dist/valise --version");
          ok(v.stdout.startsWith("valise "), v.stdout + v.stderr);
        } else {
          ok(/dl\.deno\.land.*DENORT_BIN/.test(r.stderr), r.stderr);
        }
      });
    } finally {
      if (server) {
        try {
          Deno.kill(-server.pid, "SIGTERM");
        } catch {
          /* exited */
        }
        await server.status;
      }
      await removeTree(tmp);
    }
  },
);
