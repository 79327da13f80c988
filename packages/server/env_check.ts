// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Environment checks when an archive or PEX is added (issue 18): what the unpacked tree's
 * headers say (`@valise/archive` `inspectEnvironment`) against the server that will run it —
 * its machine, the interpreters it has and allows (the launcher's rules, never a path a
 * session's file chose), their versions. A certain mismatch fails the add with an
 * `ENVIRONMENT_*` class unless the session set `spark.valise.env.checks=warn`; anything
 * uncertain is a warning recorded with the artifact and logged.
 *
 * @module
 */
import { basename, isAbsolute, normalize } from "node:path";
import {
  ELF_MACHINES,
  type EnvFacts,
  inspectEnvironment,
  type PexFacts,
  readPexInfoFromZip,
} from "@valise/archive";
import {
  ENV_CHECKS_KEY,
  type EnvironmentCheck,
  SessionError,
  type SessionErrorClass,
} from "@valise/session-store";

/** What the checks need to know of the server's interpreters (a `Launcher` has it). */
export interface InterpreterFacts {
  /** The default interpreter's real path and version. */
  defaultInterpreterInfo(): Promise<{ path: string; version: string }>;
  /** The `--allow-interpreter` list. */
  readonly allowedInterpreters: readonly string[];
  /** Directories an interpreter link may lead into (system dirs, trusted homes). */
  interpreterHomes(): Promise<string[]>;
}

/** How {@linkcode environmentChecker} is set up. */
export interface EnvCheckerInit {
  /** The server's interpreters. */
  interpreters: InterpreterFacts;
  /** Where warnings are logged. */
  log: (line: string) => void;
  /**
   * The inspection's time budget per add.
   * @default {10000}
   */
  timeoutMs?: number;
  /**
   * The inspection's entry budget per add.
   * @default {1000000}
   */
  maxEntries?: number;
}

/** The classes a mismatch fails with, most fundamental first. */
type EnvCode = Extract<SessionErrorClass, `ENVIRONMENT_${string}`>;
const ORDER: EnvCode[] = [
  "ENVIRONMENT_PLATFORM_MISMATCH",
  "ENVIRONMENT_INTERPRETER_MISSING",
  "ENVIRONMENT_PYTHON_MISMATCH",
];

/** One thing wrong with an environment. */
interface Problem {
  code: EnvCode;
  /** Whether it will fail for sure (else a warning). */
  certain: boolean;
  /** What is wrong, naming the file. */
  text: string;
}

/** The server's platform: ELF machine and class, and its name for messages. */
export function serverPlatform(): { machine: number; bits: 64; name: string } {
  const arch = Deno.build.arch;
  return { machine: arch === "aarch64" ? 183 : 62, bits: 64, name: `linux-${arch}` };
}

/** `X.Y` of a version string, if it starts with one. */
function minor(v: string | undefined): string | undefined {
  const m = v === undefined ? null : /^\s*(\d{1,3})\.(\d{1,3})/.exec(v);
  return m ? `${Number(m[1])}.${Number(m[2])}` : undefined;
}

/**
 * Whether `version` (`X.Y.Z`) meets one PEX interpreter constraint (`CPython==3.12.*`,
 * `>=3.8,<3.13`).
 *
 * @returns `undefined` when the constraint cannot be read.
 */
export function meetsConstraint(version: string, constraint: string): boolean | undefined {
  const spec = constraint.trim().replace(/^[A-Za-z]+(?=[<>=!~])/, "");
  const impl = /^([A-Za-z]+)/.exec(constraint.trim())?.[1];
  if (impl !== undefined && !/^(cpython|python)$/i.test(impl)) return false;
  const have = version.split(".").map((x) => Number(x));
  if (have.some((n) => !Number.isInteger(n))) return undefined;
  for (const part of spec.split(",").map((p) => p.trim()).filter(Boolean)) {
    const m = /^(===|==|!=|>=|<=|~=|>|<)\s*([0-9]+(?:\.[0-9]+)*)(\.\*)?$/.exec(part);
    if (!m) return undefined;
    const [, op, v, star] = m;
    const want = v!.split(".").map(Number);
    const cmp = (n: number): number => {
      for (let i = 0; i < n; i++) {
        const d = (have[i] ?? 0) - (want[i] ?? 0);
        if (d !== 0) return Math.sign(d);
      }
      return 0;
    };
    const full = Math.max(want.length, 3);
    let ok: boolean;
    switch (op) {
      case "==":
      case "===":
        ok = cmp(star ? want.length : full) === 0;
        break;
      case "!=":
        ok = cmp(star ? want.length : full) !== 0;
        break;
      case ">=":
        ok = cmp(full) >= 0;
        break;
      case "<=":
        ok = cmp(full) <= 0;
        break;
      case ">":
        ok = cmp(full) > 0;
        break;
      case "<":
        ok = cmp(full) < 0;
        break;
      default: // ~=X.Y: >= X.Y and == X.*
        ok = cmp(full) >= 0 && cmp(Math.max(1, want.length - 1)) === 0;
    }
    if (!ok) return false;
  }
  return true;
}

/**
 * The checker to pass as the store's `checkEnvironment`.
 *
 * @param init The server's interpreters, the log and the budgets.
 * @returns The check.
 */
export function environmentChecker(
  init: EnvCheckerInit,
): (check: EnvironmentCheck) => Promise<string[]> {
  const platform = serverPlatform();
  const versions = new Map<string, Promise<string | undefined>>();
  /** The version of an operator's interpreter, asked once (its path is the operator's). */
  const versionOf = (path: string): Promise<string | undefined> => {
    let v = versions.get(path);
    if (!v) {
      v = new Deno.Command(path, {
        args: ["-c", "import platform; print(platform.python_version())"],
        stdin: "null",
        stdout: "piped",
        stderr: "null",
        env: {},
        clearEnv: true,
      }).output().then((o) => o.success ? new TextDecoder().decode(o.stdout).trim() : undefined)
        .catch(() => undefined);
      versions.set(path, v);
    }
    return v;
  };
  /** The version an interpreter of the host (by real path) reports, if the server knows it. */
  const hostVersion = async (real: string): Promise<string | undefined> => {
    const def = await init.interpreters.defaultInterpreterInfo().catch(() => undefined);
    if (def && real === def.path) return def.version;
    for (const a of init.interpreters.allowedInterpreters) {
      if (/\.pex$/i.test(a)) continue;
      const ar = await Deno.realPath(a).catch(() => a);
      if (ar === real) return await versionOf(a);
    }
    // An interpreter the server never ran: Python's own file naming says its version.
    return /python(\d+\.\d+)$/.exec(real)?.[1];
  };
  const choices = async (): Promise<string> => {
    const def = await init.interpreters.defaultInterpreterInfo().catch(() => undefined);
    const all = [
      ...(def ? [`${def.path} (${def.version})`] : []),
      ...init.interpreters.allowedInterpreters.filter((a) => !/\.pex$/i.test(a)),
    ];
    return all.length ? all.join(", ") : "none";
  };

  // Trees and blobs are content-addressed and read-only: what their headers say is read once
  // (a second session adding a shared 1 GB environment pays nothing), for the last 256 of them.
  const memo = new Map<string, Promise<unknown>>();
  function cached<T>(key: string, read: () => Promise<T>): Promise<T> {
    let p = memo.get(key) as Promise<T> | undefined;
    if (p) {
      memo.delete(key);
      memo.set(key, p);
      return p;
    }
    p = read();
    memo.set(key, p);
    p.catch(() => memo.delete(key));
    while (memo.size > 256) memo.delete(memo.keys().next().value!);
    return p;
  }
  const factsOf = (tree: string): Promise<EnvFacts> =>
    cached(`t:${tree}`, async () => {
      const facts = await inspectEnvironment(tree, {
        timeoutMs: init.timeoutMs ?? 10_000,
        maxEntries: init.maxEntries ?? 1_000_000,
        // The server's own binaries are the rule; only the others are worth keeping.
        keep: (b) =>
          !(b.format === "elf" && !b.truncated && b.machine === platform.machine &&
            b.bits === platform.bits),
      });
      // Stopped at its budget: not kept, so that the next add tries again.
      if (facts.incomplete) memo.delete(`t:${tree}`);
      return facts;
    });

  return async (check) => {
    const problems: Problem[] = [];
    let fixes: string[] = [];
    if (check.tree !== undefined) {
      const facts = await factsOf(check.tree);
      fixes = await judgeTree(facts, problems);
      if (facts.pexInfoError !== undefined) {
        problems.push({
          code: "ENVIRONMENT_PYTHON_MISMATCH",
          certain: false,
          text: `its PEX-INFO ${facts.pexInfoError}: its interpreter constraints were not checked`,
        });
      }
      if (facts.pex) {
        const pexFixes = await judgePex(facts.pex, problems);
        fixes = fixes.map((f, i) => pexFixes[i] || f);
      }
    } else if (check.pexFile !== undefined) {
      const pex = await readPexInfoFromZip(check.pexFile).catch(() => ({
        error: "cannot be read",
      }));
      if (pex && "error" in pex) {
        problems.push({
          code: "ENVIRONMENT_PYTHON_MISMATCH",
          certain: false,
          text: `its PEX-INFO ${pex.error}: its interpreter constraints were not checked`,
        });
      } else if (pex) fixes = await judgePex(pex, problems);
    }
    if (problems.length === 0) return [];
    const mode = check.session.config.value(ENV_CHECKS_KEY) ?? "fail";
    const certain = problems.filter((p) => p.certain);
    if (certain.length > 0 && mode !== "warn") {
      const code = ORDER.find((c) => certain.some((p) => p.code === c))!;
      const mine = certain.filter((p) => p.code === code);
      const shown = mine.slice(0, 3).map((p) => p.text).join("; ");
      const more = mine.length > 3 ? ` and ${mine.length - 3} more` : "";
      throw new SessionError(
        code,
        `Cannot add ${check.name}: it cannot run on this server (${platform.name}): ${shown}` +
          `${more}. ${fixes[ORDER.indexOf(code)] ?? ""}To add it anyway (at your own risk), ` +
          `set ${ENV_CHECKS_KEY}=warn.`,
        { reason: code.slice("ENVIRONMENT_".length), parameters: { artifact: check.name } },
      );
    }
    const warnings = problems.slice(0, 20).map((p) =>
      `${p.certain ? "" : "maybe: "}${p.text} (${p.code})`
    );
    for (const w of warnings) {
      init.log(`environment check: session ${check.session.sessionId} ${check.name}: ${w}`);
    }
    return warnings;
  };

  /** Adds the tree's problems; returns the fix per class (ORDER's order). */
  async function judgeTree(facts: EnvFacts, problems: Problem[]): Promise<string[]> {
    for (const b of facts.binaries) {
      const extension = /\.(so(\.[0-9]+)*|dylib|pyd|dll|bundle)$/i.test(b.path) ||
        /^(bin\/python|Scripts\/python)/i.test(b.path);
      if (b.format === "elf") {
        if (b.truncated) {
          problems.push({
            code: "ENVIRONMENT_PLATFORM_MISMATCH",
            certain: false,
            text: `${b.path} is a truncated ELF file`,
          });
          continue;
        }
        if (b.machine === platform.machine && b.bits === platform.bits) continue;
        const what = `ELF ${ELF_MACHINES[b.machine!] ?? `machine ${b.machine}`} (${b.bits}-bit)`;
        problems.push({
          code: "ENVIRONMENT_PLATFORM_MISMATCH",
          // Executables and shared objects cannot load; object files and others may be data.
          certain: b.elfType === 2 || b.elfType === 3,
          text: `${b.path} is ${what}`,
        });
      } else if (b.format === "mach-o") {
        problems.push({
          code: "ENVIRONMENT_PLATFORM_MISMATCH",
          certain: extension,
          text: `${b.path} is a Mach-O binary (packed on macOS)`,
        });
      } else if (extension && !b.path.endsWith(".exe")) {
        problems.push({
          code: "ENVIRONMENT_PLATFORM_MISMATCH",
          certain: !b.truncated,
          text: `${b.path} is a Windows (PE) binary`,
        });
      }
    }
    if (facts.keptCount > facts.binaries.length) {
      problems.push({
        code: "ENVIRONMENT_PLATFORM_MISMATCH",
        certain: false,
        text: `${facts.keptCount - facts.binaries.length} more binaries of another platform ` +
          `were not listed`,
      });
    }
    if (facts.windowsLayout) {
      problems.push({
        code: "ENVIRONMENT_PLATFORM_MISMATCH",
        certain: true,
        text: "it has a Windows layout (Scripts/, Lib/site-packages)",
      });
    }
    if (facts.incomplete) {
      problems.push({
        code: "ENVIRONMENT_PLATFORM_MISMATCH",
        certain: false,
        text: `the checks stopped at their ${
          facts.incomplete === "time" ? "time" : "entry"
        } budget: the rest of the environment was not checked`,
      });
    }
    const homes = await init.interpreters.interpreterHomes();
    const visible = (p: string) => homes.some((h) => p === h || p.startsWith(`${h}/`));
    const allowedText = await choices();
    let runsWith: { link: string; version: string | undefined } | undefined;
    let missing: string | undefined;
    for (const l of facts.interpreterLinks) {
      if (!isAbsolute(l.target)) continue;
      const real = await Deno.realPath(normalize(l.target)).catch(() => undefined);
      // Missing or outside what the sandbox shows: either way it will not start, and the
      // message does not tell a session which host paths exist.
      if (real === undefined || !visible(real)) {
        missing ??= l.target;
        problems.push({
          code: "ENVIRONMENT_INTERPRETER_MISSING",
          certain: true,
          text: `${l.path} links to ${l.target}, which is not an interpreter this server has ` +
            `and allows`,
        });
        continue;
      }
      runsWith ??= { link: l.path, version: await hostVersion(real) };
    }
    const home = facts.pyvenv?.home;
    if (home !== undefined && isAbsolute(home)) {
      const real = await Deno.realPath(normalize(home)).catch(() => undefined);
      if (real === undefined || !visible(real)) {
        missing ??= home;
        problems.push({
          code: "ENVIRONMENT_INTERPRETER_MISSING",
          certain: true,
          text: `pyvenv.cfg names home = ${home}, which is not an interpreter directory this ` +
            `server has and allows`,
        });
      }
    } else if (home !== undefined) {
      problems.push({
        code: "ENVIRONMENT_INTERPRETER_MISSING",
        certain: false,
        text: `pyvenv.cfg names a relative home (${home.slice(0, 200)})`,
      });
    }
    // The Python version the environment was built for, and the one it will run with.
    const venv = facts.pyvenv !== undefined ||
      facts.interpreterLinks.some((l) => isAbsolute(l.target));
    const own = facts.conda || facts.interpreterFiles.length > 0;
    const built = minor(facts.pyvenv?.version) ??
      (facts.libVersions.length === 1 ? facts.libVersions[0] : undefined);
    if (venv && runsWith?.version !== undefined) {
      const run = minor(runsWith.version)!;
      const claims = [
        ...(minor(facts.pyvenv?.version)
          ? [["pyvenv.cfg version", minor(facts.pyvenv?.version)!]]
          : []),
        ...facts.libVersions.map((v) => [`lib/python${v}`, v]),
      ].filter(([, v]) => v !== run);
      if (claims.length > 0) {
        problems.push({
          code: "ENVIRONMENT_PYTHON_MISMATCH",
          certain: true,
          text: `it was built for Python ${[...new Set(claims.map(([, v]) => v))].join("/")} (` +
            `${claims.map(([w]) => w).join(", ")}) but ${runsWith.link} runs Python ` +
            `${runsWith.version}`,
        });
      }
    } else if (!venv && !own && built !== undefined) {
      const def = await init.interpreters.defaultInterpreterInfo().catch(() => undefined);
      if (def && minor(def.version) !== built) {
        problems.push({
          code: "ENVIRONMENT_PYTHON_MISMATCH",
          certain: false,
          text: `it holds lib/python${built} but the server's default interpreter is Python ` +
            `${def.version}`,
        });
      }
    }
    const wanted = missing !== undefined ? basename(missing) : "the interpreter it was built on";
    return [
      `Pack it on ${platform.name} (build the environment on a machine like the server, or in a ` +
      `linux/${platform.name === "linux-aarch64" ? "arm64" : "amd64"} container). `,
      `Build the venv on an interpreter the server allows (${allowedText}), pack the ` +
      `interpreter inside it (conda-pack), or ask the operator to install ${wanted} and allow ` +
      `it with --allow-interpreter. `,
      `Build it with the Python the server runs it with (${
        runsWith?.version ?? allowedText
      }), or choose a matching interpreter with spark.sql.execution.pyspark.python. `,
    ];
  }

  /** Adds a PEX's problems (it runs with the default interpreter); returns the fixes. */
  async function judgePex(pex: PexFacts, problems: Problem[]): Promise<string[]> {
    const def = await init.interpreters.defaultInterpreterInfo().catch(() => undefined);
    if (def) {
      const results = pex.interpreterConstraints.map((c) => meetsConstraint(def.version, c));
      if (results.length > 0 && !results.some((r) => r === true)) {
        problems.push({
          code: "ENVIRONMENT_PYTHON_MISMATCH",
          certain: results.every((r) => r === false),
          text: `its PEX-INFO interpreter_constraints (${
            pex.interpreterConstraints.slice(0, 3).join(" or ")
          }) do not admit the server's Python ${def.version} (${def.path}), which runs PEX files`,
        });
      }
      const cp = `cp${minor(def.version)?.replace(".", "")}`;
      for (const d of pex.distributions.slice(0, 1000)) {
        const tags = /-([^-]+)-([^-]+)-([^-]+)\.whl$/.exec(d);
        if (!tags) continue;
        const [, py, , plat] = tags;
        if (/macosx|win32|win_/.test(plat!)) {
          problems.push({
            code: "ENVIRONMENT_PLATFORM_MISMATCH",
            certain: true,
            text: `it carries ${d}, a wheel for ${plat}`,
          });
        } else if (
          /linux/.test(plat!) && !plat!.split(".").some((p) => p.endsWith(Deno.build.arch))
        ) {
          problems.push({
            code: "ENVIRONMENT_PLATFORM_MISMATCH",
            certain: true,
            text: `it carries ${d}, a wheel for ${plat}`,
          });
        } else if (/^cp\d+$/.test(py!) && py !== cp && !/abi3/.test(d)) {
          problems.push({
            code: "ENVIRONMENT_PYTHON_MISMATCH",
            certain: true,
            text: `it carries ${d}, a wheel for ${py} (the server runs ${cp})`,
          });
        }
      }
    }
    return [
      `Build the PEX on ${platform.name} (pex --platform ${platform.name.replace("-", "_")}-cp-${
        minor(def?.version)?.replace(".", "") ?? "311"
      }-cp${minor(def?.version)?.replace(".", "") ?? "311"}). `,
      "",
      `Build it for the server's Python (pex --python ${def?.path ?? "python3"}, or an ` +
      `--interpreter-constraint that admits ${def?.version ?? "it"}). `,
    ];
  }
}
