"""The seed's flows through the real PySpark client, against Spark or Valise.

Run with the project's environment (.venv/bin/python):

    seed_client.py --remote sc://127.0.0.1:PORT --server spark|valise \\
        --env env.tar.gz --pex seed.pex --util seedutil.py --data seed.txt

Two sessions, each given a pyfile (seedutil.py) and a file (seed.txt) with addArtifacts:
  env  the venv-pack archive as archives/env.tar.gz#environment, interpreter
       environment/bin/python;
  pex  the PEX as a file, interpreter ./seed.pex.
Against Spark it runs seed_probe.py's probe() in the session's Python workers (env: inside
spark.range(3).mapInPandas, which needs the environment's pandas and pyarrow; pex: inside a
plain Python UDF, the PEX holding no pandas) and prints what they saw. Against Valise it only
prepares the sessions and prints their ids; tests/conformance/seed_flows_test.ts runs the same
probe there with Run. It also tries the PEX by its bare name (seed.pex) on Spark, which looks a
bare interpreter name up on PATH.
"""

import argparse
import json
import os
import sys
import warnings

warnings.simplefilter("ignore", FutureWarning)

from pyspark.errors import PySparkException  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql.functions import udf  # noqa: E402

PY_EXEC = "spark.sql.execution.pyspark.python"
ENV_MODULES = ["seedlib", "seedutil", "pandas", "pyarrow", "numpy"]
PEX_MODULES = ["seedpex", "seedutil"]


def load_probe():
    """probe() defined in a module of its own, so that cloudpickle ships it by value."""
    namespace = {"__name__": "seed_probe_shipped"}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "seed_probe.py")) as f:
        exec(compile(f.read(), "seed_probe.py", "exec"), namespace)
    return namespace["probe"]


def session(remote, args, user):
    spark = SparkSession.builder.remote(remote + "/;user_id=" + user).create()
    spark.addArtifacts(args.util, pyfile=True)
    spark.addArtifacts(args.data, file=True)
    return spark


def in_map_in_pandas(spark, probe, modules):
    import pandas as pd

    def fn(batches):
        for pdf in batches:
            yield pd.DataFrame({"seen": [json.dumps(probe(modules))] * len(pdf)})

    rows = spark.range(3).mapInPandas(fn, "seen string").collect()
    seen = {r.seen for r in rows}
    assert len(seen) == 1, seen
    return json.loads(seen.pop())


def in_python_udf(spark, probe, modules):
    # useArrow=False: Spark 4.2 would otherwise run it as an Arrow UDF, which needs pyarrow in
    # the PEX; this one holds only its own module.
    seen = udf(lambda _: json.dumps(probe(modules)), "string", useArrow=False)
    rows = spark.range(3).select(seen("id").alias("seen")).collect()
    out = {r.seen for r in rows}
    assert len(out) == 1, out
    return json.loads(out.pop())


def error_of(e):
    return {"type": type(e).__name__, "errorClass": e.getCondition(), "message": str(e)[:4000]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--remote", required=True)
    p.add_argument("--server", required=True, choices=["spark", "valise"])
    p.add_argument("--env", required=True, help="the venv-pack archive (.tar.gz)")
    p.add_argument("--pex", required=True, help="the PEX file (named seed.pex)")
    p.add_argument("--util", required=True, help="a .py added with pyfile=True")
    p.add_argument("--data", required=True, help="a file added with file=True (seed.txt)")
    args = p.parse_args()
    remote = args.remote.rstrip("/")
    probe = load_probe()
    out = {}

    env = session(remote, args, "seed-env")
    env.addArtifacts(args.env + "#environment", archive=True)
    env.conf.set(PY_EXEC, "environment/bin/python")

    pex = session(remote, args, "seed-pex")
    pex.addArtifacts(args.pex, file=True)
    pex.conf.set(PY_EXEC, "./" + os.path.basename(args.pex))

    if args.server == "valise":
        out["sessions"] = {
            "env": {"user": "seed-env", "session": env.session_id},
            "pex": {"user": "seed-pex", "session": pex.session_id},
        }
    else:
        out["env"] = in_map_in_pandas(env, probe, ENV_MODULES)
        out["pex"] = in_python_udf(pex, probe, PEX_MODULES)
        pex.conf.set(PY_EXEC, os.path.basename(args.pex))
        try:
            out["pex_bare_name"] = {"ok": in_python_udf(pex, probe, PEX_MODULES)}
        except PySparkException as e:
            out["pex_bare_name"] = {"error": error_of(e)}
        env.stop()
        pex.stop()
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
