#!/usr/bin/env bash
# The conda-pack flow: pack a conda env (conda-unpack runs on the server), add it to a session as `environment/`, make its interpreter
# the session's, run code that imports a package only the environment has.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${OUT_DIR:-$here/out}
export VALISE_STATE_FILE=${VALISE_STATE_FILE:-$out/cli-state.json}
valise() { deno run -A "$repo/packages/client/cli.ts" "$@"; }

env=$(deno run -A "$repo/examples/build_env.ts" conda-pack "$out")   # conda pack -o env.tar.gz
valise add --archive "$env#environment"
valise conf set spark.sql.execution.pyspark.python environment/bin/python
valise run -c 'import greeting; print(greeting.hello())'
valise release
