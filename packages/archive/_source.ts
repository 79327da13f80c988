// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Decompressed byte sources. gzip and zstd use `node:zlib` in process (measured faster here
 * than piping through `pigz -dc` or `zstd -dc`); xz and bzip2 have no native decoder in Deno,
 * so they go through the system `xz -dc` / `bzip2 -dc`, fed by us so that the compressed
 * bytes consumed are known (for the ratio quota).
 */
import fs from "node:fs";
import zlib from "node:zlib";
import { UnpackError } from "./error.ts";

/** Compression formats recognised by magic bytes. */
export type Compression = "gzip" | "bzip2" | "xz" | "zstd" | "none";

/** A stream of decompressed bytes with a count of compressed bytes read. */
export interface Source {
  /** Decompressed chunks. */
  chunks: AsyncIterable<Uint8Array>;
  /** Compressed bytes read from the file so far. */
  compressedRead(): number;
  /** Stops everything (kills a child decoder); safe to call twice. */
  close(): Promise<void>;
}

const READ_CHUNK = 1 << 20;

function corrupt(compression: Compression, detail: string, cause?: unknown): UnpackError {
  return new UnpackError(
    "CORRUPT",
    `Cannot decompress ${compression} data: ${detail}`,
    cause === undefined ? {} : { cause },
  );
}

/** Opens `path` and returns its decompressed bytes, starting at byte `offset`. */
export function openSource(path: string, compression: Compression, offset = 0): Source {
  switch (compression) {
    case "none":
    case "gzip":
    case "zstd":
      return nativeSource(path, compression, offset);
    case "xz":
    case "bzip2":
      return toolSource(path, compression, offset);
  }
}

function nativeSource(path: string, compression: Compression, offset: number): Source {
  let read = 0;
  const rs = fs.createReadStream(path, { highWaterMark: READ_CHUNK, start: offset });
  rs.on("data", (c) => {
    read += (c as Uint8Array).length;
  });
  let out: NodeJS.ReadableStream;
  let dec: zlib.Gunzip | zlib.ZstdDecompress | undefined;
  if (compression === "none") {
    out = rs;
  } else {
    dec = compression === "gzip"
      ? zlib.createGunzip({ chunkSize: 1 << 18 })
      : zlib.createZstdDecompress({ chunkSize: 1 << 18 });
    rs.on("error", (e) => dec!.destroy(e));
    rs.pipe(dec);
    out = dec;
  }
  async function* chunks(): AsyncGenerator<Uint8Array> {
    try {
      for await (const c of out as AsyncIterable<Uint8Array>) yield c;
    } catch (e) {
      if (e instanceof UnpackError) throw e;
      const code = (e as { code?: string }).code ?? "";
      if (
        compression !== "none" && (code.startsWith("Z_") || code.startsWith("ERR_") || code === "")
      ) {
        throw corrupt(compression, (e as Error).message, e);
      }
      throw new UnpackError("IO", `Cannot read archive: ${(e as Error).message}`, { cause: e });
    }
  }
  return {
    chunks: chunks(),
    compressedRead: () => read,
    close: () => {
      rs.destroy();
      dec?.destroy();
      return Promise.resolve();
    },
  };
}

function toolSource(path: string, compression: "xz" | "bzip2", offset: number): Source {
  let read = 0;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(compression, {
      args: ["-dc"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    throw new UnpackError(
      "UNSUPPORTED",
      `Cannot decompress ${compression} data: the "${compression}" tool is not installed`,
      { cause: e },
    );
  }
  let closed = false;
  const stderr = new Response(child.stderr).text().catch(() => "");
  const pump = (async () => {
    const w = child.stdin.getWriter();
    let file: Deno.FsFile | undefined;
    try {
      file = await Deno.open(path);
      if (offset) await file.seek(offset, Deno.SeekMode.Start);
      while (!closed) {
        const buf = new Uint8Array(READ_CHUNK);
        const n = await file.read(buf);
        if (n === null) break;
        read += n;
        await w.write(buf.subarray(0, n));
      }
      await w.close();
    } catch {
      // the child went away (closed by us or failed): its status tells
      await w.abort().catch(() => {});
    } finally {
      file?.close();
    }
  })();
  async function* chunks(): AsyncGenerator<Uint8Array> {
    for await (const c of child.stdout) yield c;
    const status = await child.status;
    await pump;
    if (!status.success) {
      throw corrupt(
        compression,
        `${compression} -dc exited with ${status.code}: ${(await stderr).trim()}`,
      );
    }
  }
  return {
    chunks: chunks(),
    compressedRead: () => read,
    close: async () => {
      if (closed) return;
      closed = true;
      try {
        child.kill("SIGKILL");
      } catch {
        // already exited
      }
      await child.stdout.cancel().catch(() => {});
      await child.status;
      await pump;
      await stderr;
    },
  };
}
