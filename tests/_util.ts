// Helpers shared by the integration tests.
import type { ArtifactSource } from "@valise/protocol";

/** An artifact read from a file on disk, streamed (never held whole in memory). */
export function fileArtifact(name: string, path: string): ArtifactSource {
  return {
    name,
    size: Deno.statSync(path).size,
    async *read() {
      using f = await Deno.open(path);
      yield* f.readable;
    },
  };
}

/**
 * Removes a test's temporary tree. Shared trees and blobs are read-only on disk, which only
 * root may ignore, so write permission is given back first.
 */
export async function removeTree(dir: string): Promise<void> {
  await new Deno.Command("chmod", { args: ["-R", "u+w", dir] }).output();
  await Deno.remove(dir, { recursive: true });
}

/**
 * Writes a piece to a request and waits, if its buffer is full, until it drains or closes: a
 * hostile caller that goes on sending whatever the server does.
 *
 * @param req The request stream.
 * @param piece The bytes.
 */
export async function writeOrClosed(
  req: { write(b: Uint8Array): boolean } & NodeJS.EventEmitter,
  piece: Uint8Array,
): Promise<void> {
  if (req.write(piece)) return;
  await new Promise<void>((r) => {
    const go = () => {
      req.off("drain", go);
      req.off("close", go);
      r();
    };
    req.on("drain", go);
    req.on("close", go);
  });
}

/** The parts, joined. */
export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) out.set(p, (o += p.length) - p.length);
  return out;
}
