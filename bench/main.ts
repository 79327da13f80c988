/**
 * Runs the benchmarks: every `bench/*_bench.ts`, or those whose names are given
 * (`deno task bench archive upload`). Each runs in its own process so that one's memory
 * does not colour another's peak RSS.
 *
 * @module
 */
const dir = new URL(".", import.meta.url).pathname;
const wanted = Deno.args;
const names: string[] = [];
for await (const e of Deno.readDir(dir)) {
  if (e.isFile && e.name.endsWith("_bench.ts")) names.push(e.name.slice(0, -"_bench.ts".length));
}
names.sort();
let failed = 0;
for (const name of names) {
  if (wanted.length && !wanted.includes(name)) continue;
  console.log(`\n## bench: ${name}\n`);
  const status = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${dir}${name}_bench.ts`],
    stdout: "inherit",
    stderr: "inherit",
  }).spawn().status;
  if (!status.success) failed++;
}
if (failed) Deno.exit(1);
