// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Helpers of the hostile Apply tests: a real sandboxed server, Apply requests, and a call whose
 * sender can hold back until the worker is seen running.
 *
 * @module
 */
import { ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import {
  ApplyForm,
  type ApplyRequest,
  ApplyRequestSchema,
  type ApplyStart,
  ErrorInfoSchema,
} from "@valise/protocol";
import { Int32, makeVector, type RecordBatch, Table } from "apache-arrow";
import { answered, serving } from "./_hostile.ts";
import { type ServerProcess, startServer } from "./_server.ts";

/** How long a hang may last before it fails the test. */
export const GUARD_MS = 30_000;

/** Turns a hang into a failure naming what hung. */
export const within = <T>(p: Promise<T>, what: string): Promise<T> => answered(p, what, GUARD_MS);

/** Fails unless the server answers health with SERVING. */
export const healthy = (server: ServerProcess, what: string): Promise<void> =>
  serving(server, what, GUARD_MS);

/**
 * Runs `fn` against a fresh server with workers in bubblewrap, then checks it is healthy and
 * stops cleanly.
 *
 * @param prefix The temporary directory's prefix.
 * @param fn The test.
 */
export async function withServer(
  prefix: string,
  fn: (s: ServerProcess) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix });
  const server = await startServer({
    dataDir: join(tmp, "data"),
    args: ["--sandbox", "bwrap", "--python", "/usr/bin/python3"],
  });
  try {
    await server.waitForLog("workers sandboxed with bubblewrap");
    await fn(server);
    await healthy(server, "Health/Check after the hostile call");
  } finally {
    const status = await within(server.stop(), "SIGTERM");
    await new Deno.Command("chmod", { args: ["-R", "u+w", tmp] }).output();
    await Deno.remove(tmp, { recursive: true });
    ok(status.signal === null || status.signal === "SIGTERM", JSON.stringify(status));
  }
}

/** An Apply start, the session's id required. */
export type Start = Partial<Omit<ApplyStart, "$typeName" | "userContext">> & {
  sessionId: string;
};

/** The first request of a streamed Apply call. */
export const startRequest = (start: Start): ApplyRequest =>
  create(ApplyRequestSchema, {
    request: { case: "start", value: { input: { case: "streamed", value: true }, ...start } },
  });

/** A request carrying Arrow IPC bytes. */
export const ipcRequest = (bytes: Uint8Array): ApplyRequest =>
  create(ApplyRequestSchema, { request: { case: "arrowIpc", value: bytes } });

/** An inline function `f`, columns form. */
export const inline = (code: string): Pick<Start, "function" | "functionName" | "form"> => ({
  function: { case: "code" as const, value: code },
  functionName: "f",
  form: ApplyForm.COLUMNS,
});

/** What an Apply call gave back. */
export interface Outcome {
  /** The worker's stderr. */
  stderr: string;
  /** The output's IPC messages. */
  ipc: Uint8Array[];
  /** How the call failed, if it did. */
  failure: ConnectError | undefined;
}

/**
 * Runs an Apply call: `requests` gets a promise of the first stderr text that matches
 * `marker`, so it can hold back what it sends until the worker is seen running.
 *
 * @param server The server.
 * @param marker What the worker prints once running.
 * @param requests The requests.
 * @returns The call's outcome, and the promise of the marker.
 */
export function applyCall(
  server: ServerProcess,
  marker: RegExp,
  requests: (seen: Promise<void>) => AsyncIterable<ApplyRequest>,
): { outcome: Promise<Outcome>; seen: Promise<void> } {
  let markSeen!: () => void;
  const seen = new Promise<void>((r) => markSeen = r);
  const outcome = (async () => {
    const out: Outcome = { stderr: "", ipc: [], failure: undefined };
    try {
      for await (const res of server.clients.worker.apply(requests(seen))) {
        const m = res.response;
        if (m.case === "stderr") {
          out.stderr += new TextDecoder().decode(m.value);
          if (marker.test(out.stderr)) markSeen();
        }
        if (m.case === "arrowIpc") out.ipc.push(m.value);
      }
    } catch (e) {
      out.failure = ConnectError.from(e);
    }
    return out;
  })();
  return { outcome, seen };
}

/** The error class a failure carries. */
export function errorClassOf(e: ConnectError | undefined): string | undefined {
  return e?.findDetails(ErrorInfoSchema)[0]?.metadata.errorClass;
}

/** One batch of an Int32 column `n`. */
export function ints(values: number[]): RecordBatch {
  return new Table({ n: makeVector({ type: new Int32(), data: Int32Array.from(values) }) })
    .batches[0]!;
}
