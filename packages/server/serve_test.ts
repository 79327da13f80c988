import { equal, rejects } from "node:assert/strict";
import { join } from "node:path";
import { serve } from "./serve.ts";

Deno.test("serve() that cannot listen lets the data directory go for the next try", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-serve-" });
  const dataDir = join(tmp, "data");
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    await rejects(serve({ dataDir, port: taken.addr.port, unpack: false }));
    const server = await serve({ dataDir, port: 0, unpack: false });
    equal(server.port > 0, true);
    await server.close();
  } finally {
    taken.close();
    await Deno.remove(tmp, { recursive: true });
  }
});
