/**
 * Embedding Valise in your own server: its routes mounted in a Hono app under `/valise`,
 * behind your own bearer-token check, next to your other routes.
 *
 * Run: `deno run -A examples/embedding/app.ts` then point a Connect or gRPC-web client at
 * `http://localhost:8080/valise`.
 *
 * @module
 */
import { Hono } from "hono";
import { createValise, type Valise } from "@valise/server";

/** Builds the host app: Valise under `/valise`, a token check in front, a route of our own. */
export function createApp(valise: Valise, token: string): Hono {
  const app = new Hono();
  app.get("/healthz", (c) => c.text("ok"));
  app.use("/valise/*", async (c, next) => {
    if (c.req.header("authorization") !== `Bearer ${token}`) {
      return c.json({ code: "unauthenticated", message: "missing or wrong bearer token" }, 401);
    }
    return await next();
  });
  // mount() strips the prefix, so Valise sees its own paths (/spark.connect.…/Config).
  app.mount("/valise", valise.fetch);
  return app;
}

if (import.meta.main) {
  // Not ./.data: that is `deno task serve`'s, and one server owns a data directory.
  const valise = await createValise({
    dataDir: Deno.env.get("VALISE_DATA_DIR") ?? "./.data-embedded",
  });
  const token = Deno.env.get("VALISE_TOKEN") ?? "change-me";
  const app = createApp(valise, token);
  // Plain Deno.serve works too: Deno.serve(valise.fetch)
  // Loopback unless told otherwise: a server open to the network is a decision, not a default.
  Deno.serve({ hostname: Deno.env.get("HOST") ?? "127.0.0.1", port: 8080 }, app.fetch);
}
