// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Compares the conformance client's observations of Spark and of Valise, observable by
 * observable, against the registry of known differences (`differences.json`), and renders the
 * result as the table of `docs/compatibility.md`.
 *
 * Errors are compared in two parts: what PySpark sees (class, SQLSTATE, JVM class, the Python
 * exception, parameter names, the message's shape) and, as a row of its own, the gRPC code.
 *
 * @module
 */
import { isDeepStrictEqual } from "node:util";
import type { Observation } from "./_observe.ts";

/** How a listed difference stands. */
export type DifferenceStatus = "on purpose" | "being fixed";

/** One entry of `differences.json`: observables that differ for one reason. */
export interface Difference {
  /** Observable keys, or patterns with `*` (e.g. `*.grpc_code`); exact keys win over patterns. */
  observables: string[];
  /** Whether it is meant to stay. */
  status: DifferenceStatus;
  /** Why it differs (on purpose) or what is being done about it (being fixed). */
  reason: string;
}

/** `differences.json`: every known difference, grouped by reason. */
export type Registry = Difference[];

/** One row of the generated table. */
export interface Row {
  /** The observable's key. */
  key: string;
  /** What was done. */
  what: string;
  /** Spark's answer, rendered. */
  spark: string;
  /** Valise's answer, rendered. */
  valise: string;
  /** `same`, or the listed status of the difference. */
  verdict: "same" | DifferenceStatus;
  /** The registry's reason, for a difference. */
  reason?: string;
}

/** The outcome of {@linkcode compare}. */
export interface Comparison {
  /** Every observable, in the client's order. */
  rows: Row[];
  /** Unlisted differences, stale entries, observables seen on one side only. */
  problems: string[];
}

interface ErrorValue {
  grpcCode?: string | null;
  errorClass?: string | null;
  sqlState?: string | null;
  jvmClass?: string | null;
  pyspark?: string | null;
  params?: string[];
  message?: string;
}

function errorOf(v: unknown): ErrorValue | undefined {
  if (typeof v === "object" && v !== null && "error" in v) {
    return (v as { error: ErrorValue }).error;
  }
  return undefined;
}

function withoutCode(e: ErrorValue): ErrorValue {
  const { grpcCode: _, ...rest } = e;
  return rest;
}

function code(s: string): string {
  return "`" + s.replaceAll("`", "'") + "`";
}

/** A value as a table cell. */
function render(v: unknown, withGrpcCode: boolean): string {
  const e = errorOf(v);
  if (e) {
    const parts = [`error ${e.errorClass ? code(e.errorClass) : "without a class"}`];
    if (e.sqlState) parts.push(`SQLSTATE ${e.sqlState}`);
    if (e.pyspark) parts.push(`PySpark raises ${code(e.pyspark)}`);
    if (e.jvmClass) parts.push(`JVM class ${code(e.jvmClass)}`);
    if (e.params?.length) parts.push(`parameters ${e.params.map(code).join(", ")}`);
    if (e.message) parts.push(`message ${code(e.message)}`);
    if (withGrpcCode && e.grpcCode) parts.push(`gRPC ${e.grpcCode}`);
    return parts.join("; ");
  }
  return code(typeof v === "string" ? v : JSON.stringify(v));
}

function pattern(key: string): RegExp {
  return new RegExp(
    "^" + key.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*") + "$",
  );
}

/**
 * Compares both runs and checks every difference against the registry.
 *
 * @param spark The observations against Spark.
 * @param valise The observations against Valise.
 * @param registry The known differences.
 * @returns The table's rows and what is wrong.
 */
export function compare(
  spark: Observation[],
  valise: Observation[],
  registry: Registry,
): Comparison {
  const problems: string[] = [];
  const byKey = new Map(valise.map((o) => [o.key, o]));
  const exact = new Map<string, Difference>();
  const patterns: { key: string; re: RegExp; entry: Difference; used: boolean }[] = [];
  for (const d of registry) {
    const extra = Object.keys(d).filter((k) => !["observables", "status", "reason"].includes(k));
    if (extra.length) {
      problems.push(`differences.json: ${d.observables} has unknown fields ${extra.join(", ")}`);
    }
    if (!Array.isArray(d.observables) || d.observables.length === 0) {
      problems.push(`differences.json: an entry lists no observables (${d.reason})`);
      continue;
    }
    if (d.status !== "on purpose" && d.status !== "being fixed") {
      problems.push(`differences.json: ${d.observables} has the status "${d.status}"`);
    }
    if (!d.reason?.trim()) problems.push(`differences.json: ${d.observables} gives no reason`);
    for (const key of d.observables) {
      if (exact.has(key) || patterns.some((p) => p.key === key)) {
        problems.push(`differences.json lists ${key} twice`);
      }
      if (key.includes("*")) patterns.push({ key, re: pattern(key), entry: d, used: false });
      else exact.set(key, d);
    }
  }
  const usedExact = new Set<string>();
  const rows: Row[] = [];
  const listed = (key: string): Difference | undefined => {
    const e = exact.get(key);
    if (e) {
      usedExact.add(key);
      return e;
    }
    const p = patterns.find((p) => p.re.test(key));
    if (p) p.used = true;
    return p?.entry;
  };
  const row = (key: string, what: string, s: unknown, v: unknown, withCode: boolean) => {
    const sparkCell = render(s, withCode);
    if (isDeepStrictEqual(s, v)) {
      rows.push({ key, what, spark: sparkCell, valise: "(same)", verdict: "same" });
      return;
    }
    const valiseCell = render(v, withCode);
    const entry = listed(key);
    if (!entry) {
      problems.push(
        `${key} (${what}) differs and is not listed in tests/conformance/differences.json:\n` +
          `  Spark:  ${sparkCell}\n  Valise: ${valiseCell}\n` +
          `  Fix Valise, or list it with "on purpose" and the reason.`,
      );
    }
    rows.push({
      key,
      what,
      spark: sparkCell,
      valise: valiseCell,
      verdict: entry?.status ?? "being fixed",
      ...(entry ? { reason: entry.reason } : { reason: "(not listed yet)" }),
    });
  };
  for (const s of spark) {
    const v = byKey.get(s.key);
    byKey.delete(s.key);
    if (!v) {
      problems.push(`${s.key} was observed against Spark only`);
      continue;
    }
    const se = errorOf(s.value);
    const ve = errorOf(v.value);
    if (se && ve) {
      row(s.key, s.what, { error: withoutCode(se) }, { error: withoutCode(ve) }, false);
      row(`${s.key}.grpc_code`, `${s.what}: the gRPC code`, se.grpcCode, ve.grpcCode, false);
    } else row(s.key, s.what, s.value, v.value, true);
  }
  for (const key of byKey.keys()) problems.push(`${key} was observed against Valise only`);
  for (const key of exact.keys()) {
    if (!usedExact.has(key)) {
      problems.push(
        `differences.json lists ${key}, but it does not differ (or is no longer observed): ` +
          `remove the entry`,
      );
    }
  }
  for (const p of patterns) {
    if (!p.used) {
      problems.push(`differences.json lists ${p.key}, which matches no difference: remove it`);
    }
  }
  return { rows, problems };
}

/** The sections of the table, by the first part of an observable's key. */
const AREAS: [string, string][] = [
  ["session", "Sessions and their ids"],
  ["release", "Release"],
  ["clone", "CloneSession"],
  ["idle", "Idle sessions"],
  ["add", "AddArtifacts"],
  ["name", "Artifact names"],
  ["cache", "AddArtifacts"],
  ["archive", "AddArtifacts"],
  ["status", "ArtifactStatus"],
  ["conf", "Config"],
  ["pyspark", "The PySpark client"],
  ["query", "Queries"],
];

function escapeCell(s: string): string {
  return s.replaceAll("|", "\\|").replaceAll("\n", " ");
}

/**
 * Renders the rows as Markdown: one table per area, then the reasons of the differences.
 *
 * @param rows The rows of {@linkcode compare}.
 * @param sparkVersion The Spark version the run measured.
 * @returns Markdown (not yet formatted by `deno fmt`).
 */
export function renderTable(rows: Row[], sparkVersion: string): string {
  const reasons: string[] = [];
  const reasonId = (r: string) => {
    let i = reasons.indexOf(r);
    if (i < 0) i = reasons.push(r) - 1;
    return `D${i + 1}`;
  };
  const counts = { same: 0, "on purpose": 0, "being fixed": 0 };
  for (const r of rows) counts[r.verdict]++;
  const out: string[] = [
    `${rows.length} observables: ${counts.same} the same, ${counts["on purpose"]} different on ` +
    `purpose, ${counts["being fixed"]} different and being fixed.`,
    "",
  ];
  const areaOf = (key: string) => AREAS.find(([p]) => key.split(".")[0] === p)?.[1] ?? "Other";
  // In the order of AREAS, whatever order the client observed them in.
  const order = [...new Set([...AREAS.map(([, a]) => a), "Other"])];
  const areas = [...new Set(rows.map((r) => areaOf(r.key)))]
    .sort((a, b) => order.indexOf(a) - order.indexOf(b));
  for (const area of areas) {
    out.push(`### ${area}`, "");
    out.push(`| observable | Spark ${sparkVersion} | Valise | verdict |`, "|---|---|---|---|");
    for (const r of rows.filter((r) => areaOf(r.key) === area)) {
      const verdict = r.verdict === "same"
        ? "same"
        : `${r.verdict === "on purpose" ? "different on purpose" : "different, being fixed"} ` +
          `(${reasonId(r.reason ?? "")})`;
      out.push(
        `| ${escapeCell(r.what)} | ${escapeCell(r.spark)} | ${escapeCell(r.valise)} | ${verdict} |`,
      );
    }
    out.push("");
  }
  if (reasons.length) {
    out.push("### Why they differ", "");
    reasons.forEach((r, i) => out.push(`- **D${i + 1}** ${r}`));
    out.push("");
  }
  return out.join("\n");
}

/** Where the generated part of `docs/compatibility.md` begins and ends. */
export const BEGIN = "<!-- conformance table: generated by tools/compat_table.ts, do not edit -->";
/** The end marker. */
export const END = "<!-- end of the conformance table -->";

/**
 * Puts the generated section between the markers of a document.
 *
 * @param doc The document.
 * @param section The generated Markdown.
 * @returns The new document.
 */
export function replaceSection(doc: string, section: string): string {
  const a = doc.indexOf(BEGIN);
  const b = doc.indexOf(END);
  if (a < 0 || b < a) throw new Error(`docs/compatibility.md has no ${BEGIN} … ${END} markers`);
  return `${doc.slice(0, a + BEGIN.length)}\n\n${section.trim()}\n\n${doc.slice(b)}`;
}

/**
 * Formats Markdown as `deno fmt` does in this repository (so a generated section and the
 * committed, formatted document compare equal).
 *
 * @param text Markdown.
 * @returns The formatted text.
 */
export async function formatMarkdown(text: string): Promise<string> {
  const root = new URL("../../", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--ext=md", "-"],
    cwd: root,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const out = await child.output();
  if (!out.success) throw new Error(`deno fmt failed: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

/**
 * The Spark version the run measured (`spark.version` through PySpark).
 *
 * @param spark The observations against Spark.
 * @returns The version string.
 */
export function sparkVersionOf(spark: Observation[]): string {
  const v = spark.find((o) => o.key === "pyspark.version")?.value;
  return typeof v === "string" ? v : "(unknown)";
}
