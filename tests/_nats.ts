// A real NATS JetStream cluster for the cluster tests: three `nats-server` processes on loopback,
// each with its own client, route and monitoring port and store directory under a temp dir,
// started from generated config files. Readiness is observed: each member's "Server is ready"
// line, a JetStream meta leader in the log, then `$JS.API.INFO` answering on every member.
// Members can be SIGKILLed and restarted on the same store. One cluster per test file.
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import { type ServerProcess, type StartOptions, startServer } from "./_server.ts";

/** Where Debian's package puts it. */
export const NATS_SERVER = "/usr/sbin/nats-server";

/** Whether nats-server is installed (tools/setup.ts installs it). */
export function hasNatsServer(): boolean {
  try {
    return Deno.statSync(NATS_SERVER).isFile;
  } catch {
    return false;
  }
}

/** One member of the cluster. */
export interface NatsMember {
  /** `n1`, `n2`, `n3`. */
  readonly name: string;
  /** Client port on 127.0.0.1. */
  readonly port: number;
  /** `nats://127.0.0.1:<port>`. */
  readonly url: string;
  /** Its config file. */
  readonly config: string;
  /** Its log lines so far (this incarnation). */
  log: string[];
  /** The running process, while it runs. */
  child: Deno.ChildProcess | undefined;
}

/** A running 3-member JetStream cluster. */
export interface NatsCluster {
  /** The members. */
  readonly members: NatsMember[];
  /** Every member's client URL, comma-separated (for `--cluster`). */
  readonly urls: string;
  /** The temp dir holding configs and stores. */
  readonly dir: string;
  /** SIGKILLs one member. */
  kill(name: string): Promise<void>;
  /** Starts a killed member again on its store, and waits until it serves JetStream. */
  restart(name: string): Promise<void>;
  /** Stops every member (SIGTERM, then waits) and removes the temp dir. */
  stop(): Promise<void>;
}

function freePorts(n: number): number[] {
  const listeners = Array.from(
    { length: n },
    () => Deno.listen({ hostname: "127.0.0.1", port: 0 }),
  );
  const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
  for (const l of listeners) l.close();
  return ports;
}

function waitForLine(member: NatsMember, match: RegExp, waiters: Waiters): Promise<string> {
  const seen = member.log.find((l) => match.test(l));
  if (seen) return Promise.resolve(seen);
  return new Promise((resolve, reject) => waiters.push({ member, match, resolve, reject }));
}

type Waiters = {
  member: NatsMember;
  match: RegExp;
  resolve: (l: string) => void;
  reject: (e: Error) => void;
}[];

function spawn(member: NatsMember, waiters: Waiters): void {
  member.log = [];
  const child = new Deno.Command(NATS_SERVER, {
    args: ["-c", member.config],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  member.child = child;
  (async () => {
    let rest = "";
    for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) {
      rest += text;
      const lines = rest.split("\n");
      rest = lines.pop() ?? "";
      for (const l of lines) {
        // A killed incarnation's last lines are not the new one's.
        if (member.child !== child) continue;
        member.log.push(l);
        for (let i = 0; i < waiters.length;) {
          const w = waiters[i]!;
          if (w.member === member && w.match.test(l)) {
            waiters.splice(i, 1);
            w.resolve(l);
          } else i++;
        }
      }
    }
    if (member.child !== child && member.child !== undefined) return;
    for (let i = 0; i < waiters.length;) {
      const w = waiters[i]!;
      if (w.member === member) {
        waiters.splice(i, 1);
        w.reject(new Error(`nats-server ${member.name} exited; log:\n${member.log.join("\n")}`));
      } else i++;
    }
  })();
}

/** Asks a member for `$JS.API.INFO` until it answers with JetStream's account info. */
async function jetStreamAnswers(
  url: string,
  auth: { user: string; password: string } | undefined,
  deadline: number,
): Promise<void> {
  const nc = await connect({
    servers: url,
    maxReconnectAttempts: 0,
    ...(auth ? { user: auth.user, pass: auth.password } : {}),
  });
  try {
    for (;;) {
      try {
        const m = await nc.request("$JS.API.INFO", undefined, { timeout: 2000 });
        const info = JSON.parse(new TextDecoder().decode(m.data));
        if (!info.error) return;
      } catch { /* no meta leader yet: asked again below */ }
      if (Date.now() > deadline) throw new Error(`JetStream did not answer on ${url}`);
      // Each answer is an observed state; the deadline only turns a hang into a failure.
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await nc.close();
  }
}

/**
 * Starts a 3-member JetStream cluster on loopback.
 *
 * @param options `auth` requires that user and password of clients.
 */
export async function startNatsCluster(
  options: { auth?: { user: string; password: string } } = {},
): Promise<NatsCluster> {
  const dir = await Deno.makeTempDir({ prefix: "valise-nats-" });
  const ports = freePorts(6);
  const names = ["n1", "n2", "n3"];
  const routePorts = ports.slice(3);
  const members: NatsMember[] = names.map((name, i) => {
    const config = join(dir, `${name}.conf`);
    const routes = routePorts.filter((_, j) => j !== i)
      .map((p) => `    nats-route://127.0.0.1:${p}`).join("\n");
    Deno.writeTextFileSync(
      config,
      [
        `server_name: ${name}`,
        `listen: 127.0.0.1:${ports[i]}`,
        `jetstream {`,
        `  store_dir: "${join(dir, name)}"`,
        `  max_memory_store: 64MB`,
        `  max_file_store: 4GB`,
        `}`,
        `cluster {`,
        `  name: valise-test`,
        `  listen: 127.0.0.1:${routePorts[i]}`,
        `  routes: [`,
        routes,
        `  ]`,
        `}`,
        ...(options.auth
          ? [
            `authorization {`,
            `  user: "${options.auth.user}"`,
            `  password: "${options.auth.password}"`,
            `}`,
          ]
          : []),
        "",
      ].join("\n"),
    );
    return {
      name,
      port: ports[i]!,
      url: `nats://127.0.0.1:${ports[i]}`,
      config,
      log: [],
      child: undefined,
    };
  });
  const waiters: Waiters = [];
  for (const m of members) spawn(m, waiters);
  const ready = async (m: NatsMember) => {
    await waitForLine(m, /Server is ready/, waiters);
  };
  const serving = async (m: NatsMember) => {
    await ready(m);
    await jetStreamAnswers(m.url, options.auth, Date.now() + 60_000);
  };
  const stopMember = async (m: NatsMember, signal: Deno.Signal) => {
    const child = m.child;
    if (!child) return;
    m.child = undefined;
    try {
      child.kill(signal);
    } catch { /* already gone */ }
    await child.status;
  };
  try {
    await Promise.all(members.map(ready));
    // A meta leader was elected once some member says so; then every member answers.
    await Promise.race(
      members.map((m) => waitForLine(m, /new (JetStream cluster )?metadata leader/i, waiters)),
    );
    await Promise.all(members.map(serving));
  } catch (e) {
    await Promise.all(members.map((m) => stopMember(m, "SIGKILL")));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw e;
  }
  const byName = (name: string) => {
    const m = members.find((x) => x.name === name);
    if (!m) throw new Error(`no member ${name}`);
    return m;
  };
  return {
    members,
    urls: members.map((m) => m.url).join(","),
    dir,
    kill: (name) => stopMember(byName(name), "SIGKILL"),
    async restart(name) {
      const m = byName(name);
      if (m.child) throw new Error(`${name} is running`);
      spawn(m, waiters);
      await serving(m);
    },
    async stop() {
      await Promise.all(members.map((m) => stopMember(m, "SIGTERM")));
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** Valise nodes of one cluster. */
export interface ValiseNodes {
  /** The nodes, in the order started. */
  readonly nodes: ServerProcess[];
  /** Stops every node. */
  stop(): Promise<void>;
}

/**
 * Starts Valise server processes joined to a NATS cluster (`--cluster`), one data directory
 * each, and waits for each one's "joined" log line.
 *
 * @param cluster The NATS cluster (or its URLs).
 * @param dataDirs One data directory per node; node `i` is named `v<i+1>`.
 * @param options More flags and environment for every node.
 */
export async function startValiseNodes(
  cluster: NatsCluster | string,
  dataDirs: string[],
  options: Omit<StartOptions, "dataDir"> & { replicas?: number } = {},
): Promise<ValiseNodes> {
  const urls = typeof cluster === "string" ? cluster : cluster.urls;
  const nodes: ServerProcess[] = [];
  try {
    for (const [i, dataDir] of dataDirs.entries()) {
      const node = await startServer({
        ...options,
        dataDir,
        args: [
          "--cluster",
          urls,
          "--node-id",
          `v${i + 1}`,
          "--cluster-replicas",
          String(options.replicas ?? 3),
          ...(options.args ?? []),
        ],
      });
      nodes.push(node);
      await node.waitForLog(/cluster: node v\d+ joined/);
    }
  } catch (e) {
    await Promise.all(nodes.map((n) => n.stop()));
    throw e;
  }
  return {
    nodes,
    async stop() {
      await Promise.all(nodes.map((n) => n.stop()));
    },
  };
}
