// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Worker that writes batches of small files for {@linkcode WritePool}, so that file system
 * calls run on a second core while the main thread decompresses and parses. It only ever
 * creates new files (`O_CREAT|O_EXCL`) at paths the main thread validated, in directories
 * the main thread created; the tree holds no symlinks while it runs.
 */
import { type Batch, CANCEL, COMPLETED, ERROR, READY, writeBatch } from "./_write_pool.ts";

let ctl: Int32Array | undefined;
let err: Uint8Array | undefined;

globalThis.addEventListener("message", (ev: Event): void => {
  const m = (ev as MessageEvent).data as {
    init?: { ctl: SharedArrayBuffer; err: SharedArrayBuffer };
  } & Partial<Batch>;
  if (m.init) {
    ctl = new Int32Array(m.init.ctl);
    err = new Uint8Array(m.init.err);
    Atomics.store(ctl, READY, 1);
    return;
  }
  const c = ctl!;
  const failure = writeBatch(
    m as Batch,
    () => Atomics.load(c, CANCEL) !== 0 || Atomics.load(c, ERROR) !== 0,
  );
  if (failure !== undefined && Atomics.compareExchange(c, ERROR, 0, 1) === 0) {
    const bytes = new TextEncoder().encode(JSON.stringify(failure)).subarray(0, err!.length);
    err!.fill(0);
    err!.set(bytes);
  }
  Atomics.add(c, COMPLETED, 1);
  Atomics.notify(c, COMPLETED);
});
