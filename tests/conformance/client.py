"""The conformance suite's client: one script, run once against Apache Spark's Spark Connect server
and once against Valise, printing what it observes as JSON. tests/conformance/conformance_test.ts
compares the two runs observable by observable.

Run with the project's environment (.venv/bin/python, with the real pyspark[connect]):

    client.py --remote sc://127.0.0.1:PORT --work DIR

It speaks through the real PySpark client where PySpark exposes the behaviour, and through the
raw gRPC stub that ships in the same wheel (pyspark.sql.connect.proto, SparkConnectServiceStub)
for what the high-level API hides: response fields, CRC reporting, error details, malformed
requests. Values that differ by run (ids, the host's time zone) are reduced to what must hold
for them. It prints {"observations": [{"key", "what", "value"}, ...]}: `what` says what was
done, `value` what came back; an error is {"error": {...}} with its class, SQLSTATE, the JVM
class Spark Connect names, the exception PySpark raises for it, the names of its message
parameters, the message's shape and the gRPC code.
"""

import argparse
import hashlib
import json
import os
import re
import sys
import uuid
import warnings
import zlib

warnings.simplefilter("ignore", FutureWarning)

import grpc  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402

from pyspark.errors import PySparkException  # noqa: E402
from pyspark.errors.exceptions.connect import convert_exception  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql.connect.proto import base_pb2 as pb  # noqa: E402
from pyspark.sql.connect.proto.base_pb2_grpc import SparkConnectServiceStub  # noqa: E402

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PY_EXEC = "spark.sql.execution.pyspark.python"
CHUNK = 32 * 1024

# The config keys PySpark 4.2 reads before or during its first operations.
STARTUP_KEYS = [
    "spark.sql.session.timeZone",
    "spark.sql.timestampType",
    "spark.sql.ansi.enabled",
    "spark.sql.session.localRelationCacheThreshold",
    "spark.sql.session.localRelationSizeLimit",
    "spark.sql.session.localRelationChunkSizeRows",
    "spark.sql.session.localRelationChunkSizeBytes",
    "spark.sql.session.localRelationBatchOfChunksSizeBytes",
    "spark.sql.execution.arrow.maxRecordsPerBatch",
    "spark.sql.execution.arrow.useLargeVarTypes",
    "spark.sql.execution.pandas.convertToArrowArraySafely",
    "spark.sql.execution.pandas.inferPandasDictAsMap",
    "spark.sql.pyspark.inferNestedDictAsStruct.enabled",
    "spark.sql.pyspark.legacy.inferArrayTypeFromFirstElement.enabled",
    "spark.sql.pyspark.legacy.inferMapTypeFromFirstPair.enabled",
    "spark.sql.artifact.isolation.enabled",
    "spark.connect.session.planCompression.threshold",
    "spark.connect.session.planCompression.defaultAlgorithm",
    "spark.sql.connect.serverStacktrace.enabled",
]


class Observer:
    def __init__(self):
        self.observations = []
        self.keys = set()

    def add(self, key, what, value):
        if key in self.keys:
            raise AssertionError("observable %s recorded twice" % key)
        self.keys.add(key)
        self.observations.append({"key": key, "what": what, "value": value})

    def call(self, key, what, fn, value=lambda r: "ok"):
        """Records `value(result)`, or the error the call failed with."""
        try:
            result = fn()
        except grpc.RpcError as e:
            self.add(key, what, {"error": rpc_error(e)})
            return None
        except PySparkException as e:
            self.add(key, what, {"error": pyspark_error(e)})
            return None
        self.add(key, what, value(result))
        return result


def message_shape(message, error_class, sql_state):
    """The message's form without its text: the class prefix and the SQLSTATE suffix."""
    shape = "…"
    if error_class and message.startswith("[%s]" % error_class):
        shape = "[CLASS] …"
    if sql_state and message.rstrip().endswith("SQLSTATE: %s" % sql_state):
        shape += " SQLSTATE: <state>"
    return shape


def rpc_error(e):
    """A raw call's error as PySpark reads it: ErrorInfo, then its own exception class."""
    info = None
    for key, value in e.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
    out = {"grpcCode": e.code().name}
    message = e.details() or ""
    if info is None:
        out.update(errorClass=None, sqlState=None, jvmClass=None, pyspark=None, params=[])
        out["message"] = message_shape(message, None, None)
        return out
    error_class = info.metadata.get("errorClass")
    sql_state = info.metadata.get("sqlState")
    params = json.loads(info.metadata.get("messageParameters") or "{}")
    converted = convert_exception(info, message, None, grpc_status_code=e.code())
    out.update(
        errorClass=error_class,
        sqlState=sql_state,
        jvmClass=info.reason,
        pyspark=type(converted).__name__,
        params=sorted(params),
        message=message_shape(message, error_class, sql_state),
    )
    return out


def pyspark_error(e):
    """An error the real client raised: its Python class, condition and gRPC code."""
    code = getattr(e, "getGrpcStatusCode", None)
    code = code() if code is not None else None
    message = str(e).split("\n")[0]
    # PySpark prefixes the JVM class to messages that have no error class.
    return {
        "grpcCode": code.name if code is not None else None,
        "errorClass": e.getCondition(),
        "sqlState": e.getSqlState(),
        "pyspark": type(e).__name__,
        "params": sorted(e.getMessageParameters() or {}),
        "message": message_shape(message, e.getCondition(), e.getSqlState()),
    }


def host_time_zone():
    """The zone a JVM started here would use by default (TZ, /etc/timezone, /etc/localtime)."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        return tz
    try:
        with open("/etc/timezone") as f:
            return f.read().strip()
    except OSError:
        pass
    try:
        return os.readlink("/etc/localtime").split("zoneinfo/", 1)[1]
    except (OSError, IndexError):
        return "UTC"


class Raw:
    """The wheel's raw stub, with Spark Connect's session fields filled in."""

    def __init__(self, target):
        self.channel = grpc.insecure_channel(target)
        self.stub = SparkConnectServiceStub(self.channel)

    @staticmethod
    def ctx(session, user="alice", observed=None):
        fields = {"session_id": session}
        if user is not None:
            fields["user_context"] = pb.UserContext(user_id=user)
        if observed is not None:
            fields["client_observed_server_side_session_id"] = observed
        return fields

    def add(self, session, requests, user="alice"):
        def stream():
            for r in requests:
                r.MergeFrom(pb.AddArtifactsRequest(**self.ctx(session, user)))
                yield r

        return self.stub.AddArtifacts(stream())

    def batch(self, session, artifacts, user="alice"):
        return self.add(
            session,
            [pb.AddArtifactsRequest(batch=pb.AddArtifactsRequest.Batch(artifacts=artifacts))],
            user,
        )

    def status(self, session, names, user="alice", observed=None):
        return self.stub.ArtifactStatus(
            pb.ArtifactStatusesRequest(names=names, **self.ctx(session, user, observed))
        )

    def config(self, session, user="alice", observed=None, **operation):
        return self.stub.Config(
            pb.ConfigRequest(
                operation=pb.ConfigRequest.Operation(**operation),
                **self.ctx(session, user, observed)
            )
        )

    def release(self, session, user="alice", allow_reconnect=None):
        req = pb.ReleaseSessionRequest(**self.ctx(session, user))
        if allow_reconnect is not None:
            req.allow_reconnect = allow_reconnect
        return self.stub.ReleaseSession(req)

    def clone(self, session, user="alice", new=None, observed=None):
        req = pb.CloneSessionRequest(client_type="python", **self.ctx(session, user, observed))
        if new is not None:
            req.new_session_id = new
        return self.stub.CloneSession(req)

    def version(self, session, user="alice"):
        return self.stub.AnalyzePlan(
            pb.AnalyzePlanRequest(
                spark_version=pb.AnalyzePlanRequest.SparkVersion(), **self.ctx(session, user)
            )
        )


def single(name, data, crc=None):
    return pb.AddArtifactsRequest.SingleChunkArtifact(
        name=name,
        data=pb.AddArtifactsRequest.ArtifactChunk(
            data=data, crc=zlib.crc32(data) if crc is None else crc
        ),
    )


def chunked(name, data, num_chunks=None, bad_chunk=None, drop_last=False):
    """A chunked artifact as PySpark sends it, optionally damaged."""
    pieces = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    crcs = [zlib.crc32(p) for p in pieces]
    if bad_chunk is not None:
        crcs[bad_chunk] ^= 1
    first = pb.AddArtifactsRequest(
        begin_chunk=pb.AddArtifactsRequest.BeginChunkedArtifact(
            name=name,
            total_bytes=len(data),
            num_chunks=num_chunks or len(pieces),
            initial_chunk=pb.AddArtifactsRequest.ArtifactChunk(data=pieces[0], crc=crcs[0]),
        )
    )
    rest = [
        pb.AddArtifactsRequest(chunk=pb.AddArtifactsRequest.ArtifactChunk(data=p, crc=c))
        for p, c in zip(pieces[1:], crcs[1:])
    ]
    if drop_last:
        rest = rest[:-1]
    return [first] + rest


def summaries(resp):
    return [
        {"name": a.name, "is_crc_successful": a.is_crc_successful} for a in resp.artifacts
    ]


def pairs(resp):
    return [[p.key, p.value if p.HasField("value") else None] for p in resp.pairs]


def new_session():
    return str(uuid.uuid4())


def observe_artifacts(o, raw, work):
    s = new_session()
    o.call(
        "add.pyfile",
        "AddArtifacts: one .py in a batch; the response's summaries",
        lambda: raw.batch(s, [single("pyfiles/a.py", b"A = 1\n")]),
        summaries,
    )
    o.call(
        "add.batch_of_two",
        "AddArtifacts: two files in one batch",
        lambda: raw.batch(s, [single("files/one.txt", b"1"), single("files/two.txt", b"2")]),
        summaries,
    )
    big = bytes(range(256)) * 400
    o.call(
        "add.chunked",
        "AddArtifacts: a 100 KiB file in 32 KiB chunks",
        lambda: raw.add(s, chunked("files/big.bin", big)),
        summaries,
    )
    o.call(
        "add.same_bytes_again",
        "AddArtifacts: the same name with the same bytes again",
        lambda: raw.batch(s, [single("pyfiles/a.py", b"A = 1\n")]),
        summaries,
    )
    o.call(
        "add.changed_bytes",
        "AddArtifacts: the same name with other bytes, beside a new artifact",
        lambda: raw.batch(
            s, [single("pyfiles/a.py", b"A = 2\n"), single("pyfiles/beside.py", b"B = 1\n")]
        ),
    )
    o.call(
        "add.changed_bytes.others_kept",
        "...and the new artifact of that stream was added (re-adding it with other bytes fails)",
        lambda: raw.batch(s, [single("pyfiles/beside.py", b"B = 2\n")]),
        lambda r: "not added",
    )
    o.call(
        "add.bad_crc",
        "AddArtifacts: a wrong CRC on one artifact of a batch",
        lambda: raw.batch(s, [single("files/c.bin", b"xyz", crc=5), single("files/d.bin", b"d")]),
        summaries,
    )
    o.call(
        "add.bad_crc.not_stored",
        "...then the same name with the right CRC (accepted: nothing was stored)",
        lambda: raw.batch(s, [single("files/c.bin", b"other bytes")]),
        summaries,
    )
    o.call(
        "add.bad_crc_chunk",
        "AddArtifacts: a wrong CRC on the second chunk of a chunked artifact",
        lambda: raw.add(s, chunked("files/big2.bin", big, bad_chunk=1)),
        summaries,
    )
    o.call(
        "add.missing_chunk",
        "AddArtifacts: a chunked artifact that ends one chunk short",
        lambda: raw.add(s, chunked("files/big3.bin", big, drop_last=True)),
        summaries,
    )
    o.call(
        "add.chunk_without_begin",
        "AddArtifacts: a chunk with no begin_chunk before it",
        lambda: raw.add(
            s,
            [pb.AddArtifactsRequest(chunk=pb.AddArtifactsRequest.ArtifactChunk(data=b"x", crc=0))],
        ),
        summaries,
    )
    o.call(
        "add.empty_stream",
        "AddArtifacts: a stream with no message",
        lambda: raw.add(s, []),
        summaries,
    )
    names = [
        ("parent", "../x.py"),
        ("nested_parent", "pyfiles/../../x.py"),
        ("absolute", "/etc/x"),
        ("empty", ""),
        ("prefix_only", "pyfiles/"),
        ("nul", "files/a\x00b"),
        ("unknown_prefix", "foo/x"),
        ("jars", "jars/x.jar"),
        ("classes", "classes/X.class"),
        ("forward_to_fs", "forward_to_fs/tmp/x"),
        ("nested", "pyfiles/sub/dir/m.py"),
        ("backslash", "files/a\\b"),
        ("cache_not_hex", "cache/nothex"),
    ]
    for key, name in names:
        o.call(
            "name." + key,
            "AddArtifacts: the name %s" % json.dumps(name),
            lambda name=name: raw.batch(s, [single(name, b"x")]),
            summaries,
        )
    blob = b"a cached blob"
    digest = hashlib.sha256(blob).hexdigest()
    o.call(
        "cache.add",
        "AddArtifacts: cache/<sha256 of the bytes>",
        lambda: raw.batch(s, [single("cache/" + digest, blob)]),
        summaries,
    )
    o.call(
        "cache.wrong_hash",
        "AddArtifacts: cache/<a sha256 that is not the bytes'>",
        lambda: raw.batch(s, [single("cache/" + "0" * 64, blob)]),
        summaries,
    )
    o.call(
        "archive.not_an_archive",
        "AddArtifacts: archives/a.zip whose bytes are no archive",
        lambda: raw.batch(s, [single("archives/a.zip", b"not a zip")]),
        summaries,
    )
    checks = [
        ("cache_present", "cache/" + digest),
        ("cache_absent", "cache/" + "1" * 64),
        ("pyfile_present", "pyfiles/a.py"),
        ("file_present", "files/d.bin"),
        ("unknown", "nope"),
    ]
    for key, name in checks:
        o.call(
            "status." + key,
            "ArtifactStatus of %s" % name,
            lambda name=name: raw.status(s, [name]),
            lambda r, name=name: r.statuses[name].exists,
        )
    o.call(
        "status.other_user_cache",
        "ArtifactStatus of that cache/ blob for another user with the same session id",
        lambda: raw.status(s, ["cache/" + digest], user="bob"),
        lambda r: r.statuses["cache/" + digest].exists,
    )


def observe_pyspark_artifacts(o, remote, work):
    """The real client's addArtifacts, with every kind of path a user adds."""
    py = os.path.join(work, "mod.py")
    with open(py, "w") as f:
        f.write("X = 1\n")
    zipped = os.path.join(work, "lib.zip")
    import zipfile

    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("ziplib/__init__.py", "Z = 1\n")
    tgz = os.path.join(work, "env.tar.gz")
    import tarfile

    with tarfile.open(tgz, "w:gz") as t:
        t.add(py, arcname="envmod.py")
    data = os.path.join(work, "data.txt")
    with open(data, "w") as f:
        f.write("data\n")
    spark = SparkSession.builder.remote(remote + "/;user_id=alice").create()
    try:
        for key, what, fn in [
            ("pyspark.add_py", "spark.addArtifacts(mod.py, pyfile=True)",
             lambda: spark.addArtifacts(py, pyfile=True)),
            ("pyspark.add_zip", "spark.addArtifacts(lib.zip, pyfile=True)",
             lambda: spark.addArtifacts(zipped, pyfile=True)),
            ("pyspark.add_archive", "spark.addArtifacts('env.tar.gz#environment', archive=True)",
             lambda: spark.addArtifacts(tgz + "#environment", archive=True)),
            ("pyspark.add_file", "spark.addArtifacts(data.txt, file=True)",
             lambda: spark.addArtifacts(data, file=True)),
            ("pyspark.add_again", "spark.addArtifacts(mod.py, pyfile=True) again, same bytes",
             lambda: spark.addArtifacts(py, pyfile=True)),
        ]:
            o.call(key, what, fn)
        with open(py, "w") as f:
            f.write("X = 2\n")
        o.call(
            "pyspark.add_changed",
            "spark.addArtifacts(mod.py, pyfile=True) with changed bytes",
            lambda: spark.addArtifacts(py, pyfile=True),
        )
        blob = b"local relation bytes"
        o.call(
            "pyspark.cache_artifact",
            "the client's cache_artifact(blob), then is_cached_artifact(its sha256)",
            lambda: spark.client._artifact_manager.is_cached_artifact(
                spark.client.cache_artifact(blob)
            ),
        )
        o.call("pyspark.version", "spark.version", lambda: spark.version, lambda v: v)
        o.call(
            "query.range",
            "spark.range(3).collect()",
            lambda: spark.range(3).collect(),
            lambda rows: [r.id for r in rows],
        )
        o.call(
            "query.sql",
            "spark.sql('SELECT 1 AS one').collect()",
            lambda: spark.sql("SELECT 1 AS one").collect(),
            lambda rows: [r.one for r in rows],
        )
        o.call(
            "query.schema",
            "spark.range(3).schema (AnalyzePlan: schema)",
            lambda: spark.range(3).schema.simpleString(),
            lambda v: v,
        )
        o.call(
            "pyspark.conf_get_default",
            "spark.conf.get('spark.custom.unset', 'fallback')",
            lambda: spark.conf.get("spark.custom.unset", "fallback"),
            lambda v: v,
        )
        o.call(
            "pyspark.conf_get_unset",
            "spark.conf.get('spark.custom.unset')",
            lambda: spark.conf.get("spark.custom.unset"),
            lambda v: v,
        )
        o.call(
            "pyspark.conf_set_get",
            "spark.conf.set(interpreter key, 'environment/bin/python'), then get",
            lambda: (spark.conf.set(PY_EXEC, "environment/bin/python"), spark.conf.get(PY_EXEC))[1],
            lambda v: v,
        )
        o.call(
            "pyspark.conf_unset_get",
            "spark.conf.unset(interpreter key), then get it",
            lambda: (spark.conf.unset(PY_EXEC), spark.conf.get(PY_EXEC))[1],
            lambda v: v,
        )
        o.call(
            "pyspark.conf_is_modifiable",
            "spark.conf.isModifiable('spark.sql.session.timeZone')",
            lambda: spark.conf.isModifiable("spark.sql.session.timeZone"),
            lambda v: v,
        )
        o.call(
            "pyspark.conf_get_all_has_set_key",
            "spark.conf.getAll after a set contains that key",
            lambda: (spark.conf.set("spark.custom.k", "v"), spark.conf.getAll)[1],
            lambda d: d.get("spark.custom.k"),
        )
        session_id = spark.session_id
        o.call("pyspark.stop", "spark.stop()", lambda: spark.stop())
    finally:
        spark.stop()
    again = SparkSession.builder.remote(
        remote + "/;user_id=alice;session_id=" + session_id
    ).create()
    o.call(
        "pyspark.after_stop",
        "a new client with the stopped session's id: spark.conf.get(a key)",
        lambda: again.conf.get("spark.sql.ansi.enabled"),
        lambda v: v,
    )


def observe_config(o, raw):
    s = new_session()
    kv = pb.KeyValue
    C = pb.ConfigRequest
    host_zone = host_time_zone()
    for key in STARTUP_KEYS:
        def zone(v, key=key):
            if key == "spark.sql.session.timeZone" and v == host_zone:
                return "<the server host's zone>"
            return v

        what = "Config GetOption %s on a new session" % key
        if key == "spark.sql.session.timeZone":
            what += " (the servers' host zone: %s)" % host_zone
        o.call(
            "conf.default." + key,
            what,
            lambda key=key: raw.config(s, get_option=C.GetOption(keys=[key])),
            lambda r, zone=zone: zone(pairs(r)[0][1]),
        )
    ops = [
        ("get.unknown", "Get of a key never set",
         dict(get=C.Get(keys=["spark.custom.never"])), pairs),
        ("get.registered_without_default", "Get of %s, never set" % PY_EXEC,
         dict(get=C.Get(keys=[PY_EXEC])), pairs),
        ("get.one_unknown_of_two", "Get of a known and an unknown key",
         dict(get=C.Get(keys=["spark.sql.ansi.enabled", "spark.custom.never"])), pairs),
        ("get_with_default.unknown", "GetWithDefault: unknown key with a default, another without",
         dict(get_with_default=C.GetWithDefault(
             pairs=[kv(key="spark.custom.a", value="d"), kv(key="spark.custom.b")])), pairs),
        ("get_with_default.typed_key_bad_default",
         "GetWithDefault: spark.sql.ansi.enabled with the default 'maybe'",
         dict(get_with_default=C.GetWithDefault(
             pairs=[kv(key="spark.sql.ansi.enabled", value="maybe")])), pairs),
        ("get_option.unknown", "GetOption of a key never set",
         dict(get_option=C.GetOption(keys=["spark.custom.never"])), pairs),
        ("set.custom", "Set spark.custom.x=1, then GetOption",
         dict(set=C.Set(pairs=[kv(key="spark.custom.x", value="1")])), pairs),
        ("set.custom.get", "...GetOption spark.custom.x",
         dict(get_option=C.GetOption(keys=["spark.custom.x"])), pairs),
        ("set.no_value", "Set a key with no value",
         dict(set=C.Set(pairs=[kv(key="spark.custom.none")])), pairs),
        ("set.empty_key", "Set the key ''",
         dict(set=C.Set(pairs=[kv(key="", value="x")])), pairs),
        ("set.spark_master", "Set spark.master",
         dict(set=C.Set(pairs=[kv(key="spark.master", value="local[1]")])), pairs),
        ("set.driver_key", "Set spark.driver.memory",
         dict(set=C.Set(pairs=[kv(key="spark.driver.memory", value="1g")])), pairs),
        ("set.static_sql_key", "Set spark.sql.warehouse.dir",
         dict(set=C.Set(pairs=[kv(key="spark.sql.warehouse.dir", value="/x")])), pairs),
        ("set.plan_compression", "Set spark.connect.session.planCompression.threshold",
         dict(set=C.Set(pairs=[
             kv(key="spark.connect.session.planCompression.threshold", value="1000")])), pairs),
        ("set.bool_mismatch", "Set spark.sql.ansi.enabled=maybe",
         dict(set=C.Set(pairs=[kv(key="spark.sql.ansi.enabled", value="maybe")])), pairs),
        ("set.int_mismatch", "Set spark.sql.execution.arrow.maxRecordsPerBatch=many",
         dict(set=C.Set(pairs=[
             kv(key="spark.sql.execution.arrow.maxRecordsPerBatch", value="many")])), pairs),
        ("set.bad_time_zone", "Set spark.sql.session.timeZone=Nowhere/Zone",
         dict(set=C.Set(pairs=[kv(key="spark.sql.session.timeZone", value="Nowhere/Zone")])),
         pairs),
        ("set.time_zone", "Set spark.sql.session.timeZone=Asia/Tokyo, then Get",
         dict(set=C.Set(pairs=[kv(key="spark.sql.session.timeZone", value="Asia/Tokyo")])),
         pairs),
        ("set.time_zone.get", "...Get spark.sql.session.timeZone",
         dict(get=C.Get(keys=["spark.sql.session.timeZone"])), pairs),
        ("set.worker_env", "Set spark.pythonWorkerEnv.FOO",
         dict(set=C.Set(pairs=[kv(key="spark.pythonWorkerEnv.FOO", value="bar")])), pairs),
        ("set.worker_env_path", "Set spark.pythonWorkerEnv.PATH",
         dict(set=C.Set(pairs=[kv(key="spark.pythonWorkerEnv.PATH", value="/x")])), pairs),
        ("set.silent_refused", "Set silent: spark.driver.memory and spark.custom.y",
         dict(set=C.Set(pairs=[kv(key="spark.driver.memory", value="1g"),
                               kv(key="spark.custom.y", value="2")], silent=True)),
         lambda r: {"warnings": len(r.warnings)}),
        ("set.silent_refused.get", "...GetOption spark.custom.y",
         dict(get_option=C.GetOption(keys=["spark.custom.y"])), pairs),
        ("set.refused_with_other", "Set (not silent): spark.custom.z and spark.driver.memory",
         dict(set=C.Set(pairs=[kv(key="spark.custom.z", value="3"),
                               kv(key="spark.driver.memory", value="1g")])), pairs),
        ("set.refused_with_other.get", "...GetOption spark.custom.z",
         dict(get_option=C.GetOption(keys=["spark.custom.z"])), pairs),
        ("set_then_unset", "Set spark.sql.ansi.enabled=false, Unset it, Get",
         dict(set=C.Set(pairs=[kv(key="spark.sql.ansi.enabled", value="false")])), pairs),
        ("set_then_unset.unset", "...Unset spark.sql.ansi.enabled",
         dict(unset=C.Unset(keys=["spark.sql.ansi.enabled"])), pairs),
        ("set_then_unset.get", "...Get spark.sql.ansi.enabled (the default again)",
         dict(get=C.Get(keys=["spark.sql.ansi.enabled"])), pairs),
        ("unset.never_set", "Unset a key never set",
         dict(unset=C.Unset(keys=["spark.custom.never"])), pairs),
        ("unset.driver_key", "Unset spark.driver.memory",
         dict(unset=C.Unset(keys=["spark.driver.memory"])), pairs),
        ("get_all.set", "Set spark.listed.b=2 and spark.listed.a=1, then GetAll",
         dict(set=C.Set(pairs=[kv(key="spark.listed.b", value="2"),
                               kv(key="spark.listed.a", value="1")])), pairs),
        # The pairs as a set: Spark lists them in its hash map's order, Valise by key.
        ("get_all.prefix", "...GetAll with the prefix spark.listed. (the pairs, in any order)",
         dict(get_all=C.GetAll(prefix="spark.listed.")), lambda r: sorted(pairs(r))),
        ("get_all.defaults",
         "GetAll: does it list spark.sql.session.localRelationChunkSizeRows (never set)?",
         dict(get_all=C.GetAll()),
         lambda r: any(p.key == "spark.sql.session.localRelationChunkSizeRows" for p in r.pairs)),
        ("empty_operation", "with no operation", {}, pairs),
    ]
    for key, what, op, value in ops:
        o.call("conf." + key, "Config " + what, lambda op=op: raw.config(s, **op), value)
    for key in [
        "spark.sql.session.timeZone",
        "spark.sql.shuffle.partitions",
        PY_EXEC,
        "spark.connect.session.planCompression.threshold",
        "spark.sql.warehouse.dir",
        "spark.master",
        "spark.driver.memory",
        "spark.app.name",
        "spark.custom.never",
        "spark.pythonWorkerEnv.FOO",
    ]:
        o.call(
            "conf.is_modifiable." + key,
            "Config IsModifiable %s" % key,
            lambda key=key: raw.config(s, is_modifiable=C.IsModifiable(keys=[key])),
            lambda r: pairs(r)[0][1],
        )


def observe_sessions(o, raw):
    C = pb.ConfigRequest
    get_all = dict(get_all=C.GetAll(prefix="spark.custom."))
    s = new_session()
    seen = {}

    def remember(rpc):
        def value(r):
            seen[rpc] = (r.session_id, r.server_side_session_id)
            return "ok"

        return value

    o.call("session.first_call", "AnalyzePlan spark_version on a new session id",
           lambda: raw.version(s), remember("AnalyzePlan"))
    o.call("session.config_call", "Config on it", lambda: raw.config(s, **get_all),
           remember("Config"))
    o.call("session.status_call", "ArtifactStatus on it", lambda: raw.status(s, []),
           remember("ArtifactStatus"))
    o.call("session.add_call", "AddArtifacts on it",
           lambda: raw.batch(s, [single("files/s.txt", b"s")]), remember("AddArtifacts"))
    o.call(
        "session.interrupt_call",
        "Interrupt (all) on it",
        lambda: raw.stub.Interrupt(
            pb.InterruptRequest(
                interrupt_type=pb.InterruptRequest.INTERRUPT_TYPE_ALL, **raw.ctx(s)
            )
        ),
        lambda r: remember("Interrupt")(r) and {"interrupted_ids": list(r.interrupted_ids)},
    )
    o.call(
        "session.release_execute_unknown",
        "ReleaseExecute (all) of an operation never run",
        lambda: raw.stub.ReleaseExecute(
            pb.ReleaseExecuteRequest(
                operation_id=str(uuid.uuid4()),
                release_all=pb.ReleaseExecuteRequest.ReleaseAll(),
                **raw.ctx(s)
            )
        ),
        lambda r: remember("ReleaseExecute")(r) and {"operation_id": r.HasField("operation_id")},
    )
    o.call(
        "session.reattach_unknown",
        "ReattachExecute of an operation never run",
        lambda: list(
            raw.stub.ReattachExecute(
                pb.ReattachExecuteRequest(operation_id=str(uuid.uuid4()), **raw.ctx(s))
            )
        ),
    )
    o.call(
        "session.fetch_error_details_unknown",
        "FetchErrorDetails of an error id never seen: the response's fields",
        lambda: raw.stub.FetchErrorDetails(
            pb.FetchErrorDetailsRequest(error_id=str(uuid.uuid4()), **raw.ctx(s))
        ),
        lambda r: sorted(f.name for f, _ in r.ListFields()),
    )
    ids = {v[1] for v in seen.values()}
    server_id = next(iter(ids)) if len(ids) == 1 else None
    o.add(
        "session.server_side_id.format",
        "the server-side session id: a UUID, not the client's id",
        {
            "uuid": bool(server_id and UUID_RE.match(server_id)),
            "is_client_id": server_id == s,
        },
    )
    o.add(
        "session.server_side_id.stable",
        "the same server-side id in every response of the session, and session_id echoed",
        {rpc: {"same_id": v[1] == server_id, "echo": v[0] == s} for rpc, v in sorted(seen.items())},
    )
    o.call(
        "session.observed_mismatch",
        "a request whose client_observed_server_side_session_id is not the session's",
        lambda: raw.status(s, [], observed=str(uuid.uuid4())),
    )
    o.call(
        "session.observed_match",
        "a request whose client_observed_server_side_session_id is the session's",
        lambda: raw.status(s, [], observed=server_id),
    )
    o.call(
        "session.other_user",
        "another user with the same session id: a server-side id of its own",
        lambda: raw.config(s, user="bob", **get_all),
        lambda r: {"own_id": r.server_side_session_id not in ("", server_id)},
    )
    o.call("session.no_user_context", "a request without user_context",
           lambda: raw.config(new_session(), user=None, **get_all))
    o.call("session.uppercase_id", "a session id in upper case",
           lambda: raw.config(new_session().upper(), **get_all))
    o.call("session.short_groups_id", "the session id '1-2-3-4-5' (Java's lenient UUID form)",
           lambda: raw.config("1-2-3-4-5", **get_all))
    for key, bad in [("not_uuid", "not-a-uuid"), ("empty", "")]:
        o.call("session.bad_id." + key, "Config with the session id %s" % json.dumps(bad),
               lambda bad=bad: raw.config(bad, **get_all))
    o.call("session.bad_id.add", "AddArtifacts with the session id 'not-a-uuid'",
           lambda: raw.batch("not-a-uuid", [single("files/x", b"x")]))
    o.call("session.bad_id.version", "AnalyzePlan with the session id 'not-a-uuid'",
           lambda: raw.version("not-a-uuid"))

    # Release.
    o.call(
        "release.response",
        "ReleaseSession: the response's ids",
        lambda: raw.release(s),
        lambda r: {
            "echo": r.session_id == s,
            "server_side_id": r.server_side_session_id == server_id,
        },
    )
    o.call("release.then_config", "Config on the released session",
           lambda: raw.config(s, **get_all))
    o.call("release.then_add", "AddArtifacts on the released session",
           lambda: raw.batch(s, [single("files/t.txt", b"t")]))
    o.call("release.then_status", "ArtifactStatus on the released session",
           lambda: raw.status(s, []))
    o.call(
        "release.again",
        "ReleaseSession of the released session again",
        lambda: raw.release(s),
        lambda r: {"server_side_id": r.server_side_session_id != ""},
    )
    o.call("release.other_user_unaffected", "the other user's session of the same id still works",
           lambda: raw.config(s, user="bob", **get_all))
    o.call(
        "release.unknown",
        "ReleaseSession of a session id never used",
        lambda: raw.release(new_session()),
        lambda r: {"server_side_id": r.server_side_session_id != ""},
    )
    o.call("release.bad_id", "ReleaseSession with the session id 'not-a-uuid'",
           lambda: raw.release("not-a-uuid"))
    r = new_session()
    first = raw.config(r, **get_all).server_side_session_id
    o.call(
        "release.allow_reconnect",
        "ReleaseSession with allow_reconnect, then Config with the same id",
        lambda: (raw.release(r, allow_reconnect=True), raw.config(r, **get_all))[1],
        lambda resp: {"new_server_side_id": resp.server_side_session_id not in ("", first)},
    )
    o.call(
        "release.allow_reconnect.old_observed",
        "...and a request that still names the old server-side id",
        lambda: raw.config(r, observed=first, **get_all),
    )


def observe_clone(o, raw, remote):
    """CloneSession (Spark 4.1): a new session with the source's config (and artifacts)."""
    C = pb.ConfigRequest
    s = new_session()
    src_id = raw.config(
        s, set=C.Set(pairs=[pb.KeyValue(key="spark.custom.cloned", value="7")])
    ).server_side_session_id
    blob = b"cloned cache blob"
    cache = "cache/" + hashlib.sha256(blob).hexdigest()
    raw.batch(s, [single(cache, blob)])
    o.call(
        "clone.response",
        "CloneSession without new_session_id: the response's ids",
        lambda: raw.clone(s),
        lambda r: {
            "echo": r.session_id == s,
            "server_side_id": r.server_side_session_id == src_id,
            "new_id_uuid": bool(UUID_RE.match(r.new_session_id)) and r.new_session_id != s,
            "new_server_side_id": bool(UUID_RE.match(r.new_server_side_session_id))
            and r.new_server_side_session_id not in (src_id, r.new_session_id),
        },
    )
    t = new_session()
    o.call("clone.new_id", "CloneSession with new_session_id: the id it answers",
           lambda: raw.clone(s, new=t), lambda r: {"requested": r.new_session_id == t})
    o.call("clone.config", "Config get on the clone: the source's value",
           lambda: raw.config(t, get_option=C.GetOption(keys=["spark.custom.cloned"])), pairs)
    o.call("clone.cache_artifact", "ArtifactStatus on the clone of the source's cache/ blob",
           lambda: raw.status(t, [cache]),
           lambda r: [v.exists for _, v in sorted(r.statuses.items())])
    o.call(
        "clone.independent",
        "Config set on the clone, then get on the source",
        lambda: (
            raw.config(t, set=C.Set(pairs=[pb.KeyValue(key="spark.custom.cloned", value="9")])),
            raw.config(s, get_option=C.GetOption(keys=["spark.custom.cloned"])),
        )[1],
        pairs,
    )
    o.call("clone.into_existing", "CloneSession into an existing session id",
           lambda: raw.clone(s, new=t))
    o.call("clone.into_source", "CloneSession into the source's own id",
           lambda: raw.clone(s, new=s))
    o.call("clone.bad_new_id", "CloneSession with new_session_id 'not-a-uuid'",
           lambda: raw.clone(s, new="not-a-uuid"))
    o.call("clone.empty_new_id", "CloneSession with an empty new_session_id: a new id",
           lambda: raw.clone(s, new=""),
           lambda r: {"new_id_uuid": bool(UUID_RE.match(r.new_session_id))})
    o.call("clone.unknown_source", "CloneSession of a session id never used",
           lambda: raw.clone(new_session()))
    o.call("clone.bad_source_id", "CloneSession of the session id 'not-a-uuid'",
           lambda: raw.clone("not-a-uuid"))
    o.call("clone.other_user", "CloneSession of alice's session by bob",
           lambda: raw.clone(s, user="bob"))
    o.call("clone.observed_mismatch",
           "CloneSession with a client_observed_server_side_session_id not the source's",
           lambda: raw.clone(s, observed=str(uuid.uuid4())))
    raw.release(s)
    o.call("clone.released_source", "CloneSession of a released session",
           lambda: raw.clone(s))
    o.call("clone.survives_release", "Config get on the clone after its source was released",
           lambda: raw.config(t, get_option=C.GetOption(keys=["spark.custom.cloned"])), pairs)
    spark = SparkSession.builder.remote(remote + "/;user_id=alice").create()
    try:
        spark.conf.set("spark.custom.pyspark_clone", "1")
        o.call(
            "clone.pyspark",
            "spark.cloneSession(): a session of its own with the source's config",
            lambda: spark.cloneSession(),
            lambda c: {
                "own_id": c.session_id != spark.session_id,
                "conf": c.conf.get("spark.custom.pyspark_clone"),
            },
        )
    finally:
        spark.stop()


def begin_idle(o, raw):
    """A session used once and then left alone, for the server to expire (see after_idle)."""
    s = new_session()
    C = pb.ConfigRequest
    o.call(
        "idle.before",
        "a session that sets a config and adds a file, then is left idle",
        lambda: (
            raw.config(s, set=C.Set(pairs=[pb.KeyValue(key="spark.custom.idle", value="1")])),
            raw.batch(s, [single("files/idle.txt", b"idle")]),
        )[1],
        summaries,
    )
    return s


def after_idle(o, raw, s):
    """The idle session once the server logged that it expired it."""
    C = pb.ConfigRequest
    o.call("idle.then_config", "Config on the session the server expired as idle",
           lambda: raw.config(s, get_option=C.GetOption(keys=["spark.custom.idle"])), pairs)
    o.call("idle.then_status", "ArtifactStatus on the expired session",
           lambda: raw.status(s, ["files/idle.txt"]))
    o.call("idle.then_add", "AddArtifacts on the expired session",
           lambda: raw.batch(s, [single("files/after.txt", b"a")]), summaries)
    o.call(
        "idle.release",
        "ReleaseSession of the expired session",
        lambda: raw.release(s),
        lambda r: {"server_side_id": r.server_side_session_id != ""},
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--remote", required=True, help="sc://127.0.0.1:PORT")
    p.add_argument("--work", required=True, help="a scratch directory for the files it adds")
    p.add_argument(
        "--after-idle",
        metavar="SESSION",
        help="only observe SESSION (printed as idle_session by a first run) after the server "
        "logged that it expired it",
    )
    args = p.parse_args()
    target = args.remote[len("sc://"):].rstrip("/")
    raw = Raw(target)
    o = Observer()
    if args.after_idle:
        after_idle(o, raw, args.after_idle)
        print(json.dumps({"observations": o.observations}, sort_keys=True))
        return 0
    idle = begin_idle(o, raw)
    observe_sessions(o, raw)
    observe_clone(o, raw, args.remote.rstrip("/"))
    observe_artifacts(o, raw, args.work)
    observe_config(o, raw)
    observe_pyspark_artifacts(o, args.remote.rstrip("/"), args.work)
    print(json.dumps({"observations": o.observations, "idle_session": idle}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
