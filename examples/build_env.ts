/**
 * Builds the environments of the examples from what the machine has (no PyPI): a
 * venv-pack-style `.tar.gz`, a conda-pack-shaped `.tar.gz` with a real `bin/conda-unpack`, or a
 * `.pex`, each holding the example's `pkg/greeting.py` as the package `greeting`.
 *
 * Usage: deno run -A examples/build_env.ts venv-pack|conda-pack|pex OUT_DIR
 *
 * With PyPI you would use the real tools instead: `venv-pack -o env.tar.gz`,
 * `conda pack -o env.tar.gz`, `pex greeting -o env.pex`.
 *
 * @module
 */
import { join } from "node:path";
import { makeCondaPackLike, makePex, makeVenvPack } from "../tests/fixtures/envs.ts";

const [kind, out] = Deno.args;
if (!kind || !out || !["venv-pack", "conda-pack", "pex"].includes(kind)) {
  console.error("usage: build_env.ts venv-pack|conda-pack|pex OUT_DIR");
  Deno.exit(2);
}
const source = await Deno.readTextFile(new URL(`./${kind}/pkg/greeting.py`, import.meta.url));
const packages = { greeting: source };
await Deno.mkdir(out, { recursive: true });
let path: string;
if (kind === "venv-pack") {
  path = (await makeVenvPack(out, { packages, name: "env" })).archive;
} else if (kind === "conda-pack") {
  path = (await makeCondaPackLike(out, { packages, name: "env" })).archive;
} else {
  path = (await makePex(out, { packages, name: "env.pex" })).path;
}
console.log(join(path));
