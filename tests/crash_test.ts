// SIGKILL during uploads, unpacks and commits, 50 times: after each restart every session is
// whole (see _crash_check.ts), a stream is visible entirely or not at all, what the server
// acknowledged is never lost, and an unfinished stream never shows.
//
// Every kill waits for the server to reach its point, observed, never timed: the client holds
// its request streams at a chosen message (the server cannot commit a stream that has not
// ended), and the test watches the data directory and the server's log. Each round's kill point
// comes from a seeded random (VALISE_CRASH_SEED to explore others); the schedule gives each kind
// the same number of rounds, so every kind is covered, and commits happen by construction.
import { deepEqual, equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import zlib from "node:zlib";
import {
  type AddArtifactsRequest,
  addArtifactsRequests,
  type AddArtifactsResponse,
  bytesArtifact,
} from "@valise/protocol";
import {
  concatBytes,
  makeTar,
  type TarEntry,
} from "../packages/archive/testdata/archive_writers.ts";
import { makeVenvPack } from "./fixtures/envs.ts";
import { needsVenv } from "./_python.ts";
import { DataDirChecker } from "./_crash_check.ts";
import { type ServerProcess, startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const ROUNDS = 50;
const SEED = Number(Deno.env.get("VALISE_CRASH_SEED") ?? "1013");
const SESSIONS = 4;
const BIG = 3_000_000;
/** The server gathers chunks into writes of up to 1 MiB, so this much may be received unwritten. */
const WRITE_SLACK = 1 << 20;
/** Files padding each archive, so that an unpack lasts long enough to be caught in the act. */
const PAD_FILES = 2000;
/** The longest wait for a kill point: a hang becomes a failure, never a pass. */
const GUARD_MS = 120_000;

/** Where a round's kill lands. */
const KINDS = ["before-commit", "mid-upload", "unpack", "committed"] as const;
type Kind = typeof KINDS[number];

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** mulberry32: a small seeded generator, so a failing schedule can be replayed. */
function seeded(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

/** Offset of the end-of-archive blocks of a tar (where members can be appended). */
function tarEnd(tar: Uint8Array): number {
  const dec = new TextDecoder();
  let at = 0;
  while (at + 512 <= tar.length && tar.subarray(at, at + 512).some((b) => b !== 0)) {
    const size = parseInt(dec.decode(tar.subarray(at + 124, at + 135)).trim() || "0", 8);
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return at;
}

/**
 * A venv-pack archive per variant: the same venv plus a `crash-variant` file naming the variant
 * (so every variant is new content, and a fresh unpack) and {@linkcode PAD_FILES} small files.
 */
async function venvVariants(dir: string): Promise<(variant: number) => Uint8Array> {
  const { archive } = await makeVenvPack(dir);
  const tar = zlib.gunzipSync(await Deno.readFile(archive));
  const base = tar.subarray(0, tarEnd(tar));
  const pad: TarEntry[] = [{ name: "pad/", type: "dir" }];
  for (let i = 0; i < PAD_FILES; i++) {
    pad.push({ name: `pad/f${i}.py`, data: `# ${i}\n`.repeat(40) });
  }
  const made = new Map<number, Uint8Array>();
  return (variant) => {
    let bytes = made.get(variant);
    if (!bytes) {
      const more = makeTar([{ name: "crash-variant", data: `${variant}\n` }, ...pad]);
      bytes = new Uint8Array(zlib.gzipSync(concatBytes([base, more])));
      made.set(variant, bytes);
    }
    return bytes;
  };
}

/** Bytes of artifact data a request carries. */
function payloadBytes(req: AddArtifactsRequest): number {
  const p = req.payload;
  if (p.case === "batch") {
    return p.value.artifacts.reduce((n, a) => n + (a.data?.data.length ?? 0), 0);
  }
  if (p.case === "beginChunk") return p.value.initialChunk?.data.length ?? 0;
  if (p.case === "chunk") return p.value.data.length;
  return 0;
}

/** One AddArtifacts stream of a round. */
interface Stream {
  session: number;
  /** Artifact name → sha256 of the bytes sent. */
  artifacts: Map<string, string>;
  requests: AddArtifactsRequest[];
  /** Requests sent before the stream waits for the gate; `requests.length` = never held. */
  holdAt: number;
  response?: AddArtifactsResponse;
  error?: unknown;
}

/** Sends `s.requests`, holding before `s.holdAt` until `gate` says go (never, in this test). */
async function* held(s: Stream, gate: Promise<boolean>): AsyncGenerator<AddArtifactsRequest> {
  for (let i = 0; i < s.requests.length; i++) {
    // Thrown, not returned: a returning generator would half-close and let the stream commit.
    if (i === s.holdAt && !(await gate)) throw new Error("stream held until the server died");
    yield s.requests[i]!;
  }
}

/** Staging directories and the bytes written in them, as the server left them so far. */
async function staged(dataDir: string): Promise<{ streams: number; bytes: number }> {
  let streams = 0, bytes = 0;
  try {
    for await (const d of Deno.readDir(join(dataDir, "staging"))) {
      streams++;
      for await (const f of Deno.readDir(join(dataDir, "staging", d.name))) {
        bytes += (await Deno.stat(join(dataDir, "staging", d.name, f.name))).size;
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return { streams, bytes };
}

/** The temporary directory of an unpack of the archive with this sha256, if one is under way. */
async function unpackDir(trees: string, archiveSha: string): Promise<string | undefined> {
  for await (const e of Deno.readDir(trees)) {
    if (e.isDirectory && e.name.startsWith(`.${archiveSha}-`)) return join(trees, e.name);
  }
  return undefined;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Re-checks `reached` until it holds. The pause only paces the checks: the kill point is the
 * observed state, whatever the time it takes (up to {@linkcode GUARD_MS}, then a failure).
 */
async function until<T>(what: string, reached: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + GUARD_MS;
  for (;;) {
    const r = await reached();
    if (r !== undefined) return r;
    if (Date.now() > deadline) throw new Error(`kill point never reached: ${what}`);
    await new Promise((res) => setTimeout(res, 2));
  }
}

/** Awaits `p`, failing after {@linkcode GUARD_MS}: a hang becomes a failure. */
async function guarded<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${GUARD_MS} ms`)), GUARD_MS);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test({
  ...needsVenv("SIGKILL during uploads, unpacks and commits never loses or half-shows a stream"),
  // Each round starts a server process; the whole loop is bounded by ROUNDS.
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "valise-crash-" });
    const dataDir = join(tmp, "data");
    const trees = join(dataDir, "trees");
    const venv = await venvVariants(join(tmp, "fx"));
    const random = seeded(SEED);
    const schedule: Kind[] = Array.from({ length: ROUNDS }, (_, i) => KINDS[i % KINDS.length]!);
    for (let i = schedule.length - 1; i > 0; i--) {
      const j = random(i + 1);
      [schedule[i], schedule[j]] = [schedule[j]!, schedule[i]!];
    }
    const sessions: string[] = Array.from({ length: SESSIONS }, () => crypto.randomUUID());
    // What each session may hold (every name is sent once, with these bytes), and what it
    // must hold: acknowledged by the server, or seen after an earlier restart.
    const sent = sessions.map(() => new Map<string, string>());
    const durable = sessions.map(() => new Map<string, string>());
    const serverSideIds = new Map<string, string>();
    const variants = new Map<string, number>();
    const checker = new DataDirChecker();
    const landed = new Map<string, number>();
    const land = (how: string) => landed.set(how, (landed.get(how) ?? 0) + 1);
    let last: { round: number; kind: Kind; streams: Stream[]; commits: number } | undefined;

    /** Restart checks: the data dir's invariants, then last round's streams against it. */
    const verify = async (server: ServerProcess): Promise<number> => {
      const restored = await server.waitForLog(/session\(s\) restored/);
      const state = await checker.check(dataDir);
      const where = last ? `after round ${last.round} (${last.kind}, seed ${SEED})` : "at start";
      ok(
        restored.includes(`; ${state.sessions.size} session(s) restored`),
        `${where}: ${restored}, but ${state.sessions.size} on disk`,
      );
      let artifacts = 0;
      for (const [id, held] of state.sessions) {
        const i = sessions.indexOf(id);
        ok(i >= 0, `${where}: a session nobody opened: ${id}`);
        const ssid = serverSideIds.get(id);
        if (ssid) equal(state.serverSideIds.get(id), ssid, `${where}: server-side id of ${id}`);
        for (const [name, digest] of held) {
          equal(digest, sent[i]!.get(name), `${where}: ${id} holds ${name} with other bytes`);
        }
        for (const [name, digest] of durable[i]!) {
          equal(held.get(name), digest, `${where}: ${id} lost ${name}`);
        }
        for (const [name, digest] of held) durable[i]!.set(name, digest);
        artifacts += held.size;
      }
      // A tree is the whole of its own archive: its variant's marker, and its last entry.
      for (const t of state.trees) {
        const at = join(trees, t);
        equal(
          await Deno.readTextFile(join(at, "crash-variant")),
          `${variants.get(t.split("-")[0]!)}\n`,
          `${where}: tree ${t}`,
        );
        ok(await exists(join(at, "pad", `f${PAD_FILES - 1}.py`)), `${where}: tree ${t} incomplete`);
      }
      let whole = 0;
      for (const s of last?.streams ?? []) {
        const held = state.sessions.get(sessions[s.session]!) ?? new Map<string, string>();
        const shown = [...s.artifacts.keys()].filter((n) => held.has(n));
        ok(
          shown.length === 0 || shown.length === s.artifacts.size,
          `${where}: session ${s.session} shows part of a stream: ${shown.join(", ")}`,
        );
        if (s.response) equal(shown.length, s.artifacts.size, `${where}: acknowledged, then lost`);
        if (s.holdAt < s.requests.length) equal(shown.length, 0, `${where}: unfinished, yet shown`);
        if (shown.length) whole++;
      }
      // Killed after this many commits were logged or answered: all of them must be there.
      ok(whole >= (last?.commits ?? 0), `${where}: ${last?.commits} commits seen, ${whole} kept`);
      return artifacts;
    };

    try {
      for (let round = 0; round < ROUNDS; round++) {
        const kind = schedule[round]!;
        const server = await startServer({ dataDir });
        try {
          await verify(server);
          // An archive of its own for this round (an unpack), or an earlier round's (a tree
          // that is already there, or was never finished).
          const variant = kind === "unpack" || random(2) === 0 ? round : random(round + 1);
          const archive = venv(variant);
          variants.set(sha(archive), variant);
          const big = new Uint8Array(BIG).map((_, i) => (i * 13 + round) & 0xff);
          const count = kind === "committed" ? SESSIONS : 1 + random(SESSIONS);
          const streams: Stream[] = [];
          for (let i = 0; i < count; i++) {
            const small = new Uint8Array([round, i]);
            const items: [string, Uint8Array][] = [
              [`files/r${round}-small-${i}`, small],
              [`files/r${round}-big-${i}`, big],
              [`archives/env-r${round}.tar.gz#envr${round}`, archive],
            ];
            const requests = await Array.fromAsync(addArtifactsRequests(
              items.map(([name, data]) => bytesArtifact(name, data)),
              { sessionId: sessions[i]! },
            ));
            // Held after the first message (bound, nothing committed), inside the big
            // artifact's chunks with at least WRITE_SLACK + 256 KiB sent (mid-upload), or not.
            const holdAt = kind === "before-commit"
              ? 1 + random(8)
              : kind === "mid-upload"
              ? 42 + random(requests.length - 42)
              : requests.length;
            const artifacts = new Map(items.map(([n, d]) => [n, sha(d)]));
            for (const [n, d] of artifacts) sent[i]!.set(n, d);
            streams.push({ session: i, artifacts, requests, holdAt });
          }
          const gate = Promise.withResolvers<boolean>();
          const abort = new AbortController();
          let failure: unknown;
          let answered = 0;
          let commits = 0;
          const calls = streams.map((s) =>
            server.clients.spark.addArtifacts(held(s, gate.promise), { signal: abort.signal })
              .then((r) => {
                s.response = r;
                answered++;
              }, (e) => {
                s.error = e;
              })
          );
          // A stream failing while the server lives is a bug, not a crash effect.
          const failed = () => {
            const s = streams.find((x) => x.error !== undefined);
            if (s) failure ??= new Error(`round ${round}: session ${s.session}: ${s.error}`);
            if (failure) throw failure;
          };
          const what = `round ${round} (${kind}, seed ${SEED})`;

          if (kind === "before-commit" || kind === "mid-upload") {
            // Every held stream is bound, and its bytes are written but for what the server
            // may still buffer: the server has taken them off the wire.
            const want = streams.reduce(
              (n, s) =>
                n + Math.max(
                  0,
                  s.requests.slice(0, s.holdAt).reduce((m, r) => m + payloadBytes(r), 0) -
                    WRITE_SLACK,
                ),
              0,
            );
            await until(
              `${what}: ${streams.length} streams staged, ${want} bytes written`,
              async () => {
                failed();
                const st = await staged(dataDir);
                return st.streams === streams.length && st.bytes >= want ? true : undefined;
              },
            );
            land(kind);
          } else if (kind === "unpack") {
            // Caught with the archive's k-th padding file unpacked (the unpack goes on), or,
            // if the unpack finished before it was seen, just after it.
            const archiveSha = sha(archive);
            const k = random(PAD_FILES);
            const how = await until(`${what}: unpack of ${archiveSha} under way`, async () => {
              failed();
              const dir = await unpackDir(trees, archiveSha);
              if (dir && await exists(join(dir, "pad", `f${k}.py`))) return "unpacking";
              for await (const e of Deno.readDir(trees)) {
                if (e.name.startsWith(`${archiveSha}-`)) return "unpacked";
              }
              return answered > 0 ? "answered" : undefined;
            });
            land(`unpack (seen ${how})`);
          } else {
            // Right after the j-th commit: as the server logged it, or as the client got it.
            commits = 1 + random(streams.length);
            const byLog = random(2) === 0;
            const re = /rpc spark\.connect\.SparkConnectService\/AddArtifacts OK/;
            await until(`${what}: ${commits} commits ${byLog ? "logged" : "answered"}`, () => {
              failed();
              const n = byLog ? server.log.filter((l) => re.test(l)).length : answered;
              return Promise.resolve(n >= commits || undefined);
            });
            land(`committed (${byLog ? "logged" : "answered"})`);
          }
          server.child.kill("SIGKILL");
          await server.child.status;
          // Only now may held streams go on: they fail, as the server is gone.
          gate.resolve(false);
          abort.abort();
          await guarded(`${what}: the calls end once the server is gone`, Promise.all(calls));
          if (kind === "unpack" && await unpackDir(trees, sha(archive))) {
            land("unpack (died with the unpack under way)");
          }
          for (const s of streams) {
            if (!s.response) continue;
            deepEqual(
              s.response.artifacts.map((a) => [a.name, a.isCrcSuccessful]),
              [...s.artifacts.keys()].map((n) => [n, true]),
              `${what}: answer of session ${s.session}`,
            );
            serverSideIds.set(sessions[s.session]!, s.response.serverSideSessionId);
          }
          last = { round, kind, streams, commits };
        } finally {
          try {
            server.child.kill("SIGKILL");
          } catch { /* already dead */ }
          await server.child.status;
        }
      }
      // A last restart, and the last check.
      const server = await startServer({ dataDir });
      let seen = 0;
      try {
        seen = await verify(server);
      } finally {
        server.child.kill("SIGKILL");
        await server.child.status;
      }
      // By construction: every "committed" round killed after a commit.
      ok(seen > 0, "no upload ever committed");
      console.log(`seed ${SEED}: ${[...landed].sort().map(([k, n]) => `${n}× ${k}`).join(", ")}`);
    } finally {
      await removeTree(tmp);
    }
  },
});
