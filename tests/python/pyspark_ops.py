"""Drives the real PySpark client (Spark Connect) through a list of operations, for the wire tests.

Run with the project's environment (.venv/bin/python, which has pyspark[connect]):

    pyspark_ops.py --remote 'sc://127.0.0.1:PORT/;user_id=ada;session_id=UUID' OPS_JSON

OPS_JSON is a JSON list; each item is an object with "op" and its arguments:

    {"op": "add", "paths": [...], "pyfile"|"archive"|"file": true}   spark.addArtifacts
    {"op": "cache", "data": "text"}           the client's cache_artifact (local relations)
    {"op": "is_cached", "data": "text"}       whether the server holds that cache/ blob
    {"op": "conf.set", "key": K, "value": V}
    {"op": "conf.get", "key": K}              spark.conf.get(K)
    {"op": "conf.get", "key": K, "default": D}  spark.conf.get(K, D)
    {"op": "conf.unset", "key": K}
    {"op": "conf.getAll"}
    {"op": "conf.isModifiable", "key": K}
    {"op": "version"}                         spark.version
    {"op": "range", "n": N}                   spark.range(N).collect()
    {"op": "ids"}                             the client's and the server's session ids (after
                                              an AnalyzePlan, the call that makes PySpark learn it)
    {"op": "stop"}                            spark.stop()
    {"op": "bad_session", "session_id": S}    PySpark's own check of a malformed session id,
                                              then the same id sent with the wheel's raw stub

It prints one JSON object: {"ok": all operations succeeded, "results": [one per operation]},
each result {"ok": true, "value": ...} or {"ok": false, "error": {...}}.
"""

import argparse
import json
import sys
import warnings

warnings.simplefilter("ignore", FutureWarning)

from pyspark.errors import PySparkException  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402


def error_json(e):
    """What a test can assert about a PySpark error: its class, condition and gRPC code."""
    out = {"type": type(e).__name__, "message": str(e).split("\n")[0][:500]}
    if isinstance(e, PySparkException):
        out["errorClass"] = e.getCondition()
        out["sqlState"] = e.getSqlState()
        code = getattr(e, "getGrpcStatusCode", None)
        if code is not None and code() is not None:
            out["grpcCode"] = code().name
    return out


def raw_error_json(e):
    """The error of a call made with the wheel's raw stub, as PySpark would convert it."""
    from google.rpc import error_details_pb2, status_pb2

    out = {"grpcCode": e.code().name, "message": e.details()}
    for key, value in e.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                out["errorClass"] = info.metadata.get("errorClass")
                out["sqlState"] = info.metadata.get("sqlState")
                out["reason"] = info.reason
    return out


def bad_session(remote, session_id):
    """PySpark refuses a malformed id itself; the server must refuse it too."""
    import grpc

    from pyspark.sql.connect.client import DefaultChannelBuilder
    from pyspark.sql.connect.proto import base_pb2
    from pyspark.sql.connect.proto.base_pb2_grpc import SparkConnectServiceStub

    out = {}
    try:
        SparkSession.builder.remote("%s;session_id=%s" % (remote, session_id)).create()
        out["client"] = None
    except PySparkException as e:
        out["client"] = error_json(e)
    builder = DefaultChannelBuilder(remote)
    stub = SparkConnectServiceStub(builder.toChannel())
    req = base_pb2.ConfigRequest(
        session_id=session_id,
        user_context=base_pb2.UserContext(user_id=builder.userId or ""),
        operation=base_pb2.ConfigRequest.Operation(
            get_all=base_pb2.ConfigRequest.GetAll()
        ),
    )
    try:
        stub.Config(req)
        out["server"] = None
    except grpc.RpcError as e:
        out["server"] = raw_error_json(e)
    return out


def run(spark, remote, op):
    kind = op["op"]
    if kind == "add":
        flags = {k: True for k in ("pyfile", "archive", "file") if op.get(k)}
        spark.addArtifacts(*op["paths"], **flags)
        return None
    if kind == "cache":
        return spark.client.cache_artifact(op["data"].encode())
    if kind == "is_cached":
        import hashlib

        digest = hashlib.sha256(op["data"].encode()).hexdigest()
        return spark.client._artifact_manager.is_cached_artifact(digest)
    if kind == "conf.set":
        spark.conf.set(op["key"], op["value"])
        return None
    if kind == "conf.get":
        if "default" in op:
            return spark.conf.get(op["key"], op["default"])
        return spark.conf.get(op["key"])
    if kind == "conf.unset":
        spark.conf.unset(op["key"])
        return None
    if kind == "conf.getAll":
        return spark.conf.getAll
    if kind == "conf.isModifiable":
        return spark.conf.isModifiable(op["key"])
    if kind == "version":
        return spark.version
    if kind == "range":
        return [r.id for r in spark.range(op["n"]).collect()]
    if kind == "ids":
        # PySpark learns the server-side id from the responses it verifies (not AddArtifacts').
        spark.version
        return {
            "session_id": spark.session_id,
            "server_side_session_id": spark.client._server_session_id,
        }
    if kind == "stop":
        spark.stop()
        return None
    if kind == "bad_session":
        return bad_session(remote.split(";session_id=")[0], op["session_id"])
    raise ValueError("unknown op %r" % kind)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--remote", required=True)
    parser.add_argument("ops")
    args = parser.parse_args()
    spark = SparkSession.builder.remote(args.remote).create()
    results = []
    for op in json.loads(args.ops):
        try:
            results.append({"ok": True, "value": run(spark, args.remote, op)})
        except Exception as e:  # every failure is reported, the next operation still runs
            results.append({"ok": False, "error": error_json(e)})
    print(json.dumps({"ok": all(r["ok"] for r in results), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
