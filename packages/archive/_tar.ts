// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A small streaming tar parser (ustar, GNU, PAX, v7). It knows the format, not the policy:
 * it hands every member to a {@linkcode TarSink}, which decides. It is strict where parsers
 * have disagreed and been exploited (CVE-2025-62518, CVE-2026-53655): checksums are verified,
 * sizes must be well-formed, PAX `x` records apply only to the next real member (never to GNU
 * `L`/`K` meta members), repeated `L`/`K` before one member are refused, and PAX `size`
 * overrides the header's size for that member only.
 */
import { UnpackError } from "./error.ts";

/** Member kinds the parser reports. */
export type TarKind = "file" | "dir" | "symlink" | "hardlink" | "special" | "other";

/** One member as the parser saw it. */
export interface TarMember {
  name: string;
  linkname: string;
  kind: TarKind;
  /** Raw typeflag character, for messages. */
  typeflag: string;
  size: number;
  mode: number;
  /** Seconds since the epoch. */
  mtime: number;
  format: "ustar" | "gnu" | "pax" | "v7";
}

/** Receives the members of a tar stream, synchronously. */
export interface TarSink {
  /**
   * A member starts. `whole` is its complete content when it is contiguous in the current
   * chunk (then no `data`/`end` calls follow).
   */
  entry(m: TarMember, whole: Uint8Array | undefined): void;
  /** Next bytes of the current member's content. */
  data(chunk: Uint8Array): void;
  /** The current member's content is complete. */
  end(): void;
}

const BLOCK = 512;
const MAX_META = 1 << 20;
const utf8 = new TextDecoder("utf-8", { fatal: true });

function corrupt(msg: string, entry?: string): UnpackError {
  return new UnpackError(
    "CORRUPT",
    `Cannot read tar archive: ${msg}`,
    entry === undefined ? {} : { entry },
  );
}

function decodeName(b: Uint8Array, what: string): string {
  let end = b.indexOf(0);
  if (end < 0) end = b.length;
  const s = b.subarray(0, end);
  let ascii = true;
  for (let i = 0; i < s.length; i++) {
    if (s[i]! > 0x7f) {
      ascii = false;
      break;
    }
  }
  if (ascii) return String.fromCharCode.apply(null, s as unknown as number[]);
  try {
    return utf8.decode(s);
  } catch (cause) {
    throw new UnpackError("BAD_NAME", `Cannot read tar archive: ${what} is not UTF-8`, { cause });
  }
}

/** Parses an octal or GNU base-256 numeric field; throws on anything else. */
export function parseNumeric(b: Uint8Array, what: string): number {
  if (b.length && (b[0]! & 0x80)) {
    if (b[0] === 0xff) throw corrupt(`negative ${what} field`);
    let v = b[0]! & 0x7f;
    for (let i = 1; i < b.length; i++) {
      v = v * 256 + b[i]!;
      if (v > Number.MAX_SAFE_INTEGER) throw corrupt(`${what} field too large`);
    }
    return v;
  }
  let i = 0;
  while (i < b.length && b[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  for (; i < b.length; i++) {
    const c = b[i]!;
    if (c === 0 || c === 0x20) break;
    if (c < 0x30 || c > 0x37) throw corrupt(`bad octal digit in ${what} field`);
    v = v * 8 + (c - 0x30);
    digits++;
  }
  for (; i < b.length; i++) {
    if (b[i] !== 0 && b[i] !== 0x20) throw corrupt(`garbage after ${what} field`);
  }
  if (digits === 0) return 0;
  return v;
}

/** Whether a 512-byte block has a valid tar header checksum (unsigned or signed sum). */
export function checksumOk(h: Uint8Array): boolean {
  let stored: number;
  try {
    stored = parseNumeric(h.subarray(148, 156), "checksum");
  } catch {
    return false;
  }
  let u = 0;
  let s = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : h[i]!;
    u += c;
    s += c > 127 ? c - 256 : c;
  }
  return stored === u || stored === s;
}

/** Header format of a block, `undefined` when it is not a tar header. */
export function headerFormat(h: Uint8Array): TarMember["format"] | undefined {
  if (h.length < BLOCK || !checksumOk(h)) return undefined;
  if (h[257] === 0x75 && h[258] === 0x73 && h[259] === 0x74 && h[260] === 0x61 && h[261] === 0x72) {
    if (h[262] === 0) return "ustar";
    if (h[262] === 0x20 && h[263] === 0x20 && h[264] === 0) return "gnu";
    return undefined;
  }
  // v7 has no magic: the checksum is all there is; demand a plausible name too.
  return h[0] === 0 ? undefined : "v7";
}

function isZero(h: Uint8Array): boolean {
  for (let i = 0; i < BLOCK; i++) if (h[i] !== 0) return false;
  return true;
}

interface Pax {
  path?: string;
  linkpath?: string;
  size?: number;
  mtime?: number;
  sparse?: boolean;
}

function parsePax(b: Uint8Array, global: boolean): Pax {
  const out: Pax = {};
  let pos = 0;
  while (pos < b.length) {
    if (b[pos] === 0) break; // some writers pad with NULs
    const sp = b.indexOf(0x20, pos);
    if (sp < 0 || sp - pos > 12) throw corrupt("bad PAX record length");
    let len = 0;
    for (let i = pos; i < sp; i++) {
      const c = b[i]!;
      if (c < 0x30 || c > 0x39) throw corrupt("bad PAX record length");
      len = len * 10 + (c - 0x30);
    }
    if (len <= sp - pos + 1 || pos + len > b.length || b[pos + len - 1] !== 0x0a) {
      throw corrupt("bad PAX record");
    }
    const rec = b.subarray(sp + 1, pos + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw corrupt("PAX record without key");
    let key: string;
    let value: string;
    try {
      key = utf8.decode(rec.subarray(0, eq));
      value = utf8.decode(rec.subarray(eq + 1));
    } catch (cause) {
      throw new UnpackError("BAD_NAME", "Cannot read tar archive: PAX record is not UTF-8", {
        cause,
      });
    }
    pos += len;
    if (key.startsWith("GNU.sparse.")) out.sparse = true;
    if (value === "") continue;
    switch (key) {
      case "path":
        out.path = value;
        break;
      case "linkpath":
        out.linkpath = value;
        break;
      case "size":
        if (!/^[0-9]{1,16}$/.test(value) || Number(value) > Number.MAX_SAFE_INTEGER) {
          throw corrupt(`bad PAX size ${JSON.stringify(value)}`);
        }
        out.size = Number(value);
        break;
      case "mtime": {
        const t = Number(value);
        if (Number.isFinite(t)) out.mtime = t;
        break;
      }
    }
  }
  if (global && (out.path !== undefined || out.linkpath !== undefined || out.size !== undefined)) {
    throw new UnpackError(
      "UNSUPPORTED",
      "Cannot read tar archive: PAX global header sets path, linkpath or size",
    );
  }
  return out;
}

const enum State {
  Header,
  Data,
  Meta,
  Padding,
  Done,
}

/**
 * Push parser: call {@linkcode TarParser.push} with consecutive chunks, then
 * {@linkcode TarParser.finish}. Memory is bounded by 512 bytes plus meta records (≤1 MiB).
 */
export class TarParser {
  #sink: TarSink;
  #state: State = State.Header;
  #hdr = new Uint8Array(BLOCK);
  #hdrFill = 0;
  #remaining = 0; // content bytes left in Data / Meta
  #pad = 0; // padding bytes left
  #meta: Uint8Array | undefined;
  #metaFill = 0;
  #metaType = "";
  #pax: Pax | undefined;
  #longName: string | undefined;
  #longLink: string | undefined;
  #sawZero = false;
  #current = "";
  /** Number of members handed to the sink. */
  members = 0;
  /** Format of the first header. */
  firstFormat: TarMember["format"] | undefined;

  constructor(sink: TarSink) {
    this.#sink = sink;
  }

  /** Whether the end-of-archive marker has been seen. */
  get done(): boolean {
    return this.#state === State.Done;
  }

  push(chunk: Uint8Array): void {
    let p = 0;
    const n = chunk.length;
    while (p < n) {
      switch (this.#state) {
        case State.Done:
          return; // trailing bytes after the end marker are ignored, as tar does
        case State.Padding: {
          const k = Math.min(this.#pad, n - p);
          this.#pad -= k;
          p += k;
          if (this.#pad === 0) this.#state = State.Header;
          break;
        }
        case State.Data: {
          const k = Math.min(this.#remaining, n - p);
          this.#sink.data(chunk.subarray(p, p + k));
          this.#remaining -= k;
          p += k;
          if (this.#remaining === 0) {
            this.#sink.end();
            this.#afterContent();
          }
          break;
        }
        case State.Meta: {
          const k = Math.min(this.#remaining, n - p);
          this.#meta!.set(chunk.subarray(p, p + k), this.#metaFill);
          this.#metaFill += k;
          this.#remaining -= k;
          p += k;
          if (this.#remaining === 0) {
            this.#finishMeta();
            this.#afterContent();
          }
          break;
        }
        case State.Header: {
          let h: Uint8Array;
          if (this.#hdrFill === 0 && n - p >= BLOCK) {
            h = chunk.subarray(p, p + BLOCK);
            p += BLOCK;
          } else {
            const k = Math.min(BLOCK - this.#hdrFill, n - p);
            this.#hdr.set(chunk.subarray(p, p + k), this.#hdrFill);
            this.#hdrFill += k;
            p += k;
            if (this.#hdrFill < BLOCK) break;
            this.#hdrFill = 0;
            h = this.#hdr;
          }
          const rest = chunk.subarray(p);
          const used = this.#header(h, rest);
          p += used;
          break;
        }
      }
    }
  }

  /** Call at end of input; throws `CORRUPT` when the stream stopped inside a member. */
  finish(): void {
    if (this.#state === State.Done) return;
    if (
      this.#state === State.Header && this.#hdrFill === 0 && !this.#pax && !this.#longName &&
      !this.#longLink
    ) {
      if (this.members === 0 && !this.#sawZero) throw corrupt("empty input");
      return; // missing end marker: accepted, as GNU tar and Python do
    }
    throw corrupt("archive is truncated", this.#current || undefined);
  }

  #afterContent(): void {
    this.#state = this.#pad > 0 ? State.Padding : State.Header;
  }

  #header(h: Uint8Array, rest: Uint8Array): number {
    if (isZero(h)) {
      if (this.#pax || this.#longName || this.#longLink) throw corrupt("meta header before end");
      if (this.#sawZero) {
        this.#state = State.Done;
      } else {
        this.#sawZero = true;
      }
      return 0;
    }
    if (this.#sawZero) {
      // A lone zero block followed by more headers: GNU tar goes on, so do we.
      this.#sawZero = false;
    }
    const format = headerFormat(h);
    if (format === undefined) {
      throw corrupt("bad header checksum or magic", this.#current || undefined);
    }
    this.firstFormat ??= format;
    const tf = h[156]!;
    const typeflag = tf === 0 ? "0" : String.fromCharCode(tf);
    let size = parseNumeric(h.subarray(124, 136), "size");
    if (typeflag === "x" || typeflag === "g" || typeflag === "L" || typeflag === "K") {
      if (size > MAX_META) throw corrupt(`meta member of ${size} bytes`);
      if (
        (typeflag === "L" && this.#longName !== undefined) ||
        (typeflag === "K" && this.#longLink !== undefined)
      ) {
        throw corrupt(`repeated GNU ${typeflag} header`);
      }
      this.#metaType = typeflag;
      this.#meta = new Uint8Array(size);
      this.#metaFill = 0;
      this.#remaining = size;
      this.#pad = (BLOCK - (size % BLOCK)) % BLOCK;
      if (size === 0) {
        this.#finishMeta();
        this.#afterContent();
      } else this.#state = State.Meta;
      return 0;
    }
    const pax = this.#pax;
    this.#pax = undefined;
    let name: string;
    if (pax?.path !== undefined) name = pax.path;
    else if (this.#longName !== undefined) name = this.#longName;
    else {
      name = decodeName(h.subarray(0, 100), "name");
      if (format === "ustar" && h[345] !== 0) {
        name = decodeName(h.subarray(345, 500), "prefix") + "/" + name;
      }
    }
    let linkname: string;
    if (pax?.linkpath !== undefined) linkname = pax.linkpath;
    else if (this.#longLink !== undefined) linkname = this.#longLink;
    else linkname = decodeName(h.subarray(157, 257), "linkname");
    this.#longName = undefined;
    this.#longLink = undefined;
    if (pax?.size !== undefined) size = pax.size;
    this.#current = name;
    let kind: TarKind;
    switch (typeflag) {
      case "0":
      case "7":
        kind = name.endsWith("/") && format === "v7" ? "dir" : "file";
        break;
      case "1":
        kind = "hardlink";
        break;
      case "2":
        kind = "symlink";
        break;
      case "5":
        kind = "dir";
        break;
      case "3":
      case "4":
      case "6":
        kind = "special";
        break;
      default:
        kind = "other";
    }
    if (pax?.sparse) kind = "other";
    // Links and directories carry no content, whatever their size field says; tar skips it.
    // As Python's tarfile: only regular files and unknown types have content to skip.
    const contentSize = kind === "file" || kind === "other" ? size : 0;
    const member: TarMember = {
      name,
      linkname,
      kind,
      typeflag,
      size: contentSize,
      mode: parseNumeric(h.subarray(100, 108), "mode") & 0o7777,
      mtime: pax?.mtime ?? parseNumeric(h.subarray(136, 148), "mtime"),
      format: pax ? "pax" : format,
    };
    this.members++;
    this.#pad = (BLOCK - (contentSize % BLOCK)) % BLOCK;
    if (contentSize <= rest.length) {
      this.#sink.entry(member, rest.subarray(0, contentSize));
      this.#state = this.#pad > 0 ? State.Padding : State.Header;
      return contentSize;
    }
    this.#sink.entry(member, undefined);
    this.#remaining = contentSize;
    this.#state = State.Data;
    return 0;
  }

  #finishMeta(): void {
    const b = this.#meta!;
    this.#meta = undefined;
    switch (this.#metaType) {
      case "x": {
        const p = parsePax(b, false);
        this.#pax = this.#pax ? { ...this.#pax, ...p } : p;
        break;
      }
      case "g":
        parsePax(b, true);
        break;
      case "L":
        this.#longName = decodeName(b, "GNU long name");
        break;
      case "K":
        this.#longLink = decodeName(b, "GNU long link name");
        break;
    }
  }
}
