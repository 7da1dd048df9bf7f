"""`outputs.py`: only a verified MP4 reaches its output path, with a cached copy beside."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kling_batch.errors import BadOutput
from kling_batch.outputs import place_copy, temp_beside, verify_and_place
from kling_batch.payloads import Download

MP4 = b"\x00\x00\x00\x14ftypisom\x00\x00\x02\x00isom" + b"\x00" * 64


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def downloaded(target: Path, data: bytes) -> tuple[Path, Download]:
    """A temp file beside `target` holding `data`, as the client leaves a download."""
    temp = temp_beside(target)
    temp.write_bytes(data)
    return temp, Download(len(data), digest(data))


def cache_in(folder: Path):  # type: ignore[no-untyped-def]
    return lambda sha256: folder / sha256.removeprefix("sha256:")


def test_a_verified_download_is_placed_and_cached(tmp_path: Path) -> None:
    """An MP4 whose bytes match what was received lands in place and in the cache."""
    target = tmp_path / "renders" / "a.mp4"
    temp, download = downloaded(target, MP4)
    verify_and_place(temp, target, download, cache_in(tmp_path / "cache"))
    assert target.read_bytes() == MP4
    assert (tmp_path / "cache" / digest(MP4).removeprefix("sha256:")).read_bytes() == MP4
    assert target.stat().st_mode & 0o777 == 0o644
    assert not temp.exists()


def test_a_file_that_is_not_an_mp4_is_never_placed(tmp_path: Path) -> None:
    """An HTML error page served as the video is refused; the old output stays."""
    target = tmp_path / "a.mp4"
    target.write_bytes(MP4)
    page = b"<html>expired</html>" + b" " * 40
    temp, download = downloaded(target, page)
    with pytest.raises(BadOutput, match="not an MP4"):
        verify_and_place(temp, target, download, cache_in(tmp_path / "cache"))
    assert target.read_bytes() == MP4
    assert not (tmp_path / "cache").exists()


def test_bytes_that_differ_from_what_was_received_are_refused(tmp_path: Path) -> None:
    """A temp file changed after the download (hash mismatch) is refused."""
    target = tmp_path / "a.mp4"
    temp, download = downloaded(target, MP4)
    temp.write_bytes(MP4 + b"tampered")
    with pytest.raises(BadOutput, match="does not match"):
        verify_and_place(temp, target, download, cache_in(tmp_path / "cache"))
    assert not target.exists()


def test_temp_beside_sweeps_stale_downloads_of_that_target(tmp_path: Path) -> None:
    """A killed run's partial download of the same output is removed; others stay."""
    target = tmp_path / "a.mp4"
    stale = temp_beside(target)
    other = temp_beside(tmp_path / "b.mp4")
    fresh = temp_beside(target)
    assert not stale.exists() and other.exists() and fresh.exists()


def test_place_copy_checks_the_source_hash(tmp_path: Path) -> None:
    """A source that no longer holds the recorded render is refused, nothing placed."""
    source = tmp_path / "cached"
    source.write_bytes(MP4)
    with pytest.raises(BadOutput, match="no longer holds"):
        place_copy(source, tmp_path / "out.mp4", digest(b"something else"))
    assert not (tmp_path / "out.mp4").exists()


def test_place_copy_puts_the_same_bytes_in_place(tmp_path: Path) -> None:
    """A matching source is copied to the target through a temp file."""
    source = tmp_path / "cached"
    source.write_bytes(MP4)
    target = tmp_path / "renders" / "out.mp4"
    place_copy(source, target, digest(MP4))
    assert target.read_bytes() == MP4
    assert [p.name for p in target.parent.iterdir()] == ["out.mp4"]
