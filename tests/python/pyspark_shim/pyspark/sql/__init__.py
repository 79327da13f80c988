"""pyspark.sql stand-in: SparkSession.builder.remote(...).getOrCreate(), addArtifacts,
conf.set/get/unset, session_id and stop(), over the PySpark-equivalent client."""
import os
import sys
from typing import Any, Dict, Optional

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
import spark_artifacts as _sa  # noqa: E402


class _Conf:
    def __init__(self, client: "_sa.SparkArtifactsClient"):
        self._client = client

    def set(self, key: str, value: Any) -> None:
        self._client.conf_set(key, value)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        if default is not None:
            return self._client.conf_get_with_default(key, default).pairs[0][1]
        return self._client.conf_get(key).pairs[0][1]

    def unset(self, key: str) -> None:
        self._client.conf_unset([key])


class SparkSession:
    class Builder:
        def __init__(self) -> None:
            self._remote: Optional[str] = None
            self._options: Dict[str, Any] = {}

        def remote(self, url: str) -> "SparkSession.Builder":
            self._remote = url
            return self

        def config(self, key: str, value: Any) -> "SparkSession.Builder":
            self._options[key] = value
            return self

        def getOrCreate(self) -> "SparkSession":
            url = self._remote or os.environ.get("SPARK_REMOTE", "sc://localhost:15002")
            client = _sa.SparkArtifactsClient(url, user_id=os.environ.get("USER"), strict=False)
            if self._options:
                client.apply_options(self._options)
            return SparkSession(client)

        create = getOrCreate

    builder = Builder()

    def __init__(self, client: "_sa.SparkArtifactsClient"):
        self._client = client
        self.conf = _Conf(client)

    @property
    def session_id(self) -> str:
        return self._client.session_id

    def addArtifacts(self, *paths: str, pyfile: bool = False, archive: bool = False,
                     file: bool = False) -> None:
        self._client.add_artifacts(*paths, pyfile=pyfile, archive=archive, file=file)

    addArtifact = addArtifacts

    def stop(self) -> None:
        try:
            self._client.release_session()
        finally:
            self._client.close()
