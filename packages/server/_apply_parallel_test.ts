// Copyright 2026 the Valise authors. Apache-2.0 license.
// The parallel Apply's coordinator on its own: lanes that answer in any order and at any pace
// (in-memory workers computing y = 2x on real columnar batches), the merged output checked
// against the input, failures and lost remote lanes.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import fc from "fast-check";
import type { ApplyResponse } from "@valise/protocol";
import type { Session } from "@valise/session-store";
import {
  Field,
  Int32,
  RecordBatchReader,
  Schema,
  Table,
  tableFromArrays,
  tableFromIPC,
  tableToIPC,
} from "apache-arrow";
import { encodeColumnarBatch } from "./_columnar.ts";
import { applyFailure, type Transport } from "./_apply_common.ts";
import { type Lane, type LaneItem, LaneLostError, type LaneReady } from "./_apply_lane.ts";
import { driveParallel, type ParallelContext, type ParallelJob } from "./_apply_parallel.ts";
import { isServerError } from "./errors.ts";
import { Metrics } from "./metrics.ts";

interface FakeOptions {
  where?: string;
  remote?: boolean;
  transport?: Transport;
  /** Microtask turns each unit takes. */
  ticks?: (seq: number) => number;
  /** Output batches per unit (0: none). */
  fanout?: (seq: number) => number;
  /** The unit at which the function raises. */
  failAt?: number;
  /** The unit at which the lane is lost (its node dies). */
  loseAt?: number;
  /** Ready fails with this. */
  refuse?: Error;
  /** Never ready (waits for a worker slot the whole call). */
  waiting?: boolean;
  /** Repeats each output batch's bytes to this size (to pass a remote unit's cap). */
  padTo?: number;
}

/** A worker in memory: y = 2x for each input batch, `fanout` output batches per unit. */
class FakeLane implements Lane {
  readonly where: string;
  readonly remote: boolean;
  readonly ready: Promise<LaneReady>;
  sent: number[] = [];
  killed = false;
  ended = false;
  #o: FakeOptions;
  #items: LaneItem[] = [];
  #wake: (() => void) | undefined;
  #work: Promise<void> = Promise.resolve();
  #pending = 0;
  #error: unknown;

  constructor(o: FakeOptions = {}) {
    this.#o = o;
    this.where = o.where ?? "local";
    this.remote = o.remote ?? false;
    this.ready = o.refuse
      ? Promise.reject(o.refuse)
      : o.waiting
      ? new Promise(() => {})
      : Promise.resolve({ transport: o.transport ?? "columnar", interpreter: "fake" });
    this.ready.catch(() => {});
  }

  send(seq: number, unit: Uint8Array): Promise<void> {
    if (this.killed || this.ended) return Promise.reject(new Error("lane over"));
    this.sent.push(seq);
    this.#pending++;
    this.#work = this.#work.then(() => this.#run(seq, unit));
    return Promise.resolve();
  }

  async #run(seq: number, unit: Uint8Array): Promise<void> {
    for (let i = this.#o.ticks?.(seq) ?? 0; i > 0; i--) await Promise.resolve();
    if (this.killed || this.#error) return;
    if (seq === this.#o.failAt) {
      this.#error = applyFailure("APPLY_FUNCTION_FAILED", `ValueError: unit ${seq}`, "Traceback…");
    } else if (seq === this.#o.loseAt) {
      this.#error = new LaneLostError("its node died");
    } else {
      const reader = RecordBatchReader.from(unit);
      reader.open();
      const batch = [...reader][0]!;
      const x = batch.getChild("x")!.toArray() as Int32Array;
      const out = tableFromArrays({ x, y: x.map((v) => v * 2) }).batches[0]!;
      const n = this.#o.fanout?.(seq) ?? 1;
      this.#items.push({ kind: "stderr", data: new TextEncoder().encode(`unit ${seq}\n`) });
      for (let i = 0; i < n; i++) {
        const parts = encodeColumnarBatch(out);
        const data = new Uint8Array(parts.reduce((k, p) => k + p.length, 0));
        let off = 0;
        for (const p of parts) {
          data.set(p, off);
          off += p.length;
        }
        this.#items.push({ kind: "out", seq, data });
        if (this.#o.padTo) {
          for (let b = data.length; b <= this.#o.padTo; b += data.length) {
            this.#items.push({ kind: "out", seq, data });
          }
        }
      }
      this.#items.push({
        kind: "mark",
        seq,
        stats: { rowsIn: x.length, rowsOut: n * x.length, batchesIn: 1, batchesOut: n },
      });
    }
    this.#pending--;
    this.#wake?.();
  }

  end(): void {
    this.ended = true;
    this.#wake?.();
  }

  kill(): void {
    this.killed = true;
    this.#wake?.();
  }

  async *items(): AsyncGenerator<LaneItem, void, undefined> {
    for (;;) {
      const item = this.#items.shift();
      if (item) {
        yield item;
        continue;
      }
      if (this.#error) throw this.#error;
      if (this.killed) throw new Error("killed");
      if (this.ended && this.#pending === 0) return;
      await new Promise<void>((r) => this.#wake = r);
      this.#wake = undefined;
    }
  }
}

function inputOf(sizes: number[]): { bytes: Uint8Array; table: Table } {
  const total = sizes.reduce((a, b) => a + b, 0);
  const whole = tableFromArrays({ x: Int32Array.from({ length: total }, (_, i) => i) }).batches[0]!;
  let at = 0;
  const batches = sizes.map((n) => whole.slice(at, at += n));
  const full = batches.length
    ? new Table(batches)
    : new Table(new Schema([new Field("x", new Int32(), true)]));
  return { bytes: tableToIPC(full, "stream"), table: full };
}

async function* chunks(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.slice(i, i + size);
}

interface Run {
  responses: ApplyResponse[];
  table: Table | undefined;
  error: unknown;
}

async function run(
  ctx: ParallelContext,
  input: Uint8Array,
  parallelism: number,
  chunk = 1 << 20,
): Promise<Run> {
  const job: ParallelJob = {
    fn: { code: "", name: "f" },
    form: "columns",
    declared: undefined,
    declaredBytes: new Uint8Array(),
    timeoutMs: 0,
    input: chunks(input, chunk),
    signal: new AbortController().signal,
  };
  const responses: ApplyResponse[] = [];
  let error: unknown;
  try {
    for await (const r of driveParallel(ctx, {} as Session, job, parallelism)) responses.push(r);
  } catch (e) {
    error = e;
  }
  const ipcParts = responses.flatMap((r) =>
    r.response.case === "arrowIpc" ? [r.response.value] : []
  );
  const all = new Uint8Array(ipcParts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of ipcParts) {
    all.set(p, off);
    off += p.length;
  }
  return { responses, table: all.length ? tableFromIPC(all) : undefined, error };
}

function expected(sizes: number[], fanout: (seq: number) => number): number[][] {
  const rows: number[][] = [];
  let next = 0;
  sizes.forEach((n, seq) => {
    const xs = Array.from({ length: n }, () => next++);
    for (let k = 0; k < fanout(seq); k++) for (const x of xs) rows.push([x, 2 * x]);
  });
  return rows;
}

function rowsOf(t: Table | undefined): number[][] {
  if (!t) return [];
  return t.toArray().map((r) => [Number(r.x), Number(r.y)]);
}

const baseCtx = { launcher: undefined as never, limits: undefined as never };

Deno.test("parallel Apply: outputs come back in input order, whatever the lanes' pace", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.integer({ min: 0, max: 7 }), { maxLength: 24 }),
      fc.integer({ min: 2, max: 5 }),
      fc.array(fc.integer({ min: 0, max: 40 }), { minLength: 1, maxLength: 24 }),
      fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 1, maxLength: 24 }),
      fc.integer({ min: 1, max: 400 }),
      fc.constantFrom(undefined, 1, 300, 5000),
      async (sizes, parallelism, ticks, fans, chunk, laneBufferBytes) => {
        const fanout = (seq: number) => fans[seq % fans.length]!;
        const lanes: FakeLane[] = [];
        const ctx: ParallelContext = {
          ...baseCtx,
          // Small buffers pause lanes whose output waits for its turn.
          laneBufferBytes,
          newLocal: () => {
            const l = new FakeLane({
              ticks: (seq) => ticks[(seq + lanes.length) % ticks.length]!,
              fanout,
            });
            lanes.push(l);
            return l;
          },
        };
        const { bytes } = inputOf(sizes);
        const r = await run(ctx, bytes, parallelism, chunk);
        equal(r.error, undefined);
        deepEqual(rowsOf(r.table), expected(sizes, fanout));
        equal(lanes.length, parallelism);
        const done = r.responses.at(-1)!.response;
        equal(done.case, "done");
        if (done.case !== "done") return;
        equal(Number(done.value.rowsIn), sizes.reduce((a, b) => a + b, 0));
        equal(Number(done.value.batchesIn), sizes.length);
        equal(Number(done.value.rowsOut), expected(sizes, fanout).length);
        equal(done.value.parallelism, parallelism);
        // Every unit ran once, and every lane's stderr came through.
        deepEqual(lanes.flatMap((l) => l.sent).sort((a, b) => a - b), sizes.map((_, i) => i));
        const printed = r.responses.flatMap((x) =>
          x.response.case === "stderr" ? [new TextDecoder().decode(x.response.value)] : []
        );
        equal(printed.length, sizes.length);
      },
    ),
    { numRuns: 60 },
  );
});

Deno.test("parallel Apply: a unit goes to the least busy lane, at most two at a time per lane", async () => {
  const lanes: FakeLane[] = [];
  const slow = (seq: number) => (seq === 0 ? 200 : 0);
  const ctx: ParallelContext = {
    ...baseCtx,
    newLocal: () => {
      const l = new FakeLane({ ticks: slow });
      lanes.push(l);
      return l;
    },
  };
  const r = await run(ctx, inputOf([3, 3, 3, 3, 3, 3, 3, 3]).bytes, 3);
  equal(r.error, undefined);
  // The lane stuck on unit 0 took one more at most; the others took the rest.
  ok(lanes[0]!.sent.length <= 2, `lane 0 took ${lanes[0]!.sent}`);
  deepEqual(rowsOf(r.table).map((row) => row[0]), Array.from({ length: 24 }, (_, i) => i));
});

Deno.test("parallel Apply: the first worker may be the one left waiting for a slot", async () => {
  const lanes: FakeLane[] = [];
  const ctx: ParallelContext = {
    ...baseCtx,
    newLocal: () => {
      const l = new FakeLane({ waiting: lanes.length === 0 });
      lanes.push(l);
      return l;
    },
  };
  const sizes = [3, 1, 4, 1, 5, 9, 2, 6];
  const r = await run(ctx, inputOf(sizes).bytes, 3);
  equal(r.error, undefined);
  deepEqual(rowsOf(r.table), expected(sizes, () => 1));
  equal(lanes[0]!.sent.length, 0);
  ok(lanes[0]!.killed, "the waiting worker is stopped at the end");
});

Deno.test("parallel Apply: a worker's failure fails the call with its error and stops the others", async () => {
  const lanes: FakeLane[] = [];
  const ctx: ParallelContext = {
    ...baseCtx,
    newLocal: () => {
      // Whichever lane gets unit 3 raises there.
      const l = new FakeLane({ failAt: 3, ticks: () => 3 });
      lanes.push(l);
      return l;
    },
  };
  const r = await run(ctx, inputOf([2, 2, 2, 2, 2, 2, 2, 2, 2, 2]).bytes, 3);
  ok(isServerError(r.error), String(r.error));
  if (!isServerError(r.error)) return;
  equal(r.error.code, "APPLY_FUNCTION_FAILED");
  equal(r.error.detail, "ValueError: unit 3");
  // Its traceback went out as an `error` response first, as with one worker.
  const err = r.responses.find((x) => x.response.case === "error");
  ok(err && err.response.case === "error");
  equal(err.response.value.traceback, "Traceback…");
  ok(lanes.every((l) => l.killed), "every lane is stopped");
  ok(!r.responses.some((x) => x.response.case === "done"));
});

Deno.test("parallel Apply: a lost remote lane's units run on this node; the rows are right", async () => {
  let lostSome = 0;
  for (const loseAt of [0, 1, 4, 9]) {
    const locals: FakeLane[] = [];
    const metrics = new Metrics();
    const remote = [
      new FakeLane({ where: "b", remote: true, loseAt, ticks: () => 2 }),
      new FakeLane({ where: "c", remote: true, ticks: () => 5 }),
    ];
    const ctx: ParallelContext = {
      ...baseCtx,
      metrics,
      newLocal: () => {
        const l = new FakeLane({ ticks: () => 1 });
        locals.push(l);
        return l;
      },
      remote: { open: () => Promise.resolve(remote) },
    };
    const sizes = Array.from({ length: 12 }, () => 4);
    const r = await run(ctx, inputOf(sizes).bytes, 3);
    equal(r.error, undefined, `lost at ${loseAt}: ${r.error}`);
    deepEqual(rowsOf(r.table), expected(sizes, () => 1));
    if (remote[0]!.sent.includes(loseAt)) {
      lostSome++;
      ok(remote[0]!.killed);
      // Replaced by a worker here: the call kept its parallelism.
      equal(locals.length, 2);
      ok(locals.some((l) => l.sent.includes(loseAt)), `unit ${loseAt} ran again here`);
      ok(
        (await metrics.render(fakeStore, fakeLauncher)).includes("valise_apply_lanes_lost_total 1"),
      );
    }
  }
  ok(lostSome >= 2, `the remote lane was lost in ${lostSome} of 4 runs`);
});

Deno.test("parallel Apply: remote lanes that cannot start, or take another transport, are replaced here", async () => {
  const locals: FakeLane[] = [];
  const remote = [
    new FakeLane({ where: "b", remote: true, refuse: new Error("no such session there") }),
    new FakeLane({ where: "c", remote: true, transport: "arrow" }),
  ];
  const ctx: ParallelContext = {
    ...baseCtx,
    newLocal: () => {
      const l = new FakeLane();
      locals.push(l);
      return l;
    },
    remote: { open: () => Promise.resolve(remote) },
  };
  const r = await run(ctx, inputOf([1, 2, 3, 4, 5, 6]).bytes, 3);
  equal(r.error, undefined);
  deepEqual(rowsOf(r.table), expected([1, 2, 3, 4, 5, 6], () => 1));
  equal(locals.length, 3);
  deepEqual(remote.map((l) => l.sent.length), [0, 0]);
});

Deno.test("parallel Apply: a remote unit whose output passes the cap runs here instead", async () => {
  const locals: FakeLane[] = [];
  const remote = [new FakeLane({ where: "b", remote: true, padTo: 4096 })];
  const ctx: ParallelContext = {
    ...baseCtx,
    remoteUnitBytes: 2048,
    newLocal: () => {
      const l = new FakeLane();
      locals.push(l);
      return l;
    },
    remote: { open: () => Promise.resolve(remote) },
  };
  const sizes = [5, 5, 5, 5];
  const r = await run(ctx, inputOf(sizes).bytes, 2);
  equal(r.error, undefined);
  deepEqual(rowsOf(r.table), expected(sizes, () => 1));
  ok(remote[0]!.killed);
});

Deno.test("parallel Apply: input that is not Arrow IPC fails APPLY_INVALID_INPUT; the lanes stop", async () => {
  const lanes: FakeLane[] = [];
  const ctx: ParallelContext = {
    ...baseCtx,
    newLocal: () => {
      const l = new FakeLane();
      lanes.push(l);
      return l;
    },
  };
  const r = await run(ctx, new TextEncoder().encode("this is not arrow at all"), 2);
  ok(isServerError(r.error));
  if (isServerError(r.error)) equal(r.error.code, "APPLY_INVALID_INPUT");
  ok(lanes.every((l) => l.killed));
  await rejects(Promise.reject(r.error));
});

const fakeStore = {
  sessions: () => [],
  blobs: { list: () => Promise.resolve([]) },
  trees: { list: () => Promise.resolve([]), builds: 0, buildSeconds: 0 },
  layers: { list: () => Promise.resolve([]) },
} as never;
const fakeLauncher = {
  stats: () => ({ running: 0, queued: 0, forkServers: 0 }),
  sandboxed: false,
} as never;
