// Copyright 2026 the Valise authors. Apache-2.0 license.
// Another node's answers are hostile input: arbitrary bytes as replies to a remote worker's
// requests lose the lane (its units then run here) or fail it as the function's own failure,
// and nothing else; the wire's decoder refuses what is not a message.
import { equal, ok } from "node:assert/strict";
import fc from "fast-check";
import type { NatsConnection } from "@nats-io/transport-node";
import { LaneLostError } from "../_apply_lane.ts";
import { isServerError } from "../errors.ts";
import {
  ApplyWireError,
  decodeMessage,
  encodeMessage,
  laneSubject,
  openSubject,
} from "./_apply_wire.ts";
import { RemoteLane } from "./apply_remote.ts";

/** A NATS connection whose replies are scripted: the open, then `takes` in turn, then "gone". */
function fakeNats(takes: Uint8Array[]): NatsConnection {
  const lane = crypto.randomUUID();
  let i = 0;
  return {
    info: { max_payload: 1024 * 1024 },
    request(subject: string, data: Uint8Array) {
      if (subject === openSubject("v2")) {
        return Promise.resolve({
          data: encodeMessage({ ok: true, lane, transport: "columnar", interpreter: "py" }),
        });
      }
      equal(subject, laneSubject("v2", lane));
      const op = decodeMessage(data).header.op;
      if (op !== "take") return Promise.resolve({ data: encodeMessage({ ok: true }) });
      const next = takes[i++];
      return Promise.resolve({
        data: next ?? encodeMessage({ ok: false, gone: true, message: "no such worker" }),
      });
    },
    publish() {},
  } as unknown as NatsConnection;
}

async function drain(takes: Uint8Array[]): Promise<{ items: number; error: unknown }> {
  const lane = new RemoteLane(
    { nc: fakeNats(takes), nodeId: "v1", maxMessageBytes: 4096 },
    "v2",
    encodeMessage({}),
    crypto.randomUUID(),
    "columnar",
  );
  let items = 0;
  let error: unknown;
  try {
    await lane.ready;
    for await (const item of lane.items()) {
      items++;
      if (item.kind === "out") ok(item.data.length <= 4096 + 5);
    }
  } catch (e) {
    error = e;
  } finally {
    lane.kill();
  }
  return { items, error };
}

const lostOrFunction = (e: unknown) =>
  e instanceof LaneLostError || (isServerError(e) && e.code.startsWith("APPLY_"));

Deno.test("a remote worker's replies of arbitrary bytes lose the lane, nothing else", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 4 }), async (b) => {
      const r = await drain(b);
      ok(lostOrFunction(r.error), String(r.error));
    }),
    { numRuns: 200 },
  );
});

Deno.test("a remote worker's replies of arbitrary items lose the lane, or end it cleanly", async () => {
  const item = fc.record({
    k: fc.constantFrom("out", "mark", "stderr", "other"),
    seq: fc.oneof(fc.nat(5), fc.constant(-1), fc.constant("1")),
    len: fc.oneof(fc.nat(64), fc.constant(1e9)),
    last: fc.oneof(fc.boolean(), fc.constant("yes")),
    rowsIn: fc.oneof(fc.nat(9), fc.constant(-2)),
    rowsOut: fc.nat(9),
    batchesIn: fc.nat(9),
    batchesOut: fc.nat(9),
  }, { requiredKeys: ["k"] });
  const reply = fc.record({
    items: fc.array(item, { maxLength: 5 }),
    body: fc.uint8Array({ maxLength: 200 }),
    done: fc.boolean(),
    error: fc.option(
      fc.record({
        errorClass: fc.constantFrom("APPLY_FUNCTION_FAILED", "NOPE", "LAUNCH_CLOSED"),
        message: fc.string(),
      }),
      { nil: undefined },
    ),
  });
  await fc.assert(
    fc.asyncProperty(fc.array(reply, { maxLength: 3 }), async (replies) => {
      const takes = replies.map((r) =>
        encodeMessage(
          {
            ok: true,
            items: r.items,
            ...(r.done ? { done: true } : {}),
            ...(r.error ? { error: r.error } : {}),
          },
          [r.body],
        )
      );
      const r = await drain(takes);
      ok(r.error === undefined || lostOrFunction(r.error), String(r.error));
    }),
    { numRuns: 300 },
  );
});

Deno.test("a remote worker's output comes back whole, in parts, with its marks and stderr", async () => {
  const data = new Uint8Array(3000).map((_, i) => i % 251);
  const takes = [
    encodeMessage({
      ok: true,
      items: [{ k: "stderr", len: 3, last: true }, { k: "out", seq: 0, len: 1000, last: false }],
    }, [
      new TextEncoder().encode("hi\n"),
      data.subarray(0, 1000),
    ]),
    encodeMessage({ ok: true, items: [] }),
    encodeMessage({
      ok: true,
      items: [
        { k: "out", seq: 0, len: 2000, last: true },
        { k: "mark", seq: 0, rowsIn: 1, rowsOut: 2, batchesIn: 1, batchesOut: 1 },
      ],
      done: true,
    }, [data.subarray(1000)]),
  ];
  const lane = new RemoteLane(
    { nc: fakeNats(takes), nodeId: "v1", maxMessageBytes: 4096 },
    "v2",
    encodeMessage({}),
    crypto.randomUUID(),
    "columnar",
  );
  const got = [];
  for await (const item of lane.items()) got.push(item);
  lane.kill();
  equal(got.length, 3);
  equal(got[0]!.kind, "stderr");
  const out = got[1]!;
  ok(out.kind === "out" && out.seq === 0 && out.data.length === 3000);
  ok(out.kind === "out" && out.data.every((v, i) => v === i % 251));
  ok(got[2]!.kind === "mark" && got[2]!.stats.rowsOut === 2);
});

Deno.test("decodeMessage() refuses what is not a message, whatever the bytes", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      try {
        const { header, body } = decodeMessage(bytes, 100);
        ok(typeof header === "object" && !Array.isArray(header));
        ok(body.length <= bytes.length);
      } catch (e) {
        ok(e instanceof ApplyWireError, String(e));
      }
    }),
  );
  const huge = new Uint8Array(8);
  new DataView(huge.buffer).setUint32(0, 1 << 30);
  try {
    decodeMessage(huge);
    ok(false);
  } catch (e) {
    ok(e instanceof ApplyWireError);
  }
});
