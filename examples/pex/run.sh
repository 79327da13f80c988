#!/usr/bin/env bash
# The PEX flow: build a .pex holding a package with pex, add it as a plain file and use it as the
# session's interpreter.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${OUT_DIR:-$here/out}
export VALISE_STATE_FILE=${VALISE_STATE_FILE:-$out/cli-state.json}
valise() { deno run -A "$repo/packages/client/cli.ts" "$@"; }
# pex (2.x) from the repository's Python environment (`deno task setup`); elsewhere
# `pip install pex` and set TOOLS to where it is.
tools=${TOOLS:-$repo/.venv/bin}
[ -x "$tools/pex" ] || { echo "run.sh: no pex in $tools: run \`deno task setup\` or set TOOLS" >&2; exit 1; }

# -D packs the package's sources as they are (a project with a pyproject.toml: `pex . -o env.pex`).
mkdir -p "$out"
"$tools/pex" --python /usr/bin/python3 -D "$here/pkg" -o "$out/env.pex"

valise add --file "$out/env.pex"
valise conf set spark.sql.execution.pyspark.python env.pex
valise run -c 'import greeting; print(greeting.hello())'
valise release
