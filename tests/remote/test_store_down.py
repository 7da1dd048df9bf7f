"""A store that fails never fails a render: the run finishes locally, says what it could not
push, and `kling-batch push` completes it later. Credentials never show up anywhere.
The store is moto's S3 server behind a relay the test cuts (`Gate`): to the run, exactly a
server that stopped."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kling_batch.emulator import JournalEntry
from kling_batch.emulator.faults import classify
from kling_batch.lockfile import load_lockfile
from tests.remote.conftest import CREDENTIALS, SECRET, Gate, S3Bucket, S3Server, machine
from tests.run.conftest import MANIFEST, emulator

RENDERS = ("dawn", "night", "still-take1", "still-take2")


@pytest.fixture
def gate(s3: S3Server) -> Iterator[Gate]:
    relay = Gate(s3)
    relay.reopen()
    try:
        yield relay
    finally:
        relay.cut()


def no_credentials_in(root: Path, *texts: str) -> None:
    """Neither the secret key nor the key id is in any text shown or any file written."""
    secrets = (SECRET, CREDENTIALS["AWS_ACCESS_KEY_ID"])
    for text in texts:
        assert not any(secret in text for secret in secrets)
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in secrets), path


@pytest.mark.timeout(300)
def test_a_store_gone_mid_run_leaves_renders_done_and_push_completes_them(
    tmp_path: Path, s3: S3Server, gate: Gate
) -> None:
    """The store stops answering at the first download: every render still lands, the run
    names what it could not push, and `push` pushes it once the store is back."""
    bucket = S3Bucket(s3, gate.endpoint)
    with emulator() as served:
        team = machine(tmp_path / "alice", served, bucket, MANIFEST)
        cut = threading.Event()

        def on_request(entry: JournalEntry) -> None:
            if classify(entry.method, entry.path) == "download" and not cut.is_set():
                cut.set()
                gate.cut()

        unsubscribe = served.emulator.journal.subscribe(on_request)
        try:
            result = team.run()
        finally:
            unsubscribe()
        assert cut.is_set()
        assert result.returncode == 0, result.stderr
        assert sorted(team.outputs()) == [f"renders/{name}.mp4" for name in RENDERS]
        (warning,) = [line for line in result.stderr.splitlines() if "not yet pushed" in line]
        assert all(name in warning for name in RENDERS)
        assert "the store was tried 2 times" in warning
        assert f"`kling-batch push {team.project.manifest}` pushes them" in warning
        no_credentials_in(team.root, result.stdout, result.stderr)
        gate.reopen()
        pushed = team.cli("push")
        assert pushed.returncode == 0, pushed.stderr
        assert "Pushed 4 render(s)" in pushed.stderr
    lock = load_lockfile(team.project.lock)
    for entry in lock.shots.values():
        record = bucket.record(entry.fingerprint)
        assert record is not None and record["output_sha256"] == entry.output_sha256
        assert entry.in_remote
    no_credentials_in(team.root)


@pytest.mark.timeout(300)
def test_a_store_down_from_the_start_renders_alone_with_a_warning(
    tmp_path: Path, s3: S3Server, gate: Gate
) -> None:
    """Nothing answers: the run says it renders alone, renders, and nothing is lost."""
    bucket = S3Bucket(s3, gate.endpoint)
    gate.cut()
    with emulator() as served:
        team = machine(tmp_path / "alice", served, bucket, MANIFEST)
        result = team.run()
        assert result.returncode == 0, result.stderr
        assert "the remote store cannot be reached" in result.stderr
        assert "renders alone" in result.stderr and "not yet pushed" in result.stderr
        assert team.project.submissions() == len(RENDERS)
        no_credentials_in(team.root, result.stdout, result.stderr)


@pytest.mark.timeout(300)
def test_require_remote_refuses_to_render_without_the_store(
    tmp_path: Path, s3: S3Server, gate: Gate
) -> None:
    """--require-remote: a store that cannot be reached refuses the run before any request."""
    bucket = S3Bucket(s3, gate.endpoint)
    gate.cut()
    with emulator() as served:
        team = machine(tmp_path / "alice", served, bucket, MANIFEST)
        result = team.run("--require-remote")
        assert result.returncode == 3, result.stderr
        assert "--require-remote" in result.stderr and "nothing was submitted" in result.stderr
        assert team.project.requests() == 0
        assert not (team.root / "renders").exists()
