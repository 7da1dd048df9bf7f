"""`uploads.py`: each content uploaded once per API and account, stale paths uploaded again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import pytest

from kling_batch.assets import Asset
from kling_batch.clock import ScaledClock
from kling_batch.errors import AuthError, ConnectionFailed, ShotRejected, UploadFailed
from kling_batch.lockfile import Lockfile, LockWriter, UploadedAsset
from kling_batch.payloads import Upload
from kling_batch.uploads import Uploads, stale_paths

SHA = "sha256:" + hashlib.sha256(b"image").hexdigest()  # of still.png


class FakeUploader:
    """Uploads answer `bunny://up/<n>`; `fail` raises instead; calls are counted."""

    def __init__(self, scope: str = "acct-a", fail: Exception | None = None) -> None:
        self.upload_scope = scope
        self.fail = fail
        self.calls = 0

    async def upload(self, path: Path, *, content_type: str | None = None) -> Upload:
        self.calls += 1
        await anyio.sleep(0.01)  # let a concurrent caller find the upload in progress
        if self.fail is not None:
            raise self.fail
        sent = "sha256:" + hashlib.sha256(await anyio.Path(path).read_bytes()).hexdigest()
        return Upload(f"bunny://up/{self.calls}", None, 5, sent)


@pytest.fixture
def picture(tmp_path: Path) -> Asset:
    path = tmp_path / "still.png"
    path.write_bytes(b"image")
    return Asset("still.png", "local", path, SHA, 5)


def uploads(tmp_path: Path, client: FakeUploader, lock: Lockfile | None = None) -> Uploads:
    writer = LockWriter(tmp_path / "m.lock", lock or Lockfile())
    return Uploads(client, writer, ScaledClock(1.0))


def test_two_renders_of_one_image_upload_it_once(tmp_path: Path, picture: Asset) -> None:
    """Concurrent renders sharing a file: one upload, both bodies carry its path."""
    client = FakeUploader()
    store = uploads(tmp_path, client)
    bodies: list[dict[str, object]] = []

    async def both() -> None:
        async def one() -> None:
            bodies.append(await store.wire_body({"image": "still.png"}, {"image": picture}))

        async with anyio.create_task_group() as group:
            group.start_soon(one)
            group.start_soon(one)

    anyio.run(both)
    assert client.calls == 1
    assert bodies == [{"image": "bunny://up/1"}] * 2


def test_an_upload_is_reused_only_by_its_own_api_and_account(
    tmp_path: Path, picture: Asset
) -> None:
    """A recorded upload of the same account is reused; another account's is not."""
    lock = Lockfile()
    lock.uploads["acct-a"] = {SHA: UploadedAsset(path="bunny://old/a", size=5)}
    same, other = FakeUploader("acct-a"), FakeUploader("acct-b")
    got_same = anyio.run(uploads(tmp_path, same, lock).path_of, SHA, picture.path, "still.png")
    got_other = anyio.run(uploads(tmp_path, other, lock).path_of, SHA, picture.path, "still.png")
    assert (got_same, same.calls) == ("bunny://old/a", 0)
    assert (got_other, other.calls) == ("bunny://up/1", 1)


def test_a_failed_upload_fails_the_render_and_a_refused_key_stops_the_run(
    tmp_path: Path, picture: Asset
) -> None:
    """An upload error is `UploadFailed` naming the file; a 401 passes through."""
    broken = uploads(tmp_path, FakeUploader(fail=ConnectionFailed("down")))
    with pytest.raises(UploadFailed, match=r"upload of still\.png failed: down"):
        anyio.run(broken.path_of, SHA, picture.path, "still.png")
    refused = uploads(tmp_path, FakeUploader(fail=AuthError("bad key", status=401)))
    with pytest.raises(AuthError):
        anyio.run(refused.path_of, SHA, picture.path, "still.png")


def test_rewire_uploads_a_stale_path_of_ours_again(tmp_path: Path, picture: Asset) -> None:
    """A stale path we uploaded is forgotten and uploaded anew; a stranger's gives None."""
    lock = Lockfile()
    lock.uploads["acct-a"] = {SHA: UploadedAsset(path="bunny://old/a", size=5)}
    client = FakeUploader("acct-a")
    store = uploads(tmp_path, client, lock)
    body, assets = {"image": "still.png"}, {"image": picture}
    fresh = anyio.run(store.rewire, body, assets, {"bunny://old/a"})
    assert fresh == {"image": "bunny://up/1"} and client.calls == 1
    assert anyio.run(store.rewire, body, assets, {"bunny://someone/else"}) is None


def test_renders_refused_at_once_for_one_stale_path_all_rewire(
    tmp_path: Path, picture: Asset
) -> None:
    """Many renders share an upload whose path expires: each refused render gets the new
    path, whether it asks before or after another render replaced it; one upload in all."""
    lock = Lockfile()
    lock.uploads["acct-a"] = {SHA: UploadedAsset(path="bunny://old/a", size=5)}
    client = FakeUploader("acct-a")
    store = uploads(tmp_path, client, lock)
    body, assets = {"image": "still.png"}, {"image": picture}
    bodies: list[dict[str, object] | None] = []

    async def refused_together() -> None:
        async def one() -> None:
            bodies.append(await store.rewire(body, assets, {"bunny://old/a"}))

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(one)

    anyio.run(refused_together)
    late = anyio.run(store.rewire, body, assets, {"bunny://old/a"})
    assert bodies == [{"image": "bunny://up/1"}] * 3
    assert late == {"image": "bunny://up/1"}
    assert client.calls == 1


@pytest.mark.parametrize(
    ("message", "param", "stale"),
    [
        ("'image': unknown upload path 'bunny://old/a'.", "image", {"bunny://old/a"}),
        ("the upload has expired", "image", {"bunny://old/a"}),
        ("'image': unknown upload path 'bunny://not/sent'.", "image", set()),
        ("prompt is too long", "prompt", set()),
    ],
)
def test_stale_paths_are_read_from_a_400(message: str, param: str, stale: set[str]) -> None:
    """Only a refusal about a path the body carried counts as stale."""
    error = ShotRejected(message, status=400, param=param)
    body = {"prompt": "p", "image": "bunny://old/a"}
    assert stale_paths(error, body) == stale
