// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A fork server's data socket: a Unix socket of the launcher's, bound into the fork server's
 * sandbox, on which a bulk-data run's child connects itself, so that its stdin and stdout reach
 * the server without the fork server copying every byte between two pipes. A run waits for its
 * child under a random token the child sends first; a connection that does not send a token of
 * a waiting run within {@linkcode HANDSHAKE_MS} is closed, and at most
 * {@linkcode MAX_HANDSHAKES} connections are heard at once (a session's code can reach the
 * socket: it must not make the launcher hold descriptors without bound). The socket carries
 * nothing the session could not already write to the run's stdout: the bytes read from it are
 * capped and checked as stdout is.
 *
 * @module
 */
import { join } from "node:path";

/** Bytes of a token, hex-encoded on the wire. */
export const TOKEN_BYTES = 32;
/** Time a connection has to send its token. */
export const HANDSHAKE_MS = 10_000;
/** Connections heard at once before their token; more are closed at once. */
export const MAX_HANDSHAKES = 16;
/** Runs that may wait for their child's connection at once. */
const MAX_WAITING = 1024;

const decoder = new TextDecoder();
/** What the launcher's own probe sends: hex, but no token a claim makes (those are random). */
const PROBE_TOKEN = new TextEncoder().encode("0".repeat(TOKEN_BYTES * 2));

/** A run's claim on the socket: the token its child sends, and the connection once it did. */
export interface DataClaim {
  /** The token (hex), for the run's spec. */
  readonly token: string;
  /** The child's connection; rejects when the claim is cancelled or the socket closed. */
  readonly conn: Promise<Deno.UnixConn>;
  /** Gives up waiting (the run ended first); a connection that arrives later is closed. */
  cancel(): void;
  /**
   * Gives up waiting once every connection made before this call has been heard: a child that
   * connected, wrote and exited before the launcher accepted its connection still gets its
   * bytes read (its exit can be seen before its connection). Bounded by the handshake time.
   */
  cancelWhenHeard(): Promise<void>;
}

/** The Unix socket a fork server's bulk-data runs connect to. */
export class DataSocket {
  /** The socket's path (the same inside the sandbox, where it is bound). */
  readonly path: string;
  #listener: Deno.Listener<Deno.UnixConn, Deno.UnixAddr>;
  #waiting = new Map<string, (c: Deno.UnixConn | Error) => void>();
  #handshakes = 0;
  #hearing = new Set<Promise<void>>();
  #handshakeMs: number;
  #closed = false;
  #loop: Promise<void>;

  private constructor(
    path: string,
    listener: Deno.Listener<Deno.UnixConn, Deno.UnixAddr>,
    handshakeMs: number,
  ) {
    this.path = path;
    this.#listener = listener;
    this.#handshakeMs = handshakeMs;
    this.#loop = this.#accept();
  }

  /**
   * Opens a socket in `dir` (a directory only the server can list) under a name nobody can
   * guess, connectable by the worker's uid.
   *
   * @param dir The directory.
   * @param owner The worker's uid and gid when they are not the server's.
   * @param handshakeMs Time a connection has to send its token.
   * @returns The socket.
   */
  static open(
    dir: string,
    owner?: { uid: number; gid: number },
    handshakeMs: number = HANDSHAKE_MS,
  ): DataSocket {
    const path = join(dir, `d-${crypto.randomUUID()}.sock`);
    const listener = Deno.listen({ transport: "unix", path });
    try {
      if (owner) Deno.chownSync(path, owner.uid, owner.gid);
      Deno.chmodSync(path, 0o600);
    } catch (e) {
      listener.close();
      try {
        Deno.removeSync(path);
      } catch {
        // gone already
      }
      throw e;
    }
    return new DataSocket(path, listener, handshakeMs);
  }

  /**
   * Waits for a child's connection under a new token.
   *
   * @returns The claim, or `undefined` when too many runs wait already or the socket is closed
   * (the run then goes through the fork server's pipes).
   */
  claim(): DataClaim | undefined {
    if (this.#closed || this.#waiting.size >= MAX_WAITING) return undefined;
    const token = Array.from(
      crypto.getRandomValues(new Uint8Array(TOKEN_BYTES)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    let settle!: (c: Deno.UnixConn | Error) => void;
    const conn = new Promise<Deno.UnixConn>((resolve, reject) => {
      settle = (c) => c instanceof Error ? reject(c) : resolve(c);
    });
    conn.catch(() => {});
    this.#waiting.set(token, settle);
    const cancel = () => {
      if (this.#waiting.get(token) === settle) {
        this.#waiting.delete(token);
        settle(new Error("the run ended before its child connected"));
      }
    };
    return {
      token,
      conn,
      cancel,
      cancelWhenHeard: async () => {
        if (this.#waiting.get(token) === settle) await this.#heard();
        cancel();
      },
    };
  }

  /**
   * Resolves once every connection made before the call has been accepted and heard (or
   * dropped), within the handshake time: a probe connection of the launcher's own goes through
   * the same backlog (accepted in order), and the handshakes in progress once it is closed are
   * waited for.
   */
  async #heard(): Promise<void> {
    if (this.#closed) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const bound = new Promise<void>((r) => timer = setTimeout(r, this.#handshakeMs));
    const probe = (async () => {
      let conn: Deno.UnixConn | undefined;
      try {
        conn = await Deno.connect({ transport: "unix", path: this.path });
        // A token no run waits for: the socket closes it as soon as it has read it (or at once,
        // past the handshake cap); either way, every earlier connection was accepted by then.
        await conn.write(PROBE_TOKEN);
        while (await conn.read(new Uint8Array(1)) !== null) { /* nothing is ever sent */ }
      } catch {
        // closed under us, or the socket is gone: nothing more can be heard
      } finally {
        try {
          conn?.close();
        } catch { /* closed */ }
      }
      await Promise.all([...this.#hearing]);
    })();
    try {
      await Promise.race([probe, bound]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops listening, removes the socket; runs still waiting fail. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // closed already
    }
    for (const settle of this.#waiting.values()) settle(new Error("the data socket is closed"));
    this.#waiting.clear();
    await this.#loop;
    await Deno.remove(this.path).catch(() => {});
  }

  async #accept(): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        if (this.#handshakes >= MAX_HANDSHAKES) {
          conn.close();
          continue;
        }
        this.#handshakes++;
        const heard: Promise<void> = this.#hear(conn).finally(() => {
          this.#handshakes--;
          this.#hearing.delete(heard);
        });
        this.#hearing.add(heard);
      }
    } catch {
      // closed
    }
  }

  /** Reads the token (exactly its length, within HANDSHAKE_MS) and hands the connection on. */
  async #hear(conn: Deno.UnixConn): Promise<void> {
    const want = TOKEN_BYTES * 2;
    const buf = new Uint8Array(want);
    let got = 0;
    const timer = setTimeout(() => conn.close(), this.#handshakeMs);
    try {
      while (got < want) {
        const n = await conn.read(buf.subarray(got));
        if (n === null) throw new Error("closed before its token");
        got += n;
      }
    } catch {
      clearTimeout(timer);
      try {
        conn.close();
      } catch {
        // closed by the timer
      }
      return;
    }
    clearTimeout(timer);
    const token = decoder.decode(buf);
    const settle = this.#waiting.get(token);
    if (!settle) {
      conn.close();
      return;
    }
    this.#waiting.delete(token);
    settle(conn);
  }
}
