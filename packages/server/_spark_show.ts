// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `df.show()` as Spark prints it (`Dataset.showString`): cells as Spark casts values to pretty
 * strings (`NULL`, Java's float formatting, `[1, 2]`, `{a -> 1}`, `{1, x}`, hex binary), cut
 * to `truncate` characters, padded into a table (or the vertical form), with the "only showing
 * top N rows" footer.
 *
 * @module
 */
import { type DataType as ArrowType, type Table, Type } from "apache-arrow";

/** Java's `Double.toString`: the shortest digits, scientific outside [1e-3, 1e7). */
export function javaDouble(x: number): string {
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "Infinity" : "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const a = Math.abs(x);
  if (a >= 1e-3 && a < 1e7) {
    const s = String(x);
    return s.includes(".") || s.includes("e") ? s : `${s}.0`;
  }
  const [m, e] = x.toExponential().split("e") as [string, string];
  return `${m.includes(".") ? m : `${m}.0`}E${Number(e)}`;
}

/** Java's `Float.toString` of a float32 value. */
export function javaFloat(x: number): string {
  if (!Number.isFinite(x) || x === 0) return javaDouble(x);
  for (let p = 1; p <= 9; p++) {
    const y = Number(x.toPrecision(p));
    if (Math.fround(y) === x) return javaDouble(y);
  }
  return javaDouble(x);
}

function pad2(n: number, w = 2): string {
  return String(n).padStart(w, "0");
}

function dateString(days: number): string {
  const d = new Date(days * 86_400_000);
  return `${pad2(d.getUTCFullYear(), 4)}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())}`;
}

function timestampString(micros: bigint, timeZone: string | undefined): string {
  const ms = Number(micros / 1000n);
  const frac = Number(((micros % 1_000_000n) + 1_000_000n) % 1_000_000n);
  let y: string, mo: string, d: string, h: string, mi: string, s: string;
  if (timeZone) {
    const parts = new Intl.DateTimeFormat("en-CA", {
      timeZone,
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      hourCycle: "h23",
    }).formatToParts(new Date(ms));
    const get = (t: string) => parts.find((p) => p.type === t)?.value ?? "00";
    [y, mo, d, h, mi, s] = [
      get("year"),
      get("month"),
      get("day"),
      get("hour"),
      get("minute"),
      get("second"),
    ];
  } else {
    const t = new Date(ms);
    [y, mo, d, h, mi, s] = [
      pad2(t.getUTCFullYear(), 4),
      pad2(t.getUTCMonth() + 1),
      pad2(t.getUTCDate()),
      pad2(t.getUTCHours()),
      pad2(t.getUTCMinutes()),
      pad2(t.getUTCSeconds()),
    ];
  }
  const fraction = frac ? `.${String(frac).padStart(6, "0").replace(/0+$/, "")}` : "";
  return `${y}-${mo}-${d} ${h}:${mi}:${s}${fraction}`;
}

function decimalString(v: unknown, scale: number): string {
  // apache-arrow gives a decimal's unscaled integer (as words); its string is that integer.
  let digits = String(v);
  if (/^-?\d+$/.test(digits) === false) return digits;
  const neg = digits.startsWith("-");
  if (neg) digits = digits.slice(1);
  if (scale > 0) {
    digits = digits.padStart(scale + 1, "0");
    digits = `${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
  }
  return neg ? `-${digits}` : digits;
}

/** A value as Spark's `ToPrettyString` casts it (nested values: `NULL` inside too). */
export function cellString(v: unknown, t: ArrowType, timeZone: string): string {
  if (v === null || v === undefined) return "NULL";
  switch (t.typeId) {
    case Type.Bool:
      return v ? "true" : "false";
    case Type.Int:
      return String(v);
    case Type.Float:
      return (t as unknown as { precision: number }).precision === 1
        ? javaFloat(v as number)
        : javaDouble(v as number);
    case Type.Utf8:
    case Type.LargeUtf8:
      return v as string;
    case Type.Binary:
    case Type.LargeBinary:
      return `[${
        [...(v as Uint8Array)].map((b) => b.toString(16).toUpperCase().padStart(2, "0")).join(" ")
      }]`;
    case Type.Date:
      return dateString(Math.floor((v as number) / 86_400_000));
    case Type.Timestamp: {
      const tz = (t as unknown as { timezone: string | null }).timezone;
      const ms = v as number;
      return timestampString(BigInt(Math.round(ms * 1000)), tz ? timeZone : undefined);
    }
    case Type.Decimal:
      return decimalString(v, (t as unknown as { scale: number }).scale);
    case Type.List: {
      const child = (t as unknown as { children: { type: ArrowType }[] }).children[0]!.type;
      return `[${
        [...(v as Iterable<unknown>)].map((x) => cellString(x, child, timeZone)).join(", ")
      }]`;
    }
    case Type.Struct: {
      const kids = (t as unknown as { children: { name: string; type: ArrowType }[] }).children;
      const row = v as Record<string, unknown>;
      return `{${kids.map((k) => cellString(row[k.name], k.type, timeZone)).join(", ")}}`;
    }
    case Type.Map: {
      const entries =
        (t as unknown as { children: { type: { children: { type: ArrowType }[] } }[] })
          .children[0]!.type.children;
      const items: string[] = [];
      for (const [k, x] of v as Iterable<[unknown, unknown]>) {
        items.push(
          `${cellString(k, entries[0]!.type, timeZone)} -> ${
            cellString(x, entries[1]!.type, timeZone)
          }`,
        );
      }
      return `{${items.join(", ")}}`;
    }
    default:
      return String(v);
  }
}

// deno-lint-ignore no-control-regex
const META = /[\n\r\t\f\b\u000b\u0007]/g;
const ESCAPES: Record<string, string> = {
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\f": "\\f",
  "\b": "\\b",
  "\u000b": "\\v",
  "\u0007": "\\a",
};

function cut(s: string, truncate: number): string {
  const chars = [...s];
  if (truncate > 0 && chars.length > truncate) {
    return truncate < 4
      ? chars.slice(0, truncate).join("")
      : `${chars.slice(0, truncate - 3).join("")}...`;
  }
  return s;
}

function width(s: string): number {
  return [...s].length;
}

/**
 * The text of `df.show(numRows, truncate, vertical)`.
 *
 * @param table The first rows (up to `numRows + 1`: one more says there are more).
 * @param opts What `show` was asked.
 * @param timeZone The session's time zone, for timestamps.
 * @returns What Spark's `showString` returns.
 */
export function showString(
  table: Table,
  opts: { numRows: number; truncate: number; vertical: boolean },
  timeZone: string,
): string {
  const fields = table.schema.fields;
  const cols = fields.map((_, i) => table.getChildAt(i)!);
  const total = table.numRows;
  const n = Math.min(total, opts.numRows);
  const header = fields.map((f) => cut(f.name, opts.truncate));
  const data: string[][] = [];
  for (let r = 0; r < n; r++) {
    data.push(fields.map((f, c) =>
      cut(
        cellString(cols[c]!.get(r), f.type, timeZone).replace(META, (m) => ESCAPES[m]!),
        opts.truncate,
      )
    ));
  }
  let sb = "";
  if (!opts.vertical) {
    const widths = fields.map(() => 3);
    for (const row of [header, ...data]) {
      row.forEach((cell, i) => widths[i] = Math.max(widths[i]!, width(cell)));
    }
    const padded = [header, ...data].map((row) =>
      row.map((cell, i) => {
        const fill = " ".repeat(widths[i]! - width(cell));
        return opts.truncate > 0 ? fill + cell : cell + fill;
      })
    );
    const sep = `+${widths.map((w) => "-".repeat(w)).join("+")}+\n`;
    sb += sep;
    sb += `|${padded[0]!.join("|")}|\n`;
    sb += sep;
    for (const row of padded.slice(1)) sb += `|${row.join("|")}|\n`;
    sb += sep;
  } else {
    const nameWidth = header.reduce((m, h) => Math.max(m, width(h)), 3);
    const dataWidth = data.flat().reduce((m, c) => Math.max(m, width(c)), 3);
    data.forEach((row, i) => {
      sb += `-RECORD ${i}`.padEnd(nameWidth + dataWidth + 5, "-") + "\n";
      sb += row.map((cell, j) =>
        ` ${header[j]!.padEnd(nameWidth - width(header[j]!) + header[j]!.length)} | ${
          cell.padEnd(dataWidth - width(cell) + cell.length)
        } `
      ).join("\n") + "\n";
    });
  }
  if (opts.vertical && data.length === 0) sb += "(0 rows)\n";
  else if (total > opts.numRows) {
    sb += `only showing top ${opts.numRows} ${opts.numRows === 1 ? "row" : "rows"}`;
  }
  return sb;
}
