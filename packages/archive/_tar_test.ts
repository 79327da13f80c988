// Copyright 2026 the Valise authors. Apache-2.0 license.
// The tar parser's strictness claims, each against an archive built to break it, read whole and
// in every chunking: a PAX `x` record never applies to a GNU `L`/`K` meta member, repeated
// `L`/`K` before one member are refused, and a PAX `size` decides the content and padding.
import assert from "node:assert/strict";
import fc from "fast-check";
import { TarParser } from "./_tar.ts";
import { isUnpackError } from "./error.ts";
import { makeTar, type TarEntry } from "./testdata/archive_writers.ts";

interface Seen {
  name: string;
  linkname: string;
  kind: string;
  data: string;
}

/** Parses `bytes` cut at `cuts`, collecting members and their content. */
function parse(bytes: Uint8Array, cuts: number[] = []): Seen[] {
  const out: Seen[] = [];
  let current: { seen: Seen; parts: Uint8Array[] } | undefined;
  const dec = new TextDecoder();
  const close = () => {
    if (!current) return;
    const all = new Uint8Array(current.parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of current.parts) {
      all.set(p, at);
      at += p.length;
    }
    current.seen.data = dec.decode(all);
    out.push(current.seen);
    current = undefined;
  };
  const parser = new TarParser({
    entry(m, whole) {
      close();
      current = {
        seen: { name: m.name, linkname: m.linkname, kind: m.kind, data: "" },
        parts: whole ? [whole.slice()] : [],
      };
      if (whole) close();
    },
    data(chunk) {
      current!.parts.push(chunk.slice());
    },
    end() {
      close();
    },
  });
  let from = 0;
  for (const c of [...cuts, bytes.length].sort((a, b) => a - b)) {
    parser.push(bytes.subarray(from, Math.max(from, c)));
    from = Math.max(from, c);
  }
  parser.finish();
  close();
  return out;
}

const longName = (name: string): TarEntry => ({
  name: "././@LongLink",
  type: "L",
  data: `${name}\0`,
});
const longLink = (name: string): TarEntry => ({
  name: "././@LongLink",
  type: "K",
  data: `${name}\0`,
});

function refused(bytes: Uint8Array, why: RegExp): void {
  assert.throws(() => parse(bytes), (e: unknown) => {
    assert.ok(isUnpackError(e), String(e));
    assert.equal(e.code, "CORRUPT");
    assert.match(e.message, why);
    return true;
  });
}

/** Every way to cut `bytes` in two or three pieces agrees with reading it whole. */
function sameInAnyChunking(bytes: Uint8Array, expected: Seen[]): void {
  fc.assert(
    fc.property(fc.array(fc.nat({ max: bytes.length }), { maxLength: 3 }), (cuts) => {
      assert.deepEqual(parse(bytes, cuts), expected);
    }),
    { numRuns: 200 },
  );
}

Deno.test("a PAX size before a GNU L member is kept for the next real member, not the L", () => {
  const bytes = makeTar([
    // The x header says size=5; the L member that follows has 14 bytes of its own.
    { ...longName("long/name.txt"), pax: { size: "5" } },
    // A header that claims 0 bytes: the pending PAX size (5) decides.
    { name: "short", data: "hello", headerSize: 0 },
    { name: "after.txt", data: "next" },
  ]);
  const expected = [
    { name: "long/name.txt", linkname: "", kind: "file", data: "hello" },
    { name: "after.txt", linkname: "", kind: "file", data: "next" },
  ];
  assert.deepEqual(parse(bytes), expected);
  sameInAnyChunking(bytes, expected);
});

Deno.test("a PAX path wins over a GNU long name, and both apply to one member only", () => {
  const bytes = makeTar([
    longName("gnu/name.txt"),
    { name: "header-name", data: "a", pax: { path: "pax/name.txt" } },
    { name: "plain.txt", data: "b" },
  ]);
  assert.deepEqual(parse(bytes).map((m) => m.name), ["pax/name.txt", "plain.txt"]);
});

Deno.test("repeated GNU L or K headers before one member are refused", () => {
  refused(
    makeTar([longName("first"), longName("second"), { name: "x", data: "" }]),
    /repeated GNU L header/,
  );
  refused(
    makeTar([
      longLink("one"),
      longLink("two"),
      { name: "l", type: "symlink", linkname: "t" },
    ]),
    /repeated GNU K header/,
  );
  // One of each is fine, and names the member and its target.
  const ok = parse(makeTar([
    longName("the/link"),
    longLink("the/target"),
    { name: "l", type: "symlink", linkname: "t" },
  ]));
  assert.deepEqual(ok.map((m) => [m.name, m.linkname, m.kind]), [[
    "the/link",
    "the/target",
    "symlink",
  ]]);
});

Deno.test("a PAX size decides the content and padding however the header's size disagrees", () => {
  // Header claims 1000 bytes; PAX says 3: the parser must take 3 and realign on the next block.
  const bytes = makeTar([
    { name: "a.txt", data: "abc", headerSize: 1000, pax: { size: "3" } },
    { name: "b.txt", data: "defg" },
  ]);
  const expected = [
    { name: "a.txt", linkname: "", kind: "file", data: "abc" },
    { name: "b.txt", linkname: "", kind: "file", data: "defg" },
  ];
  assert.deepEqual(parse(bytes), expected);
  sameInAnyChunking(bytes, expected);
});

Deno.test("meta members left dangling at the end, or malformed PAX sizes, are corrupt", () => {
  const dangling = makeTar([longName("no/member/follows")]);
  refused(dangling, /meta header before end|truncated/);
  for (const size of ["-1", "1e3", "0x10", "99999999999999999999"]) {
    refused(makeTar([{ name: "f", data: "x", pax: { size } }]), /bad PAX|PAX record/);
  }
  // An empty value removes the keyword (POSIX): the header's size holds.
  assert.deepEqual(parse(makeTar([{ name: "f", data: "x", pax: { size: "" } }])), [
    { name: "f", linkname: "", kind: "file", data: "x" },
  ]);
});
