#!/usr/bin/env bash
# The venv-pack flow: make a venv, install a package into it, pack it with venv-pack, add it to a
# session as `environment/`, make its interpreter the session's, run code that imports the package
# only the environment has.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${OUT_DIR:-$here/out}
export VALISE_STATE_FILE=${VALISE_STATE_FILE:-$out/cli-state.json}
valise() { deno run -A "$repo/packages/client/cli.ts" "$@"; }
# uv and venv-pack from the repository's Python environment (`deno task setup`); elsewhere
# `pip install uv venv-pack` and set TOOLS to where they are.
tools=${TOOLS:-$repo/.venv/bin}
for t in uv venv-pack; do
  [ -x "$tools/$t" ] || { echo "run.sh: no $t in $tools: run \`deno task setup\` or set TOOLS" >&2; exit 1; }
done

# The venv's interpreter must be one the server allows: Debian's python3 under /usr always is.
rm -rf "$out/env" "$out/env.tar.gz" && mkdir -p "$out"
"$tools/uv" venv --quiet --python /usr/bin/python3 "$out/env"               # or: python3 -m venv env
"$tools/uv" pip install --quiet --python "$out/env/bin/python" "$here/pkg"  # or: env/bin/pip install ./pkg
"$tools/venv-pack" --quiet --prefix "$out/env" --output "$out/env.tar.gz"

valise add --archive "$out/env.tar.gz#environment"
valise conf set spark.sql.execution.pyspark.python environment/bin/python
valise run -c 'import greeting; print(greeting.hello())'
valise release
