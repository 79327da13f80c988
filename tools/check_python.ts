/**
 * Checks every `.py` file of the project: it parses as Python 3.8 (the oldest interpreter a
 * session may bring) and is pyflakes-clean. Run by `deno task check` and CI.
 *
 * @module
 */
const root = new URL("..", import.meta.url).pathname;

async function pythonFiles(): Promise<string[]> {
  const out = await new Deno.Command("git", {
    args: ["ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
    cwd: root,
    stdout: "piped",
  }).output();
  if (!out.success) throw new Error("Cannot list the project's files: git ls-files failed");
  return new TextDecoder().decode(out.stdout).split("\n").filter((f) => f !== "");
}

const PARSE = `
import ast, sys
bad = 0
for path in sys.argv[1:]:
    try:
        with open(path, encoding='utf-8') as f:
            ast.parse(f.read(), path, feature_version=(3, 8))
    except SyntaxError as e:
        print('%s:%s: not Python 3.8: %s' % (path, e.lineno, e.msg))
        bad += 1
sys.exit(1 if bad else 0)
`;

const files = await pythonFiles();
let failed = false;
for (
  const [what, args] of [
    ["Python 3.8 syntax", ["-c", PARSE, ...files]],
    ["pyflakes", ["-m", "pyflakes", ...files]],
  ] as const
) {
  const r = await new Deno.Command("/usr/bin/python3", { args: [...args], cwd: root }).output();
  const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  if (!r.success) {
    failed = true;
    console.error(`${what}: FAILED\n${text.trim()}`);
    if (text.includes("No module named pyflakes")) {
      console.error("install it with: apt-get install python3-pyflakes");
    }
  } else {
    console.error(`${what}: ${files.length} files ok`);
  }
}
if (failed) Deno.exit(1);
