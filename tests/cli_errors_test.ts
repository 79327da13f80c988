// The CLI's errors point at the actual cause: a missing token and a wrong one, a web server
// that is not Spark Connect, TLS against a plaintext server, a directory given to `add` (with the
// command that packs it, which works), connection strings with a typo or a path, and Apply's
// failures (the function's exception, output that does not fit, with or without --schema).
import { equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { tableFromArrays, tableToIPC } from "apache-arrow";
import { needsVenv, VENV_PYTHON } from "./_python.ts";
import { type ServerProcess, startServer } from "./_server.ts";

const CLI = new URL("../packages/client/cli.ts", import.meta.url).pathname;

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(args: string[], env: Record<string, string>, cwd: string): Promise<Ran> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { NO_COLOR: "1", ...env },
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
}

/** The last two lines of stderr: the error and its hint. */
function failure(r: Ran): { error: string; hint: string } {
  const lines = r.stderr.trimEnd().split("\n");
  return { error: lines.at(-2) ?? "", hint: lines.at(-1) ?? "" };
}

async function withServer(
  fn: (s: ServerProcess, tmp: string) => Promise<void>,
  args: string[] = [],
): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-cli-errors-" });
  const server = await startServer({ dataDir: join(tmp, "data"), args });
  try {
    await fn(server, tmp);
  } finally {
    await server.stop();
    await new Deno.Command("chmod", { args: ["-R", "u+w", tmp] }).output();
    await Deno.remove(tmp, { recursive: true });
  }
}

Deno.test("a missing token and a wrong token get different hints; the server's message says which", async () => {
  await withServer(async (server, tmp) => {
    const env = { VALISE_STATE_FILE: join(tmp, "state.json") };
    const at = `sc://127.0.0.1:${server.port}`;
    const missing = failure(await cli([`--remote=${at}`, "conf", "list"], env, tmp));
    match(missing.error, /^valise: \[UNAUTHENTICATED\] This server requires an 'authorization/);
    match(missing.hint, /^hint: the server wants a token: add ;token=TOKEN to the connection/);
    const wrong = failure(await cli([`--remote=${at}/;token=nope`, "conf", "list"], env, tmp));
    match(wrong.error, /^valise: \[UNAUTHENTICATED\] The bearer token is wrong/);
    match(wrong.hint, /^hint: the server does not accept this token: check ;token= /);
    ok(!wrong.hint.includes("nope"), "the token is not echoed");
    const right = await cli([`--remote=${at}/;token=right`, "conf", "list"], env, tmp);
    equal(right.code, 0, right.stderr);
  }, ["--token", "right"]);
});

Deno.test("an HTTP server that is not Spark Connect, and TLS against a plaintext server, are named as such", async () => {
  const web = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("<h1>Not Found</h1>", { status: 404 }),
  );
  try {
    await withServer(async (server, tmp) => {
      const env = { VALISE_STATE_FILE: join(tmp, "state.json") };
      const port = web.addr.port;
      const r = await cli([`--remote=sc://127.0.0.1:${port}`, "conf", "list"], env, tmp);
      equal(r.code, 1);
      const notSpark = failure(r);
      equal(
        notSpark.error,
        `valise: [NOT_SPARK_CONNECT] 127.0.0.1:${port} answered HTTP 404 without a gRPC status: ` +
          "it is not a Valise or Spark Connect server",
      );
      match(notSpark.hint, /^hint: check the host and port of --remote/);
      const tls = await cli(
        [`--remote=sc://127.0.0.1:${server.port}/;use_ssl=true`, "--retries=1", "conf", "list"],
        env,
        tmp,
      );
      equal(tls.code, 1);
      const f = failure(tls);
      equal(
        f.error,
        `valise: [TLS_FAILED] Cannot speak TLS with 127.0.0.1:${server.port} (use_ssl=true): it ` +
          "answered in plaintext",
      );
      equal(
        f.hint,
        "hint: the server speaks plaintext: drop ;use_ssl=true from the connection string",
      );
      ok(!tls.stderr.includes("SSL routines"), tls.stderr);
    });
  } finally {
    await web.shutdown();
  }
});

Deno.test("connection strings: an unknown parameter names the known ones, a path prefix says so", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const env = { VALISE_STATE_FILE: join(tmp, "state.json") };
    const typo = await cli(["--remote=sc://127.0.0.1:15002/;tokn=abc", "status"], env, tmp);
    equal(typo.code, 2);
    match(
      failure(typo).error,
      /\[INVALID_CONNECT_URL\] .*unknown parameter "tokn" \(did you mean "token"\?\): the known ones are token, user_id, session_id, use_ssl, user_agent/,
    );
    const path = await cli(["--remote=sc://127.0.0.1:15002/spark;token=abc", "status"], env, tmp);
    equal(path.code, 2);
    match(
      failure(path).error,
      /the path must be empty or "\/", not "\/spark": Spark Connect has no path prefix/,
    );
    ok(!path.stderr.includes("parameters must follow"), path.stderr);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("add of a directory: the hint is the command that packs it, and that command works", async () => {
  await withServer(async (server, tmp) => {
    const env = {
      VALISE_STATE_FILE: join(tmp, "state.json"),
      SPARK_REMOTE: `sc://127.0.0.1:${server.port}`,
    };
    const work = join(tmp, "my work");
    await Deno.mkdir(join(work, "mypkg"), { recursive: true });
    await Deno.writeTextFile(join(work, "mypkg", "__init__.py"), "ANSWER = 42\n");
    await Deno.mkdir(join(work, "envdir"));
    await Deno.writeTextFile(join(work, "envdir", "marker.txt"), "in the archive");

    const pyfile = await cli(["add", "--pyfile", "mypkg"], env, work);
    equal(pyfile.code, 2);
    const p = failure(pyfile);
    equal(p.error, "valise: [INVALID_ARGUMENT] Cannot add mypkg: it is a directory");
    const zip =
      /^hint: this is a directory: zip it, then add the zip: (.*) && (valise add --pyfile .*)$/
        .exec(p.hint);
    ok(zip, p.hint);
    ok(!pyfile.stderr.includes("Unsupported file format"));
    const zipped = await new Deno.Command("sh", { args: ["-c", zip[1]!], stdout: "null" }).output();
    equal(zipped.code, 0);
    const target = unquote(zip[2]!.replace(/^valise add --pyfile /, ""));
    const addZip = await cli(["add", "--pyfile", target], env, work);
    equal(addZip.code, 0, addZip.stderr);
    const run = await cli(["run", "-c", "import mypkg; print(mypkg.ANSWER)"], env, work);
    equal(run.stdout, "42\n", run.stderr);

    const archive = await cli(["add", "--archive", "envdir#env"], env, work);
    equal(archive.code, 2);
    const a = failure(archive);
    const tar =
      /^hint: this is a directory: pack it, then add the archive: (.*) && valise add --archive (.*)$/
        .exec(a.hint);
    ok(tar, a.hint);
    equal((await new Deno.Command("sh", { args: ["-c", tar[1]!] }).output()).code, 0);
    const addTar = await cli(["add", "--archive", unquote(tar[2]!)], env, work);
    equal(addTar.code, 0, addTar.stderr);
    const inside = await cli(["run", "-c", "print(open('envdir/marker.txt').read())"], env, work);
    equal(inside.stdout, "in the archive\n", inside.stderr);

    const file = failure(await cli(["add", "--file", "envdir"], env, work));
    match(file.hint, /^hint: --file takes one file: pack it, then add the archive: tar -czf /);
  });
});

/** Undoes the CLI's shell quoting of one word. */
function unquote(word: string): string {
  return word.startsWith("'") ? word.slice(1, -1).replaceAll(`'\\''`, "'") : word;
}

async function arrowFiles(dir: string): Promise<void> {
  await Deno.writeFile(
    join(dir, "in.arrow"),
    tableToIPC(tableFromArrays({ x: Int32Array.of(1, 2, 3) }), "file"),
  );
  await Deno.writeFile(
    join(dir, "int_schema.arrow"),
    tableToIPC(tableFromArrays({ y: BigInt64Array.of() }), "stream"),
  );
  await Deno.writeTextFile(
    join(dir, "fns.py"),
    [
      "def zero(c):",
      "    return {'y': [v / 0 for v in c['x']]}",
      "def mixed(c):",
      "    return {'y': [1, 'a', 2]}",
      "def strings(c):",
      "    return {'y': ['1', '2', '3']}",
      "def five(c):",
      "    return 5",
      "def pd_mixed(df):",
      "    import pandas as pd",
      "    return pd.DataFrame({'y': [1, 'a', 2.5]})",
      "",
    ].join("\n"),
  );
}

Deno.test("Apply's failures: the function's exception, and output that does not fit, with hints about their causes", async () => {
  await withServer(async (server, tmp) => {
    const env = {
      VALISE_STATE_FILE: join(tmp, "state.json"),
      SPARK_REMOTE: `sc://127.0.0.1:${server.port}`,
    };
    await arrowFiles(tmp);
    const apply = (fn: string, ...more: string[]) =>
      cli(
        ["apply", "--code=fns.py", `--function=${fn}`, "--in=in.arrow", "--out=o.arrow", ...more],
        env,
        tmp,
      );

    const zero = await apply("zero");
    equal(zero.code, 1);
    match(
      zero.stderr,
      /Traceback \(most recent call last\):\n(.*\n)*ZeroDivisionError: division by zero\n/,
    );
    const z = failure(zero);
    equal(z.error, "valise: [APPLY_FUNCTION_FAILED] ZeroDivisionError: division by zero");
    equal(z.hint, "hint: the function raised an exception: the traceback above shows where");

    const mixed = failure(await apply("mixed"));
    equal(
      mixed.error,
      "valise: [APPLY_OUTPUT_TYPE_MISMATCH] column 'y': cannot infer an Arrow type from values " +
        "of types int, str; declare the output schema",
    );
    match(
      mixed.hint,
      /^hint: give each output column values of one type, or declare the output's types with --schema FILE/,
    );

    const declared = failure(await apply("strings", "--schema=int_schema.arrow"));
    equal(
      declared.error,
      "valise: [APPLY_OUTPUT_TYPE_MISMATCH] column 'y' is int64, but row 0 holds str '1'",
    );
    equal(declared.hint, "hint: make the function's output fit the schema of --schema FILE");

    const five = failure(await apply("five"));
    match(five.error, /the function must return a batch, None or an iterable of batches, not int$/);
    ok(!five.hint.includes("--schema"), five.hint);
    ok(!(await Deno.stat(join(tmp, "o.arrow")).then(() => true, () => false)));
  });
});

Deno.test({
  ...needsVenv(
    "Apply with pyarrow: pandas output pyarrow cannot convert names the column, the value and the type, not a worker crash",
  ),
  fn: async () => {
    await withServer(async (server, tmp) => {
      const env = {
        VALISE_STATE_FILE: join(tmp, "state.json"),
        SPARK_REMOTE: `sc://127.0.0.1:${server.port}`,
      };
      await arrowFiles(tmp);
      const set = await cli(
        ["conf", "set", "spark.sql.execution.pyspark.python", VENV_PYTHON],
        env,
        tmp,
      );
      equal(set.code, 0, set.stderr);
      const apply = (...more: string[]) =>
        cli(
          [
            "apply",
            "--code=fns.py",
            "--function=pd_mixed",
            "--form=pandas",
            "--in=in.arrow",
            "--out=o.arrow",
            ...more,
          ],
          env,
          tmp,
        );
      const free = await apply();
      equal(free.code, 1);
      ok(!free.stderr.includes("APPLY_WORKER_FAILED"), free.stderr);
      const f = failure(free);
      equal(
        f.error,
        "valise: [APPLY_OUTPUT_TYPE_MISMATCH] column 'y': cannot infer an Arrow type from values " +
          "of types float, int, str; declare the output schema",
      );
      match(f.hint, /declare the output's types with --schema FILE/);
      const declared = failure(await apply("--schema=int_schema.arrow"));
      equal(
        declared.error,
        "valise: [APPLY_OUTPUT_TYPE_MISMATCH] column 'y' is int64, but row 1 holds str 'a'",
      );
      equal(declared.hint, "hint: make the function's output fit the schema of --schema FILE");
    }, ["--allow-interpreter", VENV_PYTHON]);
  },
});
