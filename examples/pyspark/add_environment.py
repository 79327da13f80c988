"""Give a Spark Connect session its own Python environment and helper module, from PySpark.

Works against Valise as against Spark Connect (3.5+):

    python add_environment.py ENV_ARCHIVE.tar.gz UTIL_MODULE.py

ENV_ARCHIVE is a conda-pack or venv-pack archive; it is unpacked on the server under
`environment/`, and the session's Python workers use `environment/bin/python`.
"""
import os
import sys

from pyspark.sql import SparkSession

env_archive, util_module = sys.argv[1], sys.argv[2]

spark = SparkSession.builder.remote(
    os.environ.get("SPARK_REMOTE", "sc://localhost:15002")
).getOrCreate()

# A module for the workers' sys.path, and a whole environment under the alias `environment`.
spark.addArtifacts(util_module, pyfile=True)
spark.addArtifacts(f"{env_archive}#environment", archive=True)

# From now on the session's Python workers run with the environment's interpreter.
spark.conf.set("spark.sql.execution.pyspark.python", "environment/bin/python")
print("session", spark.session_id)
print("interpreter", spark.conf.get("spark.sql.execution.pyspark.python"))

if os.environ.get("KEEP_SESSION") != "1":
    spark.stop()  # releases the session: the server removes its files
