// Copyright 2026 the Valise authors. Apache-2.0 license.
// Helpers shared by the tests of this package (not exported by mod.ts, not published).

/** Everything under `root` except `skip` (relative names): path → description. */
export async function snapshot(root: string, skip: string[] = []): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  async function walk(dir: string, rel: string): Promise<void> {
    for await (const e of Deno.readDir(dir)) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (skip.includes(r)) continue;
      const p = `${dir}/${e.name}`;
      const st = await Deno.lstat(p);
      if (st.isSymlink) out.set(r, `link:${await Deno.readLink(p)}`);
      else if (st.isDirectory) {
        out.set(r, `dir:${(st.mode! & 0o7777).toString(8)}`);
        await walk(p, r);
      } else {
        const data = await Deno.readFile(p);
        out.set(
          r,
          `file:${(st.mode! & 0o7777).toString(8)}:${st.mtime?.getTime()}:${await hash(data)}`,
        );
      }
    }
  }
  await walk(root, "");
  return out;
}

async function hash(data: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = await crypto.subtle.digest("SHA-1", data);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A sandbox: `<root>/outside/` with a file and a directory that hostile archives aim at, and
 * `<root>/dest` (not created) as the destination.
 */
export async function makeSandbox(): Promise<{ root: string; dest: string; outside: string }> {
  const root = await Deno.makeTempDir({ prefix: "valise-archive-test-" });
  const outside = `${root}/outside`;
  await Deno.mkdir(`${outside}/sub`, { recursive: true });
  await Deno.writeTextFile(`${outside}/target`, "original");
  await Deno.writeTextFile(`${outside}/sub/file`, "original");
  return { root, dest: `${root}/w/dest`, outside };
}
