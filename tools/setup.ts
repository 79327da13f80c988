/**
 * Makes sure the machine has what the tests and the server's sandbox use: Debian's Python with
 * venv, bubblewrap, the archive tools the benchmarks compare against, Java 17 for Apache Spark's
 * Spark Connect server (the conformance suite's peer), nats-server for the cluster tests, Chromium
 * (the status page's browser test), tmux, zsh and fish (the CLI's terminal and completion tests),
 * and the project's own Python virtual environment (`.venv/`, from `tools/requirements-test.txt`:
 * the real PySpark client and Spark Connect server, pyarrow, pandas, venv-pack, pex, uv). Installs
 * what is missing with apt-get when running as root (otherwise prints the command to run and
 * fails), and with pip from PyPI. Without PyPI the tests that need the environment say so and are ignored; with
 * `VALISE_SETUP_STRICT=1` (CI) setup fails instead.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
const PACKAGES: Record<string, string> = {
  "python3": "/usr/bin/python3",
  "python3-grpcio": "/usr/lib/python3/dist-packages/grpc/__init__.py",
  "python3-protobuf": "/usr/lib/python3/dist-packages/google/protobuf/__init__.py",
  "python3-venv": "/usr/lib/python3.11/ensurepip/__init__.py",
  "python3-pandas": "/usr/lib/python3/dist-packages/pandas/__init__.py",
  "python3-pyflakes": "/usr/lib/python3/dist-packages/pyflakes/__init__.py",
  "bubblewrap": "/usr/bin/bwrap",
  "pigz": "/usr/bin/pigz",
  "zstd": "/usr/bin/zstd",
  "xz-utils": "/usr/bin/xz",
  "bzip2": "/usr/bin/bzip2",
  "libarchive-tools": "/usr/bin/bsdtar",
  "unzip": "/usr/bin/unzip",
  "zip": "/usr/bin/zip",
  "procps": "/usr/bin/ps",
  // Apache Spark's Spark Connect server (the conformance suite's peer) runs on it.
  "openjdk-17-jre-headless": "/usr/bin/java",
  // The cluster tests' NATS JetStream cluster (Valise nodes sharing sessions, `--cluster`).
  "nats-server": "/usr/sbin/nats-server",
  // The status page's browser test (tests/status_page_test.ts, driven by playwright-core).
  "chromium": "/usr/bin/chromium",
  // The CLI's tests: a real terminal for its progress bars and console, real shells for its
  // completions.
  "tmux": "/usr/bin/tmux",
  "zsh": "/usr/bin/zsh",
  "fish": "/usr/bin/fish",
};

async function present(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

const missing: string[] = [];
for (const [pkg, path] of Object.entries(PACKAGES)) {
  if (!(await present(path))) missing.push(pkg);
}
if (missing.length > 0) await installDebian(missing);
await ensureVenv();

async function installDebian(missing: string[]): Promise<void> {
  const isRoot = Deno.uid?.() === 0;
  if (!isRoot || Deno.build.os !== "linux") {
    console.error(
      `setup: missing Debian packages: ${missing.join(" ")}\n` +
        `setup: install them with: sudo apt-get install -y ${missing.join(" ")}`,
    );
    Deno.exit(1);
  }
  console.error(`setup: installing ${missing.join(" ")} with apt-get`);
  const env = { ...Deno.env.toObject(), DEBIAN_FRONTEND: "noninteractive" };
  const run = async (args: string[]) => {
    const st = await new Deno.Command("apt-get", {
      args,
      env,
      stdout: "inherit",
      stderr: "inherit",
    })
      .spawn().status;
    return st.success;
  };
  if (!(await run(["install", "-y", "-q", ...missing]))) {
    if (!(await run(["update", "-q"])) || !(await run(["install", "-y", "-q", ...missing]))) {
      console.error("setup: apt-get failed");
      Deno.exit(1);
    }
  }
}

/** Creates or updates `.venv/` from the pinned requirements; reinstalls when they change. */
async function ensureVenv(): Promise<void> {
  const root = new URL("..", import.meta.url).pathname;
  const venv = join(root, ".venv");
  const reqFile = join(root, "tools", "requirements-test.txt");
  const want = createHash("sha256").update(await Deno.readTextFile(reqFile)).digest("hex");
  const stamp = join(venv, ".requirements-sha256");
  if ((await Deno.readTextFile(stamp).catch(() => "")).trim() === want) return;
  const strict = Deno.env.get("VALISE_SETUP_STRICT") === "1";
  const fail = (why: string) => {
    console.error(
      `setup: cannot install the Python test packages of tools/requirements-test.txt into .venv/ ` +
        `(${why}). The tests that need them (real PySpark, the real Spark Connect server, ` +
        `pyarrow, venv-pack, pex, uv) will be reported as ignored. Run \`deno task setup\` where ` +
        `PyPI is reachable.`,
    );
    if (strict) Deno.exit(1);
  };
  const run = async (cmd: string[]): Promise<boolean> => {
    const st = await new Deno.Command(cmd[0]!, {
      args: cmd.slice(1),
      stdout: "inherit",
      stderr: "inherit",
    }).spawn().status;
    return st.success;
  };
  console.error("setup: installing the pinned Python test packages into .venv/ (once)");
  await Deno.remove(stamp).catch(() => {});
  if (!(await present(join(venv, "bin", "python")))) {
    if (!(await run(["/usr/bin/python3", "-m", "venv", venv]))) {
      return fail("python3 -m venv failed");
    }
  }
  const pip = [join(venv, "bin", "python"), "-m", "pip", "--disable-pip-version-check"];
  if (!(await run([...pip, "install", "-q", "-r", reqFile]))) {
    return fail("pip install failed: is PyPI reachable?");
  }
  await Deno.writeTextFile(stamp, want + "\n");
}
