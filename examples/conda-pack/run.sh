#!/usr/bin/env bash
# The conda-pack flow: pack an environment the way conda-pack does (conda-unpack runs on the
# server), add it to a session as `environment/`, make its interpreter the session's, run code
# that imports a package only the environment has.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${OUT_DIR:-$here/out}
export VALISE_STATE_FILE=${VALISE_STATE_FILE:-$out/cli-state.json}
valise() { deno run -A "$repo/packages/client/cli.ts" "$@"; }
# uv from the repository's Python environment (`deno task setup`); elsewhere `pip install uv` and
# set TOOLS to where it is.
tools=${TOOLS:-$repo/.venv/bin}
[ -x "$tools/uv" ] || { echo "run.sh: no uv in $tools: run \`deno task setup\` or set TOOLS" >&2; exit 1; }

# conda is not installed here (its channels are not reachable): a venv on Debian's python3 stands
# in for the conda environment, and pack_like_conda.py packs it as conda-pack would. With conda:
#   conda create -p env python pip && env/bin/pip install ./pkg && conda pack -p env -o env.tar.gz
rm -rf "$out/env" "$out/env.tar.gz" && mkdir -p "$out"
/usr/bin/python3 -m venv --without-pip "$out/env"
"$tools/uv" pip install --quiet --python "$out/env/bin/python" "$here/pkg"
/usr/bin/python3 "$here/pack_like_conda.py" "$out/env" "$out/env.tar.gz" >/dev/null

valise add --archive "$out/env.tar.gz#environment"
valise conf set spark.sql.execution.pyspark.python environment/bin/python
valise run -c 'import greeting; print(greeting.hello())'
valise release
