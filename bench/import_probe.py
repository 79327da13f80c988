"""What the environment-ready benchmark runs in a worker: import modules, say what was found.

The same function runs as a Spark UDF (`bench/pyspark_client.py` pickles it by value into
`mapInPandas`) and as a Valise `Run` (this file's text is the code, the module names its
argument). It returns, and as a program prints, one JSON object: the interpreter, the working
directory, each module's version and file, and how long the imports took.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import Any, Dict


def probe(names: str) -> Dict[str, Any]:
    """Imports the comma-separated modules: their versions and files, the time the imports took
    (`import_s`), the interpreter and its working directory."""
    t0 = time.perf_counter()
    found = {}
    for name in names.split(","):
        m = importlib.import_module(name)
        found[name] = {"version": getattr(m, "__version__", ""),
                       "file": getattr(m, "__file__", "")}
    return {"executable": sys.executable, "cwd": os.getcwd(), "modules": found,
            "import_s": time.perf_counter() - t0}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
