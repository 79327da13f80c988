// Copyright 2026 the Valise authors. Apache-2.0 license.
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type PipEvent,
  PipEventSchema,
  type PipService,
  type PipState as PipStateMessage,
  PipStateSchema,
} from "@valise/protocol";
import type { Session, SessionStore } from "@valise/session-store";
import { ServerError, toConnectError } from "./errors.ts";
import { bindSession, findSession } from "./_bind.ts";
import type { PipLayers, PipState } from "./pip_layers.ts";

/** What the pip service needs. */
export interface PipServiceContext {
  /** The session store. */
  readonly store: SessionStore;
  /** The server's pip layers; `undefined` when installs are off. */
  readonly pip: PipLayers | undefined;
}

/** Progress lines kept for a client that reads slower than the installer writes. */
const MAX_PENDING_LINES = 1000;

/**
 * `valise.v1.PipService`: a session's packages. `Install` and `Uninstall` stream the
 * installer's output as it is produced and end with the session's set and what its layer holds;
 * `List` builds nothing and creates no session.
 *
 * @param ctx The store and the server's pip layers.
 * @returns The service implementation.
 */
export function createPipService(ctx: PipServiceContext): ServiceImpl<typeof PipService> {
  const { store } = ctx;
  const layers = (): PipLayers => {
    if (!ctx.pip) {
      throw new ServerError(
        "PIP_INSTALL_FAILED",
        "Cannot install packages: this server does not install packages for sessions.",
        { reason: "DISABLED" },
      );
    }
    return ctx.pip;
  };
  return {
    async *install(req) {
      try {
        const pip = layers();
        const session = await bindSession(store, req);
        yield* streamed(session, (onLine) =>
          pip.install(session, req.requirements, {
            indexUrl: req.indexUrl,
            extraIndexUrls: req.extraIndexUrlsSet ? req.extraIndexUrls : undefined,
            replace: req.replace,
            onLine,
          }));
      } catch (e) {
        throw toConnectError(e);
      }
    },
    async *uninstall(req) {
      try {
        const pip = layers();
        const session = await bindSession(store, req);
        yield* streamed(session, (onLine) => pip.uninstall(session, req.names, onLine));
      } catch (e) {
        throw toConnectError(e);
      }
    },
    async list(req) {
      try {
        const session = await findSession(store, req);
        if (!session) {
          return create(PipStateSchema, { sessionId: req.sessionId });
        }
        return stateMessage(session, ctx.pip ? ctx.pip.list(session) : undefined);
      } catch (e) {
        throw toConnectError(e);
      }
    },
  };
}

/** Runs `work` while the session is held, yielding its progress lines, then its state. */
async function* streamed(
  session: Session,
  work: (onLine: (line: string) => void) => Promise<PipState>,
): AsyncGenerator<PipEvent, void, undefined> {
  const release = session.hold();
  const pending: string[] = [];
  let dropped = 0;
  let wake: (() => void) | undefined;
  const onLine = (line: string) => {
    if (pending.length >= MAX_PENDING_LINES) {
      pending.shift();
      dropped++;
    }
    pending.push(line);
    wake?.();
  };
  let outcome: { state: PipState } | { error: unknown } | undefined;
  const done = work(onLine).then(
    (state) => void (outcome = { state }),
    (error) => void (outcome = { error }),
  ).finally(() => wake?.());
  try {
    for (;;) {
      if (dropped > 0) {
        yield progress(`(${dropped} line(s) of output not sent: the client read too slowly)`);
        dropped = 0;
      }
      const line = pending.shift();
      if (line !== undefined) {
        yield progress(line);
        continue;
      }
      if (outcome) break;
      await new Promise<void>((resolve) => wake = resolve);
      wake = undefined;
    }
    await done;
    if ("error" in outcome) throw outcome.error;
    yield create(PipEventSchema, {
      event: { case: "done", value: stateMessage(session, outcome.state) },
    });
  } finally {
    // A client that went away does not stop the build: other sessions may be waiting for it,
    // and a finished layer is kept for the next install.
    release();
  }
}

function progress(line: string): PipEvent {
  return create(PipEventSchema, { event: { case: "progress", value: line } });
}

function stateMessage(session: Session, state: PipState | undefined): PipStateMessage {
  return create(PipStateSchema, {
    sessionId: session.sessionId,
    serverSideSessionId: session.serverSideSessionId,
    requirements: state?.requirements ?? [],
    distributions: (state?.distributions ?? []).map((d) => ({
      name: d.name,
      version: d.version,
    })),
    layer: state?.layer ?? "",
    bytes: BigInt(state?.bytes ?? 0),
    entries: BigInt(state?.entries ?? 0),
    reused: state?.reused ?? false,
    indexUrl: state?.indexUrl ?? "",
    extraIndexUrls: [...(state?.extraIndexUrls ?? [])],
  });
}
