// Copyright 2026 the Valise authors. Apache-2.0 license.
// Real archives made with the real tools: venv-pack, pex, zipapp (fixture builders in
// tests/fixtures/envs.ts; the conda-pack one is hand-made, as conda is not installable here).
import assert from "node:assert/strict";
import {
  type ArchiveFormat,
  makeCondaPackLike,
  makePex,
  makeVenvPack,
  makeZipapp,
} from "./fixtures/envs.ts";
import { detect, unpack } from "@valise/archive";
import { snapshot } from "../packages/archive/testdata/helpers.ts";
import { needsVenv } from "./_python.ts";

async function py(python: string, code: string, env: Record<string, string> = {}): Promise<string> {
  const out = await new Deno.Command(python, {
    args: ["-c", code],
    env,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).trim();
}

const FORMATS: { format: ArchiveFormat; compression: string; container: string }[] = [
  { format: "tar.gz", compression: "gzip", container: "tar" },
  { format: "tar.zst", compression: "zstd", container: "tar" },
  { format: "tar.xz", compression: "xz", container: "tar" },
  { format: "tar.bz2", compression: "bzip2", container: "tar" },
  { format: "tar", compression: "none", container: "tar" },
  { format: "zip", compression: "none", container: "zip" },
];

Deno.test(needsVenv("unpack() handles venv-pack archives in every format"), async (t) => {
  const work = await Deno.makeTempDir({ prefix: "valise-archive-real-" });
  try {
    const cases = [
      ...FORMATS.map((f) => ({ ...f, creator: "venv" as const })),
      { ...FORMATS[0]!, creator: "uv" as const },
      { ...FORMATS[5]!, creator: "uv" as const },
    ];
    for (const { format, compression, container, creator } of cases) {
      await t.step(`${format} (${creator})`, async () => {
        const { archive, sitePackages, interpreterLink } = await makeVenvPack(work, {
          format,
          creator,
          name: `venv-${format}-${creator}`,
          packages: { mylib: 'VERSION = "4.2"\n' },
        });
        const d = await detect(archive);
        assert.equal(d.compression, compression);
        assert.equal(d.container, container);
        assert.equal(d.flavor, "venv");
        const dest = `${work}/out-${format}-${creator}`;
        const r = await unpack(archive, dest);
        assert.equal(r.flavor, "venv");
        assert.ok(await Deno.stat(`${dest}/${sitePackages}/mylib/__init__.py`));
        if (container === "tar") {
          // The interpreter link is absolute and allowed, and reported.
          assert.deepEqual(r.interpreterLinks.map((l) => l.path), [interpreterLink]);
          // Same tree as GNU tar makes (venv-pack stores pyvenv.cfg twice: the later wins).
          const ref = `${work}/ref-${format}-${creator}`;
          await Deno.mkdir(ref);
          const x = await new Deno.Command("tar", { args: ["-xf", archive, "-C", ref] }).output();
          assert.ok(x.success);
          assert.deepEqual(await snapshot(dest), await snapshot(ref));
          assert.equal(await py(`${dest}/bin/python`, "import mylib; print(mylib.VERSION)"), "4.2");
        }
      });
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("unpack() runs bin/conda-unpack for conda-pack archives", async (t) => {
  const work = await Deno.makeTempDir({ prefix: "valise-archive-conda-" });
  try {
    for (const format of ["tar.gz", "tar.zst", "zip"] as ArchiveFormat[]) {
      await t.step(format, async () => {
        const built = await makeCondaPackLike(work, { format, name: `conda-${format}` });
        const d = await detect(built.archive);
        assert.equal(
          d.flavor,
          format === "zip" ? "conda-pack" : d.flavorComplete ? "conda-pack" : d.flavor,
        );
        const dest = `${work}/env-${format}`;
        const r = await unpack(built.archive, dest);
        assert.equal(r.flavor, "conda-pack");
        assert.ok(r.postUnpack, "conda-unpack ran");
        assert.equal(r.postUnpack.code, 0);
        const prefix = await py(
          `${dest}/bin/python`,
          `import ${built.prefixPackage}._prefix as p; print(p.PREFIX)`,
        );
        assert.equal(prefix, dest);
        const where = await new Deno.Command(`${dest}/${built.whereScript}`, { stdout: "piped" })
          .output();
        assert.equal(new TextDecoder().decode(where.stdout).trim(), dest);
      });
    }
    await t.step("condaUnpack: false leaves the placeholder", async () => {
      const built = await makeCondaPackLike(work, { name: "conda-noop" });
      const dest = `${work}/env-noop`;
      const r = await unpack(built.archive, dest, { condaUnpack: false });
      assert.equal(r.postUnpack, undefined);
      const prefix = await py(
        `${dest}/bin/python`,
        `import ${built.prefixPackage}._prefix as p; print(p.PREFIX)`,
      );
      assert.equal(prefix, built.placeholder);
    });
    await t.step("a failing conda-unpack is POST_UNPACK and removes dest", async () => {
      const built = await makeCondaPackLike(work, { name: "conda-fail" });
      const dest = `${work}/env-fail`;
      await assert.rejects(
        unpack(built.archive, dest, { condaUnpackPython: "/bin/false" }),
        (e) =>
          e instanceof Error && (e as { code?: string }).code === "POST_UNPACK" &&
          /conda-unpack/.test(e.message),
      );
      await assert.rejects(Deno.lstat(dest), Deno.errors.NotFound);
    });
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test(needsVenv("detect() and unpack() recognise zipapps and PEX files"), async () => {
  const work = await Deno.makeTempDir({ prefix: "valise-archive-zipapp-" });
  try {
    const app = await makeZipapp(work);
    const d1 = await detect(app.path);
    assert.equal(d1.container, "zip");
    assert.equal(d1.flavor, "zipapp");
    assert.ok(d1.zipPreamble! > 0);
    const r1 = await unpack(app.path, `${work}/app`);
    assert.equal(r1.flavor, "zipapp");
    assert.ok(await Deno.stat(`${work}/app/__main__.py`));

    for (const venv of [false, true]) {
      const pex = await makePex(work, { venv, name: `app-${venv}.pex` });
      const d2 = await detect(pex.path);
      assert.equal(d2.flavor, "pex");
      assert.ok(d2.zipPreamble! > 0);
      const r2 = await unpack(pex.path, `${work}/pex-${venv}`);
      assert.equal(r2.flavor, "pex");
      assert.ok(await Deno.stat(`${work}/pex-${venv}/PEX-INFO`));
      assert.ok(await Deno.stat(`${work}/pex-${venv}/.bootstrap/pex/pex.py`));
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
