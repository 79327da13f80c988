#!/usr/bin/python3
"""Checks that spark_artifacts.py sends what PySpark sends, against a recording server.

A tiny grpcio server records every request it gets (and answers like a 4.x server); the
recorded messages are compared with an expectation computed independently from the rules in
../shared/spark-connect/README.md section 4.1 (not with the client's own generator), with the
CRCs from a table-driven CRC-32 written here and cross-checked against binascii.

Run: /usr/bin/python3 tests/python/spark_artifacts_selftest.py [-v]
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import json
import math
import random
import subprocess
import sys
import tempfile
import threading
import unittest
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spark_artifacts as sa  # noqa: E402

pb = sa.pb
HERE = Path(__file__).resolve().parent
CLI = HERE / "spark_artifacts.py"
K32 = 32768


# ---------------------------------------------------------------------------------------------
# Independent reference computations


def _crc_table() -> List[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else (c >> 1)
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32_py(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def crc32_ref(data: bytes) -> int:
    """binascii for speed, checked against the table version on a sample of the data."""
    v = binascii.crc32(data) & 0xFFFFFFFF
    if len(data) <= 4096:
        assert v == crc32_py(data), "binascii and table CRC disagree"
    return v


def expected_stream(arts: List[Tuple[str, bytes]]) -> List[tuple]:
    """What PySpark sends for `arts` on one stream, as tuples:
    ("batch", [(name, data, crc), ...]) | ("begin", name, total, n, data, crc) |
    ("chunk", data, crc). Small artifacts are split into runs between large ones; inside a run
    a new batch starts exactly where the running byte count since the batch start would pass
    32 KiB."""
    out: List[tuple] = []
    for is_large, group in itertools.groupby(arts, key=lambda a: len(a[1]) > K32):
        group = list(group)
        if is_large:
            for name, data in group:
                pieces = [data[i:i + K32] for i in range(0, len(data), K32)]
                assert len(pieces) == math.ceil(len(data) / K32)
                out.append(("begin", name, len(data), len(pieces), pieces[0],
                            crc32_ref(pieces[0])))
                out.extend(("chunk", p, crc32_ref(p)) for p in pieces[1:])
            continue
        starts = [0]
        total = 0
        for i, (_, data) in enumerate(group):
            if total + len(data) > K32:
                starts.append(i)
                total = 0
            total += len(data)
        bounds = starts + [len(group)]
        for a, b in zip(bounds, bounds[1:]):
            out.append(("batch", [(n, d, crc32_ref(d)) for n, d in group[a:b]]))
    return out


def recorded_tuples(reqs: List[Any]) -> List[tuple]:
    out: List[tuple] = []
    for m in reqs:
        kind = m.WhichOneof("payload")
        if kind == "batch":
            out.append(("batch", [(a.name, a.data.data, a.data.crc) for a in m.batch.artifacts]))
        elif kind == "begin_chunk":
            b = m.begin_chunk
            out.append(("begin", b.name, b.total_bytes, b.num_chunks, b.initial_chunk.data,
                        b.initial_chunk.crc))
        elif kind == "chunk":
            out.append(("chunk", m.chunk.data, m.chunk.crc))
        else:
            out.append(("none",))
    return out


def short(ts: List[tuple]) -> List[Any]:
    """Readable form for assertion messages."""
    r = []
    for t in ts:
        if t[0] == "batch":
            r.append(("batch", [(n, len(d), c) for n, d, c in t[1]]))
        elif t[0] == "begin":
            r.append(("begin", t[1], t[2], t[3], len(t[4]), t[5]))
        elif t[0] == "chunk":
            r.append(("chunk", len(t[1]), t[2]))
        else:
            r.append(t)
    return r


# ---------------------------------------------------------------------------------------------
# Recording server


class Recorder:
    def __init__(self) -> None:
        self.streams: List[List[Any]] = []
        self.unary: List[Tuple[str, Any]] = []
        self.metadata: List[Dict[str, str]] = []
        self.cached: set = set()
        self.server_id = str(uuid.uuid4())
        self.mode = "ok"  # "bad_session", "changing_server_id", "error_info"
        self.lock = threading.Lock()

    def _md(self, ctx: grpc.ServicerContext) -> None:
        self.metadata.append({k: v for k, v in ctx.invocation_metadata()})

    def _sid(self) -> str:
        return str(uuid.uuid4()) if self.mode == "changing_server_id" else self.server_id

    def _echo(self, sid: str) -> str:
        return "wrong" if self.mode == "bad_session" else sid

    def _maybe_fail(self, ctx: grpc.ServicerContext) -> None:
        if self.mode != "error_info":
            return
        info = pb.ErrorInfo(reason="org.apache.spark.SparkRuntimeException",
                            domain="org.apache.spark")
        info.metadata["errorClass"] = "ARTIFACT_ALREADY_EXISTS"
        info.metadata["sqlState"] = "42713"
        st = pb.Status(code=13, message="[ARTIFACT_ALREADY_EXISTS] The artifact x exists.")
        d = st.details.add()
        d.type_url = "type.googleapis.com/google.rpc.ErrorInfo"
        d.value = info.SerializeToString()
        ctx.set_trailing_metadata([("grpc-status-details-bin", st.SerializeToString())])
        ctx.abort(grpc.StatusCode.INTERNAL, st.message)

    def add(self, it: Any, ctx: grpc.ServicerContext) -> Any:
        self._md(ctx)
        reqs = []
        with self.lock:
            self.streams.append(reqs)
        for r in it:
            reqs.append(r)
        self._maybe_fail(ctx)
        names = []
        for r in reqs:
            k = r.WhichOneof("payload")
            if k == "batch":
                names += [(a.name, crc32_ref(a.data.data) == a.data.crc)
                          for a in r.batch.artifacts]
            elif k == "begin_chunk":
                names.append((r.begin_chunk.name, True))
        for n, _ in names:
            if n.startswith("cache/"):
                self.cached.add(n)
        resp = pb.AddArtifactsResponse(session_id=self._echo(reqs[0].session_id),
                                       server_side_session_id=self._sid())
        for n, ok in names:
            resp.artifacts.add(name=n, is_crc_successful=ok)
        return resp

    def status(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        self._md(ctx)
        self.unary.append(("ArtifactStatus", req))
        resp = pb.ArtifactStatusesResponse(session_id=self._echo(req.session_id),
                                           server_side_session_id=self._sid())
        for n in req.names:
            resp.statuses[n].exists = n in self.cached
        return resp

    def config(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        self._md(ctx)
        self.unary.append(("Config", req))
        self._maybe_fail(ctx)
        resp = pb.ConfigResponse(session_id=self._echo(req.session_id),
                                 server_side_session_id=self._sid())
        op = req.operation.WhichOneof("op_type")
        if op == "get":
            for k in req.operation.get.keys:
                resp.pairs.add(key=k, value="v")
        elif op == "get_option":
            for k in req.operation.get_option.keys:
                resp.pairs.add(key=k)
        return resp

    def release(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        self._md(ctx)
        self.unary.append(("ReleaseSession", req))
        return pb.ReleaseSessionResponse(session_id=self._echo(req.session_id),
                                         server_side_session_id=self._sid())

    def start(self) -> int:
        def uu(fn: Any, a: Any, b: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=a.FromString, response_serializer=b.SerializeToString)

        handler = grpc.method_handlers_generic_handler("spark.connect.SparkConnectService", {
            "AddArtifacts": grpc.stream_unary_rpc_method_handler(
                self.add, request_deserializer=pb.AddArtifactsRequest.FromString,
                response_serializer=pb.AddArtifactsResponse.SerializeToString),
            "ArtifactStatus": uu(self.status, pb.ArtifactStatusesRequest,
                                 pb.ArtifactStatusesResponse),
            "Config": uu(self.config, pb.ConfigRequest, pb.ConfigResponse),
            "ReleaseSession": uu(self.release, pb.ReleaseSessionRequest,
                                 pb.ReleaseSessionResponse),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return port

    def stop(self) -> None:
        self.server.stop(None).wait()


# ---------------------------------------------------------------------------------------------


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.rec = Recorder()
        cls.port = cls.rec.start()
        cls.remote = f"sc://127.0.0.1:{cls.port}"
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = Path(cls.tmp.name)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.rec.stop()
        cls.tmp.cleanup()

    def setUp(self) -> None:
        self.rec.streams.clear()
        self.rec.unary.clear()
        self.rec.metadata.clear()
        self.rec.mode = "ok"
        self.session = str(uuid.uuid4())
        self.client = sa.SparkArtifactsClient(self.remote, session_id=self.session)

    def streams(self) -> List[List[Any]]:
        """This test's recorded streams: a stream of an earlier test (cancelled, or handled late
        by the server's thread pool) can land in the recorder after setUp cleared it."""
        with self.rec.lock:
            streams = [r for r in self.rec.streams if r]
        mine = [r for r in streams if r[0].session_id == self.session]
        return mine or streams

    def tearDown(self) -> None:
        self.client.close()

    def write(self, name: str, data: bytes) -> Path:
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    def check_envelope(self, reqs: List[Any], user: Optional[str] = None) -> None:
        for m in reqs:
            self.assertEqual(m.session_id, self.session)
            self.assertTrue(m.HasField("user_context"))
            self.assertEqual(m.user_context.user_id, user or "")
            self.assertFalse(m.HasField("client_type"))
            self.assertFalse(m.HasField("client_observed_server_side_session_id"))


class CrcTest(unittest.TestCase):
    def test_known_values(self) -> None:
        self.assertEqual(crc32_py(b"hello"), 907060870)
        self.assertEqual(crc32_py(b""), 0)
        self.assertEqual(crc32_ref(b"123456789"), 0xCBF43926)


class ChunkingTest(Base):
    SIZES = [0, 1, 32767, 32768, 32769, 65536, 100000]

    def test_single_file_sizes(self) -> None:
        rng = random.Random(1)
        for size in self.SIZES:
            with self.subTest(size=size):
                self.rec.streams.clear()
                data = rng.randbytes(size)
                p = self.write(f"s{size}.bin", data)
                resps = self.client.add_artifacts(str(p), file=True)
                self.assertEqual(len(self.rec.streams), 1)
                reqs = self.streams()[0]
                self.check_envelope(reqs)
                want = expected_stream([(f"files/s{size}.bin", data)])
                got = recorded_tuples(reqs)
                self.assertEqual(got, want, (short(got), short(want)))
                # Explicit shape, as the brief states it.
                if size <= K32:
                    self.assertEqual([t[0] for t in got], ["batch"])
                else:
                    n = math.ceil(size / K32)
                    self.assertEqual([t[0] for t in got], ["begin"] + ["chunk"] * (n - 1))
                    self.assertEqual(got[0][2:4], (size, n))
                self.assertEqual(b"".join(t[4] if t[0] == "begin" else t[1] for t in got
                                          if t[0] != "batch") or got[0][1][0][1], data)
                self.assertEqual([a.name for a in resps[0].artifacts], [f"files/s{size}.bin"])

    def test_mixes_on_one_stream(self) -> None:
        rng = random.Random(2)
        mixes = [
            [10, 20, K32 - 30],
            [10, 20, K32 - 29],
            [16384, 16384, 1],
            [100, 40000, 100, 100],
            [0, 0, 0],
            [K32, 0],
            [K32, 1],
            [70000, 70000],
            [1, 65536, 32769, 2, K32, 3],
        ] + [[rng.choice([0, 1, 500, 9000, 20000, K32 - 1, K32, K32 + 1, 70000])
              for _ in range(rng.randint(1, 8))] for _ in range(20)]
        for mi, sizes in enumerate(mixes):
            with self.subTest(sizes=sizes):
                self.rec.streams.clear()
                arts, specs = [], []
                for i, s in enumerate(sizes):
                    data = rng.randbytes(s)
                    p = self.write(f"m{mi}/f{i}.py", data)
                    arts.append(sa.parse_artifact(str(p), pyfile=True))
                    specs.append((f"pyfiles/f{i}.py", data))
                self.client.upload(arts)
                reqs = self.streams()[0]
                self.check_envelope(reqs)
                got, want = recorded_tuples(reqs), expected_stream(specs)
                self.assertEqual(got, want, (short(got), short(want)))
                for t in got:  # the rule's invariants, stated directly
                    if t[0] == "batch":
                        self.assertLessEqual(sum(len(d) for _, d, _ in t[1]), K32)
                        self.assertTrue(all(len(d) <= K32 for _, d, _ in t[1]))

    def test_one_stream_per_path_and_user_id(self) -> None:
        c = sa.SparkArtifactsClient(self.remote, session_id=self.session, user_id="alice")
        a = self.write("u/a.py", b"print(1)\n")
        b = self.write("u/b.py", b"print(2)\n")
        c.add_artifacts(str(a), str(b), pyfile=True)
        c.close()
        self.assertEqual(len(self.rec.streams), 2)
        for reqs in self.rec.streams:
            self.check_envelope(reqs, user="alice")
        md = self.rec.metadata[0]
        self.assertIn("_SPARK_CONNECT_PYTHON spark/", md.get("user-agent", ""))


class NamesTest(Base):
    def test_names(self) -> None:
        for f in ["n/x.py", "n/x.zip", "n/x.egg", "n/x.jar", "n/env.tar.gz", "n/a.tgz",
                  "n/a.tar", "n/data.csv", "n/a#b.tar.gz"]:
            self.write(f, b"z")
        d = self.dir / "n"
        cases = [
            ((f"{d}/x.py",), {"pyfile": True}, "pyfiles/x.py"),
            ((f"{d}/x.zip",), {"pyfile": True}, "pyfiles/x.zip"),
            ((f"{d}/x.egg",), {"pyfile": True}, "pyfiles/x.egg"),
            ((f"{d}/x.jar",), {"pyfile": True}, "pyfiles/x.jar"),
            ((f"{d}/env.tar.gz#environment",), {"archive": True},
             "archives/env.tar.gz#environment"),
            ((f"{d}/env.tar.gz",), {"archive": True}, "archives/env.tar.gz"),
            ((f"{d}/a.tgz",), {"archive": True}, "archives/a.tgz"),
            ((f"{d}/a.tar",), {"archive": True}, "archives/a.tar"),
            ((f"{d}/x.zip#z",), {"archive": True}, "archives/x.zip#z"),
            ((f"{d}/data.csv",), {"file": True}, "files/data.csv"),
            ((f"{d}/x.py",), {"file": True}, "files/x.py"),
            ((f"{d}/x.jar",), {}, "jars/x.jar"),
            ((f"file://{d}/x.jar",), {}, "jars/x.jar"),
        ]
        for args, kw, name in cases:
            with self.subTest(args=args, kw=kw):
                self.assertEqual(sa.parse_artifact(*args, **kw).path, name)
        with self.assertRaisesRegex(ValueError, "'#' in the path"):
            sa.parse_artifact(f"{d}/a%23b.tar.gz", archive=True)
        with self.assertRaisesRegex(RuntimeError, "Unsupported file format"):
            sa.parse_artifact(f"{d}/data.csv")
        with self.assertRaisesRegex(RuntimeError, "Unsupported file format"):
            sa.parse_artifact(f"{d}/data.csv", pyfile=True)
        with self.assertRaisesRegex(RuntimeError, "Unsupported file format"):
            sa.parse_artifact(f"{d}/x.py", archive=True)
        with self.assertRaisesRegex(RuntimeError, "Unsupported scheme"):
            sa.parse_artifact("hdfs://h/x.jar")
        with self.assertRaisesRegex(ValueError, "INVALID_MULTIPLE_ARGUMENT_CONDITIONS"):
            sa.parse_artifact(f"{d}/x.py", pyfile=True, file=True)

    def test_archive_name_on_wire(self) -> None:
        p = self.write("w/env.tar.gz", b"x" * 40000)
        r = self.client.add_artifacts(f"{p}#environment", archive=True)[0]
        reqs = self.streams()[0]
        self.assertEqual(reqs[0].begin_chunk.name, "archives/env.tar.gz#environment")
        self.assertEqual(r.artifacts[0].name, "archives/env.tar.gz#environment")


class CacheConfigReleaseTest(Base):
    def test_cache_artifact(self) -> None:
        blob = random.Random(3).randbytes(50000)
        h, resp = self.client.cache_artifact(blob)
        self.assertEqual(h, hashlib.sha256(blob).hexdigest())
        self.assertEqual([u[0] for u in self.rec.unary], ["ArtifactStatus"])
        st = self.rec.unary[0][1]
        self.assertEqual(list(st.names), [f"cache/{h}"])
        self.assertEqual(st.session_id, self.session)
        self.assertTrue(st.HasField("user_context"))
        self.assertFalse(st.HasField("client_type"))
        self.assertIsNotNone(resp)
        got = recorded_tuples(self.streams()[0])
        self.assertEqual(got, expected_stream([(f"cache/{h}", blob)]))
        h2, resp2 = self.client.cache_artifact(blob)  # now the server has it
        self.assertEqual(h2, h)
        self.assertIsNone(resp2)
        self.assertEqual(len(self.rec.streams), 1)

    def test_config_requests(self) -> None:
        c = self.client
        c.conf_set("a", True)
        c.conf_set("b", 5)
        c.conf_get("a")
        c.conf_get_with_default("k", None)
        c.conf_get_with_default("k", "d")
        c.conf_get_option(["x", "y"])
        c.conf_get_all()
        c.conf_get_all("spark.")
        c.conf_unset(["a"])
        c.conf_is_modifiable(["a"])
        self.assertIsNone(c.apply_options({"spark.remote": "sc://x", "spark.master": "y"}))
        c.apply_options({"spark.x": "1", "spark.remote": "sc://x"})
        reqs = [r for n, r in self.rec.unary]
        self.assertEqual(len(reqs), 11)
        for i, r in enumerate(reqs):
            self.assertEqual(r.session_id, self.session)
            self.assertTrue(r.client_type.startswith("_SPARK_CONNECT_PYTHON spark/"))
            self.assertFalse(r.HasField("user_context"))  # no user_id: left unset
            self.assertEqual(r.HasField("client_observed_server_side_session_id"), i > 0)
            if i > 0:
                self.assertEqual(r.client_observed_server_side_session_id, self.rec.server_id)
        ops = [r.operation for r in reqs]
        self.assertEqual([o.WhichOneof("op_type") for o in ops],
                         ["set", "set", "get", "get_with_default", "get_with_default",
                          "get_option", "get_all", "get_all", "unset", "is_modifiable", "set"])
        self.assertEqual(ops[0].set.pairs[0].value, "true")
        self.assertFalse(ops[0].set.HasField("silent"))
        self.assertEqual(ops[1].set.pairs[0].value, "5")
        self.assertFalse(ops[3].get_with_default.pairs[0].HasField("value"))
        self.assertEqual(ops[4].get_with_default.pairs[0].value, "d")
        self.assertFalse(ops[6].get_all.HasField("prefix"))
        self.assertEqual(ops[7].get_all.prefix, "spark.")
        self.assertTrue(ops[10].set.HasField("silent") and ops[10].set.silent)
        self.assertEqual([p.key for p in ops[10].set.pairs], ["spark.x"])
        r = c.conf_get_option(["q"])
        self.assertEqual(r.pairs, [("q", None)])

    def test_release_and_user(self) -> None:
        c = sa.SparkArtifactsClient(self.remote, session_id=self.session, user_id="bob")
        c.conf_get("x")
        c.release_session()
        c.close()
        rel = self.rec.unary[-1][1]
        self.assertEqual(self.rec.unary[-1][0], "ReleaseSession")
        self.assertEqual(rel.session_id, self.session)
        self.assertEqual(rel.user_context.user_id, "bob")
        self.assertTrue(rel.HasField("client_type"))
        self.assertFalse(rel.allow_reconnect)
        self.assertEqual(self.rec.unary[0][1].user_context.user_id, "bob")

    def test_integrity(self) -> None:
        self.rec.mode = "bad_session"
        with self.assertRaisesRegex(sa.IntegrityError, "incorrect session identifier"):
            self.client.conf_get("x")
        self.rec.mode = "changing_server_id"
        c = sa.SparkArtifactsClient(self.remote, session_id=self.session)
        c.conf_get("x")
        with self.assertRaisesRegex(sa.IntegrityError, "server side session identifier"):
            c.conf_get("x")
        c.close()

    def test_error_info(self) -> None:
        self.rec.mode = "error_info"
        with self.assertRaises(grpc.RpcError) as cm:
            self.client.conf_get("x")
        e = sa.error_json(cm.exception)
        self.assertEqual(e["code"], "INTERNAL")
        self.assertTrue(e["details"].startswith("[ARTIFACT_ALREADY_EXISTS]"))
        self.assertEqual(e["error_info"]["metadata"]["errorClass"], "ARTIFACT_ALREADY_EXISTS")
        self.assertEqual(e["error_info"]["domain"], "org.apache.spark")


class RawTest(Base):
    def test_damage(self) -> None:
        r = self.client.raw([{"artifact": {"name": "files/x", "size": 100000, "seed": 1,
                                           "corrupt_chunk": 2}}])
        self.assertTrue(r["ok"])
        data = random.Random(1).randbytes(100000)
        want = expected_stream([("files/x", data)])
        got = recorded_tuples(self.streams()[0])
        self.assertEqual([t[0] for t in got], [t[0] for t in want])
        self.assertEqual([g[-1] == w[-1] for g, w in zip(got, want)], [True, True, False, True])
        self.assertEqual(r["response"]["artifacts"][0]["is_crc_successful"], True)  # recorder

        self.rec.streams.clear()
        self.client.raw([{"artifact": {"name": "files/y", "size": 100000, "drop_chunks": 1}}])
        got = recorded_tuples(self.streams()[0])
        self.assertEqual([t[0] for t in got], ["begin", "chunk", "chunk"])
        self.assertEqual(got[0][3], 4)

        self.rec.streams.clear()
        self.client.raw([{"chunk": {"data": "hello"}}, {"empty": True},
                         {"batch": [{"name": "a", "data": "hello", "bad_crc": True}]},
                         {"begin_chunk": {"name": "b", "total_bytes": 9, "num_chunks": 2,
                                          "initial_chunk": {"data_hex": "00ff"}}},
                         {"chunk": {"data": "x", "crc": 7}, "session_id": "other",
                          "user_id": None}])
        got = recorded_tuples(self.streams()[0])
        self.assertEqual(got, [("chunk", b"hello", 907060870), ("none",),
                               ("batch", [("a", b"hello", 907060870 ^ 1)]),
                               ("begin", "b", 9, 2, b"\x00\xff", crc32_ref(b"\x00\xff")),
                               ("chunk", b"x", 7)])
        last = self.streams()[0][-1]
        self.assertEqual(last.session_id, "other")
        self.assertFalse(last.HasField("user_context"))

    def test_pyspark_step_matches_add(self) -> None:
        p = self.write("r/big.bin", random.Random(4).randbytes(70000))
        self.client.raw([{"pyspark": [{"path": str(p), "file": True},
                                      {"name": "cache/abc", "data": "xyz"}]}])
        got = recorded_tuples(self.streams()[0])
        self.assertEqual(got, expected_stream([("files/big.bin", p.read_bytes()),
                                               ("cache/abc", b"xyz")]))

    def test_cancel(self) -> None:
        sig = self.dir / "sig"
        r = self.client.raw([{"artifact": {"name": "files/c", "size": 70000,
                                           "drop_chunks": 1}}, {"signal": str(sig)},
                             {"cancel": True}])
        self.assertFalse(r["ok"])
        self.assertEqual(r["error"]["code"], "CANCELLED")
        self.assertTrue(sig.exists())


class CliTest(Base):
    def run_cli(self, *args: str) -> Tuple[int, Dict[str, Any]]:
        p = subprocess.run([sys.executable, str(CLI), *args], capture_output=True, text=True,
                           timeout=120)
        return p.returncode, json.loads(p.stdout)

    def test_add_and_plan(self) -> None:
        data = random.Random(5).randbytes(65537)
        p = self.write("c/big.bin", data)
        code, out = self.run_cli("--remote", self.remote, "--session", self.session, "add",
                                 "--file", str(p))
        self.assertEqual(code, 0, out)
        self.assertEqual(out["responses"][0]["artifacts"],
                         [{"name": "files/big.bin", "is_crc_successful": True}])
        self.assertEqual(recorded_tuples(self.streams()[0]),
                         expected_stream([("files/big.bin", data)]))
        code, plan = self.run_cli("--session", self.session, "plan", "--file", str(p))
        self.assertEqual(code, 0)
        kinds = [m["kind"] for m in plan["streams"][0]]
        self.assertEqual(kinds, ["begin_chunk", "chunk", "chunk"])
        self.assertEqual([m["chunk"]["crc"] for m in plan["streams"][0][1:]],
                         [crc32_ref(data[K32:2 * K32]), crc32_ref(data[2 * K32:])])

    def test_errors_are_json(self) -> None:
        self.rec.mode = "error_info"
        code, out = self.run_cli("--remote", self.remote, "--session", self.session, "conf",
                                 "get", "x")
        self.assertEqual(code, 1)
        self.assertEqual(out["error"]["error_info"]["metadata"]["sqlState"], "42713")
        code, out = self.run_cli("--remote", self.remote, "add", "/nonexistent/x.jar")
        self.assertEqual(code, 1)
        self.assertEqual(out["error"]["kind"], "client")

    def test_script(self) -> None:
        ops = [{"op": "conf.set", "key": "a", "value": "1"}, {"op": "conf.get", "key": "a"},
               {"op": "release"}]
        code, out = self.run_cli("--remote", self.remote, "--session", self.session,
                                 "script", json.dumps(ops))
        self.assertEqual(code, 0, out)
        self.assertEqual(out["results"][1]["pairs"], [["a", "v"]])
        self.assertEqual(out["server_side_session_id"], self.rec.server_id)
        self.assertEqual(self.rec.unary[1][1].client_observed_server_side_session_id,
                         self.rec.server_id)


if __name__ == "__main__":
    unittest.main()
