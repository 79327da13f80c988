// The CLI's upload progress in a real terminal (tmux) at 60, 80 and 120 columns, after Ctrl-C,
// and in a pipe; against a real server process.
import { equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { startServer } from "./_server.ts";
import { Terminal, tmuxMissing } from "./_tmux.ts";

const CLI = new URL("../packages/client/cli.ts", import.meta.url).pathname;
const MiB = 1024 * 1024;
const missing = tmuxMissing();

function terminalTest(name: string, fn: () => Promise<void>): void {
  Deno.test({
    name: missing === undefined ? name : `${name} (ignored: ${missing})`,
    ignore: missing !== undefined,
    fn,
  });
}

/** Writes `mib` MiB of pseudo-random bytes, different for each `seed`. */
async function bigFile(path: string, mib: number, seed: number): Promise<void> {
  const piece = new Uint8Array(MiB);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < piece.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    piece[i] = x & 0xff;
  }
  using f = await Deno.open(path, { write: true, create: true, truncate: true });
  for (let i = 0; i < mib; i++) {
    piece[0] = i & 0xff;
    let at = 0;
    while (at < piece.length) at += await f.write(piece.subarray(at));
  }
}

/**
 * A TCP proxy to the server that forwards the client's first `passBytes` bytes and then holds
 * the rest (the upload stalls, as on a slow link), all the server's bytes as they come.
 */
function holdingProxy(port: number, passBytes: number): { port: number; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  let passed = 0;
  let release = () => {};
  const closed = new Promise<void>((r) => release = r);
  const pump = async (from: Deno.Conn, to: Deno.Conn, limited: boolean) => {
    const buf = new Uint8Array(64 * 1024);
    try {
      while (true) {
        if (limited && passed >= passBytes) return await closed;
        const n = await from.read(buf);
        if (n === null) return;
        if (limited) passed += n;
        let at = 0;
        while (at < n) at += await to.write(buf.subarray(at, n));
      }
    } catch { /* closed */ }
  };
  (async () => {
    try {
      for await (const c of listener) {
        const s = await Deno.connect({ hostname: "127.0.0.1", port });
        conns.push(c, s);
        pump(c, s, true);
        pump(s, c, false);
      }
    } catch { /* closed */ }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    close() {
      release();
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* already */ }
      }
    },
  };
}

/** What the terminal shows of the upload's progress: lines naming the file, not the stdout. */
function progressLines(lines: string[], name: string): string[] {
  return lines.filter((l) => l.includes(name) && !/\s\d+\s+uploaded$/.test(l));
}

const LAST =
  /^files\/big-\d+\.bin( \[#+\])? 100% 48\.0 MiB in \d+(\.\d)?s \(\d+(\.\d)? [KMG]iB\/s\)(, hashed in \d+(\.\d)?s)?$/;

terminalTest(
  "upload progress in a real terminal at 60, 80 and 120 columns: no line wider than the terminal, no stale line, the last one with total time and average rate",
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-tty-" });
    const server = await startServer({ dataDir: join(tmp, "data") });
    try {
      for (const width of [60, 80, 120]) {
        const name = `big-${width}.bin`;
        await bigFile(join(tmp, name), 48, width);
        const t = await Terminal.start({
          width,
          // A named session: no notice line, only the progress and the artifact's line.
          command: [
            Deno.execPath(),
            "run",
            "-A",
            CLI,
            `--session=${crypto.randomUUID()}`,
            "add",
            "--file",
            name,
          ],
          env: { NO_COLOR: "1", SPARK_REMOTE: `sc://127.0.0.1:${server.port}` },
          cwd: tmp,
        });
        try {
          const status = await t.exited();
          equal(status, 0, `exit ${status}: ${(await t.lines()).join("\n")}`);
          const all = await t.lines();
          // The shell's line after the program's: its last line ended with a newline.
          equal(all.at(-1), "[exit 0]");
          const lines = all.slice(0, -1);
          const shown = all.join("\n");
          for (const l of lines) ok(l.length <= width, `${width}: ${l.length} > ${width}: ${l}`);
          const progress = progressLines(lines, name);
          // One line is left: the last; a redraw that wrapped would have left its first part.
          equal(progress.length, 1, `${width}:\n${shown}`);
          match(progress[0]!, LAST, `${width}:\n${shown}`);
          ok(progress[0]!.length <= width - 3);
          ok(!shown.includes("ETA") && !shown.includes(" 0 B/s"), shown);
          match(
            lines.at(-1)!,
            new RegExp(`^files/${name.replace(".", "\\.")}\\s+50331648\\s+uploaded$`),
          );
          equal((await t.rows()).length, 3, `${width}:\n${shown}`);
        } finally {
          await t.close();
        }
      }
    } finally {
      await server.stop();
      await Deno.remove(tmp, { recursive: true });
    }
  },
);

terminalTest(
  "Ctrl-C during an upload in a real terminal: a newline, a clean line saying where it stopped, exit 130",
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-tty-" });
    const server = await startServer({ dataDir: join(tmp, "data") });
    // The link stalls after 16 MiB: the upload is under way, and stays so until Ctrl-C.
    const proxy = holdingProxy(server.port, 16 * MiB);
    try {
      await bigFile(join(tmp, "big.bin"), 48, 7);
      const t = await Terminal.start({
        width: 80,
        command: [
          Deno.execPath(),
          "run",
          "-A",
          CLI,
          `--session=${crypto.randomUUID()}`,
          "add",
          "--file",
          "big.bin",
        ],
        env: { NO_COLOR: "1", SPARK_REMOTE: `sc://127.0.0.1:${proxy.port}` },
        cwd: tmp,
      });
      try {
        await t.waitFor(
          "an upload bar",
          (lines) => lines.some((l) => /^files\/big\.bin \[#*-+\]\s+[1-9]\d*% .*ETA/.test(l)),
        );
        await t.send("C-c");
        equal(await t.exited(), 130);
        const all = await t.lines();
        const shown = all.join("\n");
        // A newline after the interrupted line: the shell's line starts a line of its own.
        equal(all.at(-1), "[exit 130]", shown);
        const lines = all.slice(0, -1);
        equal(lines.length, 1, shown);
        match(lines[0]!, /^files\/big\.bin interrupted at \d+% \(\d+\.\d MiB of 48\.0 MiB sent/);
        ok(lines[0]!.length <= 77, shown);
        ok(!shown.includes("^C") && !lines[0]!.includes("["), shown);
      } finally {
        await t.close();
      }
    } finally {
      proxy.close();
      await server.stop();
      await Deno.remove(tmp, { recursive: true });
    }
  },
);

Deno.test("upload progress in a pipe: hashing and its time, progress lines at a bounded rate, the average rate at the end", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise-pipe-" });
  const server = await startServer({ dataDir: join(tmp, "data") });
  try {
    await bigFile(join(tmp, "big.bin"), 48, 3);
    const started = performance.now();
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", CLI, `--session=${crypto.randomUUID()}`, "add", "--file", "big.bin"],
      env: { NO_COLOR: "1", SPARK_REMOTE: `sc://127.0.0.1:${server.port}` },
      cwd: tmp,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const seconds = (performance.now() - started) / 1000;
    const err = new TextDecoder().decode(r.stderr);
    equal(r.code, 0, err);
    const lines = err.trimEnd().split("\n");
    equal(lines[0], "hashing files/big.bin (48.0 MiB)");
    match(
      lines[1]!,
      /^hashed files\/big\.bin: 48\.0 MiB in \d+(\.\d)?s \(\d+(\.\d)? [KMG]iB\/s\)$/,
    );
    equal(lines[2], "uploading files/big.bin (48.0 MiB)");
    match(
      lines.at(-1)!,
      /^uploaded files\/big\.bin: 48\.0 MiB in \d+(\.\d)?s \(\d+(\.\d)? [KMG]iB\/s\)$/,
    );
    const progress = lines.slice(3, -1);
    for (const l of progress) match(l, /^uploading files\/big\.bin: \d+% \(/);
    // At most one line per 2 s of the command's run (which includes the upload).
    ok(progress.length <= Math.ceil(seconds / 2), `${progress.length} lines in ${seconds}s`);
  } finally {
    await server.stop();
    await Deno.remove(tmp, { recursive: true });
  }
});
