// Copyright 2026 the Valise authors. Apache-2.0 license.
import { equal, ok } from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { addArtifactsRequests, bytesArtifact, SparkConnectService } from "@valise/protocol";
import { serveMetrics } from "./metrics.ts";
import { serve } from "./serve.ts";

function value(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  if (!line) throw new Error(`no series ${series} in:\n${text}`);
  return Number(line.slice(series.length + 1));
}

Deno.test("/metrics reports sessions, bytes, dedup, RPCs and quota refusals", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-metrics-" });
  const server = await serve({ dataDir, port: 0, quotas: { maxSessionBytes: 1000 } });
  const metrics = serveMetrics(server.valise, { port: 0, hostname: "127.0.0.1" });
  try {
    const client = createClient(
      SparkConnectService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` }),
    );
    const data = new Uint8Array(600).fill(9);
    for (let i = 0; i < 2; i++) {
      await client.addArtifacts(addArtifactsRequests([bytesArtifact("files/same", data)], {
        sessionId: crypto.randomUUID(),
      }));
    }
    const sid = crypto.randomUUID();
    await client.addArtifacts(
      addArtifactsRequests([bytesArtifact("files/a", data)], { sessionId: sid }),
    );
    await client.addArtifacts(
      addArtifactsRequests([bytesArtifact("files/b", data)], { sessionId: sid }),
    )
      .catch(() => {});
    const res = await fetch(`http://127.0.0.1:${metrics.port}/metrics`);
    equal(res.headers.get("content-type"), "text/plain; version=0.0.4");
    const text = await res.text();
    equal(value(text, "valise_sessions"), 3);
    equal(value(text, "valise_artifacts"), 3);
    equal(value(text, "valise_artifact_bytes"), 1800);
    equal(value(text, "valise_blob_bytes"), 600);
    equal(value(text, "valise_dedup_saved_bytes"), 1200);
    equal(
      value(
        text,
        'valise_rpcs_total{method="spark.connect.SparkConnectService/AddArtifacts",code="OK"}',
      ),
      3,
    );
    equal(value(text, 'valise_quota_refusals_total{reason="SESSION_BYTES"}'), 1);
    ok(/valise_sandbox_enabled [01]/.test(text));
    equal((await fetch(`http://127.0.0.1:${metrics.port}/other`)).status, 404);
  } finally {
    await metrics.close();
    await server.close();
    await new Deno.Command("chmod", { args: ["-R", "u+w", dataDir] }).output();
    await Deno.remove(dataDir, { recursive: true });
  }
});
