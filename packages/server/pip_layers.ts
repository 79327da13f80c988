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
import { basename, join } from "node:path";
import type { Launcher, SessionLimits } from "@valise/launcher";
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
import { ServerError } from "./errors.ts";
import { hostPort, PipProxy } from "./pip_proxy.ts";
import {
  distributionsIn,
  ERROR_TAIL,
  findInstaller,
  type Installer,
  measure,
  type Plan,
  runInstaller,
} from "./_pip_build.ts";
import { interpreterTarget, probeInterpreter, type Target } from "./_pip_target.ts";

/** The index sessions install from when the server names none. */
export const DEFAULT_INDEX_URL = "https://pypi.org/simple";

/** Where PyPI's simple index sends downloads. */
const PYPI_FILES_HOST = "files.pythonhosted.org:443";

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
    const target = await interpreterTarget(session, {
      store: this.#store,
      launcher: this.#launcher,
      limits: this.#limits,
    });
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

  /**
   * What the interpreter reports of itself, asked once per place: run in a sandbox of its own
   * (an interpreter of an archive is the archive's code), as a lent uid, without network.
   */
  #identity(target: Target): Promise<Record<string, string>> {
    let p = this.#identities.get(target.canonical);
    if (!p) {
      p = probeInterpreter(target, { store: this.#store, launcher: this.#launcher });
      this.#identities.set(target.canonical, p);
      p.catch(() => this.#identities.delete(target.canonical));
    }
    return p;
  }

  /** The installer, found and asked for its version once. */
  #findInstaller(): Promise<Installer> {
    if (!this.#installer) {
      this.#installer = findInstaller(this.#options.installer, this.#launcher);
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
      const run = await runInstaller(
        {
          store: this.#store,
          launcher: this.#launcher,
          proxy: this.#proxy,
          options: this.#options,
          minFreeBytes: this.#minFreeBytes,
        },
        buildRoot,
        plan,
        emit,
      );
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

function invalid(e: unknown): unknown {
  if (!(e instanceof RequirementError)) return e;
  return new ServerError("PIP_INVALID_REQUEST", e.message, { reason: e.problem, cause: e });
}
