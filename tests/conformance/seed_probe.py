"""What a worker of a session sees: run unchanged in a Spark UDF and in a Valise Run.

Defines probe(modules), which returns a JSON-able dict: the interpreter and each module's file as
paths relative to the working directory (or marked as outside it), the modules' versions, the
working directory's entries and what the session's files hold. Paths that differ by server (the
session directory's absolute path, pex's cache) are reduced to what must match.

It is read as source (never imported) by seed_client.py, which defines it in a module of its own
so that cloudpickle ships it to Spark's workers by value, and by tests/conformance/
seed_flows_test.ts, which sends it as the code of a Run.
"""


def probe(modules):
    import importlib
    import os
    import sys

    # Symbolic links are not resolved: a link inside the working directory is where user code
    # finds the file, wherever the link points.
    cwd = os.path.abspath(os.getcwd())

    def inside(path):
        return path == cwd or path.startswith(cwd + os.sep)

    def where(path):
        """A path relative to the working directory, or where outside it."""
        path = os.path.abspath(path)
        if inside(path):
            return os.path.relpath(path, cwd)
        # Outside the session: name it by the sys.path entry it was found under.
        for entry in sys.path:
            base = os.path.abspath(entry or ".")
            if path.startswith(base + os.sep) and not inside(base):
                kind = "pex" if "unzipped_pexes" in base else "outside"
                return "<%s>/%s" % (kind, os.path.relpath(path, base))
        return "<outside>"

    def entry(name):
        return name + "/" if os.path.isdir(os.path.join(cwd, name)) else name

    found = {}
    for name in modules:
        try:
            m = importlib.import_module(name)
        except ImportError as e:
            found[name] = {"error": type(e).__name__}
            continue
        found[name] = {
            "version": getattr(m, "__version__", None) or getattr(m, "VERSION", None),
            "file": where(m.__file__),
        }
    data = None
    if os.path.exists("seed.txt"):
        with open("seed.txt") as f:
            data = f.read()
    return {
        "interpreter": where(sys.executable),
        "python": "%d.%d" % sys.version_info[:2],
        "cwd_entries": sorted(entry(n) for n in os.listdir(cwd) if not n.startswith(".")),
        "cwd_on_path": any(os.path.abspath(p or ".") == cwd for p in sys.path),
        "modules": found,
        "seed.txt": data,
    }
