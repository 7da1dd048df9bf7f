"""Uploads: local files become `bunny://` paths that renders use as their inputs."""

from __future__ import annotations

import hashlib
from decimal import Decimal

import mutagen
import pytest

from kling_batch.errors import ShotRejected

pytestmark = pytest.mark.anyio


async def test_uploaded_png_drives_an_image_to_video_render(served, connect, render, shoe_png):
    """A PNG's `bunny://` path, sent as `image` with workflow i2v, renders successfully."""
    async with connect(served) as client:
        upload = await client.upload(shoe_png)
        state = await render(client, workflow="i2v", image=upload.path)
    assert upload.path.startswith("bunny://")
    assert state.status == "succeeded"
    assert state.raw["request"]["image"] == upload.path


async def test_upload_reports_the_size_of_the_file(served, connect, street_mp4):
    """The `Upload` size is the local file's size."""
    async with connect(served) as client:
        upload = await client.upload(street_mp4)
    assert upload.size == street_mp4.stat().st_size


async def test_uploaded_file_downloads_back_byte_for_byte(served, connect, street_mp4, tmp_path):
    """The upload's signed URL serves exactly the bytes that were sent."""
    async with connect(served) as client:
        upload = await client.upload(street_mp4)
        assert upload.url is not None
        got = await client.download(upload.url, tmp_path / "back.mp4")
    assert got.sha256 == "sha256:" + hashlib.sha256(street_mp4.read_bytes()).hexdigest()


async def test_video_edit_is_billed_for_the_clip_at_the_video_input_rate(
    served, connect, render, street_mp4
):
    """Editing the uploaded 6 s clip on standard bills 6 s at $0.252/s (Standard Video Input)."""
    async with connect(served) as client:
        upload = await client.upload(street_mp4)
        state = await render(
            client, workflow="video_edit", video=upload.path, model_tier="standard"
        )
    (charge,) = served.emulator.ledger.entries()
    assert state.status == "succeeded"
    assert (charge.label, charge.seconds, charge.rate) == (
        "Standard Video Input",
        Decimal(6),
        Decimal("0.252"),
    )
    assert charge.amount == Decimal("1.512")


async def test_video_edit_output_lasts_as_long_as_the_clip(
    served, connect, render, street_mp4, tmp_path
):
    """The edited video keeps the source clip's 6-second length (duration is ignored)."""
    async with connect(served) as client:
        upload = await client.upload(street_mp4)
        state = await render(client, video=upload.path, duration=10)
        await client.download(state.video_url, tmp_path / "edited.mp4")
    assert mutagen.File(tmp_path / "edited.mp4").info.length == 6.0


async def test_unsupported_file_type_is_rejected_naming_the_field(served, connect, tmp_path):
    """A text file is refused with 415 and param `file`, and not retried."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    async with connect(served) as client:
        with pytest.raises(ShotRejected) as info:
            await client.upload(notes)
    assert (info.value.status, info.value.param, info.value.attempts) == (415, "file", 1)


async def test_unknown_bunny_path_is_rejected_naming_the_field(served, connect):
    """A `bunny://` path that was never uploaded is a 400 on `image`."""
    async with connect(served) as client:
        with pytest.raises(ShotRejected) as info:
            await client.submit(
                {
                    "model": "kling-o3",
                    "prompt": "p",
                    "image": "bunny://uploads/acct_emulator/nope/x.png",
                }
            )
    assert (info.value.status, info.value.param) == (400, "image")
