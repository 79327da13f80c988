#!/usr/bin/python3
"""Stand-in for PySpark's Spark Connect artifact manager (4.x), for tests and benchmarks.

Why a stand-in when the real PySpark client is in .venv/: this one sends what it is told, which
the real client never does. Keep it only for streams the real client cannot produce: a bad
CRC, missing or extra chunks, a stream that ends mid-artifact or is cancelled
(tests/pyspark_wire_test.ts, tests/python_client_test.ts against the grpcio reference server). bench/upload_bench.ts still
uploads with it until the benchmark drives the real client (the bench work of issue 12).
Everything a user's PySpark does is tested with the real client (tests/pyspark_wire_test.ts,
tests/conformance/, tests/examples_pyspark_test.ts), and tests/python_client_test.ts checks
that this stand-in's well-formed streams equal the real client's, message for message.

It sends what PySpark's `pyspark/sql/connect/client/artifact.py` and `client/core.py` send
(see ../shared/spark-connect/README.md sections 4.1 and 4.2): the same artifact names, the
same 32 KiB batching and chunking, `zlib.crc32` per chunk, `session_id` and `user_context` on
every AddArtifacts/ArtifactStatus request, one AddArtifacts stream per path. Config and
ReleaseSession carry `client_type` and (Config only) `client_observed_server_side_session_id`
once known, and their responses are checked like PySpark's `_verify_response_integrity`.

There is no grpc_tools on this machine: message classes come from the committed
FileDescriptorSet `packages/protocol/gen/descriptors.binpb`.

Run with Debian's interpreter: `/usr/bin/python3 tests/python/spark_artifacts.py --help`.
Every command prints one JSON object on stdout; the exit status is 0 when "ok" is true,
1 when an RPC or client check failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import random
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple
from urllib.parse import urlparse
from urllib.request import url2pathname

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

CHUNK_SIZE = 32 * 1024

JAR_PREFIX = "jars"
PYFILE_PREFIX = "pyfiles"
ARCHIVE_PREFIX = "archives"
FILE_PREFIX = "files"
FORWARD_TO_FS_PREFIX = "forward_to_fs"
CACHE_PREFIX = "cache"

SERVICE = "/spark.connect.SparkConnectService/"
SPARK_VERSION = "4.0.0"

_ROOT = Path(__file__).resolve().parents[2]
DESCRIPTORS = _ROOT / "packages" / "protocol" / "gen" / "descriptors.binpb"


# ---------------------------------------------------------------------------------------------
# Message classes


def _status_file() -> descriptor_pb2.FileDescriptorProto:
    """google/rpc/status.proto, which is not in our descriptor set."""
    f = descriptor_pb2.FileDescriptorProto(
        name="google/rpc/status.proto",
        package="google.rpc",
        syntax="proto3",
        dependency=["google/protobuf/any.proto"],
    )
    m = f.message_type.add(name="Status")
    fd = descriptor_pb2.FieldDescriptorProto
    m.field.add(name="code", number=1, type=fd.TYPE_INT32, label=fd.LABEL_OPTIONAL)
    m.field.add(name="message", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    m.field.add(
        name="details",
        number=3,
        type=fd.TYPE_MESSAGE,
        label=fd.LABEL_REPEATED,
        type_name=".google.protobuf.Any",
    )
    return f


def _load_messages() -> Dict[str, Any]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    files = list(fds.file)
    if not any(f.name == "google/rpc/status.proto" for f in files):
        files.append(_status_file())
    pool = descriptor_pool.DescriptorPool()
    by_name = {f.name: f for f in files}
    added: set = set()

    def add(f: Any) -> None:  # dependencies first
        if f.name in added:
            return
        for d in f.dependency:
            add(by_name[d])
        pool.Add(f)
        added.add(f.name)

    for f in files:
        add(f)
    factory = message_factory.MessageFactory(pool)
    out: Dict[str, Any] = {}

    def collect(prefix: str, msgs: Any) -> None:
        for m in msgs:
            full = f"{prefix}.{m.name}" if prefix else m.name
            out[full] = factory.GetPrototype(pool.FindMessageTypeByName(full))
            collect(full, m.nested_type)

    for f in files:
        collect(f.package, f.message_type)
    return out


_M = _load_messages()


class pb:  # noqa: N801 - a namespace that reads like generated code
    UserContext = _M["spark.connect.UserContext"]
    KeyValue = _M["spark.connect.KeyValue"]
    ConfigRequest = _M["spark.connect.ConfigRequest"]
    ConfigResponse = _M["spark.connect.ConfigResponse"]
    AddArtifactsRequest = _M["spark.connect.AddArtifactsRequest"]
    AddArtifactsResponse = _M["spark.connect.AddArtifactsResponse"]
    ArtifactStatusesRequest = _M["spark.connect.ArtifactStatusesRequest"]
    ArtifactStatusesResponse = _M["spark.connect.ArtifactStatusesResponse"]
    ReleaseSessionRequest = _M["spark.connect.ReleaseSessionRequest"]
    ReleaseSessionResponse = _M["spark.connect.ReleaseSessionResponse"]
    Status = _M["google.rpc.Status"]
    ErrorInfo = _M["google.rpc.ErrorInfo"]
    CfgOperation = _M["spark.connect.ConfigRequest.Operation"]
    CfgSet = _M["spark.connect.ConfigRequest.Set"]
    CfgGet = _M["spark.connect.ConfigRequest.Get"]
    CfgGetWithDefault = _M["spark.connect.ConfigRequest.GetWithDefault"]
    CfgGetOption = _M["spark.connect.ConfigRequest.GetOption"]
    CfgGetAll = _M["spark.connect.ConfigRequest.GetAll"]
    CfgUnset = _M["spark.connect.ConfigRequest.Unset"]
    CfgIsModifiable = _M["spark.connect.ConfigRequest.IsModifiable"]


ArtifactChunk = _M["spark.connect.AddArtifactsRequest.ArtifactChunk"]
SingleChunkArtifact = _M["spark.connect.AddArtifactsRequest.SingleChunkArtifact"]
Batch = _M["spark.connect.AddArtifactsRequest.Batch"]
BeginChunkedArtifact = _M["spark.connect.AddArtifactsRequest.BeginChunkedArtifact"]


# ---------------------------------------------------------------------------------------------
# Artifacts (artifact.py: LocalFile / InMemory storage, new_*_artifact)


class LocalFile:
    def __init__(self, path: str):
        self.path = path
        self.size = os.path.getsize(path)

    def open(self):
        return open(self.path, "rb")


class InMemory:
    def __init__(self, blob: bytes):
        self.blob = blob
        self.size = len(blob)

    def open(self):
        import io

        return io.BytesIO(self.blob)


class Artifact:
    def __init__(self, path: str, storage: Any):
        self.path = path  # the artifact name sent on the wire
        self.storage = storage

    @property
    def size(self) -> int:
        return self.storage.size


def parse_artifact(path_or_uri: str, pyfile: bool = False, archive: bool = False,
                   file: bool = False) -> Artifact:
    """The artifact PySpark builds for one `addArtifacts` argument (artifact.py
    `_parse_artifacts`). Raises ValueError/RuntimeError as PySpark does."""
    if sum(bool(x) for x in (pyfile, archive, file)) > 1:
        raise ValueError(
            "[INVALID_MULTIPLE_ARGUMENT_CONDITIONS] 'pyfile', 'archive' and/or 'file' cannot be "
            "True together."
        )
    parsed = urlparse(path_or_uri)
    if parsed.scheme == "":
        fragment = parsed.fragment
        parsed = urlparse(Path(url2pathname(parsed.path)).absolute().as_uri())
        parsed = parsed._replace(fragment=fragment)
    if parsed.scheme != "file":
        raise RuntimeError(f"Unsupported scheme: {parsed.scheme}")
    local_path = url2pathname(parsed.path)
    name = Path(local_path).name
    if pyfile and name.endswith(".py"):
        return Artifact(os.path.join(PYFILE_PREFIX, name), LocalFile(local_path))
    if pyfile and name.endswith((".zip", ".egg", ".jar")):
        # PySpark also puts the local path on the client's sys.path; a stand-in need not.
        return Artifact(os.path.join(PYFILE_PREFIX, name), LocalFile(local_path))
    if archive and name.endswith((".zip", ".jar", ".tar.gz", ".tgz", ".tar")):
        if "#" in local_path:
            raise ValueError("'#' in the path is not supported for adding an archive.")
        if parsed.fragment != "":
            name = f"{name}#{parsed.fragment}"
        return Artifact(os.path.join(ARCHIVE_PREFIX, name), LocalFile(local_path))
    if file:
        return Artifact(os.path.join(FILE_PREFIX, name), LocalFile(local_path))
    if name.endswith(".jar"):
        return Artifact(os.path.join(JAR_PREFIX, name), LocalFile(local_path))
    raise RuntimeError(f"Unsupported file format: {local_path}")


def cache_artifact_of(blob: bytes) -> Artifact:
    return Artifact(os.path.join(CACHE_PREFIX, hashlib.sha256(blob).hexdigest()), InMemory(blob))


# ---------------------------------------------------------------------------------------------
# Request generation (artifact.py `_add_artifacts`, `_add_batched_artifacts`,
# `_add_chunked_artifact`)


def add_artifacts_requests(artifacts: Iterable[Artifact], session_id: str,
                           user_context: Any) -> Iterator[Any]:
    """Yields the AddArtifactsRequest messages PySpark sends for `artifacts` on one stream.
    Chunked artifacts are read from disk 32 KiB at a time."""
    batch: List[Artifact] = []
    batch_size = 0

    def req(**payload: Any) -> Any:
        return pb.AddArtifactsRequest(session_id=session_id, user_context=user_context, **payload)

    def write_batch() -> Iterator[Any]:
        nonlocal batch, batch_size
        singles = []
        for a in batch:
            with a.storage.open() as f:
                data = f.read()
            singles.append(SingleChunkArtifact(
                name=a.path, data=ArtifactChunk(data=data, crc=zlib.crc32(data))))
        yield req(batch=Batch(artifacts=singles))
        batch = []
        batch_size = 0

    def chunked(a: Artifact) -> Iterator[Any]:
        num_chunks = (a.size + CHUNK_SIZE - 1) // CHUNK_SIZE
        first = True
        with a.storage.open() as f:
            while True:
                data = f.read(CHUNK_SIZE)
                if data == b"":
                    break
                chunk = ArtifactChunk(data=data, crc=zlib.crc32(data))
                if first:
                    first = False
                    yield req(begin_chunk=BeginChunkedArtifact(
                        name=a.path, total_bytes=a.size, num_chunks=num_chunks,
                        initial_chunk=chunk))
                else:
                    yield req(chunk=chunk)

    for a in artifacts:
        size = a.size
        if size > CHUNK_SIZE:
            if batch:
                yield from write_batch()
            yield from chunked(a)
        else:
            if batch_size + size > CHUNK_SIZE:
                yield from write_batch()
            batch.append(a)
            batch_size += size
    if batch:
        yield from write_batch()


# ---------------------------------------------------------------------------------------------
# Errors


class IntegrityError(AssertionError):
    """What PySpark raises as PySparkAssertionError from `_verify_response_integrity`."""


def decode_status_details(raw: bytes) -> Dict[str, Any]:
    status = pb.Status.FromString(raw)
    out: Dict[str, Any] = {"code": status.code, "message": status.message, "details": []}
    for d in status.details:
        entry: Dict[str, Any] = {"type_url": d.type_url}
        if d.type_url.endswith("/google.rpc.ErrorInfo"):
            info = pb.ErrorInfo.FromString(d.value)
            entry["error_info"] = {"reason": info.reason, "domain": info.domain,
                                   "metadata": dict(info.metadata)}
            out.setdefault("error_info", entry["error_info"])
        else:
            entry["value_b64"] = base64.b64encode(d.value).decode()
        out["details"].append(entry)
    return out


def rpc_error_json(e: grpc.RpcError) -> Dict[str, Any]:
    out: Dict[str, Any] = {"kind": "rpc"}
    code = e.code() if hasattr(e, "code") else None
    out["code"] = code.name if code is not None else None
    out["code_value"] = code.value[0] if code is not None else None
    out["details"] = e.details() if hasattr(e, "details") else str(e)
    out["error_info"] = None
    md: Dict[str, Any] = {}
    trailers = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    for k, v in trailers or ():
        if k == "grpc-status-details-bin":
            status = decode_status_details(v)
            out["status"] = status
            out["error_info"] = status.get("error_info")
        else:
            md[k] = v if isinstance(v, str) else base64.b64encode(v).decode()
    out["trailing_metadata"] = md
    return out


def error_json(e: BaseException) -> Dict[str, Any]:
    if isinstance(e, grpc.RpcError):
        return rpc_error_json(e)
    if isinstance(e, grpc.FutureCancelledError):
        return {"kind": "cancelled", "code": "CANCELLED", "details": "cancelled by the client"}
    kind = "integrity" if isinstance(e, IntegrityError) else "client"
    return {"kind": kind, "type": type(e).__name__, "details": str(e)}


# ---------------------------------------------------------------------------------------------
# Client


def parse_remote(url: str) -> Tuple[str, Dict[str, str]]:
    """`sc://host:port/;k=v;...` -> ("host:port", params)."""
    if not url.startswith("sc://"):
        raise ValueError(f"connection string must start with sc://: {url!r}")
    rest = url[len("sc://"):]
    params: Dict[str, str] = {}
    if ";" in rest:
        rest, _, tail = rest.partition(";")
        for kv in tail.split(";"):
            if kv:
                k, _, v = kv.partition("=")
                params[k] = v
    rest = rest.rstrip("/")
    if ":" not in rest:
        rest += ":15002"
    return rest, params


def user_agent(name: str = "_SPARK_CONNECT_PYTHON") -> str:
    return (f"{name} spark/{SPARK_VERSION} os/{platform.uname().system.lower()} "
            f"python/{platform.python_version()}")


def _kv(pair: Any) -> Tuple[str, Optional[str]]:
    return pair.key, (pair.value if pair.HasField("value") else None)


class ConfigResult:
    def __init__(self, resp: Any):
        self.pairs = [_kv(p) for p in resp.pairs]
        self.warnings = list(resp.warnings)
        self.session_id = resp.session_id
        self.server_side_session_id = resp.server_side_session_id

    def to_json(self) -> Dict[str, Any]:
        return {"pairs": [[k, v] for k, v in self.pairs], "warnings": self.warnings,
                "session_id": self.session_id,
                "server_side_session_id": self.server_side_session_id}


def add_response_json(resp: Any) -> Dict[str, Any]:
    return {
        "artifacts": [{"name": a.name, "is_crc_successful": a.is_crc_successful}
                      for a in resp.artifacts],
        "session_id": resp.session_id,
        "server_side_session_id": resp.server_side_session_id,
    }


class SparkArtifactsClient:
    """PySpark's SparkConnectClient, reduced to the artifact, config and session RPCs.

    `strict=True` (default) also checks AddArtifacts/ArtifactStatus responses for
    `session_id` echo and a non-empty, stable `server_side_session_id` (PySpark does not
    check these two; the check reports what a 4.x server must do). It never changes what is
    sent."""

    def __init__(self, remote: str, session_id: Optional[str] = None,
                 user_id: Optional[str] = None, token: Optional[str] = None,
                 strict: bool = True, timeout: Optional[float] = None):
        target, params = parse_remote(remote)
        self.target = target
        self.session_id = session_id or params.get("session_id") or str(uuid.uuid4())
        self.user_id = user_id if user_id is not None else params.get("user_id")
        token = token if token is not None else params.get("token")
        self.user_agent = user_agent(params.get("user_agent", "_SPARK_CONNECT_PYTHON"))
        reserved = {"token", "use_ssl", "user_id", "user_agent", "session_id"}
        self.metadata: List[Tuple[str, str]] = [
            (k, v) for k, v in params.items() if k not in reserved]
        if token:
            self.metadata.append(("authorization", f"Bearer {token}"))
        self.strict = strict
        self.timeout = timeout
        self.server_side_session_id: Optional[str] = None
        self.closed = False
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", 128 * 1024 * 1024),
            ("grpc.primary_user_agent", self.user_agent),
        ])
        self._user_context = pb.UserContext()
        if self.user_id is not None:
            self._user_context.user_id = self.user_id

    # -- plumbing ----------------------------------------------------------------------------

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "SparkArtifactsClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _unary(self, method: str, req_cls: Any, resp_cls: Any) -> Any:
        return self.channel.unary_unary(SERVICE + method,
                                        request_serializer=req_cls.SerializeToString,
                                        response_deserializer=resp_cls.FromString)

    def add_artifacts_stub(self) -> Any:
        return self.channel.stream_unary(SERVICE + "AddArtifacts",
                                         request_serializer=pb.AddArtifactsRequest.SerializeToString,
                                         response_deserializer=pb.AddArtifactsResponse.FromString)

    def _verify_response_integrity(self, resp: Any) -> None:
        """core.py `_verify_response_integrity`."""
        if resp.session_id != self.session_id:
            raise IntegrityError(
                "Received incorrect session identifier for request:"
                f"{resp.session_id} != {self.session_id}")
        if self.server_side_session_id is not None:
            if (resp.server_side_session_id
                    and resp.server_side_session_id != self.server_side_session_id):
                self.closed = True
                raise IntegrityError(
                    "Received incorrect server side session identifier for request. Please "
                    "create a new Spark Session to reconnect. ("
                    f"{resp.server_side_session_id} != {self.server_side_session_id})")
        else:
            self.server_side_session_id = resp.server_side_session_id

    def _strict_check(self, resp: Any) -> None:
        if not self.strict:
            return
        if resp.session_id != self.session_id:
            raise IntegrityError(f"response session_id {resp.session_id!r} != "
                                 f"{self.session_id!r}")
        if not resp.server_side_session_id:
            raise IntegrityError("response has an empty server_side_session_id")
        if resp.server_side_session_id == self.session_id:
            raise IntegrityError("server_side_session_id equals the client session_id")
        if (self.server_side_session_id
                and resp.server_side_session_id != self.server_side_session_id):
            raise IntegrityError(f"server_side_session_id changed: "
                                 f"{resp.server_side_session_id} != "
                                 f"{self.server_side_session_id}")

    # -- artifacts ---------------------------------------------------------------------------

    def requests_for(self, artifacts: Iterable[Artifact]) -> Iterator[Any]:
        return add_artifacts_requests(artifacts, self.session_id, self._user_context)

    def upload(self, artifacts: List[Artifact]) -> Any:
        """One AddArtifacts stream for `artifacts` (artifact.py `_add_artifacts`)."""
        resp = self.add_artifacts_stub()(self.requests_for(artifacts), metadata=self.metadata,
                                         timeout=self.timeout)
        self._strict_check(resp)
        return resp

    def add_artifacts(self, *paths: str, pyfile: bool = False, archive: bool = False,
                      file: bool = False) -> List[Any]:
        """`spark.addArtifacts(*paths, ...)` of 4.x: one AddArtifacts stream per path.
        Paths are all parsed before anything is sent."""
        artifacts = [parse_artifact(p, pyfile=pyfile, archive=archive, file=file)
                     for p in paths]
        return [self.upload([a]) for a in artifacts]

    def is_cached_artifact(self, hash_hex: str) -> bool:
        name = f"{CACHE_PREFIX}/{hash_hex}"
        resp = self.artifact_status([name], raw=True)
        status = resp.statuses.get(name)
        return status.exists if status is not None else False

    def cache_artifact(self, blob: bytes) -> Tuple[str, Optional[Any]]:
        """artifact.py `cache_artifact`: returns (hash, AddArtifactsResponse or None when the
        server already had it)."""
        a = cache_artifact_of(blob)
        h = a.path.split("/", 1)[1]
        if self.is_cached_artifact(h):
            return h, None
        return h, self.upload([a])

    def cache_artifacts(self, blobs: List[bytes]) -> Tuple[List[str], Optional[Any]]:
        """Newer clients: one ArtifactStatus for all hashes, one AddArtifacts for the missing."""
        arts = [cache_artifact_of(b) for b in blobs]
        names = [a.path for a in arts]
        resp = self.artifact_status(names, raw=True)
        missing = []
        for a in arts:
            st = resp.statuses.get(a.path)
            if not (st is not None and st.exists) and a.path not in [m.path for m in missing]:
                missing.append(a)
        hashes = [n.split("/", 1)[1] for n in names]
        return hashes, (self.upload(missing) if missing else None)

    def artifact_status(self, names: List[str], raw: bool = False) -> Any:
        req = pb.ArtifactStatusesRequest(session_id=self.session_id,
                                         user_context=self._user_context, names=names)
        resp = self._unary("ArtifactStatus", pb.ArtifactStatusesRequest,
                           pb.ArtifactStatusesResponse)(req, metadata=self.metadata,
                                                        timeout=self.timeout)
        self._strict_check(resp)
        if raw:
            return resp
        return {k: v.exists for k, v in resp.statuses.items()}

    # -- config (core.py `config`, conf.py) -----------------------------------------------

    def _config_request(self) -> Any:
        req = pb.ConfigRequest(session_id=self.session_id, client_type=self.user_agent)
        if self.user_id:
            req.user_context.user_id = self.user_id
        return req

    def config(self, operation: Any) -> ConfigResult:
        req = self._config_request()
        if self.server_side_session_id is not None:
            req.client_observed_server_side_session_id = self.server_side_session_id
        req.operation.CopyFrom(operation)
        resp = self._unary("Config", pb.ConfigRequest, pb.ConfigResponse)(
            req, metadata=self.metadata, timeout=self.timeout)
        self._verify_response_integrity(resp)
        return ConfigResult(resp)

    @staticmethod
    def _str_value(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        return value

    def conf_set(self, key: str, value: Any) -> ConfigResult:
        op = pb.CfgOperation(set=pb.CfgSet(
            pairs=[pb.KeyValue(key=key, value=self._str_value(value))]))
        return self.config(op)

    def apply_options(self, options: Dict[str, Any]) -> Optional[ConfigResult]:
        """session.py `_apply_options` (4.x builder): one silent Set, nothing if empty."""
        pairs = [pb.KeyValue(key=k, value=self._str_value(v)) for k, v in options.items()
                 if k not in ("spark.remote", "spark.master")]
        if not pairs:
            return None
        return self.config(pb.CfgOperation(
            set=pb.CfgSet(pairs=pairs, silent=True)))

    def conf_get(self, key: str) -> ConfigResult:
        return self.config(pb.CfgOperation(get=pb.CfgGet(keys=[key])))

    def conf_get_with_default(self, key: str, default: Optional[str]) -> ConfigResult:
        kv = pb.KeyValue(key=key) if default is None else pb.KeyValue(key=key, value=default)
        return self.config(pb.CfgOperation(
            get_with_default=pb.CfgGetWithDefault(pairs=[kv])))

    def conf_get_option(self, keys: List[str]) -> ConfigResult:
        return self.config(pb.CfgOperation(
            get_option=pb.CfgGetOption(keys=keys)))

    def conf_get_all(self, prefix: Optional[str] = None) -> ConfigResult:
        ga = pb.CfgGetAll() if prefix is None else pb.CfgGetAll(
            prefix=prefix)
        return self.config(pb.CfgOperation(get_all=ga))

    def conf_unset(self, keys: List[str]) -> ConfigResult:
        return self.config(pb.CfgOperation(unset=pb.CfgUnset(keys=keys)))

    def conf_is_modifiable(self, keys: List[str]) -> ConfigResult:
        return self.config(pb.CfgOperation(
            is_modifiable=pb.CfgIsModifiable(keys=keys)))

    # -- session -----------------------------------------------------------------------------

    def release_session(self, allow_reconnect: Optional[bool] = None) -> Any:
        """core.py `release_session` (what `spark.stop()` sends; allow_reconnect unset)."""
        req = pb.ReleaseSessionRequest(session_id=self.session_id, client_type=self.user_agent)
        if self.user_id:
            req.user_context.user_id = self.user_id
        if allow_reconnect is not None:
            req.allow_reconnect = allow_reconnect
        resp = self._unary("ReleaseSession", pb.ReleaseSessionRequest,
                           pb.ReleaseSessionResponse)(req, metadata=self.metadata,
                                                      timeout=self.timeout)
        self._verify_response_integrity(resp)
        return resp

    # -- raw / broken streams ---------------------------------------------------------------

    def raw(self, steps: List[Dict[str, Any]], strict: bool = False) -> Dict[str, Any]:
        """Sends one AddArtifacts stream built from `steps` (see RAW_HELP). Returns
        {"ok", "sent", "response"|"error"}; server answers are not integrity-checked unless
        `strict`."""
        ev_cancel = threading.Event()
        ev_released = threading.Event()
        sent = [0]

        def gen() -> Iterator[Any]:
            for msg in expand_raw(steps, self, ev_cancel, ev_released):
                sent[0] += 1
                yield msg

        fut = self.add_artifacts_stub().future(gen(), metadata=self.metadata,
                                               timeout=self.timeout)

        def watch() -> None:
            # Cancel from outside the request iterator thread, once a "cancel" step is reached.
            while not fut.done():
                if ev_cancel.wait(0.05):
                    fut.cancel()
                    ev_released.set()
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        out: Dict[str, Any] = {}
        try:
            resp = fut.result()
            out = {"ok": True, "response": add_response_json(resp)}
            if strict:
                self._strict_check(resp)
        except BaseException as e:  # noqa: BLE001 - reported as JSON
            out = {"ok": False, "error": error_json(e)}
        finally:
            ev_released.set()
            watcher.join(1)
        out["sent"] = sent[0]
        return out


RAW_HELP = """\
raw steps: a JSON list; each step is one of
  {"batch": [ART, ...]}                       one message with payload batch
  {"begin_chunk": {"name", "total_bytes", "num_chunks", "initial_chunk": CHUNK}}
  {"chunk": CHUNK}                            one message with payload chunk
  {"empty": true}                             a message with no payload
  {"artifact": {"name", DATA, "corrupt_chunk": i, "drop_chunks": k, "extra_chunks": k,
                "num_chunks": n, "total_bytes": n}}
                                              the messages PySpark sends for one artifact
                                              (batch if <= 32 KiB, else begin_chunk + chunk),
                                              with optional damage: bad CRC on chunk i
                                              (0 = initial chunk), last k chunks left out, k
                                              extra chunks, overridden header counts
  {"pyspark": [{"path", "pyfile"|"archive"|"file": true} | {"name", DATA}, ...]}
                                              exactly what PySpark sends for these on one stream
  {"signal": "/path"}                         create this file (tells a test where we are)
  {"wait_for": "/path", "timeout": s}         block the stream until this file exists
  {"sleep": seconds}
  {"cancel": true}                            cancel the RPC here (client-side cancellation)
  {"fail": "message"}                         raise in the request iterator (grpc aborts)
Any message step may also carry "session_id", "user_id" (null = no user_context),
"client_type", "client_observed_server_side_session_id" overrides.
ART   = {"name", DATA, "crc": int (optional), "bad_crc": true (optional)}
CHUNK = {DATA, "crc": int (optional), "bad_crc": true (optional)}
DATA  = "data": utf-8 text | "data_b64": base64 | "data_hex": hex | "path": file |
        "size": n with optional "seed": s (pseudo-random bytes) or "fill": byte value
The stream half-closes after the last step."""


def raw_data(spec: Dict[str, Any]) -> bytes:
    if "data" in spec:
        return spec["data"].encode()
    if "data_b64" in spec:
        return base64.b64decode(spec["data_b64"])
    if "data_hex" in spec:
        return bytes.fromhex(spec["data_hex"])
    if "path" in spec:
        return Path(spec["path"]).read_bytes()
    if "size" in spec:
        n = int(spec["size"])
        if "fill" in spec:
            return bytes([int(spec["fill"])]) * n
        return random.Random(spec.get("seed", 0)).randbytes(n)
    return b""


def _raw_chunk(spec: Dict[str, Any]) -> Any:
    data = raw_data(spec)
    crc = int(spec["crc"]) if "crc" in spec else zlib.crc32(data)
    if spec.get("bad_crc"):
        crc ^= 0x1
    return ArtifactChunk(data=data, crc=crc)


def _raw_storage(spec: Dict[str, Any]) -> Any:
    if "path" in spec and not any(k in spec for k in ("data", "data_b64", "data_hex")):
        return LocalFile(spec["path"])
    return InMemory(raw_data(spec))


def _damaged_artifact(spec: Dict[str, Any], msg: Callable[..., Any]) -> Iterator[Any]:
    name = spec["name"]
    storage = _raw_storage(spec)
    corrupt = spec.get("corrupt_chunk")
    size = storage.size
    if size <= CHUNK_SIZE and not spec.get("force_chunked"):
        with storage.open() as f:
            data = f.read()
        crc = zlib.crc32(data) ^ (1 if corrupt == 0 else 0)
        yield msg(batch=Batch(artifacts=[SingleChunkArtifact(
            name=name, data=ArtifactChunk(data=data, crc=crc))]))
        return
    n = (size + CHUNK_SIZE - 1) // CHUNK_SIZE
    keep = n - int(spec.get("drop_chunks", 0))
    with storage.open() as f:
        for i in range(keep):
            data = f.read(CHUNK_SIZE)
            crc = zlib.crc32(data) ^ (1 if corrupt == i else 0)
            chunk = ArtifactChunk(data=data, crc=crc)
            if i == 0:
                yield msg(begin_chunk=BeginChunkedArtifact(
                    name=name, total_bytes=int(spec.get("total_bytes", size)),
                    num_chunks=int(spec.get("num_chunks", n)), initial_chunk=chunk))
            else:
                yield msg(chunk=chunk)
    for i in range(int(spec.get("extra_chunks", 0))):
        data = b"x" * 16
        yield msg(chunk=ArtifactChunk(data=data, crc=zlib.crc32(data)))


def expand_raw(steps: List[Dict[str, Any]], client: SparkArtifactsClient,
               ev_cancel: Optional[threading.Event] = None,
               ev_released: Optional[threading.Event] = None) -> Iterator[Any]:
    for step in steps:
        def msg(**payload: Any) -> Any:
            m = pb.AddArtifactsRequest(session_id=step.get("session_id", client.session_id),
                                       **payload)
            uid = step.get("user_id", client.user_id) if "user_id" in step else client.user_id
            if "user_id" in step and step["user_id"] is None:
                pass  # no user_context at all
            else:
                m.user_context.CopyFrom(client._user_context)
                if uid is not None:
                    m.user_context.user_id = uid
            for k in ("client_type", "client_observed_server_side_session_id"):
                if k in step:
                    setattr(m, k, step[k])
            return m

        if "batch" in step:
            yield msg(batch=Batch(artifacts=[
                SingleChunkArtifact(name=a["name"], data=_raw_chunk(a)) for a in step["batch"]]))
        elif "begin_chunk" in step:
            b = step["begin_chunk"]
            yield msg(begin_chunk=BeginChunkedArtifact(
                name=b["name"], total_bytes=int(b["total_bytes"]),
                num_chunks=int(b["num_chunks"]), initial_chunk=_raw_chunk(b["initial_chunk"])))
        elif "chunk" in step:
            yield msg(chunk=_raw_chunk(step["chunk"]))
        elif "empty" in step:
            yield msg()
        elif "artifact" in step:
            yield from _damaged_artifact(step["artifact"], msg)
        elif "pyspark" in step:
            arts = []
            for a in step["pyspark"]:
                if "name" in a:
                    arts.append(Artifact(a["name"], _raw_storage(a)))
                else:
                    arts.append(parse_artifact(a["path"], pyfile=bool(a.get("pyfile")),
                                               archive=bool(a.get("archive")),
                                               file=bool(a.get("file"))))
            for m in client.requests_for(arts):
                yield msg(**{m.WhichOneof("payload"): getattr(m, m.WhichOneof("payload"))})
        elif "signal" in step:
            Path(step["signal"]).write_text("1")
        elif "wait_for" in step:
            deadline = time.monotonic() + float(step.get("timeout", 60))
            while not Path(step["wait_for"]).exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited too long for {step['wait_for']}")
                time.sleep(0.01)
        elif "sleep" in step:
            time.sleep(float(step["sleep"]))
        elif "cancel" in step:
            if ev_cancel is None or ev_released is None:
                raise ValueError("cancel is only possible in raw()")
            ev_cancel.set()
            ev_released.wait(30)
            return
        elif "fail" in step:
            raise RuntimeError(step["fail"])
        else:
            raise ValueError(f"unknown raw step: {step!r}")


def describe_request(m: Any) -> Dict[str, Any]:
    """A JSON description of one AddArtifactsRequest (data as length, crc and sha256)."""

    def chunk(c: Any) -> Dict[str, Any]:
        return {"size": len(c.data), "crc": c.crc, "sha256": hashlib.sha256(c.data).hexdigest()}

    kind = m.WhichOneof("payload")
    out: Dict[str, Any] = {"kind": kind, "session_id": m.session_id,
                           "has_user_context": m.HasField("user_context"),
                           "user_id": m.user_context.user_id}
    if kind == "batch":
        out["artifacts"] = [{"name": a.name, **chunk(a.data)} for a in m.batch.artifacts]
    elif kind == "begin_chunk":
        b = m.begin_chunk
        out.update(name=b.name, total_bytes=b.total_bytes, num_chunks=b.num_chunks,
                   initial_chunk=chunk(b.initial_chunk))
    elif kind == "chunk":
        out["chunk"] = chunk(m.chunk)
    for k in ("client_type", "client_observed_server_side_session_id"):
        if m.HasField(k):
            out[k] = getattr(m, k)
    return out


# ---------------------------------------------------------------------------------------------
# CLI


def _steps_arg(s: str) -> List[Dict[str, Any]]:
    if s == "-":
        return json.load(sys.stdin)
    if s.startswith("@"):
        return json.loads(Path(s[1:]).read_text())
    return json.loads(s)


def run_script(client: SparkArtifactsClient, ops: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Runs operations on one client (so server-side session ids carry over). Each op:
    {"op": "add", "paths": [...], "pyfile"/"archive"/"file": bool} | {"op": "cache", "data"...}
    | {"op": "status", "names": [...]} | {"op": "conf.set", "key", "value"} | {"op":
    "conf.get", "key"[, "default"]} | {"op": "conf.get_option", "keys"} | {"op":
    "conf.get_all"[, "prefix"]} | {"op": "conf.unset", "keys"} | {"op": "conf.is_modifiable",
    "keys"} | {"op": "apply_options", "options": {}} | {"op": "release"[, "allow_reconnect"]}
    | {"op": "raw", "steps": [...]}. Errors are recorded per op; the script continues."""
    results = []
    ok = True
    for op in ops:
        try:
            r = dispatch(client, op)
            if op["op"] == "raw":
                ok = ok and r["ok"]
                results.append(r)
            else:
                results.append({"ok": True, **r})
        except BaseException as e:  # noqa: BLE001
            ok = False
            results.append({"ok": False, "error": error_json(e)})
    return {"ok": ok, "results": results}


def dispatch(client: SparkArtifactsClient, op: Dict[str, Any]) -> Dict[str, Any]:
    name = op["op"]
    if name == "add":
        paths = op["paths"]
        resps = client.add_artifacts(*paths, pyfile=bool(op.get("pyfile")),
                                     archive=bool(op.get("archive")), file=bool(op.get("file")))
        return {"responses": [add_response_json(r) for r in resps]}
    if name == "cache":
        h, resp = client.cache_artifact(raw_data(op))
        return {"hash": h, "uploaded": resp is not None,
                "response": add_response_json(resp) if resp is not None else None}
    if name == "status":
        return {"statuses": client.artifact_status(op["names"])}
    if name == "conf.set":
        return client.conf_set(op["key"], op["value"]).to_json()
    if name == "conf.get":
        if "default" in op:
            return client.conf_get_with_default(op["key"], op["default"]).to_json()
        return client.conf_get(op["key"]).to_json()
    if name == "conf.get_option":
        return client.conf_get_option(op["keys"]).to_json()
    if name == "conf.get_all":
        return client.conf_get_all(op.get("prefix")).to_json()
    if name == "conf.unset":
        return client.conf_unset(op["keys"]).to_json()
    if name == "conf.is_modifiable":
        return client.conf_is_modifiable(op["keys"]).to_json()
    if name == "apply_options":
        r = client.apply_options(op["options"])
        return r.to_json() if r is not None else {"sent": False}
    if name == "release":
        resp = client.release_session(op.get("allow_reconnect"))
        return {"session_id": resp.session_id,
                "server_side_session_id": resp.server_side_session_id}
    if name == "raw":
        return client.raw(op["steps"], strict=bool(op.get("strict")))
    raise ValueError(f"unknown op {name!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spark_artifacts.py",
        description="PySpark-equivalent Spark Connect artifact client (JSON output).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=RAW_HELP)
    p.add_argument("--remote", help="sc://host:port[/;token=..;user_id=..;session_id=..]")
    p.add_argument("--session", help="client session id (default: a new uuid4)")
    p.add_argument("--user", help="user_context.user_id (default: unset)")
    p.add_argument("--token", help="bearer token (authorization metadata)")
    p.add_argument("--no-strict", action="store_true",
                   help="do not check AddArtifacts/ArtifactStatus response session ids")
    p.add_argument("--timeout", type=float, default=None, help="per-RPC deadline in seconds")
    sub = p.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("add", help="spark.addArtifacts(*paths, ...): one stream per path")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--pyfile", action="store_true")
    g.add_argument("--archive", action="store_true")
    g.add_argument("--file", action="store_true")
    a.add_argument("--one-stream", action="store_true",
                   help="all paths on one stream (3.5 behaviour)")
    a.add_argument("paths", nargs="+")

    c = sub.add_parser("cache", help="cache_artifact(blob): ArtifactStatus, then upload")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="utf-8 text")
    src.add_argument("--path", help="file whose bytes are the blob")
    src.add_argument("--data-hex")

    s = sub.add_parser("status", help="ArtifactStatus for names")
    s.add_argument("names", nargs="+")

    cf = sub.add_parser("conf", help="spark.conf.*")
    csub = cf.add_subparsers(dest="conf_cmd", required=True)
    x = csub.add_parser("set")
    x.add_argument("key")
    x.add_argument("value")
    x = csub.add_parser("get")
    x.add_argument("key")
    x.add_argument("--default", help="use GetWithDefault with this default")
    x.add_argument("--default-none", action="store_true",
                   help="GetWithDefault with the value unset (get(key, None))")
    x = csub.add_parser("get-option")
    x.add_argument("keys", nargs="+")
    x = csub.add_parser("get-all")
    x.add_argument("--prefix")
    x = csub.add_parser("unset")
    x.add_argument("keys", nargs="+")
    x = csub.add_parser("is-modifiable")
    x.add_argument("keys", nargs="+")

    o = sub.add_parser("apply-options", help="builder options: one Set with silent=true")
    o.add_argument("pairs", nargs="+", metavar="KEY=VALUE")

    r = sub.add_parser("release", help="ReleaseSession (spark.stop())")
    r.add_argument("--allow-reconnect", action="store_true")

    w = sub.add_parser("raw", help="one AddArtifacts stream from a JSON list of steps")
    w.add_argument("steps", help="JSON text, @file or - for stdin")
    w.add_argument("--strict", action="store_true")

    sc = sub.add_parser("script", help="a JSON list of operations on one client")
    sc.add_argument("ops", help="JSON text, @file or - for stdin")

    pl = sub.add_parser("plan", help="print the requests `add` would send, without a server")
    g = pl.add_mutually_exclusive_group()
    g.add_argument("--pyfile", action="store_true")
    g.add_argument("--archive", action="store_true")
    g.add_argument("--file", action="store_true")
    pl.add_argument("--one-stream", action="store_true")
    pl.add_argument("paths", nargs="+")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "plan":
        session = args.session or str(uuid.uuid4())
        uc = pb.UserContext()
        if args.user is not None:
            uc.user_id = args.user
        try:
            arts = [parse_artifact(p, pyfile=args.pyfile, archive=args.archive, file=args.file)
                    for p in args.paths]
        except (ValueError, RuntimeError, OSError) as e:
            print(json.dumps({"ok": False, "error": error_json(e)}))
            return 1
        groups = [arts] if args.one_stream else [[a] for a in arts]
        streams = [[describe_request(m) for m in add_artifacts_requests(g, session, uc)]
                   for g in groups]
        print(json.dumps({"ok": True, "session_id": session, "streams": streams}))
        return 0
    if not args.remote:
        print(json.dumps({"ok": False, "error": {"kind": "usage", "details": "--remote needed"}}))
        return 2
    client = SparkArtifactsClient(args.remote, session_id=args.session, user_id=args.user,
                                  token=args.token, strict=not args.no_strict,
                                  timeout=args.timeout)
    out: Dict[str, Any]
    try:
        if args.cmd == "add":
            t0 = time.perf_counter()
            if args.one_stream:
                arts = [parse_artifact(p, pyfile=args.pyfile, archive=args.archive,
                                       file=args.file) for p in args.paths]
                resps = [client.upload(arts)]
            else:
                resps = client.add_artifacts(*args.paths, pyfile=args.pyfile,
                                             archive=args.archive, file=args.file)
            out = {"ok": True, "responses": [add_response_json(r) for r in resps],
                   "elapsed_s": time.perf_counter() - t0}
        elif args.cmd == "cache":
            op: Dict[str, Any] = {"op": "cache"}
            if args.data is not None:
                op["data"] = args.data
            elif args.path is not None:
                op["path"] = args.path
            else:
                op["data_hex"] = args.data_hex
            out = {"ok": True, **dispatch(client, op)}
        elif args.cmd == "status":
            out = {"ok": True, **dispatch(client, {"op": "status", "names": args.names})}
        elif args.cmd == "conf":
            cc = args.conf_cmd
            if cc == "set":
                r = client.conf_set(args.key, args.value)
            elif cc == "get":
                if args.default_none:
                    r = client.conf_get_with_default(args.key, None)
                elif args.default is not None:
                    r = client.conf_get_with_default(args.key, args.default)
                else:
                    r = client.conf_get(args.key)
            elif cc == "get-option":
                r = client.conf_get_option(args.keys)
            elif cc == "get-all":
                r = client.conf_get_all(args.prefix)
            elif cc == "unset":
                r = client.conf_unset(args.keys)
            else:
                r = client.conf_is_modifiable(args.keys)
            out = {"ok": True, **r.to_json()}
        elif args.cmd == "apply-options":
            opts = dict(kv.split("=", 1) for kv in args.pairs)
            out = {"ok": True, **dispatch(client, {"op": "apply_options", "options": opts})}
        elif args.cmd == "release":
            out = {"ok": True, **dispatch(client, {
                "op": "release", "allow_reconnect": True if args.allow_reconnect else None})}
        elif args.cmd == "raw":
            out = client.raw(_steps_arg(args.steps), strict=args.strict)
        elif args.cmd == "script":
            out = run_script(client, _steps_arg(args.ops))
        else:  # pragma: no cover
            raise AssertionError(args.cmd)
    except BaseException as e:  # noqa: BLE001 - reported as JSON
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        out = {"ok": False, "error": error_json(e)}
    finally:
        client.close()
    out["session_id"] = client.session_id
    out["server_side_session_id"] = client.server_side_session_id
    print(json.dumps(out))
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
