// Copyright 2026 the Valise authors. Apache-2.0 license.
import assert from "node:assert/strict";
import fc from "fast-check";
import { makeTar, makeZip, type TarEntry } from "./testdata/archive_writers.ts";
import {
  isUnpackError,
  prestartWriterThread,
  removeStaleTemps,
  stopWriterThread,
  unpack,
  UnpackError,
} from "./mod.ts";
import { makeSandbox, snapshot } from "./testdata/helpers.ts";

const enc = new TextEncoder();

type Gen = {
  name: string;
  type: "file" | "dir" | "symlink" | "hardlink";
  data: string;
  linkname: string;
  mode: number;
};

const comp = fc.constantFrom("a", "b", "c", "..", ".", "");
const relPath = fc.array(comp, { minLength: 1, maxLength: 3 }).map((c) => c.join("/"));
const anyPath = fc.oneof(
  { weight: 8, arbitrary: relPath },
  { weight: 1, arbitrary: relPath.map((p) => "/" + p) },
  {
    weight: 1,
    arbitrary: fc.constantFrom("../outside/target", "../../outside", "/tmp", "../outside/sub"),
  },
);
const genEntry: fc.Arbitrary<Gen> = fc.record({
  name: fc.oneof({ weight: 9, arbitrary: relPath }, {
    weight: 1,
    arbitrary: relPath.map((p) => "/" + p),
  }),
  type: fc.constantFrom("file", "file", "dir", "symlink", "hardlink"),
  data: fc.string({ maxLength: 20 }),
  linkname: anyPath,
  mode: fc.constantFrom(0o644, 0o755, 0o4755, 0o777, 0o600),
});

function norm(p: string): string {
  return p.split("/").filter((c) => c !== "" && c !== ".").join("/");
}

type ModelNode = { kind: "file"; content: string } | { kind: "dir" } | {
  kind: "symlink";
  target: string;
};

/** What a successful unpack must have produced: tar semantics, later members win. */
function model(entries: Gen[]): Map<string, ModelNode> {
  const m = new Map<string, ModelNode>();
  for (const e of entries) {
    const rel = norm(e.name);
    if (rel === "") continue;
    const parts = rel.split("/");
    for (let i = 1; i < parts.length; i++) {
      const p = parts.slice(0, i).join("/");
      if (!m.has(p)) m.set(p, { kind: "dir" });
    }
    switch (e.type) {
      case "file":
        m.set(rel, { kind: "file", content: e.data });
        break;
      case "dir":
        m.set(rel, { kind: "dir" });
        break;
      case "hardlink": {
        const t = m.get(norm(e.linkname));
        assert.ok(t?.kind === "file", "a successful unpack only links to files");
        m.set(rel, { kind: "file", content: t.content });
        break;
      }
      case "symlink":
        m.set(rel, {
          kind: "symlink",
          target: (e.linkname.startsWith("/") ? "/" : "") + norm(e.linkname),
        });
    }
  }
  return m;
}

async function checkRun(
  build: (entries: Gen[]) => { bytes: Uint8Array; ext: string },
  entries: Gen[],
  threaded = false,
): Promise<void> {
  const { root, dest } = await makeSandbox();
  try {
    await Deno.mkdir(`${root}/w`);
    const { bytes, ext } = build(entries);
    await Deno.writeFile(`${root}/a.${ext}`, bytes);
    const before = await snapshot(root, ["w"]);
    let ok = true;
    try {
      // threshold 0: every small file goes through the writer thread and its barriers.
      await unpack(`${root}/a.${ext}`, dest, { parallelWritesThreshold: threaded ? 0 : Infinity });
    } catch (e) {
      ok = false;
      assert.ok(isUnpackError(e), `not an UnpackError: ${e}`);
      assert.deepEqual([...Deno.readDirSync(`${root}/w`)], [], "dest or temp dir left behind");
    }
    assert.deepEqual(await snapshot(root, ["w"]), before, "something outside dest changed");
    if (!ok) return;
    assert.deepEqual([...Deno.readDirSync(`${root}/w`)].map((e) => e.name), ["dest"]);
    const want = model(entries);
    const got = new Map<string, ModelNode>();
    const dec = new TextDecoder();
    for (const [rel, desc] of await snapshot(dest)) {
      const p = `${dest}/${rel}`;
      if (desc.startsWith("link:")) {
        got.set(rel, { kind: "symlink", target: desc.slice(5) });
        // A link that resolves at all resolves inside dest.
        try {
          const real = await Deno.realPath(p);
          assert.ok(real.startsWith(dest + "/"), `${rel} resolves to ${real}`);
        } catch (e) {
          // Dangling, or through a regular file: resolves nowhere.
          if (!(e instanceof Deno.errors.NotFound) && !(e instanceof Deno.errors.NotADirectory)) {
            throw e;
          }
        }
      } else if (desc.startsWith("dir:")) got.set(rel, { kind: "dir" });
      else {
        const mode = (await Deno.lstat(p)).mode! & 0o7777;
        assert.equal(mode & 0o7022, 0, `${rel} has mode ${mode.toString(8)}`);
        got.set(rel, { kind: "file", content: dec.decode(await Deno.readFile(p)) });
      }
    }
    assert.deepEqual(got, want);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

function tarOf(entries: Gen[]): { bytes: Uint8Array; ext: string } {
  const t: TarEntry[] = entries.map((e) => ({
    name: e.type === "dir" ? e.name + "/" : e.name,
    type: e.type,
    data: e.type === "file" ? e.data : "",
    linkname: e.type === "symlink" || e.type === "hardlink" ? e.linkname : "",
    mode: e.mode,
  }));
  return { bytes: makeTar(t), ext: "tar" };
}

function zipOf(entries: Gen[]): { bytes: Uint8Array; ext: string } {
  return {
    bytes: makeZip(entries.map((e) => ({
      name: e.type === "dir" ? e.name + "/" : e.name,
      data: e.type === "file" ? e.data : e.type === "symlink" ? e.linkname : "",
      unixMode: e.type === "dir" ? 0o040755 : e.type === "symlink" ? 0o120777 : 0o100000 | e.mode,
    }))),
    ext: "zip",
  };
}

Deno.test("unpack() properties", async (t) => {
  await t.step(
    "any tar: nothing outside dest changes; dest matches the archive or the call fails cleanly",
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(genEntry, { minLength: 1, maxLength: 10 }),
          (entries) => checkRun(tarOf, entries),
        ),
        { numRuns: 300 },
      );
    },
  );
  await t.step("any zip (no hardlinks): same properties", async () => {
    // In a zip a trailing "/" makes a directory, whatever the mode says.
    const noHard = genEntry.filter((e) => e.type !== "hardlink").map((e): Gen =>
      e.name.endsWith("/") ? { ...e, type: "dir" } : e
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(noHard, { minLength: 1, maxLength: 10 }),
        (entries) => checkRun(zipOf, entries),
      ),
      { numRuns: 150 },
    );
  });
});

Deno.test("unpack() refuses an existing dest", async () => {
  const { root } = await makeSandbox();
  try {
    await Deno.writeFile(`${root}/a.tar`, makeTar([{ name: "x", data: "1" }]));
    await assert.rejects(
      unpack(`${root}/a.tar`, `${root}/outside`),
      (e) =>
        e instanceof UnpackError && e.code === "DEST_EXISTS" && /exists already/.test(e.message),
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("unpack() honours an aborted signal and leaves nothing", async () => {
  const { root, dest } = await makeSandbox();
  try {
    await Deno.mkdir(`${root}/w`);
    await Deno.writeFile(`${root}/a.tar`, makeTar([{ name: "x", data: "1" }]));
    const ac = new AbortController();
    ac.abort(new Error("stop"));
    await assert.rejects(
      unpack(`${root}/a.tar`, dest, { signal: ac.signal }),
      (e) => isUnpackError(e) && e.code === "ABORTED",
    );
    assert.deepEqual([...Deno.readDirSync(`${root}/w`)], []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("unpack() refuses an unknown format", async () => {
  const { root, dest } = await makeSandbox();
  try {
    await Deno.mkdir(`${root}/w`);
    await Deno.writeFile(`${root}/a.bin`, enc.encode("just text, not an archive\n".repeat(40)));
    await assert.rejects(
      unpack(`${root}/a.bin`, dest),
      (e) => isUnpackError(e) && e.code === "UNSUPPORTED",
    );
    assert.deepEqual([...Deno.readDirSync(`${root}/w`)], []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("unpack() rejects invalid options with RangeError", async () => {
  await assert.rejects(unpack("/nonexistent", "/tmp/x", { maxEntries: -1 }), RangeError);
});

Deno.test("unpack() reads every tar format GNU tar writes, like GNU tar", async () => {
  const { root } = await makeSandbox();
  try {
    const src = `${root}/src`;
    const long = "d".repeat(120) + "/" + "n".repeat(150);
    await Deno.mkdir(`${src}/${long}`, { recursive: true });
    await Deno.writeTextFile(`${src}/${long}/f.txt`, "deep");
    await Deno.writeFile(`${src}/big.bin`, crypto.getRandomValues(new Uint8Array(60000)));
    await Deno.writeTextFile(`${src}/é-ünïcode.py`, "x = 1\n");
    await Deno.symlink("big.bin", `${src}/link`);
    await Deno.link(`${src}/big.bin`, `${src}/hard`);
    await Deno.chmod(`${src}/big.bin`, 0o755);
    for (const format of ["gnu", "pax", "ustar", "v7"]) {
      const useLong = format !== "ustar" && format !== "v7";
      const members = useLong ? ["."] : ["big.bin", "link", "hard", "é-ünïcode.py"];
      const archive = `${root}/a-${format}.tar`;
      const r = await new Deno.Command("tar", {
        args: [`--format=${format}`, "-cf", archive, "-C", src, ...members],
        stderr: "piped",
      }).output();
      assert.ok(r.success, new TextDecoder().decode(r.stderr));
      const out = `${root}/out-${format}`;
      const res = await unpack(archive, out, {
        parallelWritesThreshold: format === "gnu" ? 0 : 256,
      });
      assert.equal(res.detection.container, "tar");
      const ref = `${root}/ref-${format}`;
      await Deno.mkdir(ref);
      await new Deno.Command("tar", { args: ["-xf", archive, "-C", ref] }).output();
      assert.deepEqual(await snapshot(out), await snapshot(ref), `format ${format}`);
      assert.equal(res.hardlinks, 1);
      assert.equal(res.symlinks, 1);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("unpack() unpacks a zip behind an unadjusted preamble", async () => {
  const { root, dest } = await makeSandbox();
  try {
    const z = makeZip([{ name: "__main__.py", data: "print(1)\n" }, { name: "pkg/", data: "" }, {
      name: "pkg/m.py",
      data: "x = 2\n",
    }], { preamble: "#!/usr/bin/env python3\n", unadjusted: true });
    await Deno.mkdir(`${root}/w`);
    await Deno.writeFile(`${root}/app.pyz`, z);
    const r = await unpack(`${root}/app.pyz`, dest);
    assert.equal(r.detection.zipPreamble, "#!/usr/bin/env python3\n".length);
    assert.equal(r.flavor, "zipapp");
    assert.equal(await Deno.readTextFile(`${dest}/pkg/m.py`), "x = 2\n");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("unpack() with the writer thread matches GNU tar on many files, duplicates and hardlinks", async () => {
  const { root } = await makeSandbox();
  try {
    const entries: TarEntry[] = [];
    for (let i = 0; i < 3000; i++) {
      entries.push({
        name: `d${i % 37}/f${i}.py`,
        data: `x = ${i}\n`.repeat(i % 50),
        mtime: 1600000000 + i,
        mode: i % 3 ? 0o644 : 0o755,
      });
      if (i % 500 === 7) entries.push({ name: `d${i % 37}/f${i}.py`, data: `replaced ${i}\n` });
      if (i % 400 === 9) {
        entries.push({ name: `hard${i}`, type: "hardlink", linkname: `d${i % 37}/f${i}.py` });
      }
    }
    entries.push({
      name: "big.bin",
      data: crypto.getRandomValues(new Uint8Array(65536)).map((b) => b),
    });
    await Deno.writeFile(`${root}/many.tar`, makeTar(entries));
    const r = await unpack(`${root}/many.tar`, `${root}/out`, { parallelWritesThreshold: 0 });
    assert.equal(r.files, 3000 + 6 + 1);
    assert.equal(r.hardlinks, 8);
    await Deno.mkdir(`${root}/ref`);
    const x = await new Deno.Command("tar", {
      args: ["-xf", `${root}/many.tar`, "-C", `${root}/ref`],
    }).output();
    assert.ok(x.success);
    assert.deepEqual(await snapshot(`${root}/out`), await snapshot(`${root}/ref`));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("unpack() reuses a kept writer thread across unpacks, each one exact", async () => {
  const { root } = await makeSandbox();
  try {
    prestartWriterThread();
    for (let round = 0; round < 3; round++) {
      const entries: TarEntry[] = [];
      for (let i = 0; i < 600; i++) {
        entries.push({ name: `d${i % 7}/f${i}.txt`, data: `round ${round} file ${i}\n` });
      }
      await Deno.writeFile(`${root}/r${round}.tar`, makeTar(entries));
      const r = await unpack(`${root}/r${round}.tar`, `${root}/out${round}`, {
        parallelWritesThreshold: 0,
        keepWriterThread: true,
      });
      assert.equal(r.files, 600);
      await Deno.mkdir(`${root}/ref${round}`);
      const x = await new Deno.Command("tar", {
        args: ["-xf", `${root}/r${round}.tar`, "-C", `${root}/ref${round}`],
      }).output();
      assert.ok(x.success);
      assert.deepEqual(
        await snapshot(`${root}/out${round}`),
        await snapshot(`${root}/ref${round}`),
      );
    }
    // A failed unpack does not hand a dirty thread to the next one.
    await Deno.writeFile(
      `${root}/bad.tar`,
      makeTar([
        ...Array.from({ length: 300 }, (_, i) => ({ name: `f${i}`, data: "x" })),
        { name: "../evil", data: "x" },
      ]),
    );
    await assert.rejects(
      unpack(`${root}/bad.tar`, `${root}/bad`, {
        parallelWritesThreshold: 0,
        keepWriterThread: true,
      }),
      (e) => isUnpackError(e) && e.code === "PATH_ESCAPE",
    );
    const r = await unpack(`${root}/r0.tar`, `${root}/again`, {
      parallelWritesThreshold: 0,
      keepWriterThread: true,
    });
    assert.equal(r.files, 600);
  } finally {
    stopWriterThread();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("unpack() checks free disk space before writing", async () => {
  const { root, dest } = await makeSandbox();
  try {
    await Deno.mkdir(`${root}/w`);
    await Deno.writeFile(`${root}/a.tar`, makeTar([{ name: "x", data: "1" }]));
    await assert.rejects(
      unpack(`${root}/a.tar`, dest, { minFreeDiskBytes: Number.MAX_SAFE_INTEGER }),
      (e) => isUnpackError(e) && e.code === "QUOTA_DISK" && /bytes free/.test(e.message),
    );
    assert.deepEqual([...Deno.readDirSync(`${root}/w`)], []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("unpack() stops on an abort in the middle and leaves nothing", async () => {
  const { root, dest } = await makeSandbox();
  try {
    await Deno.mkdir(`${root}/w`);
    const files = Array.from(
      { length: 40 },
      (_, i) => ({ name: `f${i}`, data: new Uint8Array(1 << 20) }),
    );
    await Deno.writeFile(`${root}/a.tar`, makeTar(files));
    const ac = new AbortController();
    const p = unpack(`${root}/a.tar`, dest, { signal: ac.signal });
    setTimeout(() => ac.abort(new Error("user cancelled")), 0);
    await assert.rejects(p, (e) => isUnpackError(e) && e.code === "ABORTED");
    assert.deepEqual([...Deno.readDirSync(`${root}/w`)], []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("removeStaleTemps() removes what a killed unpack left", async () => {
  const { root } = await makeSandbox();
  try {
    await Deno.mkdir(`${root}/.env.valise-unpack-1234abcd/bin`, { recursive: true });
    await Deno.mkdir(`${root}/keep`);
    assert.deepEqual(await removeStaleTemps(root), [".env.valise-unpack-1234abcd"]);
    assert.deepEqual([...Deno.readDirSync(root)].map((e) => e.name).sort(), ["keep", "outside"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("unpack() defaults let a 100k-file environment through", async () => {
  const { root, dest } = await makeSandbox();
  try {
    await Deno.mkdir(`${root}/w`);
    const entries: TarEntry[] = [];
    for (let i = 0; i < 100_000; i++) {
      entries.push({
        name: `lib/python3.11/site-packages/p${i % 400}/m${i}.py`,
        data: `V = ${i}\n`,
      });
    }
    const zlib = await import("node:zlib");
    await Deno.writeFile(`${root}/env.tar.gz`, zlib.gzipSync(makeTar(entries), { level: 1 }));
    const r = await unpack(`${root}/env.tar.gz`, dest);
    assert.equal(r.files, 100_000);
    assert.equal(
      await Deno.readTextFile(`${dest}/lib/python3.11/site-packages/p399/m99999.py`),
      "V = 99999\n",
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("unpack() can refuse all links, and keep or drop mtimes", async () => {
  const { root } = await makeSandbox();
  try {
    await Deno.writeFile(
      `${root}/a.tar`,
      makeTar([
        { name: "f", data: "x", mtime: 1234567890 },
        { name: "s", type: "symlink", linkname: "f" },
        { name: "h", type: "hardlink", linkname: "f" },
      ]),
    );
    await assert.rejects(
      unpack(`${root}/a.tar`, `${root}/o1`, { allowSymlinks: false }),
      (e) =>
        isUnpackError(e) && e.code === "BAD_LINK" && e.entry === "s" &&
        /allowSymlinks/.test(e.message),
    );
    await assert.rejects(
      unpack(`${root}/a.tar`, `${root}/o2`, { allowHardlinks: false }),
      (e) => isUnpackError(e) && e.code === "BAD_LINK" && e.entry === "h",
    );
    const r = await unpack(`${root}/a.tar`, `${root}/o3`);
    assert.equal(r.linksMade, 2);
    assert.equal((await Deno.stat(`${root}/o3/f`)).mtime?.getTime(), 1234567890_000);
    await unpack(`${root}/a.tar`, `${root}/o4`, { preserveMtime: false });
    assert.notEqual((await Deno.stat(`${root}/o4/f`)).mtime?.getTime(), 1234567890_000);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("unpack() allows the venv interpreter links only when asked to", async () => {
  const { root } = await makeSandbox();
  try {
    await Deno.writeFile(
      `${root}/v.tar`,
      makeTar([
        { name: "pyvenv.cfg", data: "home = /usr/bin\n" },
        { name: "bin/python3", type: "symlink", linkname: "/usr/bin/python3" },
        { name: "bin/python", type: "symlink", linkname: "python3" },
        { name: "bin/python3.11", type: "symlink", linkname: "python3" },
      ]),
    );
    const r = await unpack(`${root}/v.tar`, `${root}/ok`);
    assert.equal(r.flavor, "venv");
    assert.deepEqual(r.interpreterLinks, [{ path: "bin/python3", target: "/usr/bin/python3" }]);
    assert.equal(r.changeCounts["interpreter-link"], 1);
    assert.equal(await Deno.readLink(`${root}/ok/bin/python`), "python3");
    await assert.rejects(
      unpack(`${root}/v.tar`, `${root}/no`, { allowInterpreterLinks: false }),
      (e) => isUnpackError(e) && e.code === "LINK_ESCAPE" && e.entry === "bin/python3",
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
