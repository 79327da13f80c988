// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, rejects } from "node:assert/strict";
import { DEFAULT_LIMITS } from "@valise/launcher";
import { SessionStore } from "@valise/session-store";
import { isServerError } from "./errors.ts";
import { preparedSpec } from "./session_spec.ts";

Deno.test("preparedSpec(): the session's pip layers go on its spec; a requirement set on a server without installs fails the run", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-spec-" });
  const store = await SessionStore.open({ dataDir });
  try {
    const s = await store.session({ userId: "u", sessionId: crypto.randomUUID() });
    let released = 0;
    const pip = {
      prepare: () => Promise.resolve({ layers: ["/srv/layers/k-pip"], release: () => released++ }),
    };
    const { spec, release } = await preparedSpec(s, DEFAULT_LIMITS, pip);
    deepEqual(spec.layers, ["/srv/layers/k-pip"]);
    release();
    equal(released, 1);
    deepEqual((await preparedSpec(s, DEFAULT_LIMITS, undefined)).spec.layers, undefined);
    await s.config.set([{ key: "spark.valise.pip.requirements", value: "six==1.16.0" }], false);
    await rejects(
      preparedSpec(s, DEFAULT_LIMITS, undefined),
      (e) => isServerError(e) && e.code === "PIP_INSTALL_FAILED" && e.reason === "DISABLED",
    );
  } finally {
    await store.close();
    await Deno.remove(dataDir, { recursive: true });
  }
});
