// Copyright 2026 the Valise authors. Apache-2.0 license.
// The progress renderers with their clock in hand: line widths, redraw and line rates, the last
// line, hashing, Ctrl-C. (The same bars in a real terminal: tests/cli_terminal_test.ts.)
import { equal, match, ok } from "node:assert/strict";
import fc from "fast-check";
import {
  barLine,
  displayWidth,
  HASH_NOTICE_BYTES,
  plainRenderer,
  ttyRenderer,
} from "./_progress.ts";
import type { ArtifactProgress } from "./upload.ts";

const MiB = 1024 * 1024;
/** What the renderer writes before a line it draws in place: carriage return, erase line. */
const ERASE = "\r\x1b[2K";

function p(
  phase: ArtifactProgress["phase"],
  bytesSent: number,
  totalBytes: number,
  name = "files/big.bin",
  bytesPerSecond = 0,
): ArtifactProgress {
  return { name, phase, bytesSent, totalBytes, bytesPerSecond };
}

/** A renderer's output and a clock the test moves. */
function harness() {
  const written: string[] = [];
  let t = 0;
  return {
    written,
    write: (s: string) => written.push(s),
    now: () => t,
    advance: (ms: number) => t += ms,
    text: () => written.join(""),
  };
}

/** What the terminal shows last on each line: the text after the last "erase line". */
function screen(text: string): string[] {
  return text.split("\n").map((l) => l.split("\r\x1b[2K").at(-1)!);
}

Deno.test("barLine() never takes more than the terminal's columns minus three, for any name", () => {
  fc.assert(fc.property(
    fc.string({ unit: "grapheme", maxLength: 80 }),
    fc.double({ min: 0, max: 1, noNaN: true }),
    fc.constantFrom(
      "12.3 MiB/300.0 MiB 45.6 MiB/s ETA 5s",
      "300.0 MiB in 6.2s (48.4 MiB/s), hashed in 1.1s",
      "hashing 1.0 GiB/2.0 GiB",
      "",
    ),
    fc.integer({ min: 1, max: 300 }),
    (name, fraction, tail, columns) => {
      const line = barLine(name, tail, { columns, fraction });
      ok(displayWidth(line) <= Math.max(1, columns - 3), `${columns}: ${JSON.stringify(line)}`);
      // deno-lint-ignore no-control-regex
      ok(!/[\x00-\x1f\x7f]/.test(line), JSON.stringify(line));
    },
  ));
});

Deno.test("barLine() keeps the bar while there is room: the tail shrinks first, then the name", () => {
  const tails = [
    "135.0 MiB/300.0 MiB 48.2 MiB/s ETA 3s",
    "135.0 MiB/300.0 MiB ETA 3s",
    "48.2 MiB/s ETA 3s",
    "ETA 3s",
  ];
  const at = (columns: number) => barLine("files/big.bin", tails, { columns, fraction: 0.45 });
  match(
    at(120),
    /^files\/big\.bin \[#{14}-{16}\] {2}45% 135\.0 MiB\/300\.0 MiB 48\.2 MiB\/s ETA 3s$/,
  );
  match(
    at(80),
    /^files\/big\.bin \[#{8}-{10}\] {2}45% 135\.0 MiB\/300\.0 MiB 48\.2 MiB\/s ETA 3s$/,
  );
  match(at(60), /^files\/big\.bin \[#{8}-{10}\] {2}45% 48\.2 MiB\/s ETA 3s$/);
  equal(at(40), "files/big.bin  45% 48.2 MiB/s ETA 3s");
  for (const columns of [40, 60, 80, 120]) ok(at(columns).length <= columns - 3);
  // A long name is cut to its end before the bar goes.
  const long = barLine("archives/a-very-long-environment-name.tar.gz", tails, {
    columns: 60,
    fraction: 0.5,
  });
  match(long, /^…[\w-]*name\.tar\.gz \[#+-+\] {2}50% /);
  ok(long.length <= 57);
  // Too narrow for a bar: the name's end and the percentage.
  const narrow = barLine("archives/a-very-long-environment-name.tar.gz", tails, {
    columns: 30,
    fraction: 0.5,
  });
  ok(!narrow.includes("["), narrow);
  match(narrow, /^….* {2}50% ETA 3s$/);
  equal(barLine("日本語のファイル.bin", "x", { columns: 16, fraction: 1 }).length <= 13, true);
  ok(
    displayWidth(
      barLine("日本語のファイル名前です.bin", "1.0 MiB", { columns: 30, fraction: 1 }),
    ) <= 27,
  );
  equal(barLine("a\x1b[31mb", "t", { columns: 80 }), "a?[31mb t");
});

Deno.test("the terminal bar: redrawn at most every interval, last line with total time and average rate", () => {
  const h = harness();
  const r = ttyRenderer(h.write, { columns: () => 80, intervalMs: 100, now: h.now });
  r.update(p("hash", 0, 10 * MiB));
  h.advance(10);
  r.update(p("hash", 10 * MiB, 10 * MiB));
  for (let i = 1; i <= 100; i++) {
    h.advance(5);
    r.update(p("upload", (i * 10 * MiB) / 100, 10 * MiB, undefined, 20 * MiB));
  }
  h.advance(20);
  // The server's commit: its report carries no rate (what once printed "0 B/s ETA 0s").
  r.update(p("done", 10 * MiB, 10 * MiB));
  r.finish();
  const draws = h.written.filter((w) => /\[[#-]/.test(w)).length;
  // 520 ms of uploading at one redraw per 100 ms: 6 redraws, and the last line.
  ok(draws <= 7, `${draws} draws`);
  const lines = screen(h.text());
  equal(lines.at(-1), "");
  const last = lines.at(-2)!;
  match(last, /^files\/big\.bin \[#{26}\] 100% 10\.0 MiB in 0\.5s \(19\.\d MiB\/s\)$/);
  ok(!h.text().includes("ETA 0s") && !h.text().includes(" 0 B/s"));
  for (const l of h.text().replaceAll(ERASE, "\n").split("\n")) ok(l.length <= 77, l);
});

Deno.test("the terminal bar: a large file shows its hashing, and the last line its hashing time", () => {
  const h = harness();
  const r = ttyRenderer(h.write, { columns: () => 120, now: h.now });
  const size = HASH_NOTICE_BYTES * 4;
  r.update(p("hash", 0, size));
  h.advance(150);
  r.update(p("hash", size / 2, size));
  equal(
    h.written.at(-1)!,
    `${ERASE}files/big.bin [${"#".repeat(15)}${"-".repeat(15)}]  50% hashing 16.0 MiB/32.0 MiB`,
  );
  h.advance(1050);
  r.update(p("hash", size, size));
  r.update(p("upload", size, size, undefined, 100 * MiB));
  h.advance(400);
  r.update(p("done", size, size));
  match(screen(h.text()).at(-2)!, /100% 32\.0 MiB in 0\.4s \(80\.0 MiB\/s\), hashed in 1\.2s$/);
  const h2 = harness();
  const r2 = ttyRenderer(h2.write, { now: h2.now });
  r2.update(p("hash", 0, size));
  h2.advance(300);
  r2.update(p("hash", size, size));
  r2.update(p("attached", 0, size));
  match(screen(h2.text()).at(-2)!, /already on the server, 32\.0 MiB not sent, hashed in 0\.3s$/);
});

Deno.test("the terminal bar after Ctrl-C: where it stopped, on a clean line ended by a newline; nothing after", () => {
  const h = harness();
  const r = ttyRenderer(h.write, { columns: () => 60, now: h.now });
  r.update(p("upload", 0, 100 * MiB));
  h.advance(500);
  r.update(p("upload", 45 * MiB, 100 * MiB, undefined, 90 * MiB));
  r.interrupt();
  const after = h.written.length;
  r.update(p("upload", 46 * MiB, 100 * MiB));
  r.finish();
  equal(h.written.length, after);
  const tail = h.written.at(-1)!;
  ok(tail.startsWith("\r\x1b[2K") && tail.endsWith("\n"), JSON.stringify(tail));
  equal(tail, "\r\x1b[2Kfiles/big.bin interrupted at 45% (45.0 MiB sent)\n");
  const wide = harness();
  const r3 = ttyRenderer(wide.write, { columns: () => 120, now: wide.now });
  r3.update(p("upload", 45 * MiB, 100 * MiB, undefined, 90 * MiB));
  r3.interrupt();
  equal(
    wide.written.at(-1)!,
    `${ERASE}files/big.bin interrupted at 45% (45.0 MiB of 100.0 MiB sent; the server keeps none of it)\n`,
  );
  const idle = harness();
  const r2 = ttyRenderer(idle.write);
  r2.interrupt();
  equal(idle.text(), "\r\x1b[2Kvalise: interrupted\n");
});

Deno.test("plain progress lines: hashing with its time, progress at a bounded rate, the average rate at the end", () => {
  const h = harness();
  const r = plainRenderer(h.write, { intervalMs: 2000, now: h.now });
  const size = 300 * MiB;
  r.update(p("hash", 0, size));
  for (let i = 1; i <= 100; i++) {
    h.advance(8);
    r.update(p("hash", Math.min(size, i * 3 * MiB), size));
  }
  // 10 s of uploading in 4800 reports: a line every 2 s, not one per report.
  for (let i = 1; i <= 4800; i++) {
    h.advance(10000 / 4800);
    r.update(p("upload", Math.min(size, (i * size) / 4800), size, undefined, 30 * MiB));
  }
  r.update(p("done", size, size));
  r.interrupt();
  const lines = h.text().trimEnd().split("\n");
  equal(lines[0], "hashing files/big.bin (300.0 MiB)");
  match(lines[1]!, /^hashed files\/big\.bin: 300\.0 MiB in 0\.8s \(375\.0 MiB\/s\)$/);
  equal(lines[2], "uploading files/big.bin (300.0 MiB)");
  const progress = lines.filter((l) => /^uploading files\/big\.bin: \d+%/.test(l));
  ok(progress.length >= 3 && progress.length <= 5, lines.join("\n"));
  match(
    progress[0]!,
    /^uploading files\/big\.bin: 20% \(60\.\d MiB of 300\.0 MiB, 30\.0 MiB\/s\)$/,
  );
  match(lines.at(-2)!, /^uploaded files\/big\.bin: 300\.0 MiB in 10(\.0)?s \(30\.0 MiB\/s\)$/);
  equal(lines.at(-1), "interrupted");
  const small = harness();
  const r2 = plainRenderer(small.write, { now: small.now });
  r2.update(p("hash", 0, 10, "files/a.txt"));
  r2.update(p("hash", 10, 10, "files/a.txt"));
  r2.update(p("upload", 10, 10, "files/a.txt"));
  r2.update(p("upload", 1, 1000, "files/b.txt"));
  r2.interrupt();
  equal(
    small.text(),
    "uploading files/a.txt (10 B)\nuploading files/b.txt (1000 B)\n" +
      "interrupted files/b.txt at 0% (1 B of 1000 B sent)\n",
  );
});

Deno.test("a notice during an upload goes on a line of its own above the bar, drawn again", () => {
  const h = harness();
  const r = ttyRenderer(h.write, { now: h.now, columns: () => 80 });
  r.update(p("upload", 0, 10 * MiB));
  r.update(p("upload", 4 * MiB, 10 * MiB, "files/big.bin", MiB));
  r.note("valise: node h1:15002 died or dropped the connection, retrying on h2:15002");
  // The retry starts the artifact again, at once (within the redraw interval).
  r.update(p("upload", 0, 10 * MiB));
  const lines = screen(h.text());
  equal(lines.length, 2, JSON.stringify(h.text()));
  equal(lines[0], "valise: node h1:15002 died or dropped the connection, retrying on h2:15002");
  match(lines[1]!, /^files\/big\.bin .* 0 B\/10\.0 MiB/);
  const plain = harness();
  const q = plainRenderer(plain.write, { now: plain.now });
  q.update(p("upload", 0, 10 * MiB));
  q.note("valise: node h1:15002 unreachable, retrying on h2:15002");
  equal(
    plain.text(),
    "uploading files/big.bin (10.0 MiB)\nvalise: node h1:15002 unreachable, retrying on h2:15002\n",
  );
});
