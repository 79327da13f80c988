// Copyright 2026 the Valise authors. Apache-2.0 license.
// Upload progress as the CLI shows it: a bar redrawn in place on a terminal, plain lines at a
// bounded rate in a pipe or a log, nothing when quiet.
import type { ArtifactProgress } from "./upload.ts";

/** Writes text somewhere (the CLI's stderr). */
export type Write = (text: string) => void;

/** Renders upload progress: a bar on a terminal, plain lines in a pipe, nothing when quiet. */
export interface ProgressRenderer {
  /** Takes one report. */
  update(p: ArtifactProgress): void;
  /** Ends any bar still drawn. */
  finish(): void;
  /** Writes a line of its own (a notice: a retry), above the bar, which is then drawn again. */
  note(line: string): void;
  /** The user interrupted (Ctrl-C): says where it stopped, leaves a clean line; ignores the rest. */
  interrupt(): void;
}

/** Options of the renderers. */
export interface RendererOptions {
  /**
   * The terminal's width, read at every redraw so that a resize is followed.
   * @default {() => 80}
   */
  columns?: () => number;
  /**
   * The least time between two redraws (terminal) or two progress lines (pipe), in ms.
   * @default {100 on a terminal, 2000 in a pipe}
   */
  intervalMs?: number;
  /**
   * The clock, in ms.
   * @default {performance.now}
   */
  now?: () => number;
}

/** Files at least this large get a line while they are hashed. */
export const HASH_NOTICE_BYTES: number = 8 * 1024 * 1024;

/**
 * Columns a bar line leaves free: the last one (a character there makes some terminals wrap)
 * and two for the `^C` the terminal echoes when the user interrupts.
 */
const SPARE_COLUMNS = 3;

/** Human-readable bytes: `512 B`, `1.5 KiB`, `20.0 MiB`. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** A duration: `0.4s`, `12s`, `3m05s`, `1h02m`. */
export function formatSeconds(seconds: number): string {
  if (!Number.isFinite(seconds)) return "--";
  if (seconds < 10) return `${Math.max(0, seconds).toFixed(1)}s`;
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  return m < 60
    ? `${m}m${String(s % 60).padStart(2, "0")}s`
    : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

function rateOf(bytes: number, ms: number): string {
  return ms > 0 ? `${formatBytes(Math.round(bytes / (ms / 1000)))}/s` : "--/s";
}

/**
 * How many columns a string takes on a terminal: wide (East Asian, emoji) characters take two,
 * combining marks none.
 *
 * @param s The text.
 * @returns Its width.
 */
export function displayWidth(s: string): number {
  let w = 0;
  for (const ch of s) w += charWidth(ch.codePointAt(0)!);
  return w;
}

function charWidth(c: number): number {
  if ((c >= 0x300 && c <= 0x36f) || c === 0x200b || (c >= 0xfe00 && c <= 0xfe0f)) return 0;
  if (
    (c >= 0x1100 && c <= 0x115f) || (c >= 0x2e80 && c <= 0xa4cf) ||
    (c >= 0xac00 && c <= 0xd7a3) || (c >= 0xf900 && c <= 0xfaff) ||
    (c >= 0xfe30 && c <= 0xfe4f) || (c >= 0xff00 && c <= 0xff60) ||
    (c >= 0xffe0 && c <= 0xffe6) || (c >= 0x1f300 && c <= 0x1faff) ||
    (c >= 0x20000 && c <= 0x3fffd)
  ) return 2;
  return 1;
}

/** Cuts text to `width` columns, keeping its end (a name's end tells files apart). */
function keepEnd(s: string, width: number): string {
  if (displayWidth(s) <= width) return s;
  if (width <= 0) return "";
  const chars = [...s];
  let out = "";
  let w = 1;
  for (let i = chars.length - 1; i >= 0; i--) {
    const cw = charWidth(chars[i]!.codePointAt(0)!);
    if (w + cw > width) break;
    out = chars[i]! + out;
    w += cw;
  }
  return `…${out}`;
}

/** Cuts text to `width` columns, keeping its start. */
function keepStart(s: string, width: number): string {
  let out = "";
  let w = 0;
  for (const ch of s) {
    const cw = charWidth(ch.codePointAt(0)!);
    if (w + cw > width) break;
    out += ch;
    w += cw;
  }
  return out;
}

/**
 * A name as it may be shown on a terminal: control characters (a file may be named with
 * escape sequences) become `?`.
 */
function printable(name: string): string {
  // deno-lint-ignore no-control-regex
  return name.replace(/[\x00-\x1f\x7f-\x9f]/g, "?");
}

/** Options of {@linkcode barLine}. */
export interface BarOptions {
  /** The terminal's width. */
  columns: number;
  /**
   * Done, 0 to 1.
   * @default {undefined} a line without bar or percentage
   */
  fraction?: number | undefined;
  /**
   * Whether the first tail matters more than the bar (the bar goes before it is cut).
   * @default {false}
   */
  keepTail?: boolean;
}

/**
 * One progress line that fits `columns`: `LABEL [###---]  45% TAIL`. The tails are tried from
 * the first (the longest) on: the first that leaves a bar of at least 10 cells wins; then the
 * label is cut to its end; without room for a bar, the line goes without it, with the first
 * tail that fits. With `keepTail`, the first tail is kept over the bar.
 *
 * @param label The artifact's name.
 * @param tails What follows the bar (sizes, rate, times), longest first.
 * @param options The terminal's width, how much is done, whether the first tail is kept.
 * @returns The line, at most `columns - 3` wide.
 */
export function barLine(
  label: string,
  tails: string | readonly string[],
  options: BarOptions,
): string {
  const { columns, fraction, keepTail = false } = options;
  const max = Math.max(1, columns - SPARE_COLUMNS);
  const all = typeof tails === "string" ? [tails] : tails;
  const withBar = keepTail ? all.slice(0, 1) : all;
  const full = printable(label);
  const f = fraction === undefined ? undefined : Math.min(1, Math.max(0, fraction));
  const pct = f === undefined ? "" : ` ${String(Math.floor(f * 100)).padStart(3)}%`;
  const sep = (tail: string) => tail === "" ? "" : ` ${tail}`;
  if (f !== undefined) {
    for (const name of [full, keepEnd(full, 16)]) {
      for (const tail of withBar) {
        const rest = displayWidth(name) + displayWidth(pct) + displayWidth(sep(tail));
        const width = Math.min(30, max - rest - 3);
        if (width >= 10) {
          const fill = Math.round(f * width);
          return `${name} [${"#".repeat(fill)}${"-".repeat(width - fill)}]${pct}${sep(tail)}`;
        }
      }
    }
  }
  for (const tail of all) {
    const room = max - displayWidth(pct) - displayWidth(sep(tail));
    if (room >= Math.min(12, displayWidth(full))) return `${keepEnd(full, room)}${pct}${sep(tail)}`;
  }
  return keepStart(`${keepEnd(full, 12)}${pct}${sep(all.at(-1) ?? "")}`, max);
}

interface Timing {
  hashStart?: number;
  hashMs?: number;
  uploadStart?: number;
}

/**
 * A bar redrawn in place with `\r` and "erase line", at most every `intervalMs`, never wider
 * than the terminal; the last line of an artifact shows its size, total time and average rate.
 *
 * @param write Where the text goes.
 * @param options Width, redraw interval, clock.
 * @returns The renderer.
 */
export function ttyRenderer(write: Write, options: RendererOptions = {}): ProgressRenderer {
  const columns = options.columns ?? (() => 80);
  const intervalMs = options.intervalMs ?? 100;
  const now = options.now ?? (() => performance.now());
  const timings = new Map<string, Timing>();
  let drawn: ArtifactProgress | undefined;
  // The newest report of the artifact on the line (the line may show an older one).
  let latest: ArtifactProgress | undefined;
  let last = -Infinity;
  let stopped = false;
  const timing = (name: string) => {
    let t = timings.get(name);
    if (!t) timings.set(name, t = {});
    return t;
  };
  const draw = (line: string, p: ArtifactProgress | undefined) => {
    write(`\r\x1b[2K${line}`);
    drawn = p;
    last = now();
  };
  const clear = () => {
    if (drawn !== undefined) write("\r\x1b[2K");
    drawn = undefined;
  };
  // Hashing time is worth a mention for the files whose hashing was shown, and took a while.
  const hashed = (t: Timing, p: ArtifactProgress) =>
    t.hashMs !== undefined && t.hashMs >= 100 && p.totalBytes >= HASH_NOTICE_BYTES
      ? `, hashed in ${formatSeconds(t.hashMs / 1000)}`
      : "";
  return {
    update(p) {
      if (stopped) return;
      latest = p;
      const t = timing(p.name);
      const at = now();
      if (p.phase === "hash") {
        if (t.hashStart === undefined) t.hashStart = at;
        else if (p.bytesSent >= p.totalBytes) {
          t.hashMs = at - t.hashStart;
          // The line goes: the upload's bar (or the next file's hashing) takes its place.
          if (drawn?.name === p.name) clear();
          return;
        }
        if (p.totalBytes < HASH_NOTICE_BYTES) return;
        if (drawn?.name === p.name && at - last < intervalMs) return;
        draw(
          barLine(p.name, `hashing ${formatBytes(p.bytesSent)}/${formatBytes(p.totalBytes)}`, {
            columns: columns(),
            fraction: p.bytesSent / p.totalBytes,
          }),
          p,
        );
        return;
      }
      if (p.phase === "attached") {
        clear();
        write(
          `${
            barLine(
              p.name,
              `already on the server, ${formatBytes(p.totalBytes)} not sent${hashed(t, p)}`,
              { columns: columns() },
            )
          }\n`,
        );
        return;
      }
      if (p.phase === "done") {
        const ms = at - (t.uploadStart ?? at);
        const took = `${formatBytes(p.totalBytes)} in ${formatSeconds(ms / 1000)}`;
        const avg = `(${rateOf(p.totalBytes, ms)})`;
        clear();
        write(
          `${
            barLine(p.name, [`${took} ${avg}${hashed(t, p)}`, `${took} ${avg}`, took], {
              columns: columns(),
              fraction: 1,
              // The total time and the average rate are what the last line is for.
              keepTail: true,
            })
          }\n`,
        );
        return;
      }
      if (t.uploadStart === undefined) t.uploadStart = at;
      if (drawn?.name === p.name && drawn.phase === "upload" && at - last < intervalMs) return;
      const rate = p.bytesPerSecond;
      const eta = `ETA ${rate > 0 ? formatSeconds((p.totalBytes - p.bytesSent) / rate) : "--"}`;
      const sizes = `${formatBytes(p.bytesSent)}/${formatBytes(p.totalBytes)}`;
      const speed = `${formatBytes(Math.round(rate))}/s`;
      draw(
        barLine(p.name, [`${sizes} ${speed} ${eta}`, `${sizes} ${eta}`, `${speed} ${eta}`, eta], {
          columns: columns(),
          fraction: p.totalBytes === 0 ? 1 : p.bytesSent / p.totalBytes,
        }),
        p,
      );
    },
    finish() {
      if (drawn !== undefined) write("\n");
      drawn = undefined;
    },
    note(line) {
      if (stopped) return;
      const p = drawn;
      clear();
      write(`${line}\n`);
      // The bar comes back at its next report, whatever the interval.
      if (p !== undefined) last = -Infinity;
    },
    interrupt() {
      if (stopped) return;
      stopped = true;
      const p = drawn === undefined ? undefined : latest;
      let line = "valise: interrupted";
      if (p !== undefined) {
        const pct = p.totalBytes === 0 ? 100 : Math.floor((p.bytesSent / p.totalBytes) * 100);
        const sent = `${formatBytes(p.bytesSent)} of ${formatBytes(p.totalBytes)} sent`;
        line = p.phase === "hash"
          ? barLine(p.name, `interrupted while hashing, at ${pct}%`, { columns: columns() })
          : barLine(p.name, [
            `interrupted at ${pct}% (${sent}; the server keeps none of it)`,
            `interrupted at ${pct}% (${sent})`,
            `interrupted at ${pct}% (${formatBytes(p.bytesSent)} sent)`,
            `interrupted at ${pct}%`,
          ], { columns: columns() });
      }
      // The terminal echoed ^C where the cursor was: the line is erased and written anew.
      write(`\r\x1b[2K${line}\n`);
      drawn = undefined;
    },
  };
}

/**
 * Plain lines for a pipe or a log: when a large file is hashed (and how long it took), when an
 * upload starts, its progress at most every `intervalMs`, and when it is added (size, total
 * time, average rate).
 *
 * @param write Where the text goes.
 * @param options Interval and clock.
 * @returns The renderer.
 */
export function plainRenderer(write: Write, options: RendererOptions = {}): ProgressRenderer {
  const intervalMs = options.intervalMs ?? 2000;
  const now = options.now ?? (() => performance.now());
  const timings = new Map<string, Timing & { lastLine?: number; hashLine?: boolean }>();
  let current: ArtifactProgress | undefined;
  let stopped = false;
  return {
    update(p) {
      if (stopped) return;
      const at = now();
      let t = timings.get(p.name);
      if (!t) timings.set(p.name, t = {});
      current = p;
      if (p.phase === "hash") {
        if (t.hashStart === undefined) {
          t.hashStart = at;
          if (p.totalBytes >= HASH_NOTICE_BYTES) {
            t.hashLine = true;
            write(`hashing ${p.name} (${formatBytes(p.totalBytes)})\n`);
          }
          return;
        }
        if (p.bytesSent >= p.totalBytes) {
          t.hashMs = at - t.hashStart;
          if (t.hashLine) {
            write(
              `hashed ${p.name}: ${formatBytes(p.totalBytes)} in ${
                formatSeconds(t.hashMs / 1000)
              } (${rateOf(p.totalBytes, t.hashMs)})\n`,
            );
          }
        }
        return;
      }
      if (p.phase === "upload") {
        if (t.uploadStart === undefined) {
          t.uploadStart = at;
          t.lastLine = at;
          write(`uploading ${p.name} (${formatBytes(p.totalBytes)})\n`);
        } else if (at - t.lastLine! >= intervalMs && p.bytesSent < p.totalBytes) {
          t.lastLine = at;
          const pct = Math.floor((p.bytesSent / p.totalBytes) * 100);
          write(
            `uploading ${p.name}: ${pct}% (${formatBytes(p.bytesSent)} of ${
              formatBytes(p.totalBytes)
            }, ${formatBytes(Math.round(p.bytesPerSecond))}/s)\n`,
          );
        }
        return;
      }
      if (p.phase === "attached") {
        write(`attached ${p.name}: already on the server, ${formatBytes(p.totalBytes)} not sent\n`);
        return;
      }
      const ms = at - (t.uploadStart ?? at);
      write(
        `uploaded ${p.name}: ${formatBytes(p.totalBytes)} in ${formatSeconds(ms / 1000)} (${
          rateOf(p.totalBytes, ms)
        })\n`,
      );
      current = undefined;
    },
    finish() {},
    note(line) {
      write(`${line}\n`);
    },
    interrupt() {
      if (stopped) return;
      stopped = true;
      const p = current;
      if (p === undefined || p.phase === "attached") {
        write("interrupted\n");
        return;
      }
      const pct = p.totalBytes === 0 ? 100 : Math.floor((p.bytesSent / p.totalBytes) * 100);
      write(
        p.phase === "hash"
          ? `interrupted ${p.name} while hashing, at ${pct}%\n`
          : `interrupted ${p.name} at ${pct}% (${formatBytes(p.bytesSent)} of ${
            formatBytes(p.totalBytes)
          } sent)\n`,
      );
    },
  };
}

/** Renders nothing (`--quiet`). */
export function quietRenderer(): ProgressRenderer {
  return { update() {}, finish() {}, note() {}, interrupt() {} };
}
