"""Fixtures for the shared render store: moto's S3 server on loopback, started here, and
projects (one per "machine") rendering against one emulator through it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from kling_batch.canonical import untagged
from tests.run.conftest import MANIFEST, Project

# Dummy credentials: moto accepts any; the tests check they never show up anywhere.
SECRET = "kb-test-secret-9f3c1e"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "kb-test-access",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    """moto's S3 server on 127.0.0.1 (port picked by the system, kept across restarts)."""

    port: int = 0
    _server: ThreadedMotoServer | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server

    def stop(self) -> None:
        """Stop answering and close the socket: connections are refused from now on."""
        server, self._server = self._server, None
        if server is not None and server._server is not None:
            server._server.shutdown()
            server._server.server_close()

    def env(self) -> dict[str, str]:
        """What a run needs to reach it: dummy credentials and the endpoint."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        """A fresh bucket; its remote URL (with a prefix)."""
        name = f"team-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}/launch"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """One S3 server for a module's tests (each test makes its own bucket)."""
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Bucket:
    """What the tests read back from a remote `s3://bucket/prefix`."""

    server: S3Server
    url: str

    @property
    def name(self) -> str:
        return self.url.removeprefix("s3://").split("/")[0]

    @property
    def prefix(self) -> str:
        return self.url.removeprefix("s3://").split("/", 1)[1]

    def keys(self, under: str = "") -> list[str]:
        pages = self.server.client().get_paginator("list_objects_v2")
        found = []
        for page in pages.paginate(Bucket=self.name, Prefix=f"{self.prefix}/{under}"):
            found += [item["Key"].removeprefix(f"{self.prefix}/") for item in page.get("Contents", [])]
        return sorted(found)

    def read(self, key: str) -> bytes:
        body = self.server.client().get_object(Bucket=self.name, Key=f"{self.prefix}/{key}")["Body"]
        data: bytes = body.read()
        return data

    def record(self, fingerprint: str) -> dict[str, Any] | None:
        key = f"renders/{untagged(fingerprint)}.json"
        if key not in self.keys("renders/"):
            return None
        data: dict[str, Any] = json.loads(self.read(key))
        return data

    def claims(self) -> dict[str, dict[str, Any]]:
        return {key: json.loads(self.read(key)) for key in self.keys("claims/")}


def with_remote(manifest: str, url: str) -> str:
    """`manifest` with `remote = url` under its header."""
    head, _, rest = manifest.partition('output_dir = "renders"\n')
    return f'{head}output_dir = "renders"\nremote = "{url}"\n{rest}'


TEAM_MANIFEST = MANIFEST


def cli(project: Project, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Any kling-batch command on the project's manifest, with `env` added."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "kling_batch", args[0], str(project.manifest), *args[1:]],
        capture_output=True,
        text=True,
        env=project.env(env),
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield
