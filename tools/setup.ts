/**
 * Makes sure the machine has what the tests and the server's sandbox use: Debian's Python with
 * grpcio, protobuf, venv and pandas, bubblewrap, and the archive tools the benchmarks compare
 * against. Installs what is missing with apt-get when running as root; otherwise prints the
 * command to run and fails.
 *
 * @module
 */
const PACKAGES: Record<string, string> = {
  "python3": "/usr/bin/python3",
  "python3-grpcio": "/usr/lib/python3/dist-packages/grpc/__init__.py",
  "python3-protobuf": "/usr/lib/python3/dist-packages/google/protobuf/__init__.py",
  "python3-venv": "/usr/lib/python3.11/ensurepip/__init__.py",
  "python3-pandas": "/usr/lib/python3/dist-packages/pandas/__init__.py",
  "python3-pyflakes": "/usr/lib/python3/dist-packages/pyflakes/__init__.py",
  "pex": "/usr/bin/pex",
  "bubblewrap": "/usr/bin/bwrap",
  "pigz": "/usr/bin/pigz",
  "zstd": "/usr/bin/zstd",
  "xz-utils": "/usr/bin/xz",
  "bzip2": "/usr/bin/bzip2",
  "libarchive-tools": "/usr/bin/bsdtar",
  "unzip": "/usr/bin/unzip",
  "zip": "/usr/bin/zip",
  "procps": "/usr/bin/ps",
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
if (missing.length === 0) Deno.exit(0);

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
  const st = await new Deno.Command("apt-get", { args, env, stdout: "inherit", stderr: "inherit" })
    .spawn().status;
  return st.success;
};
if (!(await run(["install", "-y", "-q", ...missing]))) {
  if (!(await run(["update", "-q"])) || !(await run(["install", "-y", "-q", ...missing]))) {
    console.error("setup: apt-get failed");
    Deno.exit(1);
  }
}
