// The invariants a restart after SIGKILL must restore in a data directory (see
// docs/architecture.md, "Data directory"), checked from the outside, file by file.
import { equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import type { SessionManifest } from "@valise/session-store";

const SHA256_HEX = /^[0-9a-f]{64}$/;

/** What a check found: per session id, its committed artifacts (name → sha256). */
export interface DataDirState {
  /** Session id → artifact name → sha256, as recorded in the session's manifest. */
  sessions: Map<string, Map<string, string>>;
  /** Session id → the server-side session id recorded in its manifest. */
  serverSideIds: Map<string, string>;
  /** Keys of the built trees (`<sha256>-<options>`). */
  trees: string[];
}

async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

/** Every regular file or symlink under `dir`, relative, depth first. */
async function filesUnder(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(join(dir, prefix))) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await filesUnder(dir, rel));
    else out.push(rel);
  }
  return out;
}

const tmpLeft = (list: string[]) => list.filter((n) => n.endsWith(".tmp"));

/**
 * Checks a stopped-and-restarted data directory. Blob contents are hashed once per inode (a
 * blob is written once, before it gets its name, and is read-only after), so a check of the
 * fiftieth restart costs about what the first one did.
 */
export class DataDirChecker {
  #verified = new Map<string, string>();

  /**
   * Asserts every invariant and returns what the sessions hold:
   * - nothing in `staging/`, no temporary file in the data directory or a session directory;
   * - every blob is named by the sha256 of its bytes;
   * - no temporary tree; every tree has its info file and every info file its tree;
   * - no half-released session; every manifest names its own session;
   * - each recorded artifact is a hard link to the blob of its recorded sha256 (so it has those
   *   exact bytes), in `artifacts/` and, for files, in the workers' view; an unpacked archive's
   *   view is a link to its recorded, complete tree;
   * - nothing in `artifacts/` or the view that no record explains.
   *
   * @param dataDir The data directory, right after a server restarted on it.
   * @returns The sessions' committed artifacts.
   */
  async check(dataDir: string): Promise<DataDirState> {
    equal((await names(join(dataDir, "staging"))).length, 0, "staging left behind");
    equal(tmpLeft(await names(dataDir)).length, 0, "temporary file left in the data dir");
    const blobs = await this.#checkBlobs(join(dataDir, "blobs", "sha256"));
    const treeDir = join(dataDir, "trees");
    const treeNames = await names(treeDir);
    for (const t of treeNames) {
      ok(!t.startsWith("."), `temporary tree left behind: ${t}`);
      if (t.endsWith(".json")) {
        ok(treeNames.includes(t.slice(0, -5)), `info of a missing tree ${t}`);
      } else ok(treeNames.includes(`${t}.json`), `unrecorded tree ${t}`);
    }
    const trees = treeNames.filter((t) => !t.endsWith(".json"));
    const state: DataDirState = { sessions: new Map(), serverSideIds: new Map(), trees };
    for (const u of await names(join(dataDir, "sessions"))) {
      for (const s of await names(join(dataDir, "sessions", u))) {
        ok(!s.startsWith("."), `half-released session left behind: ${s}`);
        const dir = join(dataDir, "sessions", u, s);
        equal(tmpLeft(await names(dir)).length, 0, `temporary file left in session ${s}`);
        const m = JSON.parse(
          await Deno.readTextFile(join(dir, "manifest.json")),
        ) as SessionManifest;
        equal(m.sessionId, s, `manifest of ${s} names another session`);
        const held = new Map<string, string>();
        const views = new Set<string>();
        for (const r of Object.values(m.artifacts)) {
          held.set(r.name, r.sha256);
          const blob = blobs.get(r.sha256);
          ok(blob, `${s}: ${r.key} records sha256 ${r.sha256}, which no blob holds`);
          equal(blob.size, r.size, `${s}: size of ${r.key}`);
          const at = await Deno.lstat(join(dir, "artifacts", r.key));
          ok(
            at.ino === blob.ino && at.dev === blob.dev,
            `${s}: artifacts/${r.key} is not its blob`,
          );
          if (r.view === undefined) continue;
          views.add(r.view);
          // The workers' directory shows it as a symlink into the read-only view.
          const view = join(dir, "root", r.view);
          equal(await Deno.readLink(view), `../ro/${r.view}`, `${s}: root/${r.view}`);
          if (r.tree) {
            ok(trees.includes(r.tree), `${s}: tree of ${r.key} missing`);
            equal(await Deno.realPath(view), await Deno.realPath(join(treeDir, r.tree)), r.view);
            ok((await Deno.stat(join(view, "pyvenv.cfg"))).isFile, `${s}: ${r.view} incomplete`);
          } else {
            const v = await Deno.lstat(join(dir, "ro", r.view));
            ok(v.ino === blob.ino && v.dev === blob.dev, `${s}: ro/${r.view} is not its blob`);
          }
        }
        const keys = new Set(Object.values(m.artifacts).map((r) => r.key));
        for (const rel of await filesUnder(join(dir, "artifacts"))) {
          ok(keys.has(rel), `unrecorded artifacts/${rel} in ${s}`);
        }
        // The test's sessions run no workers, so anything else in the view is a commit's leftover.
        for (const name of [...await names(join(dir, "root")), ...await names(join(dir, "ro"))]) {
          ok(views.has(name), `unrecorded ${name} visible in ${s}`);
        }
        state.sessions.set(s, held);
        state.serverSideIds.set(s, m.serverSideSessionId);
      }
    }
    return state;
  }

  /** sha256 → (dev, ino, size) of every blob, after checking its bytes match its name. */
  async #checkBlobs(root: string): Promise<Map<string, Deno.FileInfo>> {
    const out = new Map<string, Deno.FileInfo>();
    for (const d of await names(root)) {
      for (const f of await names(join(root, d))) {
        ok(SHA256_HEX.test(f) && f.startsWith(d), `stray file in the blob store: ${d}/${f}`);
        const path = join(root, d, f);
        const st = await Deno.lstat(path);
        ok(st.isFile, `blob ${f} is not a regular file`);
        const id = `${st.dev}:${st.ino}:${st.size}:${st.mtime?.getTime()}`;
        if (this.#verified.get(id) !== f) {
          const got = createHash("sha256").update(await Deno.readFile(path)).digest("hex");
          equal(got, f, `blob ${f} holds other bytes`);
          this.#verified.set(id, f);
        }
        out.set(f, st);
      }
    }
    return out;
  }
}
