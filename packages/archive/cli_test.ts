// Copyright 2026 the Valise authors. Apache-2.0 license.
import assert from "node:assert/strict";
import { makeTar } from "./testdata/archive_writers.ts";

const CLI = new URL("./cli.ts", import.meta.url).pathname;

async function run(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("cli.ts prints the detection and the result, or the error with a non-zero exit", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/good.tar`, makeTar([{ name: "a/b.txt", data: "hi" }]));
    await Deno.writeFile(`${dir}/bad.tar`, makeTar([{ name: "../evil", data: "x" }]));
    const ok = await run(`${dir}/good.tar`, `${dir}/out`);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /"container": "tar"/);
    assert.match(ok.stdout, /"files": 1/);
    assert.equal(await Deno.readTextFile(`${dir}/out/a/b.txt`), "hi");
    const bad = await run(`${dir}/bad.tar`, `${dir}/out2`);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^error PATH_ESCAPE \(entry "\.\.\/evil"\)/m);
    const usage = await run();
    assert.equal(usage.code, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
