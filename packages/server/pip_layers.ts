// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Session-scoped `pip install`: a session's requirement set (`spark.valise.pip.requirements`)
 * becomes a **layer**, a directory of installed packages (`--target` layout) in the store's
 * layers, bound read-only into the session's sandboxes and put on `sys.path` after its pyfiles.
 *
 * A layer's key is the sha256 of everything that decides its contents: the interpreter (where
 * the server found it, and what it reports of itself when run: version, platform, ABI), the
 * canonical requirement set, the sha256 of every wheel the session uploaded, the index settings
 * and the installer. It is built once per key (the store's per-key lock: concurrent asks wait
 * for one build), in a staging directory renamed into place, then read-only; every session with
 * the same key shares it. A failed build leaves nothing.
 *
 * The installer (`uv pip install --target`, else `python -m pip install --target`) runs in a
 * one-off sandbox of the launcher, as a worker uid lent for the build (never the server's, never
 * a session's), without network except a Unix socket of the server's proxy
 * (`pip_proxy.ts`), which connects to the build's index hosts only. Wheels only, unless the
 * server allows sdists (building one runs its code).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { statfsSync } from "node:fs";
import { basename, join, relative } from "node:path";
import { type Launcher, pythonStub, type SessionLimits } from "@valise/launcher";
import {
  formatRequirements,
  mergeRequirements,
  normalizeDistributionName,
  normalizeIndexUrl,
  parseRequirements,
  parseWheelFilename,
  type Requirement,
  RequirementError,
} from "@valise/protocol";
import {
  type LayerDistribution,
  PIP_EXTRA_INDEX_URLS_KEY,
  PIP_INDEX_URL_KEY,
  PIP_REQUIREMENTS_KEY,
  type PipLayerRecord,
  type Session,
  type SessionStore,
  splitIndexUrls,
  type TreeInfo,
} from "@valise/session-store";
import DRIVER_TEXT from "./pip_driver.py" with { type: "text" };
import { ServerError } from "./errors.ts";
import { hostPort, PipProxy } from "./pip_proxy.ts";
import { sessionSpec } from "./session_spec.ts";

/** The index sessions install from when the server names none. */
export const DEFAULT_INDEX_URL = "https://pypi.org/simple";

/** Where PyPI's simple index sends downloads. */
const PYPI_FILES_HOST = "files.pythonhosted.org:443";

/** Most characters of the installer's output an error message carries (its end). */
const ERROR_TAIL = 1500;

const DRIVER_STUB = pythonStub(DRIVER_TEXT, "@valise/server/pip_driver.py", {});

/** What the server asks an interpreter about itself (stdlib only, Python 3.8+). */
const PROBE = `
import json, os, platform, sys, sysconfig
print(json.dumps({
    "executable": os.path.realpath(sys.executable),
    "version": platform.python_version(),
    "implementation": sys.implementation.name,
    "cacheTag": str(sys.implementation.cache_tag),
    "platform": sysconfig.get_platform(),
    "soabi": str(sysconfig.get_config_var("SOABI") or ""),
    "abiflags": str(getattr(sys, "abiflags", "")),
    "machine": platform.machine(),
    "system": platform.system(),
    "libc": "-".join(platform.libc_ver()),
    "maxsize": str(sys.maxsize),
}))
`;

/** How a server installs packages for sessions (its `--pip-*` flags). */
export interface PipOptions {
  /**
   * The installer: a `uv` program (`uv pip install`), or a Python interpreter whose pip runs
   * (`python -m pip install`).
   * @default {`uv` on the server's PATH, else the default interpreter's pip}
   */
  installer?: string | undefined;
  /**
   * The package index sessions install from.
   * @default {"https://pypi.org/simple"}
   */
  indexUrl?: string | undefined;
  /**
   * More indexes every install uses.
   * @default {[]}
   */
  extraIndexUrls?: readonly string[] | undefined;
  /**
   * More indexes a session may choose instead (`indexUrl`, `extraIndexUrls` of an install, or
   * `spark.valise.pip.indexUrl`); a session can never name one that is not here or above.
   * @default {[]}
   */
  allowedIndexUrls?: readonly string[] | undefined;
  /**
   * More `host[:port]`s builds may reach, where an index serves its files from (PyPI's
   * `files.pythonhosted.org` is added for `pypi.org` by itself).
   * @default {[]}
   */
  allowHosts?: readonly string[] | undefined;
  /**
   * No index at all: installs use the session's uploaded wheels only.
   * @default {false}
   */
  offline?: boolean | undefined;
  /**
   * Wall time of one install, in ms.
   * @default {600_000}
   */
  timeoutMs?: number | undefined;
  /**
   * Let the installer build source distributions (which runs their code, in the sandbox).
   * @default {false} wheels only
   */
  allowSdist?: boolean | undefined;
  /**
   * Builds that run at once; more wait.
   * @default {2}
   */
  maxBuilds?: number | undefined;
}

/** What a session's pip layer holds, as installs and listings report it. */
export interface PipState {
  /** The requirement set, canonical lines. */
  readonly requirements: string[];
  /** The distributions the layer holds (the set and what it needed). */
  readonly distributions: readonly LayerDistribution[];
  /** The layer's key, or `""` when the set is empty (or not built yet, for a listing). */
  readonly layer: string;
  /** Bytes of the layer. */
  readonly bytes: number;
  /** Entries of the layer. */
  readonly entries: number;
  /** Whether the layer was there already (built for this or another session). */
  readonly reused: boolean;
  /** The index it installs from (`""` offline). */
  readonly indexUrl: string;
  /** The extra indexes. */
  readonly extraIndexUrls: readonly string[];
}

/** Counters, for `/metrics`. */
export interface PipStats {
  /** Builds started. */
  builds: number;
  /** Builds that failed. */
  failures: number;
  /** Installs (and runs) that found their layer built. */
  reuses: number;
  /** Seconds spent building. */
  buildSeconds: number;
  /** Requests the proxy refused. */
  proxyRefusals: number;
}

/** Where a session's interpreter is, as the server established it. */
interface Target {
  /** Identity of the place: `host:<realpath>:<ino>:<size>:<mtime>` or `tree:<key>/<path>`. */
  canonical: string;
  /** The interpreter the installer targets, by a path valid in the sandbox. */
  python: string;
  /** Trees to bind (the archive the interpreter lives in). */
  trees: string[];
  /** How a probe's sandbox names it: an absolute trusted path, or `env/<path>`. */
  probeInterpreter: string;
  /** The tree `env` links to in a probe's root. */
  probeLink: string | undefined;
  /** For messages: the interpreter as the session names it. */
  display: string;
}

/** The installer, found once. */
interface Installer {
  kind: "uv" | "pip";
  /** The program (uv), or the interpreter running pip. */
  path: string;
  /** Its version line. */
  version: string;
}

/** Everything a layer is built from, and its key. */
interface Plan {
  key: string;
  requirements: Requirement[];
  target: Target;
  wheels: { file: string; sha256: string; blob: string }[];
  index: { url: string; extras: string[] } | undefined;
  hosts: string[];
  installer: Installer;
}

/** A session's pip layers: built, shared, listed, dropped. */
export class PipLayers {
  #store: SessionStore;
  #launcher: Launcher;
  #limits: SessionLimits;
  #log: (line: string) => void;
  #minFreeBytes: number;
  #options: PipOptions;
  #indexUrl: string;
  #extraIndexUrls: string[];
  #allowedIndexes: Set<string>;
  #allowHosts: string[];
  #proxy: PipProxy;
  #installer: Promise<Installer> | undefined;
  #identities = new Map<string, Promise<Record<string, string>>>();
  #listeners = new Map<string, Set<(line: string) => void>>();
  #sessionLocks = new Map<string, Promise<unknown>>();
  #running = 0;
  #waiting: (() => void)[] = [];
  #stats: PipStats = { builds: 0, failures: 0, reuses: 0, buildSeconds: 0, proxyRefusals: 0 };

  /**
   * @param ctx The store whose layers these are, the launcher whose sandboxes build them, the
   *   server's worker limits, its log and disk floor.
   * @param options The server's pip settings.
   * @throws {TypeError} For an index URL or host that is not one.
   */
  constructor(
    ctx: {
      store: SessionStore;
      launcher: Launcher;
      limits: SessionLimits;
      log?: ((line: string) => void) | undefined;
      minFreeBytes?: number | undefined;
    },
    options: PipOptions = {},
  ) {
    this.#store = ctx.store;
    this.#launcher = ctx.launcher;
    this.#limits = ctx.limits;
    this.#log = ctx.log ?? (() => {});
    this.#minFreeBytes = ctx.minFreeBytes ?? 2 ** 30;
    this.#options = options;
    const norm = (u: string, what: string) => {
      try {
        return normalizeIndexUrl(u);
      } catch (e) {
        throw new TypeError(`Cannot use ${what} ${u}: ${(e as Error).message}`);
      }
    };
    this.#indexUrl = norm(options.indexUrl ?? DEFAULT_INDEX_URL, "--pip-index-url");
    this.#extraIndexUrls = (options.extraIndexUrls ?? []).map((u) =>
      norm(u, "--pip-extra-index-url")
    );
    this.#allowedIndexes = new Set([
      this.#indexUrl,
      ...this.#extraIndexUrls,
      ...(options.allowedIndexUrls ?? []).map((u) => norm(u, "--pip-allow-index")),
    ]);
    this.#allowHosts = (options.allowHosts ?? []).map((h) => {
      const m = /^([A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:.]+\])(?::(\d{1,5}))?$/.exec(h.trim());
      if (!m || Number(m[2] ?? 443) > 65535) {
        throw new TypeError(`Cannot allow host ${h}: it is not HOST or HOST:PORT`);
      }
      return `${m[1]!.toLowerCase()}:${Number(m[2] ?? 443)}`;
    });
    this.#proxy = new PipProxy({
      onRefuse: (target, why) => {
        this.#stats.proxyRefusals++;
        this.#log(`pip: proxy refused ${target}: ${why}`);
      },
    });
  }

  /** The counters. */
  get stats(): Readonly<PipStats> {
    return this.#stats;
  }

  /** One line for the server's start-up log. */
  async describe(): Promise<string> {
    const where = this.#options.offline
      ? "offline (uploaded wheels only)"
      : `from ${[this.#indexUrl, ...this.#extraIndexUrls].join(", ")}`;
    const what = this.#options.allowSdist ? "wheels and sdists" : "wheels only";
    try {
      const i = await this.#findInstaller();
      return `pip installs with ${i.version} (${i.path}), ${where}, ${what}`;
    } catch (e) {
      return `pip installs are unavailable: ${(e as Error).message}`;
    }
  }

  /**
   * The layer a run of the session uses, built first when the session's requirement set has
   * changed (or its interpreter, wheels or index); kept from eviction until `release`.
   *
   * @param session The session.
   * @returns The layers' paths and a function that lets them go.
   * @throws {ServerError} `PIP_INSTALL_FAILED`, `PIP_INVALID_REQUEST`.
   */
  async prepare(session: Session): Promise<{ layers: string[]; release: () => void }> {
    const requirements = this.#configured(session);
    if (requirements.length === 0) {
      if (session.pipLayer()) await session.setPipLayer(undefined);
      return { layers: [], release: () => {} };
    }
    const plan = await this.#plan(session, requirements, {});
    const unpin = await this.#store.pin(`l:${plan.key}`);
    try {
      const rec = session.pipLayer();
      if (
        rec?.key === plan.key && rec.requirements === formatRequirements(requirements) &&
        await this.#store.layers.has(plan.key)
      ) {
        return { layers: [this.#store.layers.path(plan.key)], release: unpin };
      }
      const { record } = await this.#ensure(plan, undefined);
      await session.setPipLayer(record);
      return { layers: [this.#store.layers.path(plan.key)], release: unpin };
    } catch (e) {
      unpin();
      throw e;
    }
  }

  /**
   * Installs requirements into the session: the set becomes the session's set with these in
   * it (or these alone, with `replace`), resolved and installed together as one layer.
   *
   * @param session The session.
   * @param requirements Requirement lines.
   * @param options Index choice (among the server's), replace, progress.
   * @returns The session's set and what its layer holds.
   * @throws {ServerError} `PIP_INVALID_REQUEST`, `PIP_INSTALL_FAILED`.
   */
  install(
    session: Session,
    requirements: readonly string[],
    options: {
      indexUrl?: string | undefined;
      extraIndexUrls?: readonly string[] | undefined;
      replace?: boolean | undefined;
      onLine?: ((line: string) => void) | undefined;
    } = {},
  ): Promise<PipState> {
    return this.#serial(session, async () => {
      let added: Requirement[];
      try {
        added = parseRequirements(requirements.join("\n"));
      } catch (e) {
        throw invalid(e);
      }
      if (added.length === 0 && !options.replace) {
        throw new ServerError(
          "PIP_INVALID_REQUEST",
          "Cannot install: no requirement given. Name packages, e.g. requests==2.32.3.",
        );
      }
      const set = options.replace ? added : mergeRequirements(this.#configured(session), added);
      const index: { indexUrl?: string; extraIndexUrls?: readonly string[] } = {};
      if (options.indexUrl !== undefined) index.indexUrl = options.indexUrl;
      if (options.extraIndexUrls !== undefined) index.extraIndexUrls = options.extraIndexUrls;
      return await this.#apply(session, set, index, options.onLine);
    });
  }

  /**
   * Takes distributions out of the session's requirement set; its layer becomes the layer of
   * what is left (built when there is none yet), or none.
   *
   * @param session The session.
   * @param names Distribution names of the set.
   * @param onLine Progress, when a layer is built.
   * @returns The session's set and what its layer holds.
   * @throws {ServerError} `PIP_NOT_INSTALLED` for a name the set does not list.
   */
  uninstall(
    session: Session,
    names: readonly string[],
    onLine?: (line: string) => void,
  ): Promise<PipState> {
    return this.#serial(session, async () => {
      const set = this.#configured(session);
      const drop = new Set(names.map((n) => normalizeDistributionName(n.trim())));
      if (drop.size === 0) {
        throw new ServerError("PIP_INVALID_REQUEST", "Cannot uninstall: no name given.");
      }
      for (const n of drop) {
        if (set.some((r) => r.name === n)) continue;
        const dep = session.pipLayer()?.distributions.some((d) => d.name === n);
        throw new ServerError(
          "PIP_NOT_INSTALLED",
          dep
            ? `Cannot uninstall ${n}: the session's requirements (${
              set.map((r) => r.text).join(", ")
            }) need it; uninstall the requirement that pulls it in.`
            : `Cannot uninstall ${n}: the session's requirements do not list it` +
              (set.length ? ` (they are ${set.map((r) => r.name).join(", ")}).` : " (none)."),
          { parameters: { name: n } },
        );
      }
      return await this.#apply(session, set.filter((r) => !drop.has(r.name)), {}, onLine);
    });
  }

  /**
   * The session's requirement set and its layer, without building anything.
   *
   * @param session The session.
   * @returns The set and, when built for it, what the layer holds (`layer` `""` otherwise).
   */
  list(session: Session): PipState {
    let set: Requirement[] = [];
    try {
      set = this.#configured(session);
    } catch { /* listed as empty: the next install or run reports it */ }
    const rec = session.pipLayer();
    const current = rec !== undefined && rec.requirements === formatRequirements(set);
    const index = this.#indexOf(session, {}, false);
    return {
      requirements: set.map((r) => r.text),
      distributions: current ? rec.distributions : [],
      layer: current ? rec.key : "",
      bytes: current ? rec.bytes : 0,
      entries: current ? rec.entries : 0,
      reused: current,
      indexUrl: index?.url ?? "",
      extraIndexUrls: index?.extras ?? [],
    };
  }

  /** Closes the proxy's sockets. */
  async close(): Promise<void> {
    await this.#proxy.close();
  }

  /** Makes `set` the session's: its layer (built if need be), then its config. */
  async #apply(
    session: Session,
    set: Requirement[],
    index: { indexUrl?: string; extraIndexUrls?: readonly string[] },
    onLine: ((line: string) => void) | undefined,
  ): Promise<PipState> {
    const text = formatRequirements(set);
    const pairs: { key: string; value: string }[] = [];
    if (index.indexUrl !== undefined) pairs.push({ key: PIP_INDEX_URL_KEY, value: index.indexUrl });
    if (index.extraIndexUrls !== undefined) {
      pairs.push({ key: PIP_EXTRA_INDEX_URLS_KEY, value: index.extraIndexUrls.join(" ") });
    }
    if (set.length === 0) {
      const old = session.pipLayer();
      await session.setPipLayer(undefined);
      try {
        await session.config.unset([PIP_REQUIREMENTS_KEY]);
        if (pairs.length) await session.config.set(pairs, false);
      } catch (e) {
        if (old) await session.setPipLayer(old).catch(() => {});
        throw e;
      }
      const idx = this.#indexOf(session, {}, false);
      return {
        requirements: [],
        distributions: [],
        layer: "",
        bytes: 0,
        entries: 0,
        reused: false,
        indexUrl: idx?.url ?? "",
        extraIndexUrls: idx?.extras ?? [],
      };
    }
    const plan = await this.#plan(session, set, index);
    const unpin = await this.#store.pin(`l:${plan.key}`);
    try {
      const { record, reused } = await this.#ensure(plan, onLine);
      const old = session.pipLayer();
      // The quota check first, then the config: a refused layer changes nothing.
      await session.setPipLayer(record);
      try {
        await session.config.set([{ key: PIP_REQUIREMENTS_KEY, value: text }, ...pairs], false);
      } catch (e) {
        await session.setPipLayer(old).catch(() => {});
        throw e;
      }
      return {
        requirements: set.map((r) => r.text),
        distributions: record.distributions,
        layer: record.key,
        bytes: record.bytes,
        entries: record.entries,
        reused,
        indexUrl: plan.index?.url ?? "",
        extraIndexUrls: plan.index?.extras ?? [],
      };
    } finally {
      unpin();
    }
  }

  /** The session's configured set (canonical). */
  #configured(session: Session): Requirement[] {
    try {
      return parseRequirements(session.config.value(PIP_REQUIREMENTS_KEY) ?? "");
    } catch (e) {
      throw invalid(e);
    }
  }

  /** Runs `fn` after the session's previous install or uninstall has ended. */
  #serial<T>(session: Session, fn: () => Promise<T>): Promise<T> {
    const k = `${session.userId}\u0000${session.sessionId}`;
    const before = this.#sessionLocks.get(k) ?? Promise.resolve();
    const next = before.catch(() => {}).then(fn);
    const settled = next.catch(() => {});
    this.#sessionLocks.set(k, settled);
    settled.then(() => {
      if (this.#sessionLocks.get(k) === settled) this.#sessionLocks.delete(k);
    });
    return next;
  }

  /** Everything the layer for `set` in this session is built from, and its key. */
  async #plan(
    session: Session,
    set: Requirement[],
    override: { indexUrl?: string; extraIndexUrls?: readonly string[] },
  ): Promise<Plan> {
    const index = this.#indexOf(session, override, true);
    const target = await this.#target(session);
    // Both are asked once per server (and interpreter); the first install waits for both.
    const [installer, identity] = await Promise.all([
      this.#findInstaller(),
      this.#identity(target),
    ]);
    const wheels = this.#wheels(session);
    const hosts = new Set(this.#allowHosts);
    if (index) {
      for (const u of [index.url, ...index.extras]) {
        const hp = hostPort(u);
        hosts.add(hp);
        if (hp === "pypi.org:443") hosts.add(PYPI_FILES_HOST);
      }
    }
    const material = {
      v: 1,
      interpreter: { place: target.canonical, ...identity },
      requirements: set.map((r) => r.text).sort(),
      wheels: wheels.map((w) => [w.file, w.sha256]),
      index: index ?? "offline",
      sdist: this.#options.allowSdist ?? false,
      installer: { kind: installer.kind, version: installer.version },
    };
    const key = createHash("sha256").update(JSON.stringify(material)).digest("hex") + "-pip";
    return { key, requirements: set, target, wheels, index, hosts: [...hosts], installer };
  }

  /** The index settings of an install: the override, else the session's config, else the server's. */
  #indexOf(
    session: Session,
    override: { indexUrl?: string; extraIndexUrls?: readonly string[] },
    check: boolean,
  ): { url: string; extras: string[] } | undefined {
    const fromConfig = session.config.value(PIP_INDEX_URL_KEY);
    const extrasConfig = session.config.value(PIP_EXTRA_INDEX_URLS_KEY);
    if (this.#options.offline) {
      if (check && (override.indexUrl || override.extraIndexUrls?.length)) {
        throw new ServerError(
          "PIP_INVALID_REQUEST",
          "Cannot install from a package index: the server installs offline (--pip-offline), " +
            "from the session's uploaded wheels only. Upload the wheels (files/<name>.whl) and " +
            "require them by name and version.",
        );
      }
      return undefined;
    }
    let url: string;
    let extras: string[];
    try {
      url = normalizeIndexUrl(override.indexUrl ?? fromConfig ?? this.#indexUrl);
      extras = override.extraIndexUrls !== undefined
        ? override.extraIndexUrls.map(normalizeIndexUrl)
        : extrasConfig !== undefined
        ? splitIndexUrls(extrasConfig)
        : [...this.#extraIndexUrls];
    } catch (e) {
      if (!check) return { url: this.#indexUrl, extras: [...this.#extraIndexUrls] };
      throw invalid(e);
    }
    if (check) {
      for (const u of [url, ...extras]) {
        if (!this.#allowedIndexes.has(u)) {
          throw new ServerError(
            "PIP_INVALID_REQUEST",
            `Cannot install from ${u}: the server offers the package indexes ` +
              `${[...this.#allowedIndexes].join(", ")} and no others. Choose one of them, or ask ` +
              `the operator to add it (--pip-allow-index).`,
            { parameters: { indexUrl: u } },
          );
        }
      }
    }
    return { url, extras };
  }

  /** The session's uploaded wheels (`files/*.whl`, `pyfiles/*.whl`), by file name. */
  #wheels(session: Session): { file: string; sha256: string; blob: string }[] {
    const byFile = new Map<string, { file: string; sha256: string; blob: string }>();
    for (const a of session.artifacts()) {
      if (a.kind !== "files" && a.kind !== "pyfiles") continue;
      const file = basename(a.path);
      if (!parseWheelFilename(file)) continue;
      const seen = byFile.get(file);
      if (seen && seen.sha256 !== a.sha256) {
        throw new ServerError(
          "PIP_INVALID_REQUEST",
          `Cannot install: the session holds two different wheels named ${file}; remove one ` +
            `(valise rm).`,
        );
      }
      byFile.set(file, { file, sha256: a.sha256, blob: this.#store.blobs.path(a.sha256) });
    }
    return [...byFile.values()].sort((a, b) => (a.file < b.file ? -1 : 1));
  }

  /** Where the session's interpreter is, by facts the server established. */
  async #target(session: Session): Promise<Target> {
    const spec = sessionSpec(session, this.#limits);
    const i = await this.#launcher.interpreterOf(spec);
    const display = session.interpreter() || i.path;
    if (i.trusted) {
      const real = await Deno.realPath(i.exe);
      const st = await Deno.stat(real);
      return {
        canonical: `host:${real}:${st.ino}:${st.size}:${st.mtime?.getTime() ?? 0}`,
        python: i.exe,
        trees: [],
        probeInterpreter: i.exe,
        probeLink: undefined,
        display,
      };
    }
    // Inside the session: only an interpreter of an archive it added (a shared, read-only,
    // content-addressed tree) has a place other sessions can share; what the session's workers
    // wrote into its directory does not.
    const [view, ...rest] = relative(session.root, i.exe).split("/");
    const art = session.artifacts().find((a) => a.view === view && a.tree !== undefined);
    if (!art || rest.length === 0 || rest.includes("..")) {
      throw new ServerError(
        "PIP_INSTALL_FAILED",
        `Cannot install packages for the interpreter ${display}: pip layers are built for the ` +
          `server's interpreters and for interpreters of archives the session added ` +
          `(archives/env.tar.gz#environment → environment/bin/python), not for files in the ` +
          `session's working directory.`,
        { reason: "INTERPRETER" },
      );
    }
    const tree = this.#store.trees.path(art.tree!);
    return {
      canonical: `tree:${art.tree}/${rest.join("/")}`,
      python: join(tree, ...rest),
      trees: [tree],
      probeInterpreter: `env/${rest.join("/")}`,
      probeLink: tree,
      display,
    };
  }

  /**
   * What the interpreter reports of itself, asked once per place: run in a sandbox of its own
   * (an interpreter of an archive is the archive's code), as a lent uid, without network.
   */
  #identity(target: Target): Promise<Record<string, string>> {
    let p = this.#identities.get(target.canonical);
    if (!p) {
      p = this.#probe(target);
      this.#identities.set(target.canonical, p);
      p.catch(() => this.#identities.delete(target.canonical));
    }
    return p;
  }

  async #probe(target: Target): Promise<Record<string, string>> {
    const id = crypto.randomUUID();
    const root = join(this.#store.layers.root, `.probe-${id}`);
    await Deno.mkdir(root, { mode: 0o700 });
    if (target.probeLink) await Deno.symlink(target.probeLink, join(root, "env"));
    const lease = this.#store.leaseWorkerId();
    const key = `pip-probe\u0000${id}`;
    let stdout = "";
    let stderr = "";
    let code = -1;
    const dec = new TextDecoder();
    try {
      for await (
        const ev of this.#launcher.run({
          key,
          root,
          pythonPath: [],
          interpreter: target.probeInterpreter,
          sharedTrees: target.trees,
          limits: { wallTimeMs: 60_000 },
          ...(lease ? { worker: { uid: lease.uid, gid: lease.gid } } : {}),
        }, { code: PROBE, timeoutMs: 60_000 })
      ) {
        if (ev.kind === "stdout" && stdout.length < 65536) stdout += dec.decode(ev.data);
        if (ev.kind === "stderr") stderr = (stderr + dec.decode(ev.data)).slice(-ERROR_TAIL);
        if (ev.kind === "exited") code = ev.exitCode;
      }
    } finally {
      await this.#launcher.stopSession(key);
      lease?.release();
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
    const last = stdout.trim().split("\n").pop() ?? "";
    let parsed: unknown;
    try {
      parsed = JSON.parse(last);
    } catch {
      parsed = undefined;
    }
    const ok = code === 0 && typeof parsed === "object" && parsed !== null &&
      Object.values(parsed).every((v) => typeof v === "string" && v.length <= 512);
    if (!ok) {
      throw new ServerError(
        "PIP_INSTALL_FAILED",
        `Cannot install packages for the interpreter ${target.display}: it did not say which ` +
          `Python it is (exit ${code})${stderr.trim() ? `: ${stderr.trim()}` : ""}`,
        { reason: "INTERPRETER" },
      );
    }
    return parsed as Record<string, string>;
  }

  /** The installer, found and asked for its version once. */
  #findInstaller(): Promise<Installer> {
    if (!this.#installer) {
      this.#installer = (async (): Promise<Installer> => {
        let path = this.#options.installer;
        if (path === undefined) {
          path = findOnPath("uv") ?? await this.#launcher.defaultInterpreter();
        }
        const real = await Deno.realPath(path).catch(() => {
          throw new ServerError(
            "PIP_INSTALL_FAILED",
            `Cannot install packages: the installer ${path} does not exist (--pip-installer).`,
            { reason: "NO_INSTALLER" },
          );
        });
        const kind = /^uv(-\S*)?$/.test(basename(path)) || /^uv$/.test(basename(real))
          ? "uv"
          : "pip";
        const out = await new Deno.Command(real, {
          args: kind === "uv" ? ["--version"] : ["-m", "pip", "--version"],
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).output().catch((e) => ({ success: false, stdout: new Uint8Array(), stderr: e }));
        const text = new TextDecoder().decode(out.stdout).trim().split("\n")[0] ?? "";
        if (!out.success || text === "") {
          throw new ServerError(
            "PIP_INSTALL_FAILED",
            `Cannot install packages: ${real} ${
              kind === "uv" ? "--version" : "-m pip --version"
            } failed; give an installer with --pip-installer (uv, or a Python with pip).`,
            { reason: "NO_INSTALLER" },
          );
        }
        return { kind, path: real, version: kind === "uv" ? text : text.split(" from ")[0]! };
      })();
      this.#installer.catch(() => this.#installer = undefined);
    }
    return this.#installer;
  }

  /**
   * The layer of `plan`, built unless it is there; callers for a key being built wait for that
   * build and see its progress too.
   */
  async #ensure(
    plan: Plan,
    onLine: ((line: string) => void) | undefined,
  ): Promise<{ record: PipLayerRecord; reused: boolean }> {
    const layers = this.#store.layers;
    const ready = await layers.has(plan.key);
    let listeners = this.#listeners.get(plan.key);
    if (!listeners) this.#listeners.set(plan.key, listeners = new Set());
    if (onLine) listeners.add(onLine);
    const subs = listeners;
    let result: { path: string; built: boolean };
    try {
      result = await layers.ensure(plan.key, (dest) =>
        this.#build(dest, plan, (line) => {
          for (const f of subs) f(line);
        }));
    } finally {
      if (onLine) subs.delete(onLine);
      if (subs.size === 0 && this.#listeners.get(plan.key) === subs) {
        this.#listeners.delete(plan.key);
      }
    }
    if (ready) this.#stats.reuses++;
    const info = await layers.info(plan.key);
    return {
      record: {
        key: plan.key,
        requirements: formatRequirements(plan.requirements),
        distributions: await distributionsIn(result.path),
        bytes: info.bytes,
        entries: info.entries,
        usedAt: Date.now(),
      },
      reused: ready,
    };
  }

  /** Builds a layer into `dest` (which does not exist yet), or fails leaving nothing. */
  async #build(dest: string, plan: Plan, emit: (line: string) => void): Promise<TreeInfo> {
    await this.#slot();
    const started = performance.now();
    this.#stats.builds++;
    const buildRoot = join(this.#store.layers.root, `.build-${crypto.randomUUID()}`);
    try {
      await Deno.mkdir(buildRoot, { mode: 0o700 });
      const run = await this.#runInstaller(buildRoot, plan, emit);
      const target = join(buildRoot, "target");
      const st = await Deno.lstat(target).catch(() => undefined);
      const { exit } = run;
      if (!exit || exit.exitCode !== 0 || run.lowDisk || !st?.isDirectory) {
        const how = run.lowDisk
          ? `was stopped: the server's disk fell below its floor of ${this.#minFreeBytes} bytes free`
          : !exit
          ? "did not finish"
          : exit.timedOut
          ? `timed out after ${run.timeoutMs} ms (--pip-timeout)`
          : exit.signal
          ? `was killed by ${exit.signal}`
          : exit.exitCode !== 0
          ? `exited with ${exit.exitCode}`
          : "installed nothing";
        const refused = run.refused.length
          ? ` It tried to reach hosts that are not its package indexes: ${
            [...new Set(run.refused)].slice(0, 5).join(", ")
          }.`
          : "";
        const said = run.tail.join("\n").trim();
        throw new ServerError(
          "PIP_INSTALL_FAILED",
          `Cannot install ${plan.requirements.map((r) => r.text).join(" ")} for ` +
            `${plan.target.display}: ${plan.installer.version} ${how}.${refused}` +
            (said ? `\n${said.slice(-ERROR_TAIL)}` : ""),
          { reason: run.lowDisk ? "DISK_FLOOR" : exit?.timedOut ? "TIMEOUT" : "INSTALLER" },
        );
      }
      const info = await measure(target);
      await Deno.rename(target, dest);
      this.#log(
        `pip: built layer ${plan.key.slice(0, 12)} (${plan.requirements.length} requirement(s), ` +
          `${info.entries} entries, ${info.bytes} bytes) in ${
            ((performance.now() - started) / 1000).toFixed(1)
          }s`,
      );
      return info;
    } catch (e) {
      this.#stats.failures++;
      throw e;
    } finally {
      this.#release();
      this.#stats.buildSeconds += (performance.now() - started) / 1000;
      await Deno.remove(buildRoot, { recursive: true }).catch(() => {});
    }
  }

  /**
   * Runs the installer into `<buildRoot>/target` in a one-off sandbox: the default interpreter
   * runs `pip_driver.py`, which relays to the proxy's socket and runs the installer. Its output
   * goes to `emit` line by line (server paths replaced); the end of it is kept for an error.
   */
  async #runInstaller(
    buildRoot: string,
    plan: Plan,
    emit: (line: string) => void,
  ): Promise<{
    exit: { exitCode: number; signal: string; timedOut: boolean } | undefined;
    lowDisk: boolean;
    refused: readonly string[];
    tail: string[];
    timeoutMs: number;
  }> {
    const wheelsDir = `${buildRoot}-wheels`;
    const key = `pip-build\u0000${basename(buildRoot)}`;
    const tail: string[] = [];
    let tailChars = 0;
    const tidy = (line: string) =>
      line.split(`${buildRoot}/target`).join("<layer>").split(wheelsDir).join("<uploaded-wheels>")
        .split(buildRoot).join("<build>").split(this.#store.dataDir).join("<data-dir>");
    const onLine = (raw: string) => {
      const line = tidy(raw.replace(/\s+$/, "")).slice(0, 1000);
      if (line === "") return;
      tail.push(line);
      tailChars += line.length + 1;
      while (tailChars > ERROR_TAIL && tail.length > 1) tailChars -= tail.shift()!.length + 1;
      emit(line);
    };
    let exit: { exitCode: number; signal: string; timedOut: boolean } | undefined;
    let lowDisk = false;
    let grant: Awaited<ReturnType<PipProxy["open"]>> | undefined;
    const lease = this.#store.leaseWorkerId();
    const timeoutMs = this.#options.timeoutMs ?? 600_000;
    const abort = new AbortController();
    // A build writes what its packages hold: it stops, as an upload does, at the disk floor.
    const watchdog = setInterval(() => {
      try {
        const st = statfsSync(this.#store.dataDir);
        if (Number(st.bavail) * Number(st.bsize) < this.#minFreeBytes) {
          lowDisk = true;
          abort.abort(new Error("low disk"));
        }
      } catch { /* checked again next time */ }
    }, 1000);
    try {
      if (plan.wheels.length) {
        await Deno.mkdir(wheelsDir, { mode: 0o755 });
        await Deno.chmod(wheelsDir, 0o755);
        for (const w of plan.wheels) await Deno.link(w.blob, join(wheelsDir, w.file));
      }
      if (plan.index) grant = await this.#proxy.open(plan.hosts);
      const python = await this.#launcher.defaultInterpreter();
      const certs = serverCertificates();
      const { argv, env } = installerCommand(plan, {
        buildRoot,
        wheelsDir: plan.wheels.length ? wheelsDir : undefined,
        allowSdist: this.#options.allowSdist ?? false,
        timeoutMs,
        certs,
      });
      // Bound when the sandbox would not show them otherwise (it shows /etc/ssl and /usr).
      const outside = (p: string | undefined) =>
        p !== undefined && !/^\/(etc\/ssl|etc\/ca-certificates|usr)\//.test(p) ? [p] : [];
      emit(
        `valise: installing ${plan.requirements.map((r) => r.text).join(" ")} for ` +
          `${plan.target.display} with ${plan.installer.version}`,
      );
      const dec = { stdout: new TextDecoder(), stderr: new TextDecoder() };
      const partial = { stdout: "", stderr: "" };
      try {
        for await (
          const ev of this.#launcher.run({
            key,
            root: buildRoot,
            pythonPath: [],
            interpreter: python,
            sharedTrees: plan.target.trees,
            readOnlyDirs: [
              ...(plan.wheels.length ? [wheelsDir] : []),
              ...outside(certs.SSL_CERT_DIR),
            ],
            readOnlyFiles: [
              ...(plan.installer.kind === "uv" ? [plan.installer.path] : []),
              ...outside(certs.SSL_CERT_FILE),
            ],
            ...(grant ? { proxySocket: grant.path } : {}),
            limits: { wallTimeMs: timeoutMs },
            ...(lease ? { worker: { uid: lease.uid, gid: lease.gid } } : {}),
          }, {
            code: DRIVER_STUB,
            args: [JSON.stringify({
              argv,
              env,
              socket: grant?.path ?? "",
              dirs: [join(buildRoot, "tmp"), join(buildRoot, "cache")],
            })],
            timeoutMs,
          }, abort.signal)
        ) {
          if (ev.kind === "stdout" || ev.kind === "stderr") {
            const text = partial[ev.kind] + dec[ev.kind].decode(ev.data, { stream: true });
            const lines = text.split(/\r?\n|\r/);
            partial[ev.kind] = (lines.pop() ?? "").slice(-4096);
            for (const l of lines) onLine(l);
          } else if (ev.kind === "exited") {
            exit = ev;
          }
        }
      } catch (e) {
        if (!lowDisk) throw e;
      }
      for (const rest of [partial.stdout, partial.stderr]) if (rest) onLine(rest);
    } finally {
      clearInterval(watchdog);
      await this.#launcher.stopSession(key);
      await grant?.close();
      if (Deno.uid() === 0) {
        // Its processes are gone (stopSession): nothing races these walks. What the build's
        // uid made is the server's now, and nothing but files, directories and links stays.
        await command("chown", ["-R", "-h", `${Deno.uid()}:${Deno.gid()}`, buildRoot]);
        await command("find", [
          buildRoot,
          "(",
          "-type",
          "p",
          "-o",
          "-type",
          "s",
          "-o",
          "-type",
          "b",
          "-o",
          "-type",
          "c",
          ")",
          "-delete",
        ]);
      }
      lease?.release();
      await Deno.remove(wheelsDir, { recursive: true }).catch(() => {});
    }
    return { exit, lowDisk, refused: grant?.refused ?? [], tail, timeoutMs };
  }

  async #slot(): Promise<void> {
    if (this.#running < (this.#options.maxBuilds ?? 2)) {
      this.#running++;
      return;
    }
    await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }

  #release(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#running--;
  }
}

/** The installer's command line and environment for a plan. */
function installerCommand(
  plan: Plan,
  where: {
    buildRoot: string;
    wheelsDir: string | undefined;
    allowSdist: boolean;
    timeoutMs: number;
    certs: { SSL_CERT_FILE?: string | undefined; SSL_CERT_DIR?: string | undefined };
  },
): { argv: string[]; env: Record<string, string> } {
  const target = join(where.buildRoot, "target");
  const cache = join(where.buildRoot, "cache");
  const reqs = plan.requirements.map((r) => r.text);
  const env: Record<string, string> = {
    HOME: where.buildRoot,
    TMPDIR: join(where.buildRoot, "tmp"),
    LANG: "C.UTF-8",
    PATH: "/usr/local/bin:/usr/bin:/bin",
    NO_COLOR: "1",
  };
  // The operator's certificate authorities (a TLS-inspecting egress has its own): uv reads
  // these, pip gets --cert.
  for (const k of ["SSL_CERT_FILE", "SSL_CERT_DIR"] as const) {
    const v = where.certs[k];
    if (v !== undefined) env[k] = v;
  }
  const i = plan.installer;
  const index = plan.index;
  if (i.kind === "uv") {
    Object.assign(env, {
      UV_CACHE_DIR: cache,
      UV_NO_CONFIG: "1",
      UV_PYTHON_DOWNLOADS: "never",
      UV_HTTP_TIMEOUT: String(Math.max(10, Math.floor(where.timeoutMs / 1000))),
    });
    const argv = [
      i.path,
      "pip",
      "install",
      "--no-config",
      "--color",
      "never",
      "--python",
      plan.target.python,
      "--target",
      target,
      "--cache-dir",
      cache,
    ];
    if (index) {
      argv.push("--index-url", index.url);
      for (const e of index.extras) argv.push("--extra-index-url", e);
    } else {
      argv.push("--offline", "--no-index");
    }
    if (where.wheelsDir) argv.push("--find-links", where.wheelsDir);
    if (!where.allowSdist) argv.push("--only-binary", ":all:");
    return { argv: [...argv, ...reqs], env };
  }
  const argv = [i.path, "-m", "pip"];
  if (plan.target.python !== i.path) argv.push("--python", plan.target.python);
  argv.push(
    "install",
    "--isolated",
    "--no-input",
    "--disable-pip-version-check",
    "--no-warn-script-location",
    "--progress-bar",
    "off",
    "--cache-dir",
    cache,
    "--target",
    target,
  );
  if (where.certs.SSL_CERT_FILE !== undefined) argv.push("--cert", where.certs.SSL_CERT_FILE);
  if (index) {
    argv.push("--proxy", "{proxy}", "--index-url", index.url);
    for (const e of index.extras) argv.push("--extra-index-url", e);
  } else {
    argv.push("--no-index");
  }
  if (where.wheelsDir) argv.push("--find-links", where.wheelsDir);
  if (!where.allowSdist) argv.push("--only-binary", ":all:");
  return { argv: [...argv, ...reqs], env };
}

/** The distributions a layer holds, from its `*.dist-info` directories' names. */
async function distributionsIn(dir: string): Promise<LayerDistribution[]> {
  const out: LayerDistribution[] = [];
  for await (const e of Deno.readDir(dir)) {
    const m = /^(.+)-([^-]+)\.dist-info$/.exec(e.name);
    if (m && e.isDirectory) out.push({ name: normalizeDistributionName(m[1]!), version: m[2]! });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Bytes of regular files and entries under `dir`, links not followed. */
async function measure(dir: string): Promise<TreeInfo> {
  const out: TreeInfo = { bytes: 0, entries: 0 };
  const pending = [dir];
  while (pending.length) {
    const d = pending.pop()!;
    for await (const e of Deno.readDir(d)) {
      const path = join(d, e.name);
      const st = await Deno.lstat(path);
      out.entries++;
      if (st.isFile) out.bytes += st.size;
      else if (st.isDirectory) pending.push(path);
    }
  }
  return out;
}

/**
 * The server's own `SSL_CERT_FILE` and `SSL_CERT_DIR`, when they name what exists: the
 * certificate authorities its operator trusts, which installs trust too.
 */
function serverCertificates(): { SSL_CERT_FILE?: string; SSL_CERT_DIR?: string } {
  const out: { SSL_CERT_FILE?: string; SSL_CERT_DIR?: string } = {};
  for (const [k, file] of [["SSL_CERT_FILE", true], ["SSL_CERT_DIR", false]] as const) {
    const v = Deno.env.get(k);
    if (!v?.startsWith("/")) continue;
    try {
      const st = Deno.statSync(v);
      if (file ? st.isFile : st.isDirectory) out[k] = v;
    } catch { /* not there: not passed on */ }
  }
  return out;
}

function findOnPath(name: string): string | undefined {
  for (const d of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!d.startsWith("/")) continue;
    try {
      const p = join(d, name);
      const st = Deno.statSync(p);
      if (st.isFile && ((st.mode ?? 0) & 0o111) !== 0) return p;
    } catch { /* not here */ }
  }
  return undefined;
}

async function command(program: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(program, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(
      `Cannot clean up a pip build: ${program} failed: ${
        new TextDecoder().decode(out.stderr).trim()
      }`,
    );
  }
}

function invalid(e: unknown): unknown {
  if (!(e instanceof RequirementError)) return e;
  return new ServerError("PIP_INVALID_REQUEST", e.message, { reason: e.problem, cause: e });
}
