// Copyright 2026 the Valise authors. Apache-2.0 license.
// Hostile headers never hang, over-read or throw: mutated ELF/Mach-O/PE headers, truncated
// files, huge counts, symlink loops, a 1 GB pyvenv.cfg, PEX-INFO garbage (in a file and in a zip).
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import fc from "fast-check";
import { classifyHeader, inspectEnvironment, readPyvenvCfg } from "./env_facts.ts";
import { readPexInfo, readPexInfoFromZip } from "./pex_info.ts";

const ELF64_ARM = (() => {
  const h = new Uint8Array(64);
  h.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  new DataView(h.buffer).setUint16(16, 3, true);
  new DataView(h.buffer).setUint16(18, 183, true);
  return h;
})();

Deno.test("classifyHeader reads ELF machine and class, Mach-O and PE, and nothing else", () => {
  const elf = classifyHeader(ELF64_ARM);
  equal(elf?.format, "elf");
  equal(elf?.machine, 183);
  equal(elf?.bits, 64);
  equal(classifyHeader(ELF64_ARM.subarray(0, 10))?.truncated, true);
  equal(classifyHeader(new Uint8Array([0xcf, 0xfa, 0xed, 0xfe, 7, 0, 0, 1]))?.format, "mach-o");
  // A Java class file shares the fat Mach-O magic: its version word tells them apart.
  equal(classifyHeader(new Uint8Array([0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 52])), undefined);
  equal(classifyHeader(new Uint8Array([0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 2]))?.format, "mach-o");
  equal(classifyHeader(new TextEncoder().encode("#!/bin/sh\necho hi\n")), undefined);
});

Deno.test("classifyHeader never throws and never reads past what it is given", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 80 }),
      fc.nat({ max: 79 }),
      fc.integer({ min: 0, max: 255 }),
      fc.constantFrom(
        ELF64_ARM,
        new Uint8Array([0x4d, 0x5a]),
        new Uint8Array([0xcf, 0xfa, 0xed, 0xfe]),
      ),
      (noise, at, byte, base) => {
        const h = new Uint8Array(Math.max(base.length, noise.length));
        h.set(noise);
        h.set(base);
        if (at < h.length) h[at] = byte;
        const offsets: number[] = [];
        const r = classifyHeader(h, (o) => {
          offsets.push(o);
          return new Uint8Array(0);
        });
        // The PE signature offset is read from the header and capped at 64 KiB.
        ok(offsets.every((o) => o < 1 << 16));
        ok(r === undefined || ["elf", "mach-o", "pe"].includes(r.format));
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("readPexInfo returns facts or an error for any bytes", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 200 }),
        fc.json().map((j) => new TextEncoder().encode(j)),
      ),
      (b) => {
        const r = readPexInfo(b);
        ok("error" in r || Array.isArray(r.interpreterConstraints));
      },
    ),
    { numRuns: 2000 },
  );
  ok("error" in readPexInfo(new TextEncoder().encode('{"interpreter_constraints": [1]}')));
  ok("error" in readPexInfo(new Uint8Array((1 << 20) + 1)));
});

Deno.test("inspectEnvironment survives symlink loops, a 1 GB pyvenv.cfg and garbage", async () => {
  const dir = await Deno.makeTempDir({ prefix: "valise-envfacts-" });
  try {
    await Deno.mkdir(join(dir, "bin"));
    await Deno.mkdir(join(dir, "lib/python3.11/site-packages/x"), { recursive: true });
    await Deno.symlink("loop2", join(dir, "bin/loop1"));
    await Deno.symlink("loop1", join(dir, "bin/loop2"));
    await Deno.symlink("python", join(dir, "bin/python"));
    await Deno.symlink("/", join(dir, "lib/python3.11/site-packages/root"));
    // A sparse 1 GB pyvenv.cfg: only its first 16 KiB are read.
    const cfg = await Deno.open(join(dir, "pyvenv.cfg"), { write: true, create: true });
    await cfg.write(new TextEncoder().encode("home = /usr/bin\nversion = 3.11.2\n"));
    await cfg.truncate(2 ** 30);
    cfg.close();
    await Deno.writeFile(
      join(dir, "lib/python3.11/site-packages/x/a.so"),
      ELF64_ARM.subarray(0, 7),
    );
    await Deno.writeFile(join(dir, "lib/python3.11/site-packages/x/b.so"), ELF64_ARM);
    await Deno.writeTextFile(join(dir, "PEX-INFO"), "\u0000garbage{");
    const facts = await inspectEnvironment(dir, { timeoutMs: 30_000 });
    equal(facts.pyvenv?.home, "/usr/bin");
    equal(facts.pyvenv?.version, "3.11.2");
    equal(facts.binaryCount, 2);
    ok(facts.binaries.some((b) => b.truncated));
    ok(facts.binaries.some((b) => b.machine === 183));
    equal(facts.pexInfoError, "is not JSON");
    equal(facts.incomplete, undefined);
    // The walk never entered the link to / (it would have found far more than 2 binaries).
    equal(readPyvenvCfg(join(dir, "pyvenv.cfg")).home, "/usr/bin");
    // The entry budget stops a walk and says so.
    equal((await inspectEnvironment(dir, { maxEntries: 3 })).incomplete, "entries");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readPexInfoFromZip: a zip holding a huge or corrupt PEX-INFO gives an error", async () => {
  const dir = await Deno.makeTempDir({ prefix: "valise-pexzip-" });
  try {
    const py = "import sys, zipfile\n" +
      "with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n" +
      "    z.writestr('PEX-INFO', sys.argv[2] * int(sys.argv[3]))\n";
    const make = async (name: string, text: string, times: number) => {
      const p = join(dir, name);
      const out = await new Deno.Command("python3", { args: ["-c", py, p, text, `${times}`] })
        .output();
      ok(out.success, new TextDecoder().decode(out.stderr));
      return p;
    };
    const ok1 = await make("ok.pex", '{"interpreter_constraints": ["CPython==3.12.*"]}', 1);
    const r = await readPexInfoFromZip(ok1);
    ok(r && !("error" in r));
    equal(r.interpreterConstraints[0], "CPython==3.12.*");
    // 64 MiB of zeros deflate to a small member: refused by its declared size, never inflated.
    const bomb = await make("bomb.pex", "0", 64 << 20);
    const b = await readPexInfoFromZip(bomb);
    ok(b && "error" in b, JSON.stringify(b));
    // Bytes flipped anywhere: an answer, never an exception or a hang.
    const bytes = await Deno.readFile(ok1);
    await fc.assert(
      fc.asyncProperty(
        fc.nat({ max: bytes.length - 1 }),
        fc.integer({ min: 0, max: 255 }),
        async (at, v) => {
          const m = bytes.slice();
          m[at] = v;
          const p = join(dir, "m.pex");
          await Deno.writeFile(p, m);
          await readPexInfoFromZip(p);
        },
      ),
      { numRuns: 300 },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
