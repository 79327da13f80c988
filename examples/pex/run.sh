#!/usr/bin/env bash
# The PEX flow: add a .pex as a plain file and use it as the session's interpreter.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${OUT_DIR:-$here/out}
export VALISE_STATE_FILE=${VALISE_STATE_FILE:-$out/cli-state.json}
valise() { deno run -A "$repo/packages/client/cli.ts" "$@"; }

pex=$(deno run -A "$repo/examples/build_env.ts" pex "$out")   # pex greeting -o env.pex
valise add --file "$pex"
valise conf set spark.sql.execution.pyspark.python env.pex
valise run -c 'import greeting; print(greeting.hello())'
valise release
