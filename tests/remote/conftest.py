"""Fixtures for the shared render store: moto's S3 server on loopback, started by the tests,
a fake GCS (`fake_gcs`) or a shared folder; and "machines": project folders rendering one
manifest against one emulator through that store, with the real command line."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from kling_batch.canonical import untagged
from kling_batch.emulator import RunningEmulator
from kling_batch.submission import FINGERPRINT_HEADER
from tests.remote.fake_gcs import FakeGCS
from tests.run.conftest import Project, write_project

# Dummy credentials (moto takes any); the tests check they never show up anywhere.
SECRET = "kb-test-secret-9f3c1e"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "kb-test-access",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    """moto's S3 server on 127.0.0.1; its port (picked by the system) survives a restart,
    and so do its buckets (moto keeps them in this process)."""

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

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )


class Gate:
    """A TCP relay in front of the S3 server, so a test can take the store away: `cut()`
    refuses new connections and closes the open ones (pooled keep-alive connections too,
    which a stopped server's threads would go on serving); `reopen()` listens again on
    the same port."""

    def __init__(self, server: S3Server) -> None:
        self.server = server
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reopen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.server.port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Wait for a condition the test needs before its next step (never a timing check)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """One S3 server for a module's tests (each test makes its own bucket)."""
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gcs() -> Iterator[FakeGCS]:
    """One fake GCS for a module's tests (each test takes its own bucket)."""
    server = FakeGCS()
    try:
        yield server
    finally:
        server.stop()


class Store:
    """A remote as the tests see it: its URL, the environment a run needs, its objects."""

    url: str

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def keys(self, under: str = "") -> list[str]:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def record(self, fingerprint: str) -> dict[str, Any] | None:
        key = f"renders/{untagged(fingerprint)}.json"
        if key not in self.keys("renders/"):
            return None
        data: dict[str, Any] = json.loads(self.read(key))
        return data

    def claims(self) -> dict[str, dict[str, Any]]:
        return {
            key: json.loads(self.read(key))
            for key in self.keys("claims/")
            if not key.endswith(".lock")
        }


class S3Bucket(Store):
    """A fresh bucket on the S3 server, used as `s3://<bucket>/launch`; runs reach it at
    `endpoint` (the server's own, or a `Gate` in front of it)."""

    def __init__(self, server: S3Server, endpoint: str | None = None) -> None:
        self.server = server
        self.endpoint = endpoint or server.endpoint
        self.name = f"team-{uuid.uuid4().hex[:12]}"
        server.client().create_bucket(Bucket=self.name)
        self.url = f"s3://{self.name}/launch"

    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def keys(self, under: str = "") -> list[str]:
        pages = self.server.client().get_paginator("list_objects_v2")
        found = []
        for page in pages.paginate(Bucket=self.name, Prefix=f"launch/{under}"):
            found += [item["Key"].removeprefix("launch/") for item in page.get("Contents", [])]
        return sorted(found)

    def read(self, key: str) -> bytes:
        body = self.server.client().get_object(Bucket=self.name, Key=f"launch/{key}")["Body"]
        data: bytes = body.read()
        return data

    def write(self, key: str, data: bytes) -> None:
        self.server.client().put_object(Bucket=self.name, Key=f"launch/{key}", Body=data)


class Folder(Store):
    """A shared folder, used as `file:///…/shared`."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True)
        self.path = path
        self.url = f"file://{path}"

    def env(self) -> dict[str, str]:
        return {}

    def keys(self, under: str = "") -> list[str]:
        found = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        return sorted(key for key in found if key.startswith(under))

    def read(self, key: str) -> bytes:
        return (self.path / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        (self.path / key).write_bytes(data)


@pytest.fixture(params=["s3", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each test twice: against the S3 server, and against a shared folder."""
    if request.param == "s3":
        return S3Bucket(request.getfixturevalue("s3"))
    return Folder(tmp_path / "shared")


@dataclass
class Machine:
    """One teammate's (or CI runner's) checkout of the project."""

    project: Project
    store: Store

    @property
    def root(self) -> Path:
        return self.project.root

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """`kling-batch run` against the emulator through the store."""
        return self.project.run(*args, timeout=timeout, env=self.store.env())

    def start(self, *args: str) -> subprocess.Popen[str]:
        """The same, in the background."""
        return subprocess.Popen(
            self.project.command(*args),
            env=self.project.env(self.store.env()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def cli(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Any other command on the manifest (`plan`, `push`, `pull`, …)."""
        return subprocess.run(
            [sys.executable, "-m", "kling_batch", command, str(self.project.manifest), *args],
            capture_output=True,
            text=True,
            env=self.project.env(self.store.env()),
            timeout=180,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def plan_json(self) -> dict[str, Any]:
        result = self.cli("plan", "--format", "json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def outputs(self) -> dict[str, bytes]:
        """Every output under `renders/`, by path relative to the project."""
        folder = self.root / "renders"
        return {
            p.relative_to(self.root).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*.mp4"))
        }


def machine(root: Path, served: RunningEmulator, store: Store, manifest: str, **_: Any) -> Machine:
    """A project folder at `root` whose manifest names `store` as its remote."""
    head, _, rest = manifest.partition('output_dir = "renders"\n')
    text = f'{head}output_dir = "renders"\nremote = "{store.url}"\n{rest}'
    return Machine(write_project(root, served, text), store)


def clone(source: Machine, root: Path) -> Machine:
    """What `git clone` gives a teammate: the manifest, its inputs and the lockfile; no
    outputs, no render cache, no result URLs."""
    root.mkdir(parents=True)
    for name in (source.project.manifest.name, source.project.lock.name, "still.png"):
        shutil.copy(source.root / name, root / name)
    project = Project(root, root / source.project.manifest.name, source.project.served)
    return Machine(project, source.store)


def finish(process: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    """Wait for a background run: its exit code and stderr."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()  # ours, by its handle
        process.communicate()
        raise
    return process.returncode, stderr


def jobs_per_render(served: RunningEmulator) -> dict[str, list[str]]:
    """Fingerprint → every job the emulator created for it."""
    return served.emulator.journal.jobs_by_header(FINGERPRINT_HEADER)
