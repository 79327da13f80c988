#!/usr/bin/python3
"""Reference AddArtifacts server on grpcio's C core, for bench/upload_bench.ts.

It does the work a real server does for `spark.connect.SparkConnectService/AddArtifacts`, the
way Spark's SparkConnectAddArtifactsHandler does it: one staging directory per RPC on disk,
CRC32 checked per chunk, chunks streamed to the staged file, chunk-count checks, and on
half-close an atomic rename of every artifact whose CRC matched into
`<data>/sessions/<session_id>/<name>`; the response lists an ArtifactSummary per artifact.
Errors are INTERNAL with a message naming the artifact, as Spark's are.

Usage: /usr/bin/python3 bench/grpcio_ref_server.py --port 0 --data-dir DIR [--workers N]
Prints `listening on 127.0.0.1:<port>` on stdout once ready; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import shutil
import signal
import sys
import tempfile
import threading
import uuid
import zlib
from concurrent import futures
from pathlib import Path
from typing import Any, List, Optional

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTORS = Path(__file__).resolve().parents[1] / "packages/protocol/gen/descriptors.binpb"


def _load() -> Any:
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    by_name = {f.name: f for f in fds.file}
    pool = descriptor_pool.DescriptorPool()
    done: set = set()

    def add(f: Any) -> None:
        if f.name in done:
            return
        for d in f.dependency:
            add(by_name[d])
        pool.Add(f)
        done.add(f.name)

    for f in fds.file:
        add(f)
    # protobuf >= 4.22 has GetMessageClass (and 5+ dropped GetPrototype); Debian's 4.21 has
    # only the factory method.
    if hasattr(message_factory, "GetMessageClass"):
        def get(n: str) -> Any:
            return message_factory.GetMessageClass(pool.FindMessageTypeByName(n))
    else:
        factory = message_factory.MessageFactory(pool)

        def get(n: str) -> Any:
            return factory.GetPrototype(pool.FindMessageTypeByName(n))
    return (get("spark.connect.AddArtifactsRequest"), get("spark.connect.AddArtifactsResponse"),
            get("spark.connect.AddArtifactsResponse.ArtifactSummary"))


AddReq, AddResp, Summary = _load()


class StreamError(Exception):
    pass


def _dest(root: Path, name: str) -> Path:
    """Spark's concatenatePaths rule: relative, normalizes strictly inside the root."""
    if "#" in name and name.startswith("archives/"):
        name = name.split("#", 1)[0]
    norm = posixpath.normpath(name.replace("\\", "/"))
    if (not name or "\0" in name or name.startswith("/") or norm in (".", "")
            or norm.startswith("../") or norm == ".."):
        raise StreamError(f"Artifact with name: {name} is invalid. The `name` must be a "
                          "relative path and cannot reference parent/sibling/nephew directories.")
    return root / norm


class Staged:
    __slots__ = ("name", "path", "crc_ok")

    def __init__(self, name: str, path: Path, crc_ok: bool):
        self.name, self.path, self.crc_ok = name, path, crc_ok


class Servicer:
    def __init__(self, data_dir: Path):
        self.data = data_dir
        self.staging_root = data_dir / "staging"
        self.sessions = data_dir / "sessions"
        self.staging_root.mkdir(parents=True, exist_ok=True)
        self.sessions.mkdir(parents=True, exist_ok=True)
        self.server_ids: dict = {}
        self.lock = threading.Lock()

    def server_id(self, key: tuple) -> str:
        with self.lock:
            return self.server_ids.setdefault(key, str(uuid.uuid4()))

    def add_artifacts(self, requests: Any, context: grpc.ServicerContext) -> Any:
        staging = Path(tempfile.mkdtemp(dir=self.staging_root))
        staged: List[Staged] = []
        session: Optional[str] = None
        user = ""
        cur = None  # the open chunked artifact: [name, file, path, remaining, total, seen, ok]
        try:
            for req in requests:
                if session is None:
                    session = req.session_id
                    user = req.user_context.user_id
                    try:
                        uuid.UUID(session)
                    except ValueError:
                        raise StreamError(f"[INVALID_HANDLE.FORMAT] The handle {session} is "
                                          "invalid.") from None
                kind = req.WhichOneof("payload")
                if kind == "batch":
                    for a in req.batch.artifacts:
                        p = staging / str(len(staged))
                        data = a.data.data
                        with open(p, "wb") as f:
                            f.write(data)
                        staged.append(Staged(a.name, p, zlib.crc32(data) == a.data.crc))
                elif kind == "begin_chunk":
                    if cur is not None:
                        raise StreamError(f"begin_chunk for {req.begin_chunk.name} while "
                                          f"{cur[0]} is still open")
                    b = req.begin_chunk
                    p = staging / str(len(staged))
                    f = open(p, "wb")
                    data = b.initial_chunk.data
                    f.write(data)
                    cur = [b.name, f, p, b.num_chunks - 1, b.total_bytes, len(data),
                           zlib.crc32(data) == b.initial_chunk.crc]
                    if cur[3] <= 0:
                        cur = self._close(cur, staged)
                elif kind == "chunk":
                    if cur is None:
                        raise StreamError("chunk without an open chunked artifact")
                    data = req.chunk.data
                    cur[1].write(data)
                    cur[5] += len(data)
                    cur[3] -= 1
                    if zlib.crc32(data) != req.chunk.crc:
                        cur[6] = False
                    if cur[3] == 0:
                        cur = self._close(cur, staged)
                else:
                    raise StreamError(f"Unsupported data transfer request: {req}")
            if cur is not None:
                raise StreamError(f"Missing data chunks for artifact: {cur[0]}. Stream ended "
                                  f"with {cur[3]} chunks outstanding.")
            if session is None:
                raise StreamError("empty AddArtifacts stream")
            root = self.sessions / (user + "~" + session if user else session)
            summaries = []
            for s in staged:
                if s.crc_ok:
                    dest = _dest(root, s.name)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(s.path, dest)
                summaries.append(Summary(name=s.name, is_crc_successful=s.crc_ok))
            return AddResp(artifacts=summaries, session_id=session,
                           server_side_session_id=self.server_id((user, session)))
        except StreamError as e:
            context.abort(grpc.StatusCode.INTERNAL, str(e))
        finally:
            if cur is not None:
                cur[1].close()
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _close(cur: list, staged: List[Staged]) -> None:
        cur[1].close()
        if cur[3] != 0 or cur[5] != cur[4]:
            raise StreamError(f"Missing data chunks for artifact: {cur[0]}. Expected "
                              f"{cur[4]} bytes and received {cur[5]} bytes.")
        staged.append(Staged(cur[0], cur[2], cur[6]))
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    svc = Servicer(Path(args.data_dir))
    handler = grpc.method_handlers_generic_handler("spark.connect.SparkConnectService", {
        "AddArtifacts": grpc.stream_unary_rpc_method_handler(
            svc.add_artifacts, request_deserializer=AddReq.FromString,
            response_serializer=AddResp.SerializeToString),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers),
                         handlers=[handler],
                         options=[("grpc.max_receive_message_length", 128 * 1024 * 1024)])
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    print(f"listening on {args.host}:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
