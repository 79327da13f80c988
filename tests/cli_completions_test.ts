// The shell completions of `valise completions bash|zsh|fish`, sourced into the real shells:
// bash's completion function called as bash calls it (and a real Tab in bash in tmux), fish's
// own `complete -C`, and zsh's completion system driven by Tab in tmux.
import { deepEqual, equal } from "node:assert/strict";
import { join } from "node:path";
import { Terminal, tmuxMissing } from "./_tmux.ts";

const CLI = new URL("../packages/client/cli.ts", import.meta.url).pathname;

function has(program: string): string | undefined {
  try {
    new Deno.Command(program, { args: ["--version"], stdout: "null", stderr: "null" }).outputSync();
    return undefined;
  } catch {
    return `${program} is not installed (Debian: apt-get install ${program}; deno task setup does it)`;
  }
}

function shellTest(name: string, needs: string[], fn: () => Promise<void>): void {
  const why = needs.map((n) => n === "tmux" ? tmuxMissing() : has(n)).find((w) => w);
  Deno.test({
    name: why === undefined ? name : `${name} (ignored: ${why})`,
    ignore: why !== undefined,
    fn,
  });
}

/** The script as the CLI prints it. */
async function script(shell: string): Promise<string> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "completions", shell],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  equal(r.code, 0, new TextDecoder().decode(r.stderr));
  return new TextDecoder().decode(r.stdout);
}

/** A directory with files to complete, and the script saved in it. */
async function workdir(shell: string): Promise<{ dir: string; file: string }> {
  const dir = await Deno.makeTempDir({ prefix: `valise-complete-${shell}-` });
  for (const f of ["data.arrow", "env.tar.gz", "util.py"]) {
    await Deno.writeTextFile(join(dir, f), "x");
  }
  await Deno.mkdir(join(dir, "pkgdir"));
  const file = join(dir, `valise.${shell}`);
  await Deno.writeTextFile(file, await script(shell));
  return { dir, file };
}

const COMMANDS = [
  "add",
  "apply",
  "clone",
  "completions",
  "conf",
  "health",
  "help",
  "ls",
  "new",
  "pip",
  "python",
  "release",
  "rm",
  "run",
  "status",
];

/** What a line before the cursor completes to (the words, sorted). */
const CASES: [string, string[]][] = [
  ["valise ", COMMANDS],
  ["valise ap", ["apply"]],
  ["valise --remote=sc://h:1 st", ["status"]],
  ["valise -q re", ["release"]],
  ["valise apply --fo", ["--form"]],
  ["valise apply --form ", ["columns", "pandas", "pyarrow"]],
  ["valise apply --form=p", ["pandas", "pyarrow"]],
  ["valise apply --in da", ["data.arrow"]],
  ["valise apply --schema=da", ["data.arrow"]],
  ["valise add --py", ["--pyfile"]],
  ["valise add --archive en", ["env.tar.gz"]],
  ["valise run --st", ["--stdin"]],
  ["valise conf ", ["get", "list", "set", "unset"]],
  ["valise pi", ["pip"]],
  ["valise pip ", ["install", "list", "uninstall"]],
  ["valise pip install --ind", ["--index-url"]],
  ["valise pip install -r ut", ["util.py"]],
  ["valise help a", ["add", "apply"]],
  ["valise completions ", ["bash", "fish", "zsh"]],
  ["valise --j", ["--json"]],
  ["valise status --se", ["--session"]],
];

shellTest(
  "bash completion: the sourced script completes commands, options, --opt=value values and files",
  ["bash"],
  async () => {
    const { dir, file } = await workdir("bash");
    try {
      // What bash does on Tab: COMP_LINE/COMP_POINT/COMP_WORDS set, the function called, COMPREPLY read.
      const driver = `source ${JSON.stringify(file)}
complete -p valise
while IFS= read -r line; do
  COMP_LINE=$line; COMP_POINT=\${#line}
  read -ra COMP_WORDS <<<"$line"; COMP_CWORD=\${#COMP_WORDS[@]}
  [[ $line =~ [[:space:]]$ ]] || COMP_CWORD=$((COMP_CWORD - 1))
  COMPREPLY=(); _valise
  printf '%s\\n' "$(printf '%s\\n' "\${COMPREPLY[@]}" | sed 's#/$##' | sort | tr '\\n' ' ')"
done
`;
      const child = new Deno.Command("bash", {
        args: ["--norc", "--noprofile", "-c", driver],
        cwd: dir,
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode(CASES.map(([l]) => `${l}\n`).join("")));
      await w.close();
      const r = await child.output();
      const out = new TextDecoder().decode(r.stdout).split("\n");
      equal(r.code, 0, new TextDecoder().decode(r.stderr));
      equal(out[0], "complete -F _valise valise");
      CASES.forEach(([line, want], i) => {
        deepEqual(out[i + 1]!.trim().split(" ").filter((x) => x), want, line);
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

shellTest("fish completion: fish's own completer over the sourced script", ["fish"], async () => {
  const { dir, file } = await workdir("fish");
  try {
    for (const [line, want] of CASES) {
      const r = await new Deno.Command("fish", {
        args: ["--no-config", "-c", `source ${file}; complete -C ${JSON.stringify(line)}`],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
      }).output();
      equal(r.code, 0, new TextDecoder().decode(r.stderr));
      const got = new TextDecoder().decode(r.stdout).split("\n").filter((l) => l)
        .map((l) => l.split("\t")[0]!.replace(/^--\w+=/, "").replace(/\/$/, "")).sort();
      deepEqual(got, want, line);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Types a line in an interactive shell in tmux, presses Tab (a second time to list the
 * candidates when there are several), reads the screen.
 */
async function tabs(t: Terminal, line: string, expect: RegExp, list: boolean): Promise<void> {
  await t.send("C-u");
  await t.type("clear");
  await t.send("Enter");
  await t.waitFor("a clear screen", (_, rows) => rows.length === 1 && rows[0]!.trim() === ">", {
    history: false,
  });
  await t.type(line);
  await t.send("Tab");
  if (list) await t.send("Tab");
  await t.waitFor(
    `${JSON.stringify(line)} to complete to ${expect}`,
    (lines) => expect.test(lines.join("\n")),
    { guardMs: 30_000, history: false },
  );
}

async function interactive(
  shell: "bash" | "zsh",
  steps: [string, RegExp, "list"?][],
): Promise<void> {
  const { dir, file } = await workdir(shell);
  const command = shell === "bash" ? ["bash", "--norc", "--noprofile", "-i"] : ["zsh", "-f", "-i"];
  const t = await Terminal.start({ width: 100, height: 30, command, cwd: dir, env: { PS1: "> " } });
  try {
    const setup = shell === "bash"
      ? `PS1='> '; source ${file}`
      : `PROMPT='> '; autoload -U compinit && compinit -u -D && source ${file}`;
    await t.type(setup);
    await t.send("Enter");
    // zsh lists the candidates on the first Tab (AUTO_LIST) and cycles through them on the
    // second; bash lists them on the second.
    for (const [line, expect, list] of steps) {
      await tabs(t, line, expect, shell === "bash" && list === "list");
    }
  } finally {
    await t.close();
    await Deno.remove(dir, { recursive: true });
  }
}

shellTest("zsh completion: Tab in a real zsh completes commands, options, values and files", [
  "zsh",
  "tmux",
], async () => {
  await interactive("zsh", [
    ["valise ap", /^\s*> valise apply$/m],
    ["valise apply --fo", /^\s*> valise apply --form=$/m],
    ["valise apply --form=p", /^\s*> valise apply --form=p\n.*pandas\s+pyarrow/m, "list"],
    ["valise apply --in da", /^\s*> valise apply --in data\.arrow$/m],
    ["valise conf ", /^\s*> valise conf\n.*get\s+list\s+set\s+unset/m, "list"],
    ["valise help a", /^\s*> valise help a\n.*add\s+apply/m, "list"],
    ["valise add --archive en", /^\s*> valise add --archive env\.tar\.gz$/m],
    ["valise completions z", /^\s*> valise completions zsh$/m],
    ["valise ", /add\s+-- Add local files.*\n(.*\n)*.*status\s+-- Show the session/m, "list"],
  ]);
});

shellTest("bash completion: Tab in a real interactive bash", ["bash", "tmux"], async () => {
  await interactive("bash", [
    ["valise ap", /^\s*> valise apply$/m],
    ["valise apply --form=p", /\npandas\s+pyarrow\n\s*> valise apply --form=p$/m, "list"],
    ["valise apply --in da", /^\s*> valise apply --in data\.arrow$/m],
    ["valise conf ", /\nget\s+list\s+set\s+unset\n/, "list"],
  ]);
});
