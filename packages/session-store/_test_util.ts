// Copyright 2026 the Valise authors. Apache-2.0 license.
import { crc32 } from "@valise/protocol";
import type { CommitResult, Session } from "./session.ts";

/** Test helper: uploads named byte arrays in one stream and commits them. */
export async function addBytes(
  session: Session,
  artifacts: [string, Uint8Array | string][],
  options: { badCrc?: string[] } = {},
): Promise<CommitResult> {
  const upload = await session.beginUpload();
  try {
    for (const [name, raw] of artifacts) {
      const data = typeof raw === "string" ? new TextEncoder().encode(raw) : raw;
      const crc = options.badCrc?.includes(name) ? crc32(data) ^ 1 : crc32(data);
      if (data.length <= 32768) {
        await upload.single(name, { data, crc });
      } else {
        const n = Math.ceil(data.length / 32768);
        const first = data.subarray(0, 32768);
        await upload.begin(name, data.length, n, { data: first, crc: crc32(first) });
        for (let at = 32768; at < data.length; at += 32768) {
          const c = data.subarray(at, at + 32768);
          await upload.chunk({ data: c, crc: options.badCrc?.includes(name) ? 0 : crc32(c) });
        }
      }
    }
    await upload.finish();
    return await session.commit(upload);
  } finally {
    await upload.abort();
  }
}

/** Every file under `dir` (relative path → content as hex digest-ish string). */
export async function snapshot(
  dir: string,
  skip: (rel: string) => boolean = () => false,
): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  async function walk(rel: string): Promise<void> {
    for await (const e of Deno.readDir(rel ? `${dir}/${rel}` : dir)) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (skip(r)) continue;
      if (e.isDirectory) {
        out.set(r + "/", "dir");
        await walk(r);
      } else if (e.isSymlink) {
        out.set(r, "link:" + await Deno.readLink(`${dir}/${r}`));
      } else {
        const bytes = await Deno.readFile(`${dir}/${r}`);
        out.set(r, new TextDecoder("latin1").decode(bytes));
      }
    }
  }
  await walk("");
  return out;
}
