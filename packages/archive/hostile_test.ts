// Copyright 2026 the Valise authors. Apache-2.0 license.
import assert from "node:assert/strict";
import { HOSTILE_CASES } from "./testdata/hostile_cases.ts";
import { isUnpackError, unpack, type UnpackResult } from "./mod.ts";
import { makeSandbox, snapshot } from "./testdata/helpers.ts";

for (const c of HOSTILE_CASES) {
  Deno.test(`unpack() handles hostile ${c.name}: ${c.description} -> ${c.expect}`, async () => {
    const { root, dest } = await makeSandbox();
    try {
      await Deno.mkdir(`${root}/w`);
      const archive = `${root}/archive.${c.ext}`;
      await Deno.writeFile(archive, c.bytes());
      const before = await snapshot(root, ["w"]);
      let result: UnpackResult | undefined;
      let error: unknown;
      try {
        result = await unpack(archive, dest, c.options ?? {});
      } catch (e) {
        error = e;
      }
      // Nothing outside the destination changed, whatever happened.
      assert.deepEqual(await snapshot(root, ["w"]), before);
      if (c.expect === "ok") {
        assert.equal(error, undefined, `unexpected ${error}`);
        assert.ok(result);
        await checkOk(c.name, dest, result);
      } else {
        assert.ok(isUnpackError(error), `expected UnpackError ${c.expect}, got ${error}`);
        assert.equal(error.code, c.expect, error.message);
        assert.match(error.message, /^Cannot /);
        if (c.message) assert.match(error.message, c.message);
        // Nothing at dest, no temporary directory left.
        assert.deepEqual([...Deno.readDirSync(`${root}/w`)], []);
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  });
}

async function checkOk(name: string, dest: string, r: UnpackResult): Promise<void> {
  switch (name) {
    case "file-over-symlink": {
      const st = await Deno.lstat(`${dest}/f`);
      assert.ok(st.isFile);
      assert.equal(await Deno.readTextFile(`${dest}/f`), "mine");
      assert.equal(r.symlinks, 0);
      assert.equal(r.changeCounts.replaced, 1);
      break;
    }
    case "hardlink-then-overwrite":
      assert.equal(await Deno.readTextFile(`${dest}/a`), "second");
      assert.equal(await Deno.readTextFile(`${dest}/b`), "first");
      assert.equal(r.hardlinks, 1);
      break;
    case "setuid": {
      const mode = async (p: string) => (await Deno.stat(`${dest}/${p}`)).mode! & 0o7777;
      assert.equal(await mode("suid"), 0o755);
      assert.equal(await mode("sgid"), 0o755);
      assert.equal(await mode("sticky"), 0o644);
      assert.equal(r.changeCounts["mode-stripped"], 3);
      assert.deepEqual(r.changes.map((c) => c.entry).sort(), ["sgid", "sticky", "suid"]);
      break;
    }
    default:
      throw new Error(`no check for ok case ${name}`);
  }
}
