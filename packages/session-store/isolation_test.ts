// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal } from "node:assert/strict";
import { join, relative } from "node:path";
import fc from "fast-check";
import { SessionError } from "./errors.ts";
import { SessionStore } from "./store.ts";
import { addBytes, snapshot } from "./_test_util.ts";

const piece = fc.constantFrom(
  "pyfiles/",
  "files/",
  "archives/",
  "jars/",
  "cache/",
  "classes/",
  "../",
  "..",
  "./",
  "/",
  "\\",
  "..\\",
  "#",
  "#..",
  "#x",
  "a",
  "b.py",
  "lib.zip",
  "C:",
  "\0",
  "manifest.json",
  "root",
  "artifacts",
  "sessions",
  "blobs",
);
const name = fc.array(piece, { minLength: 1, maxLength: 6 }).map((p) => p.join(""));

type Op =
  | { op: "add"; who: number; names: string[]; body: string }
  | { op: "conf"; who: number; key: string; value: string }
  | { op: "release"; who: number; reconnect: boolean }
  | { op: "restart" };

const who = fc.integer({ min: 0, max: 2 });
const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant("add" as const),
      who,
      names: fc.array(name, { minLength: 1, maxLength: 4 }),
      body: fc.constantFrom("x", "y", "VERSION=1"),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("conf" as const),
      who,
      key: fc.oneof(name, fc.constant("spark.pythonWorkerEnv.A")),
      value: fc.string({ maxLength: 8 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant("release" as const), who, reconnect: fc.boolean() }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("restart" as const) }) },
);

Deno.test("no artifact name or operation touches anything outside its own session", async () => {
  const users = ["alice", "bob", "alice"];
  await fc.assert(
    fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 12 }), async (ops) => {
      const top = await Deno.makeTempDir({ prefix: "valise-iso-" });
      const dataDir = join(top, "data");
      await Deno.writeTextFile(join(top, "outside.txt"), "keep");
      await Deno.mkdir(join(top, "pyfiles"));
      await Deno.writeTextFile(join(top, "pyfiles", "b.py"), "keep");
      const ids = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];
      let store = await SessionStore.open({ dataDir });
      try {
        for (const o of ops) {
          // Shared, content-addressed blobs may only grow; staging is private to a stream.
          const actingDir = o.op === "restart"
            ? undefined
            : relative(top, store.sessionDir(users[o.who]!, ids[o.who]!));
          const skip = (rel: string) =>
            rel === "data/blobs" || rel.startsWith("data/blobs/") ||
            rel.startsWith("data/staging") ||
            rel === "data/closed-sessions.json" || rel === "data/server.lock" ||
            (actingDir !== undefined && (rel === actingDir || rel.startsWith(actingDir + "/")));
          const before = await snapshot(top, skip);
          try {
            if (o.op === "restart") {
              await store.close();
              store = await SessionStore.open({ dataDir });
            } else if (o.op === "release") {
              await store.release(users[o.who]!, ids[o.who]!, { allowReconnect: o.reconnect });
            } else {
              const s = await store.session({ userId: users[o.who]!, sessionId: ids[o.who]! });
              if (o.op === "add") await addBytes(s, o.names.map((n) => [n, o.body]));
              else await s.config.set([{ key: o.key, value: o.value }], false);
            }
          } catch (e) {
            if (!(e instanceof SessionError)) throw e;
          }
          const after = await snapshot(top, skip);
          // Creating a session creates the directories leading to it, nothing else.
          for (const snap of [before, after]) {
            for (const k of [...snap.keys()]) {
              if (actingDir !== undefined && k.endsWith("/") && actingDir.startsWith(k)) {
                snap.delete(k);
              }
            }
          }
          deepEqual(
            after,
            before,
            `operation ${JSON.stringify(o)} changed something outside its session`,
          );
        }
        // Every blob still holds the bytes its name promises.
        for (const d of await store.blobs.list()) {
          const bytes = await Deno.readFile(store.blobs.path(d));
          const got = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)))
            .map((b) => b.toString(16).padStart(2, "0")).join("");
          equal(got, d);
        }
      } finally {
        await store.close();
        await new Deno.Command("chmod", { args: ["-R", "u+w", top] }).output();
        await Deno.remove(top, { recursive: true });
      }
    }),
    { numRuns: 150 },
  );
});
