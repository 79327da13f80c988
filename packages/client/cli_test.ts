// Copyright 2026 the Valise authors. Apache-2.0 license.
// The CLI end to end: a real server, the CLI as a subprocess in a pipe and in a pseudo-terminal.
import { deepEqual, equal, match, notEqual, ok } from "node:assert/strict";
import { join } from "node:path";
import { cli, makeTar, sessionDir, stateOf, withServer, writeFile } from "./_test_util.ts";

const CLI = new URL("./cli.ts", import.meta.url).pathname;

/**
 * Checks a usage error's shape: the command's short usage first, then the error, then where the
 * help is; never the whole help.
 */
function usageError(r: { code: number; stderr: string }, message: string, command: string): void {
  const what = `${command}: ${message}`;
  equal(r.code, 2, what);
  const lines = r.stderr.trimEnd().split("\n");
  const help = command === "main" ? "valise help" : `valise help ${command}`;
  equal(lines.at(-1), `hint: see \`${help}\``, what);
  equal(lines.at(-2), `valise: [USAGE] ${message}`, what);
  const usage = lines.slice(0, -2);
  ok(usage.length >= 1 && usage.length <= 4, `${what}: ${r.stderr}`);
  ok(
    usage[0]!.startsWith(
      command === "main" ? "Usage: valise [OPTIONS]" : `Usage: valise ${command}`,
    ),
    `${what}: ${r.stderr}`,
  );
}

Deno.test("valise --help, valise help COMMAND and usage errors: short usage, the error, the help's name", async () => {
  const env = { VALISE_STATE_FILE: "/nonexistent/state.json" };
  const main = await cli(["--help"], env);
  equal(main.code, 0);
  match(main.stdout, /Usage: valise \[OPTIONS\] <COMMAND>/);
  equal((await cli(["help"], env)).stdout, main.stdout);
  for (
    const cmd of [
      "add",
      "conf",
      "run",
      "python",
      "apply",
      "pip",
      "status",
      "new",
      "release",
      "ls",
      "rm",
      "health",
      "completions",
    ]
  ) {
    const r = await cli([cmd, "--help"], env);
    equal(r.code, 0, cmd);
    match(r.stdout, new RegExp(`Usage: valise ${cmd}`));
    const h = await cli(["help", cmd], env);
    equal(h.code, 0, cmd);
    equal(h.stdout, r.stdout, cmd);
    // The whole help goes to stdout only when asked for, never with an error.
    equal(h.stderr, "");
  }
  match(main.stdout, /--json/);
  usageError(await cli([], env), "no command given", "main");
  usageError(await cli(["frobnicate"], env), 'unknown command "frobnicate"', "main");
  usageError(
    await cli(["stauts"], env),
    'unknown command "stauts"; did you mean "status"?',
    "main",
  );
  usageError(await cli(["help", "ad"], env), 'unknown command "ad"; did you mean "add"?', "help");
  usageError(await cli(["help", "a", "b"], env), "help takes at most one COMMAND", "help");
  usageError(await cli(["pip"], env), "pip needs install, list or uninstall", "pip");
  usageError(
    await cli(["pip", "instal", "six"], env),
    'unknown pip command "instal" (install, list or uninstall)',
    "pip",
  );
  usageError(
    await cli(["pip", "install"], env),
    "pip install needs a PKG, a wheel file or -r FILE",
    "pip",
  );
  usageError(await cli(["pip", "uninstall"], env), "pip uninstall needs at least one NAME", "pip");
  usageError(
    await cli(["add", "--pyfile", "--file", "x.py"], env),
    "give at most one of --pyfile, --archive, --file",
    "add",
  );
  // The words are checked before anything is sent, in the CLI's own words.
  const usage: [string[], string, string][] = [
    [["--retries=0", "status"], "--retries must be a positive integer", "main"],
    [["status", "--retries", "x"], "--retries must be a positive integer", "status"],
    [["run", "--timeout-ms=-1", "-c", "1"], "--timeout-ms must be a non-negative integer", "run"],
    [["run", "-c"], "-c needs a value", "run"],
    [["run", "--stdin"], "--stdin needs a value", "run"],
    [["run", "--"], "-- needs a SCRIPT after it", "run"],
    [["run", "--bogus", "x.py"], "unknown option --bogus", "run"],
    [["run"], "run needs -c CODE, -m MODULE or SCRIPT (or -i)", "run"],
    [["run", "--interactive=yes"], "--interactive takes no value", "run"],
    [["python", "--bogus"], "unknown option --bogus", "python"],
    [["python", "--timeout-ms=x"], "--timeout-ms must be a non-negative integer", "python"],
    [["add", "--pyfile=yes", "x.py"], "--pyfile takes no value", "add"],
    [["add", "-qx", "x.py"], "unknown option -qx", "add"],
    [["add", "--pyfiel", "x.py"], "unknown option --pyfiel; did you mean --pyfile?", "add"],
    [["add"], "add needs at least one PATH", "add"],
    [["conf", "--bogus"], "unknown option --bogus", "conf"],
    [["conf", "frob"], 'unknown conf command "frob" (set, get, unset or list)', "conf"],
    [["conf", "set", "k"], "conf set takes KEY VALUE, not 1 argument", "conf"],
    [["conf", "get"], "conf get takes one KEY, not 0 arguments", "conf"],
    [["apply", "--in"], "--in needs a value", "apply"],
    [["apply", "--form=rows"], '--form must be columns, pandas or pyarrow, not "rows"', "apply"],
    [["apply", "stray"], "unexpected argument stray", "apply"],
    [
      ["apply", "--json", "--fn", "m:f", "--in", "x", "--out", "-"],
      "--json writes to stdout: give --out a FILE, not -",
      "apply",
    ],
    [["status", "--nope=1"], "unknown option --nope=1", "status"],
    [["release", "extra"], "unexpected argument extra", "release"],
    [["new", "extra"], "unexpected argument extra", "new"],
    [["completions"], "completions needs a shell: bash, zsh or fish", "completions"],
    [["completions", "tcsh"], 'no completions for "tcsh": bash, zsh or fish', "completions"],
    [["--remote"], "--remote needs a value", "main"],
    [["--bogus"], "unknown option --bogus", "main"],
  ];
  for (const [args, message, command] of usage) usageError(await cli(args, env), message, command);
  const { version } = JSON.parse(await Deno.readTextFile(new URL("./deno.json", import.meta.url)));
  for (const flag of ["--version", "-V"]) {
    const v = await cli([flag], env);
    equal(v.code, 0);
    equal(v.stdout, `valise ${version}\n`);
  }
  deepEqual(JSON.parse((await cli(["--json", "-V"], env)).stdout), { type: "version", version });
  const badRemote = await cli(["--remote", "http://x", "status"], env);
  equal(badRemote.code, 2);
  match(
    badRemote.stderr,
    /^valise: \[INVALID_CONNECT_URL\] .*scheme must be "sc", not "http"\nhint: the format is sc:\/\//,
  );
});

Deno.test("valise in a pipe: a session shared by consecutive commands, plain output", async () => {
  await withServer(async ({ url, tmp, dataDir }) => {
    const state = join(tmp, "state", "cli.json");
    const work = join(tmp, "work");
    await Deno.mkdir(work);
    await writeFile(work, "util.py", "def shout(s):\n    return s.upper() + '!'\n");
    await writeFile(work, "main.py", "import sys, util\nprint(util.shout(sys.argv[1]))\n");
    await writeFile(work, "input.txt", "from a file");
    // deno task runs in the checkout's root; INIT_CWD keeps the user's directory.
    const env = { VALISE_STATE_FILE: state, SPARK_REMOTE: url, INIT_CWD: work };
    const taskRoot = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

    // Anywhere else an inherited INIT_CWD (an enclosing deno task's) does not move the paths.
    const elsewhere = await cli(["add", "--pyfile", "util.py"], env, { cwd: tmp });
    equal(elsewhere.code, 2, elsewhere.stderr);
    match(elsewhere.stderr, /Cannot add util\.py: there is no such file/);

    const add = await cli(["add", "--pyfile", "util.py"], env, { cwd: taskRoot });
    equal(add.code, 0, add.stderr);
    match(add.stdout, /^pyfiles\/util\.py\t\d+\tuploaded\n$/);
    const id = /new session ([0-9a-f-]{36})/.exec(add.stderr)?.[1];
    ok(id, add.stderr);
    match(add.stderr, /uploading pyfiles\/util\.py \(\d+ B\)\nuploaded pyfiles\/util\.py: /);
    deepEqual(Object.values(stateOf(state)).map((s) => s.sessionId), [id]);

    const addFile = await cli(["add", "--file", "main.py"], env, { cwd: taskRoot });
    equal(addFile.code, 0, addFile.stderr);
    ok(!addFile.stderr.includes("new session"));
    const root = join(await sessionDir(dataDir, id), "root");
    ok((await Deno.stat(join(root, "main.py"))).isFile);

    const run = await cli(["run", "main.py", "hello"], env);
    equal(run.code, 0, run.stderr);
    equal(run.stdout, "HELLO!\n");
    const code = await cli(
      ["run", "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
      env,
    );
    equal(code.code, 3);
    equal(code.stdout, "out\n");
    equal(code.stderr, "err\n");
    const mod = await cli(["run", "--stdin", "input.txt", "-m", "util"], env);
    equal(mod.code, 0, mod.stderr);
    const stdin = await cli(
      ["run", "--stdin", "input.txt", "-c", "import sys; print(sys.stdin.read()[::-1])"],
      env,
    );
    equal(stdin.stdout, "elif a morf\n");
    const piped = await cli(
      ["run", "--stdin", "-", "-c", "import sys; print(len(sys.stdin.read()))"],
      env,
      {
        stdin: "12345",
      },
    );
    equal(piped.stdout, "5\n");
    const slow = await cli(
      ["run", "--timeout-ms", "300", "-c", "import time; time.sleep(60)"],
      env,
    );
    equal(slow.code, 124);
    match(slow.stderr, /time limit/);

    equal((await cli(["conf", "set", "spark.cli.k", "v 1"], env)).code, 0);
    equal((await cli(["conf", "get", "spark.cli.k"], env)).stdout, "v 1\n");
    equal((await cli(["conf", "list", "spark.cli."], env)).stdout, "k=v 1\n");
    equal((await cli(["conf", "unset", "spark.cli.k"], env)).code, 0);
    const missing = await cli(["conf", "get", "spark.cli.k"], env);
    equal(missing.code, 1);
    match(
      missing.stderr,
      /^valise: \[SQL_CONF_NOT_FOUND\] The SQL config "spark.cli.k" cannot be found.*\nhint: `valise conf list`/,
    );

    const status = await cli(["status"], env);
    match(status.stdout, new RegExp(`^remote\\tsc://127\\.0\\.0\\.1:\\d+/\\nsession\\t${id}\\n`));
    const names = await cli(["status", "pyfiles/util.py", "files/nope"], env);
    equal(names.stdout, "pyfiles/util.py\texists\nfiles/nope\tmissing\n");
    equal(names.code, 1);

    const dup = await cli(["add", "--pyfile", "util.py"], env);
    equal(dup.code, 0);
    match(dup.stdout, /\tattached\n$/);
    await writeFile(work, "other", "x");
    await Deno.mkdir(join(work, "v2"));
    await writeFile(join(work, "v2"), "util.py", "changed = True\n");
    const clash = await cli(["add", "--pyfile", "v2/util.py"], env);
    equal(clash.code, 1);
    match(
      clash.stderr,
      /\nvalise: \[ARTIFACT_ALREADY_EXISTS\] .*\nhint: artifacts cannot be overwritten.*\n$/,
    );
    const badFile = await cli(["add", "--pyfile", "other"], env);
    equal(badFile.code, 2);
    match(badFile.stderr, /Unsupported file format/);

    // --session picks another session without touching the remembered one.
    const other = crypto.randomUUID();
    const o = await cli(["--session", other, "status", "pyfiles/util.py"], env);
    equal(o.stdout, "pyfiles/util.py\tmissing\n");
    deepEqual(Object.values(stateOf(state)).map((s) => s.sessionId), [id]);

    await makeTar(work, "env.tar", "marker.txt", "in the archive");
    const arch = await cli(["add", "--archive", "env.tar#myenv"], env);
    equal(arch.code, 0, arch.stderr);
    match(arch.stdout, /^archives\/env\.tar#myenv\t\d+\tuploaded\n$/);
    const inArchive = await cli(["run", "-c", "print(open('myenv/marker.txt').read())"], env);
    equal(inArchive.stdout, "in the archive\n");

    const rel = await cli(["release"], env);
    equal(rel.code, 0, rel.stderr);
    match(rel.stderr, new RegExp(`released session ${id}`));
    deepEqual(stateOf(state), {});
    const again = await cli(["-q", "status"], env);
    equal(again.code, 0);
    equal(again.stderr, "");
    notEqual(/session\t(\S+)/.exec(again.stdout)?.[1], id);

    const quiet = await cli(["add", "--quiet", "--file", "input.txt"], env);
    equal(quiet.stderr, "");
    equal(quiet.code, 0);
    equal((await cli(["-q", "release"], env)).code, 0);
    const nothing = await cli(["release"], env);
    equal(nothing.code, 0);
    match(nothing.stderr, /no session to release/);
    deepEqual(stateOf(state), {});
  });
});

Deno.test("valise takes --opt=value for every option, before or after the command", async () => {
  await withServer(async ({ url, tmp }) => {
    const state = join(tmp, "cli.json");
    const work = join(tmp, "work");
    await Deno.mkdir(work);
    await writeFile(work, "input.txt", "abc");
    await writeFile(work, "-dash.py", "print('dash')\n");
    // No SPARK_REMOTE: every call names the remote itself.
    const env = { VALISE_STATE_FILE: state, INIT_CWD: work };

    const add = await cli(
      [`--remote=${url}`, "--retries=2", "add", "--file", "--", "-dash.py"],
      env,
    );
    equal(add.code, 0, add.stderr);
    match(add.stdout, /^files\/-dash\.py\t\d+\tuploaded\n$/);
    const id = Object.values(stateOf(state))[0]!.sessionId;

    const r = await cli([
      "run",
      `--remote=${url}`,
      "--stdin=input.txt",
      "-c",
      "import sys; print(sys.stdin.read())",
    ], env);
    equal(r.code, 0, r.stderr);
    equal(r.stdout, "abc\n");
    // A short option's value may follow it at once; the program's words are its own.
    const argv = await cli([
      "run",
      `--remote=${url}`,
      "-cimport sys; print(sys.argv[1:])",
      "--remote=x",
      "-q",
    ], env);
    equal(argv.stdout, "['--remote=x', '-q']\n", argv.stderr);
    const slow = await cli([
      "run",
      "--timeout-ms=300",
      `--remote=${url}`,
      "-c",
      "import time; time.sleep(60)",
    ], env);
    equal(slow.code, 124);
    const script = await cli(["run", `--remote=${url}`, "--", "-dash.py"], env);
    equal(script.stdout, "dash\n", script.stderr);

    // A value may start with a dash once the key is given.
    equal((await cli(["conf", "set", "spark.cli.n", "-1", `--remote=${url}`], env)).code, 0);
    equal((await cli(["conf", "get", "spark.cli.n", `--remote=${url}`], env)).stdout, "-1\n");

    const other = crypto.randomUUID();
    const st = await cli(
      ["status", `--remote=${url}`, `--session=${other}`, "files/-dash.py"],
      env,
    );
    equal(st.stdout, "files/-dash.py\tmissing\n");
    const mine = await cli(["status", "files/-dash.py", `--remote=${url}`], env);
    equal(mine.stdout, "files/-dash.py\texists\n");

    const rel = await cli(["release", `--remote=${url}`, "--quiet"], env);
    equal(rel.code, 0, rel.stderr);
    equal(rel.stderr, "");
    deepEqual(stateOf(state), {});
    notEqual(id, other);
  });
});

Deno.test("valise reports an unreachable server in one line with a hint", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const r = await cli(["--retries", "1", "--remote", "sc://127.0.0.1:1", "conf", "list"], {
      VALISE_STATE_FILE: join(tmp, "s.json"),
    });
    equal(r.code, 1);
    const lines = r.stderr.trimEnd().split("\n").filter((l) => !l.includes("new session"));
    equal(lines.length, 2, r.stderr);
    match(lines[0]!, /^valise: \[UNAVAILABLE\] /);
    match(lines[1]!, /^hint: is a server running at 127\.0\.0\.1:1\?/);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

const hasScript = (() => {
  try {
    return new Deno.Command("script", { args: ["--version"] }).outputSync().success;
  } catch {
    return false;
  }
})();

function sh(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

Deno.test({
  name: "valise in a pseudo-terminal draws progress bars and keeps the worker's exit code",
  ignore: !hasScript, // util-linux `script` provides the TTY; without it there is none to test.
  fn: async () => {
    await withServer(async ({ url, tmp }) => {
      const big = await writeFile(tmp, "big.bin", 3_000_000);
      const env = { VALISE_STATE_FILE: join(tmp, "state.json"), SPARK_REMOTE: url };
      const inPty = async (args: string[]) => {
        const cmd = [Deno.execPath(), "run", "-A", CLI, ...args].map(sh).join(" ");
        const r = await new Deno.Command("script", {
          args: ["-qec", cmd, "/dev/null"],
          env: { NO_COLOR: "1", ...env },
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).output();
        return { code: r.code, out: new TextDecoder().decode(r.stdout) };
      };
      const add = await inPty(["add", "--file", big]);
      equal(add.code, 0, add.out);
      // The last line: size, total time and average rate; no ETA.
      match(add.out, /files\/big\.bin \[#+\] 100% 2\.9 MiB in \d+\.\ds \(\d+\.\d [KMG]iB\/s\)\r\n/);
      ok(!add.out.includes("ETA 0s") && !add.out.includes(" 0 B/s"), add.out);
      ok(add.out.includes("\r\x1b[2K"));
      match(add.out, /files\/big\.bin\t3000000\tuploaded/);
      const again = await inPty(["add", "--file", big]);
      match(again.out, /already on the server, 2\.9 MiB not sent/);
      const quiet = await inPty(["add", "-q", "--file", big]);
      ok(!quiet.out.includes("ETA"));
      const run = await inPty(["run", "-c", "import sys; print('tty'); sys.exit(5)"]);
      equal(run.code, 5);
      match(run.out, /tty\r?\n/);
    });
  },
});
