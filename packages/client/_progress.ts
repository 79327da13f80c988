// Copyright 2026 the Valise authors. Apache-2.0 license.
import type { ArtifactProgress } from "./upload.ts";

/** Writes text somewhere (the CLI's stderr). */
export type Write = (text: string) => void;

/** Renders upload progress: a bar on a terminal, plain lines in a pipe, nothing when quiet. */
export interface ProgressRenderer {
  /** Takes one report. */
  update(p: ArtifactProgress): void;
  /** Ends any bar still drawn. */
  finish(): void;
}

/** Human-readable bytes: `512 B`, `1.5 KiB`, `20.0 MiB`. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds)) return "--";
  const s = Math.ceil(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${String(s % 60).padStart(2, "0")}s` : `${Math.floor(m / 60)}h${m % 60}m`;
}

/** A bar redrawn in place with `\r`, at most every `intervalMs`, ended by a newline. */
export function ttyRenderer(write: Write, columns = 80, intervalMs = 100): ProgressRenderer {
  let drawnFor: string | undefined;
  let last = 0;
  const draw = (p: ArtifactProgress, final: boolean) => {
    const pct = p.totalBytes === 0 ? 1 : p.bytesSent / p.totalBytes;
    const rate = p.bytesPerSecond;
    const eta = rate > 0 ? (p.totalBytes - p.bytesSent) / rate : Infinity;
    const tail = ` ${formatBytes(p.bytesSent)}/${formatBytes(p.totalBytes)} ${
      formatBytes(Math.round(rate))
    }/s ETA ${final ? "0s" : formatEta(eta)}`;
    const label = p.name.length > 28 ? `…${p.name.slice(-27)}` : p.name;
    const width = Math.max(10, Math.min(30, columns - label.length - tail.length - 5));
    const fill = Math.round(pct * width);
    const bar = `[${"#".repeat(fill)}${"-".repeat(width - fill)}]`;
    write(`\r\x1b[2K${label} ${bar} ${String(Math.floor(pct * 100)).padStart(3)}%${tail}`);
    drawnFor = p.name;
  };
  const end = () => {
    if (drawnFor !== undefined) write("\n");
    drawnFor = undefined;
  };
  return {
    update(p) {
      if (drawnFor !== undefined && drawnFor !== p.name) end();
      if (p.phase === "hash") {
        // Hashing a large environment takes a moment; say so instead of staying silent.
        if (p.totalBytes >= 8 * 1024 * 1024) {
          write(`\r\x1b[2K${p.name}: hashing ${formatBytes(p.totalBytes)}…`);
          drawnFor = p.name;
        }
        return;
      }
      if (p.phase === "attached") {
        write(`\r\x1b[2K${p.name}: already on the server, ${formatBytes(p.totalBytes)} not sent\n`);
        return;
      }
      const now = performance.now();
      if (p.phase === "done") {
        draw({ ...p, bytesSent: p.totalBytes }, true);
        end();
        return;
      }
      if (drawnFor === p.name && now - last < intervalMs && p.bytesSent < p.totalBytes) return;
      last = now;
      draw(p, false);
    },
    finish: end,
  };
}

/** One line when an artifact starts uploading and one when it is added. */
export function plainRenderer(write: Write): ProgressRenderer {
  const started = new Map<string, { at: number; rate: number }>();
  return {
    update(p) {
      if (p.phase === "upload" && !started.has(p.name)) {
        started.set(p.name, { at: performance.now(), rate: 0 });
        write(`uploading ${p.name} (${formatBytes(p.totalBytes)})\n`);
      } else if (p.phase === "upload") {
        started.get(p.name)!.rate = p.bytesPerSecond;
      } else if (p.phase === "attached") {
        write(`attached ${p.name}: already on the server, ${formatBytes(p.totalBytes)} not sent\n`);
      } else if (p.phase === "done") {
        const s = started.get(p.name);
        const secs = s ? (performance.now() - s.at) / 1000 : 0;
        const rate = s?.rate || (secs > 0 ? p.totalBytes / secs : 0);
        write(
          `uploaded ${p.name}: ${formatBytes(p.totalBytes)} in ${secs.toFixed(1)}s (${
            formatBytes(Math.round(rate))
          }/s)\n`,
        );
        started.delete(p.name);
      }
    },
    finish() {},
  };
}

/** Renders nothing (`--quiet`). */
export function quietRenderer(): ProgressRenderer {
  return { update() {}, finish() {} };
}
