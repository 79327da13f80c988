// Copyright 2026 the Valise authors. Apache-2.0 license.
import assert from "node:assert/strict";
import { makeTar, makeZip } from "./testdata/archive_writers.ts";
import { detect, isUnpackError, unpack } from "./mod.ts";

async function sh(cmd: string, cwd: string): Promise<void> {
  const r = await new Deno.Command("sh", { args: ["-c", cmd], cwd, stderr: "piped" }).output();
  assert.ok(r.success, new TextDecoder().decode(r.stderr));
}

Deno.test("detect() decides compression and container by content, not name", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/src/bin`, { recursive: true });
    await Deno.writeTextFile(`${dir}/src/bin/conda-unpack`, "#!/usr/bin/env python\n");
    await Deno.writeTextFile(`${dir}/src/a.txt`, "hello\n");
    await sh("tar -cf plain.tar -C src .", dir);
    const cases: [string, string][] = [
      ["gzip -c plain.tar > x1.bin", "gzip"],
      ["bzip2 -c plain.tar > x2.bin", "bzip2"],
      ["xz -c plain.tar > x3.bin", "xz"],
      ["zstd -q -c plain.tar > x4.bin", "zstd"],
      ["cp plain.tar x5.bin", "none"],
    ];
    for (const [cmd, compression] of cases) {
      await sh(cmd, dir);
      const file = `${dir}/${cmd.split(" ").at(-1)}`;
      const d = await detect(file);
      assert.equal(d.compression, compression, cmd);
      assert.equal(d.container, "tar", cmd);
      assert.equal(d.flavor, "conda-pack", cmd);
      assert.equal(d.flavorComplete, true, cmd);
      assert.equal(d.tarFormat, "gnu");
    }
    await sh("tar --format=v7 -cf v7.tar -C src a.txt", dir);
    assert.equal((await detect(`${dir}/v7.tar`)).tarFormat, "v7");
    await sh("tar --format=pax -cf pax.tar -C src a.txt", dir);
    assert.equal((await detect(`${dir}/pax.tar`)).tarFormat, "pax");
    await sh("cd src && zip -q -r ../z.tar.gz . && cd .. && zip -q -fz -r z64.zip src", dir);
    const z = await detect(`${dir}/z.tar.gz`);
    assert.equal(z.container, "zip");
    assert.equal(z.compression, "none");
    assert.equal(z.flavor, "conda-pack");
    assert.equal(z.zipPreamble, 0);
    const z64 = await detect(`${dir}/z64.zip`);
    assert.equal(z64.container, "zip");
    assert.equal(z64.zip64, true);
    // Zip64 records (zip -fz) unpack like any other zip.
    const r64 = await unpack(`${dir}/z64.zip`, `${dir}/out64`);
    assert.equal(await Deno.readTextFile(`${dir}/out64/src/a.txt`), "hello\n");
    assert.equal(r64.flavor, "plain");
    await Deno.writeTextFile(`${dir}/text.tar.gz`, "not an archive at all\n".repeat(50));
    const u = await detect(`${dir}/text.tar.gz`);
    assert.equal(u.container, "unknown");
    assert.equal(u.compression, "none");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("detect() bounds the tar scan and says so", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const filler = Array.from(
      { length: 50 },
      (_, i) => ({ name: `lib/f${i}`, data: new Uint8Array(65536) }),
    );
    await Deno.writeFile(
      `${dir}/v.tar`,
      makeTar([...filler, { name: "pyvenv.cfg", data: "home = /usr/bin\n" }]),
    );
    const short = await detect(`${dir}/v.tar`, { scanBytes: 8192 });
    assert.equal(short.flavor, "plain");
    assert.equal(short.flavorComplete, false);
    const full = await detect(`${dir}/v.tar`);
    assert.equal(full.flavor, "venv");
    assert.equal(full.flavorComplete, true);
    assert.equal(full.entriesScanned, 51);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("detect() finds PEX and zipapp markers in the central directory", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const pre = "#!/usr/bin/env python3\n";
    await Deno.writeFile(
      `${dir}/p`,
      makeZip([{ name: "PEX-INFO", data: "{}" }, { name: "__main__.py", data: "" }], {
        preamble: pre,
      }),
    );
    await Deno.writeFile(
      `${dir}/z`,
      makeZip([{ name: "__main__.py", data: "" }], { preamble: pre, unadjusted: true }),
    );
    await Deno.writeFile(`${dir}/n`, makeZip([{ name: "sub/__main__.py", data: "" }]));
    const p = await detect(`${dir}/p`);
    assert.equal(p.flavor, "pex");
    assert.equal(p.zipPreamble, pre.length);
    const z = await detect(`${dir}/z`);
    assert.equal(z.flavor, "zipapp");
    assert.equal(z.zipPreamble, pre.length);
    assert.equal((await detect(`${dir}/n`)).flavor, "plain");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("detect() and unpack() report a corrupt gzip stream", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const good = await new Deno.Command("sh", {
      args: ["-c", "head -c 200000 /dev/urandom > r && tar -cf - r | gzip -c"],
      cwd: dir,
      stdout: "piped",
    }).output();
    const bytes = good.stdout.slice(0, good.stdout.length - 5000); // truncated
    await Deno.writeFile(`${dir}/t.tgz`, bytes);
    assert.equal((await detect(`${dir}/t.tgz`)).compression, "gzip");
    await assert.rejects(
      unpack(`${dir}/t.tgz`, `${dir}/out`),
      (e) => isUnpackError(e) && e.code === "CORRUPT",
    );
    await assert.rejects(Deno.lstat(`${dir}/out`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
