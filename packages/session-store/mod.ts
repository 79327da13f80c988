// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Session-scoped artifact storage for Spark-Connect-style servers: one directory per
 * (user id, session id), uploads staged on disk and committed atomically, content-addressed
 * blobs shared between sessions by hard link, Spark's config semantics, release and expiry.
 *
 * ```ts
 * import { SessionStore } from "@valise/session-store";
 * import { crc32 } from "@valise/protocol";
 * import { equal } from "node:assert/strict";
 *
 * const dataDir = await Deno.makeTempDir();
 * const store = await SessionStore.open({ dataDir });
 * const session = await store.session({ userId: "ada", sessionId: crypto.randomUUID() });
 *
 * const data = new TextEncoder().encode("VERSION = 1\n");
 * const upload = await session.beginUpload();
 * await upload.single("pyfiles/mylib.py", { data, crc: crc32(data) });
 * await upload.finish();
 * const { summaries } = await session.commit(upload);
 * await upload.abort(); // drops the (now empty) staging directory
 *
 * equal(summaries[0]!.crcOk, true);
 * equal(await Deno.readTextFile(`${session.root}/mylib.py`), "VERSION = 1\n");
 * await store.release("ada", session.sessionId);
 * await Deno.remove(dataDir, { recursive: true });
 * ```
 *
 * @module
 */
export * from "./blob_store.ts";
export * from "./cluster_index.ts";
export * from "./config.ts";
export * from "./data_dir_lock.ts";
export * from "./errors.ts";
export * from "./manifest.ts";
export * from "./registry.ts";
export * from "./session.ts";
export * from "./store.ts";
export * from "./tree_store.ts";
export * from "./upload.ts";
