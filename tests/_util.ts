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
