// Copyright 2026 the Valise authors. Apache-2.0 license.
// valise.v1.PipService: a session's packages, installed into a layer its workers see.
import { basename } from "node:path";
import {
  parseRequirement,
  parseWheelFilename,
  type PipEvent,
  type PipState,
  RequirementError,
} from "@valise/protocol";
import { ValiseClientError } from "./error.ts";
import type { AddArtifactsOptions, AddedArtifact } from "./upload.ts";
import { callOptions, type SessionCore } from "./_core.ts";
import type { Node } from "./_endpoints.ts";
import { clientError } from "./_client_error.ts";

/** A distribution installed in a session's pip layer. */
export interface PipDistribution {
  /** Its name, normalized (PEP 503: lowercase, `-`). */
  readonly name: string;
  /** Its version. */
  readonly version: string;
}

/** A session's requirement set and what its pip layer holds. */
export interface PipResult {
  /** The requirement set, canonical lines (`requests==2.32.3`). */
  readonly requirements: string[];
  /** What the layer holds: the requirements and what they needed. */
  readonly distributions: PipDistribution[];
  /**
   * The layer's key, shared by every session with the same interpreter, requirements, wheels
   * and index; `undefined` when the set is empty (or, listed, not installed yet).
   */
  readonly layer: string | undefined;
  /** Bytes of the layer (counted in the session's quota). */
  readonly bytes: number;
  /** Entries of the layer. */
  readonly entries: number;
  /** The layer was there already: nothing was installed. */
  readonly reused: boolean;
  /** The index installs use; `undefined` when the server installs offline. */
  readonly indexUrl: string | undefined;
  /** More indexes installs use. */
  readonly extraIndexUrls: string[];
}

/** Options of {@linkcode SessionPip.install}. */
export interface PipInstallOptions {
  /**
   * The index to install from: one the server offers.
   * @default {the session's, else the server's}
   */
  indexUrl?: string;
  /**
   * More indexes, each one the server offers.
   * @default {the session's, else the server's}
   */
  extraIndexUrls?: readonly string[];
  /**
   * The set becomes these requirements alone (instead of the session's set with them in it).
   * @default {false}
   */
  replace?: boolean;
  /**
   * Receives the resolver's and installer's output, line by line.
   * @default {undefined}
   */
  onProgress?: (line: string) => void;
  /**
   * Directory relative wheel paths are resolved against.
   * @default {Deno.cwd()}
   */
  cwd?: string;
  /**
   * Stops waiting (the server finishes a layer it started: other sessions may share it).
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/** Adds local files as artifacts (the session's `addArtifacts`). */
type AddArtifacts = (
  paths: readonly string[],
  options: AddArtifactsOptions,
) => Promise<AddedArtifact[]>;

/**
 * A session's packages (`session.pip`): installed into a read-only layer that its workers see
 * on `sys.path` after its pyfiles, shared with every session that asks for the same set.
 */
export class SessionPip {
  #core: SessionCore;
  #add: AddArtifacts;

  /**
   * Use `session.pip`.
   *
   * @param core The session's transport and ids.
   * @param add The session's `addArtifacts`, for local wheels.
   */
  constructor(core: SessionCore, add: AddArtifacts) {
    this.#core = core;
    this.#add = add;
  }

  /**
   * Installs packages into the session: its requirement set with these in it (a requirement of
   * a name already there replaces it), resolved and installed together. A path to a local wheel
   * (`./dist/mylib-1.0-py3-none-any.whl`) is uploaded as `files/<name>.whl` and required by its
   * name and version. Runs and Apply calls started afterwards see the packages.
   *
   * @example
   * ```ts ignore
   * const r = await session.pip.install(["requests==2.32.3"], { onProgress: console.log });
   * for (const d of r.distributions) console.log(d.name, d.version);
   * ```
   *
   * @param requirements PEP 508 requirements, or local wheel paths.
   * @param options Index, replace, progress.
   * @returns The session's set and what its layer holds.
   * @throws {SyntaxError} (`RequirementError`) for a requirement the rules refuse, before
   *   anything is sent.
   * @throws {ValiseClientError} `PIP_INSTALL_FAILED` with the installer's own message,
   *   `PIP_INVALID_REQUEST` for an index the server does not offer.
   */
  async install(
    requirements: string | readonly string[],
    options: PipInstallOptions = {},
  ): Promise<PipResult> {
    const core = this.#core;
    core.checkOpen();
    const items = typeof requirements === "string" ? [requirements] : [...requirements];
    const wheels: string[] = [];
    const lines: string[] = [];
    for (const item of items) {
      if (/\.whl$/i.test(item.trim())) {
        const file = basename(item.trim().replace(/^file:\/\//, ""));
        const w = parseWheelFilename(file);
        if (!w) {
          throw new RequirementError(
            "PATH",
            item,
            `Cannot install ${JSON.stringify(item)}: ${file} is not a wheel's file name ` +
              `(name-version-python-abi-platform.whl).`,
          );
        }
        wheels.push(item.trim());
        lines.push(`${w.name}==${w.version}`);
      } else {
        lines.push(parseRequirement(item).text);
      }
    }
    if (wheels.length) {
      await this.#add(wheels, {
        file: true,
        ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
        ...(options.signal !== undefined ? { signal: options.signal } : {}),
      });
    }
    const req = {
      sessionId: core.sessionId,
      userContext: core.userContext,
      ...core.observed(),
      requirements: lines,
      ...(options.indexUrl !== undefined ? { indexUrl: options.indexUrl } : {}),
      extraIndexUrls: [...(options.extraIndexUrls ?? [])],
      extraIndexUrlsSet: options.extraIndexUrls !== undefined,
      replace: options.replace ?? false,
    };
    return await this.#stream(
      "Install",
      (node, signal) => node.pips.install(req, callOptions(signal)),
      options.onProgress,
      options.signal,
    );
  }

  /**
   * Takes distributions out of the session's requirement set: its layer becomes the one of what
   * is left (installed when there is none yet), or none. A distribution that only a requirement
   * needs cannot be taken out alone (`PIP_NOT_INSTALLED` says which).
   *
   * @param names Distribution names of the set.
   * @param options Progress, signal.
   * @returns The session's set and what its layer holds.
   * @throws {ValiseClientError} `PIP_NOT_INSTALLED`.
   */
  async uninstall(
    names: string | readonly string[],
    options: Pick<PipInstallOptions, "onProgress" | "signal"> = {},
  ): Promise<PipResult> {
    const core = this.#core;
    core.checkOpen();
    const list = typeof names === "string" ? [names] : [...names];
    if (list.length === 0) throw new TypeError("Cannot uninstall: no name given");
    const req = {
      sessionId: core.sessionId,
      userContext: core.userContext,
      ...core.observed(),
      names: list,
    };
    return await this.#stream(
      "Uninstall",
      (node, signal) => node.pips.uninstall(req, callOptions(signal)),
      options.onProgress,
      options.signal,
      // Sent again only when it never reached a node: a second removal of a name that went
      // would fail (PIP_NOT_INSTALLED).
      false,
    );
  }

  /**
   * The session's requirement set and what its layer holds, without installing anything. A
   * session the server does not have lists nothing (and is not created).
   *
   * @returns The set and the layer (`layer` `undefined` when not installed yet).
   */
  async list(): Promise<PipResult> {
    const core = this.#core;
    core.checkOpen();
    const res = await core.retry.call("List", (node) =>
      node.pips.list({
        sessionId: core.sessionId,
        userContext: core.userContext,
        ...core.observed(),
      }));
    core.verify(res);
    return toResult(res);
  }

  async #stream(
    method: string,
    open: (node: Node, signal: AbortSignal | undefined) => AsyncIterable<PipEvent>,
    onProgress: ((line: string) => void) | undefined,
    signal: AbortSignal | undefined,
    idempotent = true,
  ): Promise<PipResult> {
    const core = this.#core;
    // Sent again only until the installer's first word came back: a set is idempotent, but
    // progress already shown would be shown twice.
    const events = core.retry.stream<PipResult | undefined, void>(method, async function* (
      call,
      node,
    ) {
      try {
        for await (const ev of open(node, signal)) {
          call.seen = true;
          if (ev.event.case === "progress") onProgress?.(ev.event.value);
          else if (ev.event.case === "done") {
            core.verify(ev.event.value);
            yield toResult(ev.event.value);
          }
        }
      } catch (e) {
        throw ValiseClientError.from(e);
      }
    }, { signal, idempotent, seenWhat: "the installer's output" });
    let result: PipResult | undefined;
    for await (const r of events) result = r;
    if (!result) {
      throw clientError(
        "RPC_ERROR",
        "Internal",
        "The server ended the install without its result (PipEvent.done).",
      );
    }
    return result;
  }
}

function toResult(s: PipState): PipResult {
  return {
    requirements: [...s.requirements],
    distributions: s.distributions.map((d) => ({ name: d.name, version: d.version })),
    layer: s.layer || undefined,
    bytes: Number(s.bytes),
    entries: Number(s.entries),
    reused: s.reused,
    indexUrl: s.indexUrl || undefined,
    extraIndexUrls: [...s.extraIndexUrls],
  };
}
