"""Packs a virtual environment the way conda-pack packs a conda environment.

Usage: python3 pack_like_conda.py ENV_DIR OUT.tar.gz

conda is not installed on this machine (its channels are not reachable from here), and
conda-pack packs only environments that conda made; with conda, `conda pack -p ENV -o OUT.tar.gz`
replaces this script. What it writes is what conda-pack writes, so Valise treats it the same:

- members relative to the environment's root (no leading directory);
- `conda-meta/<name>-<version>-0.json` for each installed distribution (name, version, files);
- `bin/conda-unpack`, which, run from wherever the archive was unpacked, rewrites the build
  prefix recorded in the environment's text files to that place (Valise runs it once, where it
  unpacks the archive);
- relocatable `bin/activate` and `bin/deactivate`.

What it cannot copy: a conda environment brings its own CPython, this one's interpreter stays a
link to the venv's base interpreter (which the server must allow).
"""
import io
import json
import os
import sys
import tarfile
import time

CONDA_UNPACK = '''#!/usr/bin/env python
"""Rewrites the build prefix to this environment's location (what conda-unpack does)."""
import os

PLACEHOLDER = %r
FILES = %r


def main():
    prefix = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for rel in FILES:
        path = os.path.join(prefix, rel)
        with open(path, 'rb') as f:
            data = f.read()
        new = data.replace(PLACEHOLDER.encode('utf-8'), prefix.encode('utf-8'))
        if new != data:
            mode = os.stat(path).st_mode & 0o7777
            with open(path, 'wb') as f:
                f.write(new)
            os.chmod(path, mode)


if __name__ == '__main__':
    main()
'''

ACTIVATE = '''# Source me: . bin/activate
_CONDA_PACK_HERE="$(cd "$(dirname "${BASH_SOURCE:-$0}")/.." && pwd)"
export _CONDA_PACK_OLD_PATH="$PATH"
export CONDA_PREFIX="$_CONDA_PACK_HERE"
export PATH="$_CONDA_PACK_HERE/bin:$PATH"
unset _CONDA_PACK_HERE
'''

DEACTIVATE = '''# Source me: . bin/deactivate
if [ -n "${_CONDA_PACK_OLD_PATH:-}" ]; then export PATH="$_CONDA_PACK_OLD_PATH"; fi
unset _CONDA_PACK_OLD_PATH CONDA_PREFIX
'''

# venv's own activation scripts name the build directory and have no conda-pack counterpart;
# `.lock` is uv's, for installs into the venv.
DROPPED = {'bin/activate', 'bin/activate.csh', 'bin/activate.fish', 'bin/Activate.ps1', '.lock'}


def members(env):
    """Env-relative paths of everything to pack, sorted, without what is replaced."""
    out = []
    for root, dirs, files in os.walk(env):
        dirs[:] = [d for d in dirs if d != '__pycache__']
        for name in dirs + files:
            rel = os.path.relpath(os.path.join(root, name), env)
            if rel not in DROPPED:
                out.append(rel)
    return sorted(out)


def holds_prefix(path, prefix):
    """A text file (no NUL) that names the build prefix."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    with open(path, 'rb') as f:
        data = f.read()
    return b'\0' not in data and prefix.encode('utf-8') in data


def dist_records(env):
    """conda-meta records for the distributions installed in the venv's site-packages."""
    records = []
    for root, dirs, _ in os.walk(os.path.join(env, 'lib')):
        for d in dirs:
            if not d.endswith('.dist-info'):
                continue
            meta = {}
            with open(os.path.join(root, d, 'METADATA'), encoding='utf-8') as f:
                for line in f:
                    if not line.strip():
                        break
                    key, _, value = line.partition(':')
                    meta.setdefault(key.strip(), value.strip())
            files = []
            with open(os.path.join(root, d, 'RECORD'), encoding='utf-8') as f:
                for line in f:
                    path = line.rsplit(',', 2)[0]
                    if path:
                        files.append(os.path.relpath(os.path.normpath(os.path.join(root, path)), env))
            records.append({'name': meta['Name'].lower(), 'version': meta['Version'], 'build': '0',
                            'build_number': 0, 'channel': 'pypi', 'files': sorted(files)})
    return records


def add_text(tar, name, text, mode):
    data = text.encode('utf-8')
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def main(env, out):
    env = os.path.realpath(env)
    names = members(env)
    prefixed = [n for n in names if holds_prefix(os.path.join(env, n), env)]
    with tarfile.open(out, 'w:gz') as tar:
        for n in names:
            tar.add(os.path.join(env, n), arcname=n, recursive=False)
        add_text(tar, 'conda-meta/history', '', 0o644)
        for r in dist_records(env):
            add_text(tar, 'conda-meta/%s-%s-0.json' % (r['name'], r['version']),
                     json.dumps(r, indent=2) + '\n', 0o644)
        add_text(tar, 'bin/conda-unpack', CONDA_UNPACK % (env, prefixed), 0o755)
        add_text(tar, 'bin/activate', ACTIVATE, 0o644)
        add_text(tar, 'bin/deactivate', DEACTIVATE, 0o644)
    print(out)


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit('usage: pack_like_conda.py ENV_DIR OUT.tar.gz')
    main(sys.argv[1], sys.argv[2])
