// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Attacks through the seed's PEX flow, against a real server with the bubblewrap sandbox on: a
 * session's interpreter is a PEX (the real one of the flow test, pyspark-client, pandas and
 * pyarrow inside) rewritten so that its PEX-INFO names a `pex_root` on the server's host outside
 * the session, and its bootstrap (`__main__.py`, the first code the server starts for the
 * session) tries to append to the PEX file it was started from (a hard link of the server's
 * blob, shared by every session with the same bytes) and to write into that directory and into
 * the server's data directory. The PEX runs only inside the sandbox: the UDFs still give their
 * rows, the host is unchanged, and the bootstrap's own report (read back by a UDF) says each
 * write failed. A PEX whose PEX-INFO is not JSON fails the plan with a clear
 * error naming the interpreter. The server answers health throughout.
 *
 * @module
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { HealthCheckResponse_ServingStatus } from "@valise/protocol";
import { makePex, sha256File } from "./fixtures/envs.ts";
import { venvMissing } from "./_python.ts";
import { bwrapWorks, startServer } from "./_server.ts";
import { udfClient, udfPexOptions } from "./_udf.ts";
import { removeTree } from "./_util.ts";

const HOSTILE_PEX = new URL("./fixtures/python/hostile_pex.py", import.meta.url).pathname;

/** Every regular file under `dir` (recursively), by path. */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) out.push(...await filesUnder(p));
    else if (e.isFile) out.push(p);
  }
  return out;
}

async function rewrite(src: string, dst: string, args: string[]): Promise<void> {
  const out = await new Deno.Command("/usr/bin/python3", {
    args: [HOSTILE_PEX, src, dst, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  ok(out.success, new TextDecoder().decode(out.stderr));
}

const why = venvMissing() ??
  (bwrapWorks() ? undefined : "no bubblewrap here: without the sandbox the PEX is not contained");
const NAME = "a PEX interpreter whose PEX-INFO and bootstrap attack the host runs only inside " +
  "the sandbox; a PEX-INFO that is not JSON fails the plan by name";

Deno.test({ name: why ? `${NAME} (ignored: ${why})` : NAME, ignore: !!why }, async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-hostile-pex-" });
  try {
    const clean = await makePex(join(tmp, "clean"), udfPexOptions("pex-1.0"));
    const dataDir = join(tmp, "data");
    const victim = join(tmp, "victim");
    await Deno.mkdir(victim);
    await Deno.writeTextFile(join(victim, "victim.txt"), "the victim's bytes\n");
    const attack = [
      "--pex-root",
      join(victim, "pexroot"),
      "--target",
      `victim=${victim}`,
      "--target",
      `data=${dataDir}`,
    ];
    // Named as the flow names them: the interpreter is ./<name>.
    const hostile = join(tmp, "hostile.pex");
    const garbage = join(tmp, "garbage.pex");
    await Promise.all([
      rewrite(clean.path, hostile, attack),
      rewrite(clean.path, garbage, [...attack, "--garbage-pex-info"]),
    ]);
    const hostileSha = await sha256File(hostile);
    const { size: hostileSize } = await Deno.stat(hostile);

    const server = await startServer({ dataDir, args: ["--quiet", "--sandbox", "bwrap"] });
    try {
      const remote = `sc://127.0.0.1:${server.port}`;
      const health = async () => {
        const res = await server.clients.health.check({});
        equal(res.status, HealthCheckResponse_ServingStatus.SERVING);
      };
      const [attacked, refused] = await Promise.all([
        udfClient(remote, { pex: hostile }, ["env_version", "hostile_report"], "mallory"),
        udfClient(remote, { pex: garbage }, ["pandas_udf"], "mallet"),
        health(),
      ]);
      await health();

      // The UDFs ran, in the PEX, inside the sandbox.
      deepEqual(attacked.env_version, { ok: { udf: ["pex-1.0"], map: ["pex-1.0"] } });
      // pex could not read its PEX-INFO: the plan fails, naming the interpreter.
      const err = (refused.pandas_udf as { error?: { message: string } }).error;
      ok(err, JSON.stringify(refused));
      ok(err.message.includes("garbage.pex"), err.message);

      // The host is unchanged: the victim's directory, no `pwned` anywhere, and every copy of
      // the PEX the server holds (its blob, the session's link of it) has the uploaded bytes.
      deepEqual((await filesUnder(victim)).map((p) => p.slice(victim.length)), ["/victim.txt"]);
      equal(await Deno.readTextFile(join(victim, "victim.txt")), "the victim's bytes\n");
      const files = await filesUnder(dataDir);
      deepEqual(files.filter((p) => p.endsWith("/pwned")), []);
      let copies = 0;
      for (const p of files) {
        if ((await Deno.stat(p)).size !== hostileSize) continue;
        if (p.endsWith("hostile.pex") || (await sha256File(p)) === hostileSha) {
          equal(await sha256File(p), hostileSha, p);
          copies++;
        }
      }
      ok(copies >= 1, "the server holds the hostile PEX");

      // The bootstrap ran: its report is in the session's own directory (where the UDF read
      // it), the only place of the host it could write to, and its writes to the PEX failed.
      const report = (attacked.hostile_report as { ok?: string | null }).ok;
      ok(report, JSON.stringify(attacked.hostile_report));
      const runs = report.trim().split("\n").map((l) => JSON.parse(l) as Record<string, string>);
      ok(runs.length >= 1);
      // The first run is the PEX file itself; pex then runs it again from where it unzipped:
      // the server's PEX_ROOT, never the one PEX-INFO names.
      ok(runs[0]!.argv0!.endsWith("/hostile.pex"), JSON.stringify(runs[0]));
      for (const seen of runs) {
        const failed = (target: string) => /^[A-Za-z]+Error: /.test(seen[target] ?? "");
        ok(failed("own_pex") && failed("victim") && failed("data"), JSON.stringify(seen));
        ok(!seen.argv0!.startsWith(victim), JSON.stringify(seen));
      }
    } finally {
      await server.stop();
    }
  } finally {
    await removeTree(tmp);
  }
});
