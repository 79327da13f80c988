// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, notEqual, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { AddArtifactsRequest } from "@valise/protocol";
import {
  type AddedArtifact,
  type ArtifactProgress,
  ArtifactProgressEvent,
  CLIENT_VERSION,
  connect,
  ValiseClientError,
} from "./mod.ts";
import { makeTar, sessionDir, withServer, writeFile } from "./_test_util.ts";

/** Counts calls per RPC method name. */
function counter(): { counts: Record<string, number>; interceptor: Interceptor } {
  const counts: Record<string, number> = {};
  return {
    counts,
    interceptor: (next) => (req) => {
      counts[req.method.name] = (counts[req.method.name] ?? 0) + 1;
      return next(req);
    },
  };
}

async function failsWith(p: Promise<unknown>, errorClass: string): Promise<ValiseClientError> {
  try {
    await p;
  } catch (e) {
    ok(e instanceof ValiseClientError, `expected ValiseClientError, got ${e}`);
    equal(e.errorClass, errorClass, e.message);
    return e;
  }
  throw new Error(`expected ${errorClass}`);
}

Deno.test("Session adds artifacts with PySpark's names, byte for byte on the server", async () => {
  await withServer(async ({ url, tmp, dataDir }) => {
    const util = await writeFile(tmp, "util.py", "GREETING = 'hi'\n");
    const big = await writeFile(tmp, "big.bin", 200_000);
    const zip = await writeFile(tmp, "dep.zip", new Uint8Array(10));
    await using session = connect(url, { userId: "ada" });
    const added = await session.addArtifacts([util, zip], { pyfile: true });
    deepEqual(added.map((a) => [a.name, a.uploaded]), [
      ["pyfiles/util.py", true],
      ["pyfiles/dep.zip", true],
    ]);
    equal(
      added[0]!.sha256,
      createHash("sha256").update(await Deno.readFile(util)).digest("hex"),
    );
    const [b] = await session.addArtifacts("big.bin", { file: true, cwd: tmp });
    equal(b!.name, "files/big.bin");
    equal(b!.size, 200_000);
    const root = join(await sessionDir(dataDir, session.sessionId), "root");
    deepEqual(await Deno.readFile(join(root, "big.bin")), await Deno.readFile(big));
    equal(await Deno.readTextFile(join(root, "util.py")), "GREETING = 'hi'\n");
    deepEqual(await session.status(["pyfiles/util.py", "files/big.bin", "files/nope"]), {
      "pyfiles/util.py": true,
      "files/big.bin": true,
      "files/nope": false,
    });
    // Adding the same bytes under the same name again is a no-op, as on the server.
    const again = await session.addArtifacts(util, { pyfile: true });
    equal(again[0]!.uploaded, false);
  });
});

Deno.test("Session checks every path before sending anything", async () => {
  await withServer(async ({ url, tmp }) => {
    const c = counter();
    await using session = connect(url, { interceptors: [c.interceptor] });
    const ok1 = await writeFile(tmp, "a.py", "x=1\n");
    await rejects(
      session.addArtifacts([ok1, join(tmp, "missing.py")], { pyfile: true }),
      (e: unknown) => e instanceof TypeError && /missing\.py/.test(e.message),
    );
    await rejects(
      session.addArtifacts([ok1, join(tmp, "n.txt")], { pyfile: true }),
      /Unsupported file format/,
    );
    await rejects(session.addArtifacts(tmp, { file: true }), /not a regular file/);
    await rejects(
      session.addArtifacts(ok1, { pyfile: true, file: true }),
      /INVALID_MULTIPLE_ARGUMENT_CONDITIONS/,
    );
    deepEqual(c.counts, {});
  });
});

Deno.test("Session.addArtifacts() sends only the bytes the server lacks", async () => {
  await withServer(async ({ url, tmp, dataDir }) => {
    const env = await makeTar(tmp, "env.tar", "payload.bin", 100_000);
    const first = connect(url);
    const a = await first.addArtifacts(`${env}#environment`, { archive: true });
    equal(a[0]!.uploaded, true);
    first.close();

    const c = counter();
    const progress: ArtifactProgress[] = [];
    const events: ArtifactProgress[] = [];
    await using second = connect(url, { interceptors: [c.interceptor] });
    second.addEventListener("progress", (e) => {
      ok(e instanceof ArtifactProgressEvent);
      events.push(e.progress);
    });
    const b = await second.addArtifacts(`${env}#env2`, {
      archive: true,
      onProgress: (p) => progress.push(p),
    });
    const size = (await Deno.stat(env)).size;
    deepEqual(b.map((x) => [x.name, x.uploaded, x.size]), [["archives/env.tar#env2", false, size]]);
    equal(c.counts.AddArtifacts, undefined);
    equal(c.counts.HasBlobs, 1);
    equal(c.counts.AttachArtifacts, 1);
    // Hashing reports start at 0 and end at the size; attaching sends nothing.
    const hashed = progress.filter((p) => p.phase === "hash");
    equal(hashed[0]!.bytesSent, 0);
    equal(hashed.at(-1)!.bytesSent, size);
    deepEqual(progress.filter((p) => p.phase !== "hash").map((p) => [p.phase, p.bytesSent]), [
      ["attached", 0],
    ]);
    deepEqual(events, progress);
    // One blob on the server, linked into both sessions.
    const blobs = await Array.fromAsync(Deno.readDir(join(dataDir, "blobs", "sha256")));
    ok(blobs.length >= 1);
    deepEqual(await second.status(["archives/env.tar#env2"]), { "archives/env.tar#env2": true });
    const run = await second.runCollect({
      code: "import os; print(os.path.getsize('env2/payload.bin'))",
    });
    equal(run.stdout, "100000\n");

    // With the fast path off, the bytes go again.
    const third = connect(url, { interceptors: [c.interceptor] });
    const t = await third.addArtifacts(env, { file: true, fastPath: false });
    equal(t[0]!.uploaded, true);
    equal(c.counts.AddArtifacts, 1);
    third.close();
  });
});

Deno.test("Session reports upload progress: bytes, totals and a rate", async () => {
  await withServer(async ({ url, tmp }) => {
    const big = await writeFile(tmp, "big.bin", 1_000_000);
    const small = await writeFile(tmp, "small.txt", "s");
    await using session = connect(url);
    const seen: ArtifactProgress[] = [];
    await session.addArtifacts([big, small], { file: true, onProgress: (p) => seen.push(p) });
    const bigEvents = seen.filter((p) => p.name === "files/big.bin");
    const hashing = bigEvents.filter((p) => p.phase === "hash");
    deepEqual(bigEvents.slice(0, hashing.length), hashing, "hashing comes first");
    equal(hashing[0]!.bytesSent, 0);
    equal(hashing.at(-1)!.bytesSent, 1_000_000);
    ok(hashing.length >= 3, "progress while hashing");
    for (let i = 1; i < hashing.length; i++) {
      ok(hashing[i]!.bytesSent > hashing[i - 1]!.bytesSent);
    }
    const uploads = bigEvents.filter((p) => p.phase === "upload");
    ok(uploads.length >= 2);
    for (let i = 1; i < uploads.length; i++) {
      ok(uploads[i]!.bytesSent > uploads[i - 1]!.bytesSent);
    }
    equal(uploads.at(-1)!.bytesSent, 1_000_000);
    equal(uploads.every((p) => p.totalBytes === 1_000_000), true);
    ok(uploads.at(-1)!.bytesPerSecond > 0);
    equal(bigEvents.at(-1)!.phase, "done");
    deepEqual(
      seen.filter((p) => p.name === "files/small.txt").map((p) => [p.phase, p.bytesSent]),
      [["hash", 0], ["hash", 1], ["upload", 1], ["done", 1]],
    );
  });
});

Deno.test("Session.addArtifacts() tells each artifact as the server commits it: a failure on the third leaves the first two told", async () => {
  await withServer(async ({ url, tmp }) => {
    await Deno.mkdir(join(tmp, "v1"));
    const old = await writeFile(join(tmp, "v1"), "c.txt", "old c");
    await using session = connect(url);
    await session.addArtifacts(old, { file: true });
    const a = await writeFile(tmp, "a.txt", "aa");
    const b = await writeFile(tmp, "b.txt", "bbb");
    const c = await writeFile(tmp, "c.txt", "new c");
    const told: AddedArtifact[] = [];
    const order: string[] = [];
    await rejects(
      session.addArtifacts([a, b, c], {
        file: true,
        onAdded: (x) => {
          told.push(x);
          order.push(`added ${x.name}`);
        },
        onProgress: (p) => {
          if (p.phase === "done") order.push(`done ${p.name}`);
        },
      }),
      (e: unknown) => e instanceof ValiseClientError && e.errorClass === "ARTIFACT_ALREADY_EXISTS",
    );
    const sha = (t: string) => createHash("sha256").update(t).digest("hex");
    deepEqual(told, [
      { name: "files/a.txt", path: a, size: 2, sha256: sha("aa"), uploaded: true },
      { name: "files/b.txt", path: b, size: 3, sha256: sha("bbb"), uploaded: true },
    ]);
    // Told after its bar is done, so a caller's lines follow its progress.
    deepEqual(order, [
      "done files/a.txt",
      "added files/a.txt",
      "done files/b.txt",
      "added files/b.txt",
    ]);
    deepEqual(await session.status(["files/a.txt", "files/b.txt"]), {
      "files/a.txt": true,
      "files/b.txt": true,
    });
    // An attached artifact is told too, as not uploaded.
    const again: AddedArtifact[] = [];
    await session.addArtifacts(a, { file: true, onAdded: (x) => again.push(x) });
    deepEqual(again.map((x) => [x.name, x.uploaded]), [["files/a.txt", false]]);
  });
});

Deno.test("Session.conf follows Spark: set/get/getOption/unset/getAll/isModifiable", async () => {
  await withServer(async ({ url }) => {
    await using session = connect(url);
    deepEqual(await session.conf.set("spark.myapp.test", "v1"), []);
    equal(await session.conf.get("spark.myapp.test"), "v1");
    await session.conf.set("spark.myapp.flag", true);
    equal(await session.conf.get("spark.myapp.flag"), "true");
    equal(await session.conf.get("spark.nope", "dflt"), "dflt");
    equal(await session.conf.getOption("spark.nope"), undefined);
    equal(await session.conf.getOption("spark.myapp.test"), "v1");
    deepEqual(await session.conf.getAll("spark.myapp."), { flag: "true", test: "v1" });
    equal((await session.conf.getAll())["spark.myapp.test"], "v1");
    await session.conf.unset("spark.myapp.test");
    equal(await session.conf.getOption("spark.myapp.test"), undefined);
    const e = await failsWith(session.conf.get("spark.myapp.test"), "SQL_CONF_NOT_FOUND");
    equal(e.grpcCode, "NotFound");
    equal(e.name, "ValiseClientError");
    ok(e.message.startsWith("[SQL_CONF_NOT_FOUND]"));
    equal(await session.conf.isModifiable("spark.sql.ansi.enabled"), true);
    equal(await session.conf.isModifiable("spark.connect.x"), false);
    notEqual(session.serverSideSessionId, undefined);
  });
});

Deno.test("Session.run() streams typed events; runCollect() gathers them", async () => {
  await withServer(async ({ url, tmp }) => {
    await using session = connect(url);
    await session.addArtifacts(
      await writeFile(tmp, "greet.py", "import sys\nprint('hello', *sys.argv[1:])\n"),
      { file: true },
    );
    const events = [];
    for await (const ev of session.run({ script: "greet.py", args: ["a", "b"] })) events.push(ev);
    equal(events[0]!.kind, "started");
    const last = events.at(-1)!;
    equal(last.kind, "exited");
    if (last.kind === "exited") equal(last.exitCode, 0);
    const out = events.flatMap((e) => e.kind === "stdout" ? [new TextDecoder().decode(e.data)] : [])
      .join("");
    equal(out, "hello a b\n");

    const r = await session.runCollect({
      code:
        "import sys; d = sys.stdin.read(); print(d.upper()); print('e', file=sys.stderr); sys.exit(7)",
      stdin: "piped",
    });
    equal(r.stdout, "PIPED\n");
    equal(r.stderr, "e\n");
    equal(r.exitCode, 7);
    equal(r.timedOut, false);
    ok(r.interpreter.length > 0);
    const m = await session.runCollect({ module: "json.tool", stdin: '{"a":1}' });
    equal(m.stdout.replace(/\s/g, ""), '{"a":1}');
    const slow = await session.runCollect({ code: "import time; time.sleep(60)", timeoutMs: 300 });
    equal(slow.timedOut, true);
    notEqual(slow.exitCode, 0);
    await rejects(
      (async () => {
        for await (const _ of session.run({ code: "1", module: "x" } as never)) { /* none */ }
      })(),
      /exactly one of code, module or script/,
    );
  });
});

Deno.test("Session.run() treats a stream closed under it after `exited` as done, not failed", async () => {
  await withServer(async ({ url }) => {
    // What Deno's node:http2 sometimes reports at the end of a run's stream: the stream closes
    // under the call after `keep` events (all of them when `keep` is undefined).
    const closeAfter = (keep?: number): Interceptor => (next) => async (req) => {
      const res = await next(req);
      if (!res.stream || req.method.name !== "Run") return res;
      const inner = res.message;
      return {
        ...res,
        message: (async function* () {
          let n = 0;
          for await (const m of inner) {
            if (keep !== undefined && n++ >= keep) break;
            yield m;
          }
          throw new ConnectError("Premature close", Code.Internal);
        })(),
      };
    };
    await using session = connect(url, { interceptors: [closeAfter()] });
    const r = await session.runCollect({ code: "print('done')" });
    equal(r.stdout, "done\n");
    equal(r.exitCode, 0);
    // Without `exited` (only `started` arrived) the same close is the call's failure.
    await using other = connect(url, { interceptors: [closeAfter(1)] });
    await rejects(other.runCollect({ code: "print(1)" }), /Premature close/);
  });
});

Deno.test("Session errors are ValiseClientErrors built from the server's ErrorInfo", async () => {
  await withServer(async ({ url, tmp }) => {
    await using session = connect(url);
    const one = join(tmp, "one");
    await Deno.mkdir(one);
    await writeFile(one, "m.py", "a = 1\n");
    await session.addArtifacts(join(one, "m.py"), { pyfile: true });
    await writeFile(tmp, "m.py", "a = 2\n");
    const dup = await failsWith(
      session.addArtifacts(join(tmp, "m.py"), { pyfile: true }),
      "ARTIFACT_ALREADY_EXISTS",
    );
    equal(dup.grpcCode, "AlreadyExists");
    equal(dup.sqlState, "42713");
    deepEqual(dup.parameters, { normalizedRemoteRelativePath: "pyfiles/m.py" });
    ok(dup.message.includes("pyfiles/m.py"));
    ok(dup.cause instanceof ConnectError);

    const bad = await failsWith(
      session.runCollect({ code: "1" }).then(async () => {
        await session.conf.set("spark.sql.execution.pyspark.python", "nope/bin/python");
        return session.runCollect({ code: "1" });
      }),
      "PYTHON_INTERPRETER.NOT_FOUND",
    );
    equal(bad.grpcCode, "FailedPrecondition");

    // Another client releases the session: this one gets INVALID_HANDLE.SESSION_CLOSED.
    const other = connect(url, { sessionId: session.sessionId });
    await other.release();
    equal(other.closed, true);
    await failsWith(session.status(["x"]), "INVALID_HANDLE.SESSION_CLOSED");
    await failsWith(other.status(["x"]), "INVALID_HANDLE.SESSION_CLOSED");
  });
});

Deno.test("Session sends the bearer token of the connection string", async () => {
  await withServer(async ({ port }) => {
    const anon = connect(`sc://127.0.0.1:${port}`);
    const e = await failsWith(anon.status([]), "UNAUTHENTICATED");
    equal(e.grpcCode, "Unauthenticated");
    anon.close();
    await using good = connect(`sc://127.0.0.1:${port}/;token=s3cret`);
    deepEqual(await good.status([]), {});
    await using viaOption = connect(`sc://127.0.0.1:${port}`, { token: "s3cret" });
    deepEqual(await viaOption.status([]), {});
  }, { token: "s3cret" });
});

Deno.test("Session release() deletes the session and closes the client", async () => {
  await withServer(async ({ url, tmp, dataDir }) => {
    const sessionId = crypto.randomUUID();
    const session = connect(`${url}/;session_id=${sessionId};user_id=bo`);
    equal(session.sessionId, sessionId);
    equal(session.userId, "bo");
    equal(session.endpoint, url.replace("sc://", "http://"));
    equal(connect("sc://[::1]:443/;use_ssl=true").endpoint, "https://[::1]:443");
    await session.addArtifacts(await writeFile(tmp, "x.py", "x=1"), { pyfile: true });
    const dir = await sessionDir(dataDir, sessionId);
    ok((await Deno.stat(dir)).isDirectory);
    await session.release();
    await rejects(Deno.stat(dir), Deno.errors.NotFound);
    await failsWith(session.status([]), "INVALID_HANDLE.SESSION_CLOSED");
  });
});

Deno.test("Session checks response integrity like PySpark 4.x", async () => {
  await withServer(async ({ url }) => {
    let tamper: "session" | "server" | undefined;
    const interceptor: Interceptor = (next) => async (req) => {
      const res = await next(req);
      if (!res.stream && tamper) {
        const m = res.message as { sessionId?: string; serverSideSessionId?: string };
        if (tamper === "session") m.sessionId = crypto.randomUUID();
        else m.serverSideSessionId = crypto.randomUUID();
      }
      return res;
    };
    const observed: (string | undefined)[] = [];
    const watch: Interceptor = (next) => (req) => {
      if (!req.stream) {
        observed.push(
          (req.message as { clientObservedServerSideSessionId?: string })
            .clientObservedServerSideSessionId,
        );
      }
      return next(req);
    };
    await using session = connect(url, { interceptors: [watch, interceptor] });
    await session.conf.set("spark.a", "1");
    await session.conf.get("spark.a");
    equal(observed[0], undefined);
    equal(observed[1], session.serverSideSessionId);
    tamper = "session";
    await failsWith(session.conf.get("spark.a"), "INTEGRITY_ERROR");
    tamper = "server";
    const e = await failsWith(session.status([]), "INTEGRITY_ERROR");
    ok(/server side session identifier/.test(e.message));
  });
});

Deno.test("Session raises CRC failures the server reports (PySpark ignores them)", async () => {
  await withServer(async ({ url, tmp }) => {
    const corrupt: Interceptor = (next) => (req) => {
      if (req.method.name !== "AddArtifacts" || !req.stream) return next(req);
      const source = req.message as AsyncIterable<AddArtifactsRequest>;
      return next(
        {
          ...req,
          message: (async function* () {
            for await (const m of source) {
              if (m.payload.case === "batch") {
                for (const a of m.payload.value.artifacts) a.data!.crc = a.data!.crc ^ 1n;
              } else if (m.payload.case === "beginChunk") {
                m.payload.value.initialChunk!.crc ^= 1n;
              }
              yield m;
            }
          })(),
        } as typeof req,
      );
    };
    await using session = connect(url, { interceptors: [corrupt] });
    const small = await writeFile(tmp, "small.py", "x = 1\n");
    const e = await failsWith(
      session.addArtifacts(small, { pyfile: true, fastPath: false }),
      "CRC_MISMATCH",
    );
    ok(e.message.includes("pyfiles/small.py"));
    const big = await writeFile(tmp, "big.bin", 100_000);
    await failsWith(session.addArtifacts(big, { file: true, fastPath: false }), "CRC_MISMATCH");
    deepEqual(await session.status(["pyfiles/small.py", "files/big.bin"]), {
      "pyfiles/small.py": false,
      "files/big.bin": false,
    });
  });
});

Deno.test("Session retries UNAVAILABLE and never sends a committed artifact twice", async () => {
  await withServer(async ({ url, tmp }) => {
    const files = [
      await writeFile(tmp, "a.bin", 50_000),
      await writeFile(tmp, "b.bin", 70_000),
      await writeFile(tmp, "c.bin", 10),
    ];
    const sent: string[] = [];
    let failNext = 2;
    // The server commits b.bin, then the response is "lost" twice: the client must find the
    // committed bytes by digest on the retry instead of sending them again.
    const lossy: Interceptor = (next) => async (req) => {
      if (req.method.name !== "AddArtifacts") return next(req);
      const source = req.message as AsyncIterable<AddArtifactsRequest>;
      let name = "";
      const res = await next(
        {
          ...req,
          message: (async function* () {
            for await (const m of source) {
              if (m.payload.case === "beginChunk") name = m.payload.value.name;
              if (m.payload.case === "batch") name = m.payload.value.artifacts[0]!.name;
              yield m;
            }
          })(),
        } as typeof req,
      );
      sent.push(name);
      if (name === "files/b.bin" && failNext-- > 0) {
        throw new ConnectError("connection lost", Code.Unavailable);
      }
      return res;
    };
    const c = counter();
    await using session = connect(url, {
      interceptors: [c.interceptor, lossy],
      retry: { initialDelayMs: 1, maxDelayMs: 5 },
    });
    const added = await session.addArtifacts(files, { file: true });
    deepEqual(sent, ["files/a.bin", "files/b.bin"].concat(["files/c.bin"]));
    deepEqual(added.map((a) => [a.name, a.uploaded]), [
      ["files/a.bin", true],
      ["files/b.bin", false],
      ["files/c.bin", true],
    ]);
    equal(c.counts.HasBlobs, 2);

    // Bounded: a server that never answers makes the call fail with UNAVAILABLE.
    const down = connect("sc://127.0.0.1:1", { retry: { maxAttempts: 3, initialDelayMs: 1 } });
    const e = await failsWith(down.status([]), "UNAVAILABLE");
    equal(e.grpcCode, "Unavailable");
    down.close();
  });
});

Deno.test("Session rides out a server restart: calls wait, the session is restored", async () => {
  await withServer(async (t) => {
    const file = await writeFile(t.tmp, "mod.py", "V = 5\n");
    const c = counter();
    const session = connect(t.url, {
      retry: { maxAttempts: 1000, initialDelayMs: 5, maxDelayMs: 20 },
      interceptors: [c.interceptor],
    });
    await session.addArtifacts(file, { pyfile: true });
    await session.conf.set("spark.restart.test", "kept");
    const ssid = session.serverSideSessionId;
    await t.stop();
    // Calls started while the server is down keep retrying until it is back.
    const pending = Promise.all([
      session.conf.get("spark.restart.test"),
      session.status(["pyfiles/mod.py"]),
    ]);
    // The first attempts fail while nothing listens; the server comes back on the same port.
    await new Promise((r) => setTimeout(r, 50));
    await t.restart();
    const [v, st] = await pending;
    equal(v, "kept");
    deepEqual(st, { "pyfiles/mod.py": true });
    equal(session.serverSideSessionId, ssid);
    // One set, then at least one refused attempt and the successful one of the get.
    ok(c.counts.Config! >= 3);
    const r = await session.runCollect({ code: "import mod; print(mod.V)" });
    equal(r.stdout, "5\n");
    // Uploads after the restart use the restored blob store.
    const again = await session.addArtifacts(file, { pyfile: true });
    equal(again[0]!.uploaded, false);
    session.close();
  });
});

Deno.test("Session sends its package's version as client_type", async () => {
  await withServer(async ({ url }) => {
    const { version } = JSON.parse(
      await Deno.readTextFile(new URL("./deno.json", import.meta.url)),
    );
    const seen: string[] = [];
    const capture: Interceptor = (next) => (req) => {
      if (!req.stream) seen.push((req.message as { clientType?: string }).clientType ?? "");
      return next(req);
    };
    await using session = connect(url, { interceptors: [capture] });
    await session.conf.set("spark.myapp.v", "1");
    equal(CLIENT_VERSION, version);
    deepEqual(seen, [`valise-client/${version}`]);
    await using agent = connect(`${url}/;user_agent=mine`, { interceptors: [capture] });
    await agent.status([]);
    equal(seen.at(-1), "mine");
  });
});
