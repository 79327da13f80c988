"""Records the AddArtifacts streams the real PySpark client sends for one addArtifacts call.

Run with the project's environment (.venv/bin/python):

    record_pyspark_artifacts.py --session UUID [--user ID] [--pyfile|--archive|--file] PATH...

A recording server (the wheel's generated servicer, on a loopback port of this process) answers
every stream with a summary, and the real client's `spark.addArtifacts(*PATHS, ...)` runs against
it. Prints {"streams": [[request, ...], ...]}, each request described as
`spark_artifacts.py plan` describes the stand-in's (data as size, crc and sha256), so a test can
compare the two.
"""

import argparse
import hashlib
import json
import sys
import threading
import warnings
from concurrent import futures

warnings.simplefilter("ignore", FutureWarning)

import grpc  # noqa: E402

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql.connect.proto import base_pb2 as pb  # noqa: E402
from pyspark.sql.connect.proto import base_pb2_grpc  # noqa: E402


def describe(m):
    def chunk(c):
        return {"size": len(c.data), "crc": c.crc, "sha256": hashlib.sha256(c.data).hexdigest()}

    kind = m.WhichOneof("payload")
    out = {
        "kind": kind,
        "session_id": m.session_id,
        "has_user_context": m.HasField("user_context"),
        "user_id": m.user_context.user_id,
    }
    if kind == "batch":
        out["artifacts"] = [dict(name=a.name, **chunk(a.data)) for a in m.batch.artifacts]
    elif kind == "begin_chunk":
        b = m.begin_chunk
        out.update(
            name=b.name,
            total_bytes=b.total_bytes,
            num_chunks=b.num_chunks,
            initial_chunk=chunk(b.initial_chunk),
        )
    elif kind == "chunk":
        out["chunk"] = chunk(m.chunk)
    for k in ("client_type", "client_observed_server_side_session_id"):
        if m.HasField(k):
            out[k] = getattr(m, k)
    return out


class Recorder(base_pb2_grpc.SparkConnectServiceServicer):
    def __init__(self):
        self.streams = []
        self.lock = threading.Lock()

    def AddArtifacts(self, request_iterator, context):
        stream = []
        names = []
        session = ""
        for m in request_iterator:
            stream.append(describe(m))
            session = m.session_id
            kind = m.WhichOneof("payload")
            if kind == "batch":
                names += [a.name for a in m.batch.artifacts]
            elif kind == "begin_chunk":
                names.append(m.begin_chunk.name)
        with self.lock:
            self.streams.append(stream)
        return pb.AddArtifactsResponse(
            session_id=session,
            server_side_session_id="11111111-1111-1111-1111-111111111111",
            artifacts=[
                pb.AddArtifactsResponse.ArtifactSummary(name=n, is_crc_successful=True)
                for n in names
            ],
        )

    def ReleaseSession(self, request, context):
        # spark.stop(): the client releases its session before exiting.
        return pb.ReleaseSessionResponse(session_id=request.session_id)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--session", required=True)
    p.add_argument("--user", default="")
    g = p.add_mutually_exclusive_group()
    for flag in ("pyfile", "archive", "file"):
        g.add_argument("--" + flag, action="store_true")
    p.add_argument("paths", nargs="+")
    args = p.parse_args()
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    base_pb2_grpc.add_SparkConnectServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        remote = "sc://127.0.0.1:%d/;session_id=%s" % (port, args.session)
        if args.user:
            remote += ";user_id=" + args.user
        spark = SparkSession.builder.remote(remote).create()
        flags = {k: True for k in ("pyfile", "archive", "file") if getattr(args, k)}
        spark.addArtifacts(*args.paths, **flags)
        spark.stop()
    finally:
        server.stop(None)
    print(json.dumps({"streams": recorder.streams}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
