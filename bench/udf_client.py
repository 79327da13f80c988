"""The UDF bench's PySpark client: times pandas_udf and mapInPandas over spark.range(N) on a
Spark Connect server (Spark or Valise), and the first UDF call of a new session whose
environment the server already holds. Prints one JSON object.

    udf_client.py --remote sc://127.0.0.1:PORT --env env.tar.gz --rows N --reps R
"""

import argparse
import json
import sys
import time
import warnings

warnings.simplefilter("ignore", FutureWarning)

import pandas as pd  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql.functions import pandas_udf  # noqa: E402

PY_EXEC = "spark.sql.execution.pyspark.python"


def scale(s: pd.Series) -> pd.Series:
    return s * 0.5 + 1


def doubled(it):
    for pdf in it:
        yield pdf.assign(y=pdf.id * 2)


def session(remote, env, user):
    spark = SparkSession.builder.remote(remote + "/;user_id=" + user).create()
    spark.addArtifacts(env + "#environment", archive=True)
    spark.conf.set(PY_EXEC, "environment/bin/python")
    return spark


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--remote", required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    spark = session(a.remote, a.env, "bench-a")
    # A pandas UDF with a DDL return type needs a session first (PySpark parses it through one).
    scaled = pandas_udf(scale, "double")
    # Warm: the environment unpacked (Spark: on first use), workers started once.
    warm, _ = timed(lambda: spark.range(10).select(scaled("id")).collect())
    out = {"warm_first_call_s": warm, "pandas_udf_s": [], "map_in_pandas_s": []}
    for _ in range(a.reps):
        s, pdf = timed(lambda: spark.range(a.rows).select(scaled("id").alias("v")).toPandas())
        assert len(pdf) == a.rows and pdf.v.iloc[-1] == (a.rows - 1) * 0.5 + 1, pdf.tail()
        out["pandas_udf_s"].append(s)
        s, pdf = timed(lambda: spark.range(a.rows).mapInPandas(doubled, "id long, y long").toPandas())
        assert len(pdf) == a.rows and int(pdf.y.sum()) == a.rows * (a.rows - 1), pdf.tail()
        out["map_in_pandas_s"].append(s)
    # A new session adding the same environment: held by the server already.
    t0 = time.perf_counter()
    other = session(a.remote, a.env, "bench-b")
    added = time.perf_counter() - t0
    first, rows = timed(lambda: other.range(10).select(scaled("id")).collect())
    assert len(rows) == 10
    out["new_session_add_s"] = added
    out["new_session_first_call_s"] = first
    other.stop()
    spark.stop()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
