"""A stand-in for the part of PySpark that the examples use, backed by spark_artifacts.py,
which sends exactly what PySpark's Spark Connect client sends for artifacts, config and
release. Lets CI run the PySpark examples without PyPI. Not a PySpark replacement."""
