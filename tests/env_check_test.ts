// Copyright 2026 the Valise authors. Apache-2.0 license.
// Environment checks at add time (issue 18), with real artifacts: a venv built here by
// venv-pack passes; the same venv with an AArch64 ELF file, a Mach-O file, a pyvenv.cfg that
// points at an interpreter the server lacks, or a python3.12 layout fails with its class (or is
// added with warnings when the session opts out); a real PEX built for Python 3.12 fails.
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  addArtifactsRequests,
  ConfigRequestSchema,
  ErrorInfoSchema,
  SparkConnectService,
} from "@valise/protocol";
import { create } from "@bufbuild/protobuf";
import { serve } from "@valise/server";
import { connect } from "@valise/client";
import { makeVenvPack } from "./fixtures/envs.ts";
import { needsVenv, venvBin } from "./_python.ts";
import { fileArtifact, removeTree } from "./_util.ts";

type Spark = ReturnType<typeof createClient<typeof SparkConnectService>>;

async function sh(cmd: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${cmd} failed: ${new TextDecoder().decode(out.stderr)}`);
}

/** A minimal ELF header: 64-bit little-endian shared object of machine `machine`. */
export function elfHeader(machine: number, type = 3): Uint8Array {
  const h = new Uint8Array(64);
  h.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  const dv = new DataView(h.buffer);
  dv.setUint16(16, type, true);
  dv.setUint16(18, machine, true);
  return h;
}

/** The venv-pack venv, unpacked, changed by `mutate`, packed again (GNU tar keeps its links). */
async function variant(
  base: string,
  work: string,
  name: string,
  mutate: (env: string) => Promise<void>,
): Promise<string> {
  const env = join(work, name);
  await Deno.mkdir(env, { recursive: true });
  await sh("tar", "-xzf", base, "-C", env);
  await mutate(env);
  const out = join(work, `${name}.tar.gz`);
  await sh("tar", "-czf", out, "-C", env, ".");
  return out;
}

async function add(spark: Spark, sessionId: string, name: string, path: string): Promise<void> {
  await spark.addArtifacts(addArtifactsRequests([fileArtifact(name, path)], { sessionId }));
}

async function setConf(spark: Spark, sessionId: string, key: string, value: string): Promise<void> {
  await spark.config(create(ConfigRequestSchema, {
    sessionId,
    operation: { opType: { case: "set", value: { pairs: [{ key, value }] } } },
  }));
}

async function refused(p: Promise<unknown>): Promise<{ code: Code; cls: string; message: string }> {
  try {
    await p;
  } catch (e) {
    const err = ConnectError.from(e);
    const info = err.findDetails(ErrorInfoSchema)[0];
    return { code: err.code, cls: info?.metadata.errorClass ?? "", message: err.rawMessage };
  }
  throw new Error("the add was accepted");
}

Deno.test(
  needsVenv("environment checks: a venv built here passes; broken ones fail with their class"),
  async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-envcheck-" });
    const server = await serve({ dataDir: join(tmp, "data"), port: 0, log: () => {} });
    const spark = createClient(
      SparkConnectService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` }),
    );
    try {
      const { archive, pythonVersion } = await makeVenvPack(join(tmp, "fx"), {
        packages: { mylib: "VERSION = 1\n" },
      });
      const site = `lib/python${pythonVersion}/site-packages`;
      const NAME = "archives/env.tar.gz#environment";

      await t.step("the venv as built passes, without warnings", async () => {
        const s = crypto.randomUUID();
        await add(spark, s, NAME, archive);
        const rec = server.valise.store.find("", s)!.artifact(NAME);
        ok(rec);
        equal(rec.warnings, undefined);
      });

      const cases: {
        name: string;
        cls: string;
        mentions: RegExp;
        mutate: (env: string) => Promise<void>;
      }[] = [
        {
          name: "an AArch64 ELF extension",
          cls: "ENVIRONMENT_PLATFORM_MISMATCH",
          mentions:
            /mylib\/_speedups\.cpython-\d+-aarch64-linux-gnu\.so is ELF aarch64.*Pack it on linux-x86_64/,
          mutate: async (env) => {
            await Deno.writeFile(
              join(
                env,
                site,
                `mylib/_speedups.cpython-${pythonVersion.replace(".", "")}-aarch64-linux-gnu.so`,
              ),
              elfHeader(183),
            );
          },
        },
        {
          name: "a Mach-O extension",
          cls: "ENVIRONMENT_PLATFORM_MISMATCH",
          mentions: /mylib\/_fast\.cpython-\d+-darwin\.so is a Mach-O binary \(packed on macOS\)/,
          mutate: async (env) => {
            const h = new Uint8Array(64);
            h.set([0xcf, 0xfa, 0xed, 0xfe, 0x0c, 0x00, 0x00, 0x01]);
            await Deno.writeFile(
              join(env, site, `mylib/_fast.cpython-${pythonVersion.replace(".", "")}-darwin.so`),
              h,
            );
          },
        },
        {
          name: "a pyvenv.cfg and interpreter link to an interpreter the server lacks",
          cls: "ENVIRONMENT_INTERPRETER_MISSING",
          mentions: /\/opt\/homebrew\/bin\/python3\.11.*--allow-interpreter/,
          mutate: async (env) => {
            const cfg = join(env, "pyvenv.cfg");
            const text = await Deno.readTextFile(cfg);
            await Deno.writeTextFile(cfg, text.replace(/^home = .*$/m, "home = /opt/homebrew/bin"));
            for (const l of ["bin/python", "bin/python3"]) {
              await Deno.remove(join(env, l)).catch(() => {});
            }
            await Deno.symlink("/opt/homebrew/bin/python3.11", join(env, "bin/python3"));
            await Deno.symlink("python3", join(env, "bin/python"));
          },
        },
        {
          name: "a python3.12 layout",
          cls: "ENVIRONMENT_PYTHON_MISMATCH",
          mentions: /built for Python 3\.12 .*runs Python 3\.11/,
          mutate: async (env) => {
            await Deno.rename(join(env, `lib/python${pythonVersion}`), join(env, "lib/python3.12"));
            const cfg = join(env, "pyvenv.cfg");
            const text = await Deno.readTextFile(cfg);
            await Deno.writeTextFile(cfg, text.replace(/^version = .*$/m, "version = 3.12.1"));
          },
        },
      ];
      for (const c of cases) {
        await t.step(`${c.name}: ${c.cls}, or a warning when the session opts out`, async () => {
          const path = await variant(archive, join(tmp, "work"), c.cls + c.name.length, c.mutate);
          const s = crypto.randomUUID();
          // Something else of the session is there before, and stays.
          await add(spark, s, "files/keep.txt", archive);
          const r = await refused(add(spark, s, NAME, path));
          equal(r.code, Code.FailedPrecondition, r.message);
          equal(r.cls, c.cls, r.message);
          ok(c.mentions.test(r.message), r.message);
          ok(r.message.includes("spark.valise.env.checks=warn"), r.message);
          const session = server.valise.store.find("", s)!;
          equal(session.artifact(NAME), undefined);
          deepEqual(session.artifacts().map((a) => a.name), ["files/keep.txt"]);
          await Deno.lstat(join(session.root, "environment")).then(
            () => ok(false, "the refused environment is in the working directory"),
            () => {},
          );
          // Opted out: added, with the warning recorded.
          await setConf(spark, s, "spark.valise.env.checks", "warn");
          await add(spark, s, NAME, path);
          const rec = session.artifact(NAME);
          ok(rec?.warnings?.some((w) => w.includes(c.cls)), JSON.stringify(rec?.warnings));
          // Shown where people look: the client's listing (valise ls) and the status page.
          const client = connect(`sc://127.0.0.1:${server.port}`, { sessionId: s });
          try {
            const listed = (await client.list()).find((a) => a.name === NAME);
            deepEqual(listed?.warnings, rec?.warnings);
          } finally {
            client.close();
          }
          const status = await server.valise.status();
          ok(status.envWarnings?.some((w) => w.sessionId === s && w.artifact === NAME));
        });
      }

      await t.step("hostile headers: added with warnings, the server keeps serving", async () => {
        const path = await variant(archive, join(tmp, "work"), "hostile", async (env) => {
          await Deno.writeFile(join(env, site, "mylib/_cut.so"), elfHeader(183).subarray(0, 9));
          await Deno.writeTextFile(join(env, "PEX-INFO"), "\u0000{not json");
          const cfg = join(env, "pyvenv.cfg");
          // 8 MiB of one line after the real keys: only the first 16 KiB are read.
          await Deno.writeTextFile(
            cfg,
            (await Deno.readTextFile(cfg)) + "x = " + "a".repeat(8 << 20) + "\n",
          );
          const so = new Uint8Array(64);
          so.set([0x4d, 0x5a]);
          new DataView(so.buffer).setUint32(0x3c, 0xffffffff, true);
          await Deno.writeFile(join(env, site, "mylib/_pe.so"), so);
        });
        const s = crypto.randomUUID();
        await add(spark, s, NAME, path);
        const warnings = server.valise.store.find("", s)!.artifact(NAME)!.warnings ?? [];
        ok(warnings.some((w) => /_cut\.so is a truncated ELF/.test(w)), JSON.stringify(warnings));
        ok(warnings.some((w) => /PEX-INFO is not JSON/.test(w)), JSON.stringify(warnings));
        // Still serving: another session's add of the clean venv passes.
        await add(spark, crypto.randomUUID(), NAME, archive);
      });

      await t.step("a PEX built for Python 3.12 fails at add time", async () => {
        const py312 = "/root/.pyenv/versions/3.12.1/bin/python3.12";
        try {
          await Deno.stat(py312);
        } catch {
          throw new Error(`this step needs ${py312} to build a PEX for 3.12`);
        }
        const src = join(tmp, "pexsrc", "mylib");
        await Deno.mkdir(src, { recursive: true });
        await Deno.writeTextFile(join(src, "__init__.py"), "VERSION = 1\n");
        const pex = join(tmp, "app.pex");
        await sh(
          venvBin("pex"),
          "--python-path",
          join(py312, ".."),
          "--interpreter-constraint",
          "CPython==3.12.*",
          "-D",
          join(tmp, "pexsrc"),
          "-o",
          pex,
        );
        const s = crypto.randomUUID();
        const r = await refused(add(spark, s, "files/app.pex", pex));
        equal(r.code, Code.FailedPrecondition, r.message);
        equal(r.cls, "ENVIRONMENT_PYTHON_MISMATCH", r.message);
        ok(/CPython==3\.12\.\*.*Python 3\.11/.test(r.message), r.message);
        equal(server.valise.store.find("", s)!.artifact("files/app.pex"), undefined);
      });
    } finally {
      await server.close();
      await removeTree(tmp);
    }
  },
);
