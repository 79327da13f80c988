#!/usr/bin/env python3
"""The real PySpark client (Spark Connect) as the benchmarks' driver, for bench/spark_bench.ts.

Run with the project's environment: `.venv/bin/python bench/pyspark_client.py --help`. The
same script, unchanged, drives the real Spark Connect server, the grpcio reference server and
Valise; only `--remote` differs.

Commands (each prints one JSON object per line on stdout, flushed):

- `upload --remote R --file F`: opens a session, times `spark.addArtifacts(F, file=True)`,
  prints `{"event": "added", "elapsed_s", "session_id"}`, then waits for a line on stdin (the
  bench checks the server stored the file) and releases the session (`spark.stop()`) unless
  `--no-stop` (the reference server serves AddArtifacts alone).
- `env --remote R --archive A [--udf MODULES]`: opens a session, sets
  `spark.sql.execution.pyspark.python` to `environment/bin/python`, times
  `spark.addArtifacts("A#environment", archive=True)` and prints
  `{"event": "added", "elapsed_s", "added_at", "session_id"}` (`added_at`: wall-clock seconds
  when the call returned). With `--udf`, it then runs
  `spark.range(1, numPartitions=1).mapInPandas(f, ...).collect()`, one task, where `f` imports
  the comma-separated modules in the Python worker (`bench/import_probe.py`) and reports the
  interpreter, its working directory and each module's version and file:
  `{"event": "ready", "ready_s", "result"}` (`ready_s`: from the add returning to the rows
  arriving). It then waits for a line on stdin and stops the session.

Errors print `{"event": "error", "type", "message"}` and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict


def emit(obj: Dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def session(remote: str) -> Any:
    from pyspark.sql import SparkSession

    return SparkSession.builder.remote(remote).getOrCreate()


def wait_and_stop(spark: Any, stop: bool) -> None:
    sys.stdin.readline()
    if stop:
        spark.stop()


def upload(args: argparse.Namespace) -> None:
    spark = session(args.remote)
    t0 = time.perf_counter()
    spark.addArtifacts(args.file, file=True)
    elapsed = time.perf_counter() - t0
    emit({"event": "added", "elapsed_s": elapsed, "session_id": spark.client._session_id})
    wait_and_stop(spark, not args.no_stop)


def imports(names: str) -> Any:
    """The UDF: `import_probe.probe(names)` in the Python worker, one row of JSON."""
    from pyspark import cloudpickle

    import import_probe

    # The worker cannot import this directory's modules: the probe travels by value.
    cloudpickle.register_pickle_by_value(import_probe)

    def udf(batches: Any) -> Any:
        import json as json_

        import pandas as pd

        info = import_probe.probe(names)
        for _ in batches:
            pass
        yield pd.DataFrame({"info": [json_.dumps(info)]})

    return udf


def env(args: argparse.Namespace) -> None:
    spark = session(args.remote)
    spark.conf.set("spark.sql.execution.pyspark.python", "environment/bin/python")
    t0 = time.perf_counter()
    spark.addArtifacts(args.archive + "#environment", archive=True)
    t1 = time.perf_counter()
    emit({"event": "added", "elapsed_s": t1 - t0, "added_at": time.time(),
          "session_id": spark.client._session_id})
    if args.udf:
        df = spark.range(1, numPartitions=1)
        rows = df.mapInPandas(imports(args.udf), "info string").collect()
        ready = time.perf_counter() - t1
        emit({"event": "ready", "ready_s": ready, "result": json.loads(rows[0]["info"])})
    wait_and_stop(spark, True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upload", help="time addArtifacts(file, file=True)")
    up.add_argument("--remote", required=True)
    up.add_argument("--file", required=True)
    up.add_argument("--no-stop", action="store_true", help="do not release the session")
    en = sub.add_parser("env", help="time addArtifacts(archive#environment) and a UDF import")
    en.add_argument("--remote", required=True)
    en.add_argument("--archive", required=True)
    en.add_argument("--udf", default="", help="modules the UDF imports, comma-separated")
    args = ap.parse_args()
    try:
        upload(args) if args.cmd == "upload" else env(args)
    except Exception as e:  # the bench reads the reason from the JSON line
        emit({"event": "error", "type": type(e).__name__, "message": str(e)[:4000]})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
