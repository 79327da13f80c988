"""PySpark UDF programs through the real PySpark client, against Spark or Valise.

Run with the project's environment (.venv/bin/python):

    udf_client.py --remote sc://127.0.0.1:PORT --env env.tar.gz [--program NAME ...]
    udf_client.py --remote sc://127.0.0.1:PORT --pex udf.pex [--program NAME ...]

One session gets the environment as archives/env.tar.gz#environment with the interpreter
environment/bin/python (the seed's venv-pack and conda-pack flows), or the PEX as a file with
the interpreter ./udf.pex (the seed's PEX flow), then runs each program and prints one JSON object:
program name -> {"ok": result} or {"error": {type, errorClass, message}}. The same script runs
against Spark and against Valise; tests/conformance/udf_test.ts compares the two.
"""

import argparse
import contextlib
import datetime
import decimal
import io
import json
import math
import os
import sys
import warnings

warnings.simplefilter("ignore", FutureWarning)
warnings.simplefilter("ignore", UserWarning)

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from pyspark.errors import PySparkException  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.functions import pandas_udf, udf  # noqa: E402
from pyspark.sql.types import (  # noqa: E402
    ArrayType,
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

PY_EXEC = "spark.sql.execution.pyspark.python"


def plain(v):
    """A JSON-comparable form of a collected value."""
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        return repr(v)
    if isinstance(v, (datetime.date, datetime.datetime, decimal.Decimal)):
        return "%s:%s" % (type(v).__name__, v.isoformat() if hasattr(v, "isoformat") else v)
    if isinstance(v, (bytes, bytearray)):
        return "bytes:" + bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in sorted(v.items())}
    if hasattr(v, "asDict"):
        return {"row": {k: plain(x) for k, x in v.asDict().items()}}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def rows(df):
    return {"schema": df.schema.simpleString(), "rows": [plain(list(r)) for r in df.collect()]}


def shown(df, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        df.show(*args)
    return out.getvalue()


# ---- the programs: each takes the session and returns something JSON can hold ----


def p_pandas_udf(spark):
    @pandas_udf("long")
    def plus_one(s: pd.Series) -> pd.Series:
        return s + 1

    return rows(spark.range(10).select(plus_one("id").alias("x")))


def p_map_in_pandas(spark):
    def fn(it):
        for pdf in it:
            yield pdf.assign(half=pdf.id / 2, name="r" + pdf.id.astype(str))

    return rows(spark.range(7).mapInPandas(fn, "id long, half double, name string"))


def p_map_in_arrow(spark):
    def fn(it):
        import pyarrow.compute as pc

        for b in it:
            yield pa.RecordBatch.from_arrays([pc.multiply(b.column(0), 3)], names=["tripled"])

    return rows(spark.range(5).mapInArrow(fn, "tripled long"))


def p_plain_udf(spark):
    f = udf(lambda x: "v%d" % (x * 2), "string", useArrow=False)
    return rows(spark.range(5).select(f("id").alias("s"), "id"))


def p_arrow_udf(spark):
    f = udf(lambda x: x * 10, "long", useArrow=True)
    return rows(spark.range(5).select("id", f("id").alias("t")))


TYPE_CASES = [
    ("int", IntegerType(), lambda i: int(i)),
    ("long", LongType(), lambda i: int(i) * 10**10),
    ("double", DoubleType(), lambda i: i / 3),
    ("float", FloatType(), lambda i: i + 0.5),
    ("string", StringType(), lambda i: "s%d" % i),
    ("boolean", BooleanType(), lambda i: i % 2 == 0),
    ("binary", BinaryType(), lambda i: bytes([i, 255 - i])),
    ("date", DateType(), lambda i: datetime.date(2024, 1, 1 + i)),
    ("timestamp", TimestampType(), lambda i: datetime.datetime(2024, 1, 1, 12, i, 30)),
    ("decimal", DecimalType(10, 2), lambda i: decimal.Decimal("%d.25" % i)),
    ("array", ArrayType(IntegerType()), lambda i: list(range(i))),
    ("map", MapType(StringType(), IntegerType()), lambda i: {"k%d" % i: i}),
    ("struct", StructType([StructField("a", IntegerType()), StructField("b", StringType())]),
     lambda i: (i, "b%d" % i)),
]


def p_udf_types(spark):
    out = {}
    for name, t, fn in TYPE_CASES:
        f = udf(lambda x, fn=fn: fn(int(x)), t, useArrow=False)
        out[name] = rows(spark.range(3).select(f("id").alias(name)))
    return out


def p_arrow_udf_types(spark):
    out = {}
    for name, t, fn in TYPE_CASES:
        f = udf(lambda x, fn=fn: fn(int(x)), t, useArrow=True)
        out[name] = rows(spark.range(3).select(f("id").alias(name)))
    return out


def p_pandas_udf_types(spark):
    cases = {
        "int": ("int", lambda s: s.astype("int32")),
        "double": ("double", lambda s: s / 4),
        "string": ("string", lambda s: "p" + s.astype(str)),
        "boolean": ("boolean", lambda s: s > 1),
        "date": ("date", lambda s: pd.to_datetime("2024-02-01") + pd.to_timedelta(s, "D")),
        "array": ("array<long>", lambda s: s.apply(lambda v: list(range(v)))),
    }
    out = {}
    for name, (t, fn) in cases.items():
        out[name] = rows(spark.range(4).select(pandas_udf(fn, t)("id").alias(name)))
    return out


def p_nulls(spark):
    f = udf(lambda x: None if x % 2 else x, "long", useArrow=False)

    @pandas_udf("double")
    def g(s: pd.Series) -> pd.Series:
        return s.where(s % 3 != 0) * 1.5

    return rows(spark.range(6).select(f("id").alias("f"), g("id").alias("g")))


def p_empty(spark):
    @pandas_udf("long")
    def plus_one(s: pd.Series) -> pd.Series:
        return s + 1

    def fn(it):
        for pdf in it:
            yield pdf

    schema = StructType([StructField("a", LongType()), StructField("b", StringType())])
    return {
        "range0": rows(spark.range(0).select(plus_one("id").alias("x"))),
        "created": rows(spark.createDataFrame([], schema).mapInPandas(fn, schema)),
    }


def p_exception(spark):
    def boom(x):
        return 1 // (x - x)

    try:
        spark.range(3).select(udf(boom, "long", useArrow=False)("id")).collect()
    except PySparkException as e:
        msg = str(e)
        return {
            "type": type(e).__name__,
            "traceback": "Traceback (most recent call last)" in msg,
            "zero_division": "ZeroDivisionError: integer division or modulo by zero" in msg,
            "user_line": "return 1 // (x - x)" in msg,
        }
    return "no error"


def p_pandas_exception(spark):
    @pandas_udf("long")
    def bad(s: pd.Series) -> pd.Series:
        raise ValueError("bad batch of %s" % s.dtype)

    try:
        spark.range(3).select(bad("id")).collect()
    except PySparkException as e:
        msg = str(e)
        return {
            "type": type(e).__name__,
            "value_error": "ValueError: bad batch of int64" in msg,
            "user_line": 'raise ValueError("bad batch of %s" % s.dtype)' in msg,
        }
    return "no error"


def p_show(spark):
    @pandas_udf("double")
    def half(s: pd.Series) -> pd.Series:
        return s / 2

    f = udf(lambda x: "x" * int(x) * 3 if x else None, "string", useArrow=False)
    df = spark.range(25).select("id", half("id").alias("half"), f("id").alias("text"))
    return {
        "default": shown(df),
        "n3": shown(df, 3),
        "untruncated": shown(df.limit(8), 20, False),
        "vertical": shown(df, 2, 20, True),
    }


def p_local_data(spark):
    pdf = pd.DataFrame({
        "i": [1, 2, 3],
        "s": ["a", None, "c"],
        "d": [0.5, float("nan"), -2.0],
        "t": pd.to_datetime(["2024-01-01 00:00:00", "2024-06-01 10:00:00", "2025-01-01 00:00:00"]),
    })
    df = spark.createDataFrame(pdf)

    @pandas_udf("string")
    def describe(i: pd.Series, s: pd.Series) -> pd.Series:
        return i.astype(str) + ":" + s.fillna("-")

    out = df.select("i", describe("i", "s").alias("desc"), "d", "t")
    return {"rows": rows(out), "pandas": out.toPandas().astype(str).values.tolist()}


def p_large_local_data(spark):
    # Over the client's 1 MiB threshold: the data goes up as cache/<sha256> artifacts.
    n = 200_000
    df = spark.createDataFrame(pd.DataFrame({"v": range(n), "w": ["x" * 8] * n}))

    @pandas_udf("long")
    def twice(v: pd.Series) -> pd.Series:
        return v * 2

    got = df.select(twice("v").alias("t")).toPandas()
    return {"count": len(got), "sum": int(got.t.sum()), "first": int(got.t.iloc[0])}


def p_limit_and_renames(spark):
    @pandas_udf("long")
    def sq(s: pd.Series) -> pd.Series:
        return s * s

    df = spark.range(100).select("id", sq("id").alias("sq")).limit(4)
    renamed = df.withColumnRenamed("sq", "square").toDF("a", "b").withColumn("c", sq("a"))
    return {"limited": rows(df), "renamed": rows(renamed), "columns": renamed.columns}


def p_literals(spark):
    f = udf(lambda a, b: "%s-%s" % (a, b), "string", useArrow=False)
    return rows(spark.range(2).select("id", F.lit(7).alias("seven"), f("id", F.lit("k")).alias("j")))


def p_schema(spark):
    def fn(it):
        yield from it

    df = spark.range(3).mapInPandas(fn, "id long")
    g = pandas_udf(lambda s: s.astype(str), "string")
    return {
        "map": df.schema.simpleString(),
        "select": spark.range(1).select(g("id").alias("g"), "id").schema.simpleString(),
    }


def _to_cases(spark):
    @pandas_udf("long")
    def plus_one(s: pd.Series) -> pd.Series:
        return s + 1

    udf_df = spark.range(5).select("id", plus_one("id").alias("x"))
    local = spark.createDataFrame(
        [(1, (2, "x"), None), (3, (4, "y"), "z")],
        "a long not null, st struct<p:long not null,q:string> not null, n string")
    return udf_df, local


def _outcome(action):
    try:
        df = action()
        return {"schema": df.schema.jsonValue(), "rows": [plain(list(r)) for r in df.collect()]}
    except PySparkException as e:
        return {"type": type(e).__name__, "errorClass": e.getCondition()}


def p_to_schema(spark):
    """df.to(schema) where no value is converted: the columns found by name, in the schema's
    order, with its nullability; a nullable column made non-nullable and a missing non-nullable
    one fail as on Spark."""
    udf_df, local = _to_cases(spark)
    cases = {
        "after_udf": lambda: udf_df.to(StructType([
            StructField("X", LongType()), StructField("id", LongType())])),
        "non_null": lambda: udf_df.to(StructType([StructField("id", LongType(), False)])),
        "nested": lambda: local.to(StructType([
            StructField("st", StructType([StructField("p", LongType(), False),
                                          StructField("q", StringType())])),
            StructField("n", StringType())])),
        "nullable_to_non_null": lambda: local.to(StructType([StructField("n", StringType(), False)])),
        "missing_non_null": lambda: local.to(StructType([StructField("zz", LongType(), False)])),
    }
    return {name: _outcome(action) for name, action in cases.items()}


def p_to_schema_converted(spark):
    """df.to(schema) where Spark converts: casts, a nested reorder, a missing nullable column
    (nulls). Valise refuses these by name (docs/compatibility.md)."""
    udf_df, local = _to_cases(spark)
    cases = {
        "cast": lambda: udf_df.to(StructType([StructField("x", IntegerType())])),
        "nested_reorder": lambda: local.to(StructType([StructField("st", StructType([
            StructField("q", StringType()), StructField("p", LongType())]))])),
        "missing_nullable": lambda: local.to(StructType([StructField("zz", LongType())])),
    }
    out = {}
    for name, action in cases.items():
        try:
            action().collect()
            out[name] = "ran"
        except PySparkException as e:
            out[name] = {"type": type(e).__name__, "errorClass": e.getCondition(),
                         "message": str(e)[:600]}
    return out


def p_no_udf(spark):
    df = spark.range(3).select("id", F.lit(1).alias("one")).withColumnRenamed("id", "n")
    return {"rows": rows(df), "show": shown(spark.range(3))}


def p_env_version(spark):
    """What the session's environment holds, seen from inside a pandas UDF and mapInPandas."""

    @pandas_udf("string")
    def version(s: pd.Series) -> pd.Series:
        import udfmark

        return s.map(lambda _: udfmark.VERSION)

    def fn(it):
        import udfmark

        for pdf in it:
            yield pd.DataFrame({"v": [udfmark.VERSION] * len(pdf)})

    return {
        "udf": sorted({r[0] for r in spark.range(4).select(version("id")).collect()}),
        "map": sorted({r[0] for r in spark.range(4).mapInPandas(fn, "v string").collect()}),
    }


def p_hostile_report(spark):
    """What a hostile PEX's bootstrap wrote to the session's directory (tests/hostile_pex_test.ts),
    read inside a UDF; None where there is no such file (every other environment)."""

    @pandas_udf("string")
    def report(s: pd.Series) -> pd.Series:
        import os

        path = os.path.join(os.environ.get("HOME", "."), "hostile-report.jsonl")
        text = open(path).read() if os.path.exists(path) else None
        return s.map(lambda _: text)

    return spark.range(1).select(report("id")).collect()[0][0]


def p_unsupported(spark):
    out = {}
    for name, action in [
        ("sql", lambda: spark.sql("select 1").collect()),
        ("join", lambda: spark.range(2).join(spark.range(2), "id").collect()),
        ("agg", lambda: spark.range(3).groupBy().count().collect()),
        ("filter", lambda: spark.range(3).filter("id > 1").collect()),
    ]:
        try:
            action()
            out[name] = "ran"
        except PySparkException as e:
            out[name] = {"type": type(e).__name__, "errorClass": e.getCondition(),
                         "message": str(e)[:300]}
    return out


PROGRAMS = {name[2:]: fn for name, fn in globals().items() if name.startswith("p_")}


def error_of(e):
    cond = e.getCondition() if isinstance(e, PySparkException) else None
    return {"type": type(e).__name__, "errorClass": cond, "message": str(e)[:3000]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--remote", required=True)
    p.add_argument("--env", help="venv-pack archive, added as archives/...#environment")
    p.add_argument("--pex", help="a PEX, added as a file; the interpreter is ./<its name>")
    p.add_argument("--interpreter", default="environment/bin/python")
    p.add_argument("--user", default="udf-tester")
    p.add_argument("--program", action="append", help="run only these (default: all)")
    args = p.parse_args()
    spark = SparkSession.builder.remote(args.remote + "/;user_id=" + args.user).create()
    if args.env:
        spark.addArtifacts(args.env + "#environment", archive=True)
        spark.conf.set(PY_EXEC, args.interpreter)
    if args.pex:
        # The seed's PEX flow: the PEX is a file of the session and the interpreter itself.
        spark.addArtifacts(args.pex, file=True)
        spark.conf.set(PY_EXEC, "./" + os.path.basename(args.pex))
    out = {}
    for name in args.program or sorted(PROGRAMS):
        try:
            out[name] = {"ok": PROGRAMS[name](spark)}
        except Exception as e:  # noqa: BLE001 - every failure is a result to compare
            out[name] = {"error": error_of(e)}
    spark.stop()
    json.dump(out, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
