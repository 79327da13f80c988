// Copyright 2026 the Valise authors. Apache-2.0 license.
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "@valise/protocol";
import { SessionError } from "@valise/session-store";
import { toConnectError } from "./errors.ts";
import { PathRedactor, redactError, serverSideMessage } from "./_redact.ts";

const DATA = "/srv/valise/data";
const ROOT = `${DATA}/sessions/u-0123abcd/6d0f4c37-5b1c-4b4e-9b39-0a8b56f1d2a1/root`;

Deno.test("PathRedactor shows a session's root as '.', the data dir as <data-dir>, PEX roots as <pex-root>", () => {
  const r = new PathRedactor({ dataDir: `${DATA}/`, pexRoots: ["/var/cache/pex"] });
  equal(
    r.redact(`Cannot use interpreter ${ROOT}/env/bin/python`),
    "Cannot use interpreter ./env/bin/python",
  );
  equal(r.redact(`cannot start in "${ROOT}"`), `cannot start in "."`);
  equal(r.redact(`${ROOT}: not a directory`), ".: not a directory");
  equal(r.redact(`tree ${DATA}/trees/ab-cd/bin/python`), "tree <data-dir>/trees/ab-cd/bin/python");
  equal(r.redact(`at ${DATA}`), "at <data-dir>");
  equal(r.redact("/var/cache/pex/s-1/x"), "<pex-root>/s-1/x");
  equal(r.redact("PEX_ROOT=/tmp/valise-pex-Ab12_x/s-9 failed"), "PEX_ROOT=<pex-root>/s-9 failed");
  // Paths that merely start like the data directory are not its contents.
  equal(
    r.redact(`${DATA}2/x and ${ROOT}x`),
    `${DATA}2/x and <data-dir>/sessions/u-0123abcd/6d0f4c37-5b1c-4b4e-9b39-0a8b56f1d2a1/rootx`,
  );
  equal(r.redact("files/x.txt already exists"), "files/x.txt already exists");
});

Deno.test("PathRedactor also hides the data directory's real path", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-redact-" });
  try {
    await Deno.mkdir(join(tmp, "real"));
    await Deno.symlink(join(tmp, "real"), join(tmp, "link"));
    const r = new PathRedactor({ dataDir: join(tmp, "link") });
    equal(
      r.redact(`${tmp}/real/blobs/x and ${tmp}/link/trees/y`),
      "<data-dir>/blobs/x and <data-dir>/trees/y",
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("redactError() rewrites message and ErrorInfo, keeps code and class, and keeps the full message for the log", () => {
  const r = new PathRedactor({ dataDir: DATA });
  const original = toConnectError(
    new SessionError("ARTIFACT_ALREADY_EXISTS", `Cannot place the artifact at ${ROOT}/x.txt.`, {
      parameters: { path: `${ROOT}/x.txt` },
    }),
  );
  const sent = redactError(original, r) as ConnectError;
  equal(sent.code, Code.AlreadyExists);
  equal(
    sent.rawMessage,
    "[ARTIFACT_ALREADY_EXISTS] Cannot place the artifact at ./x.txt. SQLSTATE: 42713",
  );
  const info = sent.findDetails(ErrorInfoSchema)[0]!;
  equal(info.metadata.errorClass, "ARTIFACT_ALREADY_EXISTS");
  equal(info.metadata.messageParameters, JSON.stringify({ path: "./x.txt" }));
  ok(serverSideMessage(sent).includes(`${ROOT}/x.txt`));
  // Nothing to hide: the same error; not a ConnectError: left for Connect's "internal error".
  const plain = new ConnectError("[X] files/a exists", Code.AlreadyExists);
  equal(redactError(plain, r), plain);
  const internal = new Error(`boom at ${DATA}`);
  equal(redactError(internal, r), internal);
});
