// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `deno task unpack ARCHIVE DEST`: prints the detection and the result of unpacking, or the
 * error (exit code 1; 2 for usage errors).
 *
 * @module
 */
import { detect, isUnpackError, unpack } from "./mod.ts";

if (import.meta.main) {
  const [archive, dest, ...rest] = Deno.args;
  if (archive === undefined || dest === undefined || rest.length) {
    console.error("usage: deno task unpack ARCHIVE DEST");
    Deno.exit(2);
  }
  try {
    const detection = await detect(archive);
    console.log("detection:", JSON.stringify(detection, null, 2));
    const t0 = performance.now();
    const ac = new AbortController();
    Deno.addSignalListener("SIGINT", () => ac.abort(new Error("interrupted")));
    const result = await unpack(archive, dest, { signal: ac.signal });
    const ms = performance.now() - t0;
    const { detection: _d, ...shown } = result;
    console.log("result:", JSON.stringify(shown, null, 2));
    console.log(
      `unpacked ${result.entries} entries, ${result.bytesWritten} bytes in ${
        (ms / 1000).toFixed(2)
      } s`,
    );
  } catch (e) {
    if (isUnpackError(e)) {
      console.error(
        `error ${e.code}${
          e.entry !== undefined ? ` (entry ${JSON.stringify(e.entry)})` : ""
        }: ${e.message}`,
      );
    } else {
      console.error(e);
    }
    Deno.exit(1);
  }
  Deno.exit(0);
}
